// parseJsonSteps is held to JSON.parse: the same value for every text JSON.parse accepts, an
// error for every text it refuses, on random values, random spacing and random one-character
// mutations, with big containers small enough that most of each text is worked member by member.
import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import { MAX_DEPTH, NotJson, parseJsonSteps } from '../../src/model/json-steps.js';
import { drain } from '../../src/model/slices.js';
import { prng } from './labels/fuzz-corpus.js';

const parse = (text: string, bigChars?: number) => drain(parseJsonSteps(text, bigChars));

/** JSON.parse's verdict and ours on one text: equal values, or both refuse. */
function agree(text: string, bigChars: number): { ok: boolean; why?: string } {
  let want: unknown;
  let wantOk = true;
  try {
    want = JSON.parse(text);
  } catch {
    wantOk = false;
  }
  let got: unknown;
  let gotOk = true;
  try {
    got = parse(text, bigChars);
  } catch (err) {
    gotOk = false;
    if (!(err instanceof SyntaxError)) return { ok: false, why: `threw ${String(err)}` };
  }
  if (wantOk !== gotOk)
    return { ok: false, why: `JSON.parse ${wantOk ? 'accepts' : 'refuses'}, ours does not` };
  if (wantOk && !isDeepStrictEqual(got, want)) return { ok: false, why: 'different values' };
  return { ok: true };
}

const STRINGS = [
  '',
  'a',
  'é',
  '"',
  '\\',
  '\\"',
  '\n',
  '\u2028',
  '😀',
  '__proto__',
  'constructor',
  '{[]}',
  ',:',
];
const NUMBERS = [0, -0, 1, -1, 1.5, 1e21, -2.5e-7, Number.MAX_SAFE_INTEGER];

function randomValue(r: () => number, depth: number): unknown {
  const k = r();
  if (depth > 5 || k < 0.35) {
    const s = r();
    if (s < 0.4) return STRINGS[Math.floor(r() * STRINGS.length)]! + (r() < 0.5 ? String(r()) : '');
    if (s < 0.7) return NUMBERS[Math.floor(r() * NUMBERS.length)]!;
    return [true, false, null][Math.floor(r() * 3)];
  }
  const n = Math.floor(r() * 6);
  if (k < 0.65) return Array.from({ length: n }, () => randomValue(r, depth + 1));
  const o: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const key = STRINGS[Math.floor(r() * STRINGS.length)]! + (r() < 0.5 ? String(i) : '');
    Object.defineProperty(o, key, {
      value: randomValue(r, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return o;
}

/** JSON text of a value with random spacing (JSON's four space characters) between tokens. */
function spaced(text: string, r: () => number): string {
  const space = () => (r() < 0.3 ? [' ', '\n', '\t', '\r', '  '][Math.floor(r() * 5)]! : '');
  let out = space();
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    out += c;
    if (inString) {
      if (c === '\\') out += text[++i]!;
      else if (c === '"') inString = false;
      if (!inString) out += space();
    } else if (c === '"') inString = true;
    else if ('{}[],:'.includes(c)) out += space();
  }
  return out + space();
}

describe('parseJsonSteps', () => {
  it('equals JSON.parse on 3,000 random values with random spacing', () => {
    const r = prng(4242);
    for (let n = 0; n < 3_000; n++) {
      const text = spaced(JSON.stringify(randomValue(r, 0)), r);
      const res = agree(text, Math.floor(r() * 24));
      if (!res.ok) expect.fail(`${res.why}: ${JSON.stringify(text)}`);
    }
  });

  it('agrees with JSON.parse on 10,000 one-character mutations', () => {
    const r = prng(777);
    const alphabet = '{}[],:"\\ 0-1e.atrufnl\u0000\n\uFEFF';
    let refused = 0;
    for (let n = 0; n < 10_000; n++) {
      const text = spaced(JSON.stringify(randomValue(r, 0)), r);
      const at = Math.floor(r() * (text.length + 1));
      const c = alphabet[Math.floor(r() * alphabet.length)]!;
      const op = r();
      const mutated =
        op < 0.33
          ? text.slice(0, at) + c + text.slice(at)
          : op < 0.66
            ? text.slice(0, at) + text.slice(at + 1)
            : text.slice(0, at) + c + text.slice(at + 1);
      const res = agree(mutated, Math.floor(r() * 16));
      if (!res.ok) expect.fail(`${res.why}: ${JSON.stringify(mutated)}`);
      try {
        JSON.parse(mutated);
      } catch {
        refused++;
      }
    }
    // The corpus must hold many texts that are not JSON, or the test would prove little.
    expect(refused).toBeGreaterThan(3_000);
  });

  it('keeps "__proto__" as an own key and the last of repeated keys, as JSON.parse does', () => {
    const text = `{"__proto__": {"polluted": 1}, "a": 1, "a": [2, "${'x'.repeat(40)}"]}`;
    const got = parse(text, 4) as Record<string, unknown>;
    expect(Object.getPrototypeOf(got)).toBe(Object.prototype);
    expect(Object.hasOwn(got, '__proto__')).toBe(true);
    expect(({} as { polluted?: number }).polluted).toBeUndefined();
    expect(isDeepStrictEqual(got, JSON.parse(text))).toBe(true);
  });

  it(`refuses nesting deeper than ${MAX_DEPTH} levels, saying so`, () => {
    const ok = `${'['.repeat(MAX_DEPTH)}${']'.repeat(MAX_DEPTH)}`;
    expect(parse(ok, 4)).toEqual(JSON.parse(ok));
    const deep = `${'['.repeat(MAX_DEPTH + 1)}${']'.repeat(MAX_DEPTH + 1)}`;
    expect(() => parse(deep, 4)).toThrow(NotJson);
    expect(() => parse(deep, 4)).toThrow(/nesting deeper than 64 levels/);
  });

  it('parses a snapshot of 25k routes as JSON.parse does, in many steps', () => {
    const routes = Array.from({ length: 25_000 }, (_, i) => ({
      id: `r${i}`,
      containerId: `c${i}`,
      hosts: [`h${i}.example.com`],
      path: '/',
      upstream: { host: '10.0.0.1', port: 80 },
    }));
    const text = JSON.stringify({ type: 'snapshot', snapshot: { agentId: 'a', routes } });
    const steps = parseJsonSteps(text);
    let pauses = 0;
    let r = steps.next();
    while (!r.done) {
      pauses++;
      r = steps.next();
    }
    expect(r.value).toEqual(JSON.parse(text));
    expect(pauses).toBeGreaterThan(50);
  });
});
