// 10,000 generated label sets (test/unit/labels/fuzz-corpus.ts: all four dialects, valid and
// hostile) through the agent's whole path from labels to snapshot: no exception, and every
// container's share of a snapshot passes the server's own validator. Parse times are measured
// by bench/labels.ts, not here.
import { describe, expect, it } from 'vitest';
import { DEFAULT_POLICY, rulesFor } from '../../../src/agent/exec-policy.js';
import { snapshotContent } from '../../../src/agent/snapshot.js';
import type { ExtractContext } from '../../../src/labels/index.js';
import { compileDefaultRule } from '../../../src/labels/traefik.js';
import { MAX_HOSTS_PER_ROUTE } from '../../../src/model/limits.js';
import { parseAgentMessage } from '../../../src/model/protocol.js';
import type { ContainerInfo } from '../../../src/model/types.js';
import { FUZZ_COUNT, FUZZ_SEED, fuzzCorpus } from './fuzz-corpus.js';

const plain: ExtractContext = { hostIp: '127.0.0.2', labelPrefix: 'berth' };
// Every other batch with Traefik's default rule on, which names routes after (hostile) container names.
const withDefaultRule: ExtractContext = {
  ...plain,
  traefikDefaultRule: compileDefaultRule('Host(`{{ normalize .Name }}.fuzz.test`)'),
};
const execRules = (c: ContainerInfo) => rulesFor(c, DEFAULT_POLICY, 'berth');

function message(containers: ContainerInfo[], ctx: ExtractContext): string {
  const content = snapshotContent(containers, ctx, { execRules, replicaScope: 'fuzz' });
  const snapshot = { agentId: 'fuzz', generation: 1, hostIp: ctx.hostIp, takenAt: 1, ...content };
  return JSON.stringify({ type: 'snapshot', snapshot });
}

describe('label fuzz', () => {
  it(`${FUZZ_COUNT} generated label sets: no exception, every snapshot valid`, () => {
    const failures: string[] = [];
    const batch: ContainerInfo[] = [];
    let routed = 0;
    let refused = 0;
    const check = (what: string, containers: ContainerInfo[], ctx: ExtractContext) => {
      let raw: string;
      try {
        raw = message(containers, ctx);
      } catch (err) {
        failures.push(`${what}: threw ${(err as Error).stack}`);
        return;
      }
      try {
        const m = parseAgentMessage(raw);
        if (m.type !== 'snapshot') throw new Error(`parsed as ${m.type}`);
        // What an honest agent reports is inside every limit: the server refuses none of it.
        if (m.refused) throw new Error(`the server refused part of it: ${m.refused[0]?.message}`);
        const errors = m.snapshot.diagnostics.filter((d) => d.severity === 'error');
        const errored = new Set(errors.map((d) => d.containerId));
        // Errors that cost one Traefik router (or the routers of one service), not the container.
        const scoped = /^(router ([\s\S]+?) is not routed|routers using service [\s\S]+? are not routed): /;
        const sunk = new Set(errors.filter((d) => !scoped.test(d.message)).map((d) => d.containerId));
        const refusedRouters = new Set(
          errors.flatMap((d) => {
            const r = scoped.exec(d.message)?.[2];
            return r ? [`${d.containerId}/${r}`] : [];
          }),
        );
        for (const r of m.snapshot.routes) {
          // A container with a label error contributes no route: the rule every dialect keeps,
          // but for the Traefik router (or service) an error names, which alone stays out.
          if (sunk.has(r.containerId)) throw new Error(`route ${r.id} of a container with errors`);
          if (refusedRouters.has(`${r.containerId}/${r.group.split('#')[0]}`))
            throw new Error(`route ${r.id} of a router with errors`);
          if (r.hosts.length > MAX_HOSTS_PER_ROUTE)
            throw new Error(`route ${r.id} has ${r.hosts.length} hosts`);
        }
        if (containers.length === 1) {
          if (m.snapshot.routes.length > 0) routed++;
          if (errored.size > 0) refused++;
        }
      } catch (err) {
        failures.push(`${what}: ${(err as Error).message}`);
      }
    };
    for (const f of fuzzCorpus(FUZZ_SEED, FUZZ_COUNT)) {
      const ctx = Math.floor(f.index / 100) % 2 === 0 ? plain : withDefaultRule;
      check(`case ${f.index} (${f.kind})`, [f.container], ctx);
      batch.push(f.container);
      // Containers of one host together, too: one hostile container must not spoil the others.
      if (batch.length === 100) check(`cases ${f.index - 99}..${f.index} together`, batch.splice(0), ctx);
    }
    expect(failures.slice(0, 10)).toEqual([]);
    // The corpus reaches both outcomes often, or it tests little.
    expect(routed).toBeGreaterThan(FUZZ_COUNT / 10);
    expect(refused).toBeGreaterThan(FUZZ_COUNT / 10);
  });
});
