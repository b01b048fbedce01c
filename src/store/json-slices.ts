// JSON text of a large record made a slice at a time, yielding to the event loop between slices:
// an agent's snapshot of 25k routes is 7 MiB of JSON, and one JSON.stringify of it held every
// other request (and /healthz) for a fifth of a second. The text is exactly JSON.stringify's.

import { nextTurn } from '../model/slices.js';

/** Array items or object entries turned to text between two yields. */
const SLICE = 2_000;

const tick = nextTurn;

/**
 * JSON.stringify(value), with the top-level arrays and plain objects of more than SLICE items
 * (a snapshot's routes, containers, diagnostics, claims) written in slices with yields between.
 */
export async function stringifyInSlices(value: Record<string, unknown>): Promise<string> {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(value)) {
    const key = JSON.stringify(k);
    if (Array.isArray(v) && v.length > SLICE) {
      const items: string[] = [];
      for (let i = 0; i < v.length; i += SLICE) {
        // A slice's text without its brackets; an empty array cannot occur here.
        items.push(JSON.stringify(v.slice(i, i + SLICE)).slice(1, -1));
        await tick();
      }
      parts.push(`${key}:[${items.join(',')}]`);
      continue;
    }
    if (isPlainObject(v) && !('toJSON' in v)) {
      const keys = Object.keys(v);
      if (keys.length > SLICE) {
        const entries: string[] = [];
        for (let i = 0; i < keys.length; i += SLICE) {
          const slice: Record<string, unknown> = Object.create(null); // "__proto__" is a key like any other
          for (const kk of keys.slice(i, i + SLICE)) slice[kk] = v[kk];
          const text = JSON.stringify(slice).slice(1, -1);
          if (text !== '') entries.push(text);
          await tick();
        }
        parts.push(`${key}:{${entries.join(',')}}`);
        continue;
      }
    }
    const text = JSON.stringify(v);
    // JSON.stringify leaves out properties whose value has no JSON text (undefined, functions).
    if (text !== undefined) parts.push(`${key}:${text}`);
  }
  return `{${parts.join(',')}}`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}
