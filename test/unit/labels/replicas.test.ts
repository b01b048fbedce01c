// Issue 21.7: caddy-docker-proxy and Traefik containers of one agent with the same labels share
// traffic at the front door, as they would there; across agents Berth's claim rules are unchanged.
import { describe, expect, it } from 'vitest';
import { snapshotContent } from '../../../src/agent/snapshot.js';
import type { ExtractContext } from '../../../src/labels/index.js';
import type { ContainerInfo } from '../../../src/model/types.js';
import { computeDesired } from '../../../src/reconcile/desired.js';
import { container } from './container.js';

const ctx: ExtractContext = { hostIp: '127.0.0.2', labelPrefix: 'berth' };

const replica = (id: string, ip: string, labels: Record<string, string>, created = 1700000000) =>
  container({ id, name: id, created, networkMode: 'bridge', networks: { app: ip }, labels });

const CADDY = { caddy: 'shop.example.com', 'caddy.reverse_proxy': '{{upstreams 8080}}' };
const TRAEFIK = {
  'traefik.http.routers.api.rule': 'Host(`api.example.com`)',
  'traefik.http.services.api.loadbalancer.server.port': '8080',
};

function agent(agentId: string, containers: ContainerInfo[], scope = agentId) {
  const s = snapshotContent(containers, ctx, { replicaScope: scope });
  return { agentId, agentName: agentId, routes: s.routes };
}

const served = (agents: ReturnType<typeof agent>[]) =>
  computeDesired(agents).sites.map((s) => `${s.host} ${s.upstreams.map((u) => u.host).join(',')}`);

describe('replicas with identical labels', () => {
  it.each([
    ['caddy', CADDY, 'shop.example.com'],
    ['traefik', TRAEFIK, 'api.example.com'],
  ])('%s: containers of one agent share one upstream set', (_d, labels, host) => {
    const a = agent('a', [replica('r1', '10.0.0.11', labels), replica('r2', '10.0.0.12', labels)]);
    expect(served([a])).toEqual([`${host} 10.0.0.11,10.0.0.12`]);
    const desired = computeDesired([a]);
    expect([...desired.outcomes.values()].flatMap((o) => o.errors)).toEqual([]);
  });

  it('a container whose labels differ stays a claim of its own: the oldest wins', () => {
    const a = agent('a', [
      replica('r1', '10.0.0.11', CADDY),
      replica('r2', '10.0.0.12', CADDY),
      replica('r3', '10.0.0.13', { ...CADDY, 'caddy.reverse_proxy': '{{upstreams 9090}}' }, 1600000000),
    ]);
    expect(served([a])).toEqual(['shop.example.com 10.0.0.13']);
  });

  it("another agent's identical containers do not join: claims across agents are unchanged", () => {
    const a = agent('a', [replica('a1', '10.0.0.11', TRAEFIK), replica('a2', '10.0.0.12', TRAEFIK)]);
    const b = agent('b', [
      replica('b1', '10.1.0.11', TRAEFIK, 1800000000),
      replica('b2', '10.1.0.12', TRAEFIK, 1800000000),
    ]);
    expect(served([a, b])).toEqual(['api.example.com 10.0.0.11,10.0.0.12']);
    const errors = [...computeDesired([a, b]).outcomes.values()].flatMap((o) => o.errors);
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/already claimed/);
  });

  it('one container alone gets no group, and Berth labels never group by their labels', () => {
    expect(agent('a', [replica('r1', '10.0.0.11', CADDY)]).routes[0]?.lbGroup).toBeUndefined();
    const berth = { 'berth.host': 'b.example.com', 'berth.port': '80' };
    const a = agent('a', [replica('r1', '10.0.0.11', berth), replica('r2', '10.0.0.12', berth)]);
    expect(a.routes.map((r) => r.lbGroup)).toEqual([undefined, undefined]);
  });
});
