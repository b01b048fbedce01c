// The flow of ARCHITECTURE.md, checked on the source: the reconciler declares what it needs from
// the data plane (reconcile/data-plane.ts), the adapters in ingress/ implement it, and the types
// both sides exchange live in model/. Neither side imports the other.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(__dirname, '../../src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** Top-level folders of src/ that a folder's files import, with the importing file. */
function importsOf(folder: string): { file: string; target: string }[] {
  const out: { file: string; target: string }[] = [];
  for (const file of sources(join(SRC, folder))) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*'(\.[^']+)'/g)) {
      const target = relative(SRC, resolve(dirname(file), m[1]!)).split('/')[0]!;
      out.push({ file: relative(SRC, file), target });
    }
  }
  return out;
}

describe('import direction', () => {
  it.each([
    ['reconcile', ['ingress', 'server', 'agent', 'labels', 'cli']],
    ['ingress', ['reconcile', 'server', 'agent', 'labels', 'cli']],
    ['model', ['reconcile', 'ingress', 'server', 'agent', 'labels', 'cli', 'store']],
    ['labels', ['reconcile', 'ingress', 'server', 'agent', 'cli', 'store']],
    // Certificates and the chain check: node:crypto only, shared by the server and the agent.
    ['tls', ['reconcile', 'ingress', 'server', 'agent', 'labels', 'cli', 'store', 'model']],
  ])('%s/ imports nothing from %j', (folder, forbidden) => {
    const found = importsOf(folder);
    expect(found.length).toBeGreaterThan(0);
    expect(found.filter((i) => forbidden.includes(i.target))).toEqual([]);
  });
});
