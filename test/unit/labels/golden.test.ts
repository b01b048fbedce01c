// Golden files: a container (JSON), a `----------` line, then the routes and diagnostics Berth
// reads from it. Run with UPDATE_GOLDEN=1 to rewrite the expected halves after a deliberate change.
// Optional input keys: "ctx" (e.g. {"dialects": ["traefik", "caddy"]}; "traefikDefaultRule" is the
// flag's text) and "explain": true, which adds how each label was read (what `berth explain` shows)
// to the expected output. {"containers": [...]} reads several containers of one agent together,
// as the agent assembles its snapshot (replicas), and shows their routes and diagnostics.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { snapshotContent } from '../../../src/agent/snapshot.js';
import { type ExtractContext, extractRoutes } from '../../../src/labels/index.js';
import { compileDefaultRule } from '../../../src/labels/traefik.js';
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
      const { ctx: rawCtx = {}, explain = false, containers, ...c } = input;
      const { traefikDefaultRule, ...rest } = rawCtx;
      const ctx: ExtractContext = {
        hostIp: '127.0.0.2',
        labelPrefix: 'berth',
        ...rest,
        ...(traefikDefaultRule ? { traefikDefaultRule: compileDefaultRule(traefikDefaultRule) } : {}),
      };
      let out: object;
      if (containers) {
        const got = snapshotContent(containers.map(container), ctx, { replicaScope: 'agent-1' });
        out = { routes: got.routes, diagnostics: got.diagnostics };
      } else {
        const got = extractRoutes(container(c), ctx);
        out = {
          routes: got.routes,
          ...(got.tcp.length > 0 ? { tcp: got.tcp } : {}),
          diagnostics: got.diagnostics,
          ...(explain ? { explain: got.explain ?? null } : {}),
        };
      }
      const rendered = `${JSON.stringify(out, null, 2)}\n`;
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
