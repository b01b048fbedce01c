// Golden files: a container (JSON), a `----------` line, then the routes and diagnostics Berth
// reads from it. Run with UPDATE_GOLDEN=1 to rewrite the expected halves after a deliberate change.
// Optional input keys: "ctx" (e.g. {"dialects": ["traefik", "caddy"]}) and "explain": true, which
// adds how each label was read (what `berth explain` shows) to the expected output.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { extractRoutes } from '../../../src/labels/index.js';
import { container } from './container.js';

const dir = join(import.meta.dirname, 'testdata');
const SEP = '\n----------\n';

describe('label golden files', () => {
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith('.txt'))
    .sort()) {
    it(file, () => {
      const text = readFileSync(join(dir, file), 'utf8');
      const [inputPart, expectedPart] = text.split(SEP);
      const input = JSON.parse(stripComments(inputPart!));
      const { ctx = {}, explain = false, ...c } = input;
      const got = extractRoutes(container(c), { hostIp: '127.0.0.2', labelPrefix: 'berth', ...ctx });
      const rendered = `${JSON.stringify(
        {
          routes: got.routes,
          ...(got.tcp.length > 0 ? { tcp: got.tcp } : {}),
          diagnostics: got.diagnostics,
          ...(explain ? { explain: got.explain ?? null } : {}),
        },
        null,
        2,
      )}\n`;
      if (process.env.UPDATE_GOLDEN === '1' || expectedPart === undefined) {
        writeFileSync(join(dir, file), `${inputPart}${SEP}${rendered}`);
        return;
      }
      expect(rendered).toBe(expectedPart);
    });
  }
});

function stripComments(s: string): string {
  return s
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .join('\n');
}
