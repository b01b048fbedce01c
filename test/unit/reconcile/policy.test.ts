import { describe, expect, it } from 'vitest';
import type { Snapshot } from '../../../src/model/types.js';
import { type AgentView, admitRoutes, agentStatus, domainAllowed } from '../../../src/reconcile/policy.js';

const o = { heartbeatMs: 1_000, offlineGraceMs: 10_000 };
const snapshot = (hosts: string[][]): Snapshot => ({
  agentId: 'a1',
  generation: 1,
  hostIp: '127.0.0.2',
  takenAt: 0,
  containers: [],
  diagnostics: [],
  routes: hosts.map((h, i) => ({
    id: `c${i}/default`,
    group: 'default',
    hosts: h,
    path: '/',
    stripPath: false,
    upstream: { host: '127.0.0.2', port: 80, scheme: 'http' },
    containerId: `c${i}`,
    containerName: `n${i}`,
    containerCreated: 1,
  })),
});

function view(over: Partial<AgentView> = {}, record: Partial<AgentView['record']> = {}): AgentView {
  return {
    record: {
      id: 'a1',
      name: 'host1',
      kind: 'remote',
      keyId: 'k1',
      approved: true,
      createdAt: 0,
      lastSeenAt: 0,
      ...record,
    },
    key: { id: 'k1', name: 'key1', hash: 'h', domains: [], autoApprove: false, createdAt: 0 },
    connected: true,
    lastHeartbeatAt: 100_000,
    snapshot: snapshot([['a.example.com']]),
    ...over,
  };
}

describe('domainAllowed', () => {
  it.each([
    ['a.example.com', ['*.example.com'], true],
    ['a.b.example.com', ['*.example.com'], true],
    ['*.example.com', ['*.example.com'], true],
    ['example.com', ['*.example.com'], false],
    ['badexample.com', ['*.example.com'], false],
    ['example.com', ['example.com'], true],
    ['x.example.com', ['example.com'], false],
    ['anything.test', [], true],
  ])('%s under %j → %s', (host, domains, ok) => {
    expect(domainAllowed(host, domains as string[])).toBe(ok);
  });
});

describe('agentStatus', () => {
  it('orders revoked > pending > offline > stale > online', () => {
    const now = 100_500;
    expect(agentStatus(view(), now, o)).toBe('online');
    expect(agentStatus(view(), 104_000, o)).toBe('stale');
    expect(agentStatus(view({ connected: false }), now, o)).toBe('offline');
    expect(agentStatus(view({}, { approved: false }), now, o)).toBe('pending');
    const revoked = view();
    revoked.key = { ...revoked.key!, revokedAt: 1 };
    expect(agentStatus(revoked, now, o)).toBe('revoked');
    expect(agentStatus(view({ heartbeatMs: 10_000 }), 104_000, o)).toBe('online');
  });
});

describe('admitRoutes', () => {
  it('serves an offline agent within the grace and withholds it after', () => {
    const v = view({ connected: false, disconnectedAt: 50_000 });
    expect(admitRoutes([v], 55_000, o).agentRoutes[0]!.routes).toHaveLength(1);
    const later = admitRoutes([v], 61_000, o);
    expect(later.agentRoutes).toEqual([]);
    expect(later.withheld.get('a1')).toMatch(/offline for 11 s/);
  });

  it('rejects only the routes whose hosts fall outside the key', () => {
    const v = view({ snapshot: snapshot([['a.example.com'], ['a.example.com', 'evil.test']]) });
    v.key = { ...v.key!, domains: ['*.example.com'] };
    const r = admitRoutes([v], 100_000, o);
    expect(r.agentRoutes[0]!.routes.map((x) => x.id)).toEqual(['c0/default']);
    expect(r.errors.get('a1:c1/default')).toEqual([
      'evil.test is outside the domains allowed for key key1 (*.example.com)',
    ]);
  });

  it('withholds pending and revoked agents', () => {
    expect(admitRoutes([view({}, { approved: false })], 100_000, o).withheld.get('a1')).toMatch(
      /pending approval/,
    );
  });
});

describe('admitRoutes: what no key allows', () => {
  const now = 100_500;
  it('refuses a wildcard over a public suffix on that route alone', () => {
    const v = view({
      snapshot: snapshot([['*.com'], ['*.co.uk', 'ok.example.com'], ['*.example.com'], ['*.github.io']]),
    });
    const r = admitRoutes([v], now, o);
    expect(r.agentRoutes[0]!.routes.map((x) => x.id)).toEqual(['c2/default']);
    expect(r.errors.get('a1:c0/default')).toEqual([
      '*.com would claim every name under the public suffix com; no agent may claim that',
    ]);
    expect(r.errors.get('a1:c1/default')![0]).toMatch(/public suffix co\.uk/);
    expect(r.errors.get('a1:c3/default')![0]).toMatch(/public suffix github\.io/);
  });

  it('refuses the UI host (--ui-host) on that route alone, whatever its case', () => {
    const v = view({
      snapshot: snapshot([['Berth.Example.com'], ['a.example.com'], ['x.test', 'berth.example.com']]),
    });
    const r = admitRoutes([v], now, { ...o, reservedHosts: new Set(['berth.example.com']) });
    expect(r.agentRoutes[0]!.routes.map((x) => x.id)).toEqual(['c1/default']);
    expect(r.errors.get('a1:c0/default')).toEqual([
      'Berth.Example.com is where Berth serves its own API and UI (--ui-host); no agent may claim it',
    ]);
    expect(r.errors.get('a1:c2/default')![0]).toMatch(/^berth\.example\.com is where Berth serves/);
  });

  it('refuses upstreams that are not the agent’s host, with the rules it is given', () => {
    const rules = {
      protected: [{ host: '127.0.0.1', port: 7080, what: 'admin API' }],
      localAddresses: new Set<string>(),
    };
    const s = snapshot([['a.example.com'], ['b.example.com']]);
    s.routes[1]!.upstream = { host: '169.254.169.254', port: 80, scheme: 'http' };
    const v = view({ snapshot: s }, { seenFrom: '127.0.0.2' });
    const r = admitRoutes([v], now, { ...o, upstreams: rules });
    expect(r.agentRoutes[0]!.routes.map((x) => x.id)).toEqual(['c0/default']);
    expect(r.errors.get('a1:c1/default')![0]).toMatch(/metadata/);
  });

  it("refuses a TCP route on one of the server's own ports of this machine, on that route alone", () => {
    const rules = {
      protected: [
        { port: 443, what: 'front door' },
        { host: '127.0.0.1', port: 7080, what: 'admin API (--api-listen)' },
        { host: '0.0.0.0', port: 7443, what: 'agent listener (--agent-listen)' },
        { host: '10.9.9.9', port: 6379, what: 'store (Redis)' },
      ],
      localAddresses: new Set<string>(['127.0.0.1']),
    };
    const s = snapshot([['a.example.com']]);
    s.routes[0]!.upstream = { host: '127.0.0.2', port: 80, scheme: 'http' };
    const tcp = (listen: number, i: number) => ({
      id: `c${i}/tcp/t${listen}`,
      name: `t${listen}`,
      listen,
      upstream: { host: '127.0.0.2', port: 5432 },
      allow: [],
      containerId: `c${i}`,
      containerName: `n${i}`,
      containerCreated: 1,
    });
    s.tcp = [tcp(443, 10), tcp(7080, 11), tcp(7443, 12), tcp(6379, 13), tcp(5432, 14)];
    const v = view({ snapshot: s }, { seenFrom: '127.0.0.2' });
    const r = admitRoutes([v], now, { ...o, upstreams: rules });
    // A remote store's port is no conflict here; the route of the other container is untouched.
    expect(r.agentRoutes[0]!.tcp.map((x) => x.listen)).toEqual([6379, 5432]);
    expect(r.agentRoutes[0]!.routes.map((x) => x.id)).toEqual(['c0/default']);
    expect(r.errors.get('a1:c10/tcp/t443')).toEqual([
      "TCP port 443 is this server's own front door; no TCP route may listen there",
    ]);
    expect(r.errors.get('a1:c11/tcp/t7080')![0]).toMatch(/own admin API/);
    expect(r.errors.get('a1:c12/tcp/t7443')![0]).toMatch(/own agent listener/);
  });

  it('serves no more routes than the key allows, whole containers, first claims first', () => {
    const s = snapshot([['a.example.com'], ['b.example.com'], ['c.example.com']]);
    s.claims = {
      'a.example.com\u0000/': { since: 30 },
      'b.example.com\u0000/': { since: 10 },
      'c.example.com\u0000/': { since: 20 },
    };
    const v = view({ snapshot: s });
    v.key!.maxRoutes = 2;
    const r = admitRoutes([v], now, o);
    expect(r.agentRoutes[0]!.routes.map((x) => x.id).sort()).toEqual(['c1/default', 'c2/default']);
    expect(r.errors.get('a1:c0/default')![0]).toMatch(
      /the agent has 3 routes and key key1 allows 2 per agent/,
    );
  });

  it('gives each agent its key as the scope it may share groups in, and its domains as grants', () => {
    const v = view();
    v.key!.domains = ['*.example.com'];
    const r = admitRoutes([v], now, o);
    expect(r.agentRoutes[0]).toMatchObject({ scope: 'k1', grants: ['*.example.com'] });
  });
});

describe('admission of a tunnel agent', () => {
  const tunnelSnapshot = (): Snapshot => ({
    ...snapshot([['t.example.com']]),
    hostIp: '127.0.0.1',
    routes: snapshot([['t.example.com']]).routes.map((r) => ({
      ...r,
      upstream: { host: '127.0.0.1', port: 8080, scheme: 'http' as const },
    })),
    tcp: [
      {
        id: 'c0/tcp/db',
        name: 'db',
        listen: 5432,
        upstream: { host: '127.0.0.1', port: 5432 },
        allow: [],
        containerId: 'c0',
        containerName: 'n0',
        containerCreated: 1,
      },
    ],
    tunnel: { maxStreams: 64 },
  });
  const asked: { agentId: string; upstreams: { host: string; port: number }[]; maxStreams: number }[] = [];
  const tunnels = {
    endpoints(agentId: string, upstreams: readonly { host: string; port: number }[], maxStreams: number) {
      asked.push({ agentId, upstreams: [...upstreams], maxStreams });
      return (_h: string, port: number) => ({ host: '127.77.0.9', port: 40000 + (port % 1000) });
    },
  };
  const rules = { protected: [], localAddresses: new Set(['127.0.0.1']) };

  it("points its routes at this server's endpoints, checked as addresses on the agent's side", () => {
    const a = admitRoutes([view({ snapshot: tunnelSnapshot() }, { seenFrom: '10.9.0.7' })], 100_000, {
      ...o,
      upstreams: rules,
      tunnels,
    });
    expect(a.errors.size).toBe(0);
    const entry = a.agentRoutes[0]!;
    expect(entry.routes[0]!.upstream).toEqual({ host: '127.77.0.9', port: 40080, scheme: 'http' });
    expect(entry.tcp![0]!.upstream).toEqual({ host: '127.77.0.9', port: 40432 });
    expect(asked.at(-1)).toEqual({
      agentId: 'a1',
      upstreams: [
        { host: '127.0.0.1', port: 8080, scheme: 'http' },
        { host: '127.0.0.1', port: 5432 },
      ],
      maxStreams: 64,
    });
  });

  it('checks an https upstream for the address the agent dials, and takes no such name from the agent', () => {
    const s = tunnelSnapshot();
    s.routes = s.routes.map((r) => ({
      ...r,
      // What an agent sends is never the name checked: the server sets it from the upstream itself.
      upstream: { host: '127.0.0.1', port: 8443, scheme: 'https' as const, tlsServerName: 'evil.example' },
    }));
    const a = admitRoutes([view({ snapshot: s }, { seenFrom: '10.9.0.7' })], 100_000, {
      ...o,
      upstreams: rules,
      tunnels,
    });
    expect(a.errors.size).toBe(0);
    expect(a.agentRoutes[0]!.routes[0]!.upstream).toEqual({
      host: '127.77.0.9',
      port: 40443,
      scheme: 'https',
      tlsServerName: '127.0.0.1',
    });
  });

  it('refuses its routes, saying why, on a server without tunnel endpoints', () => {
    const a = admitRoutes([view({ snapshot: tunnelSnapshot() }, { seenFrom: '10.9.0.7' })], 100_000, {
      ...o,
      upstreams: rules,
    });
    expect(a.agentRoutes[0]!.routes).toEqual([]);
    expect([...a.errors.values()].flat()).toContain(
      'the agent tunnels its routes (--tunnel) and this server has no tunnel endpoints',
    );
  });

  it('without --tunnel, the same upstream on another host is refused as before', () => {
    const s = { ...tunnelSnapshot(), tunnel: undefined };
    const a = admitRoutes([view({ snapshot: s }, { seenFrom: '10.9.0.7' })], 100_000, {
      ...o,
      upstreams: rules,
      tunnels,
    });
    expect([...a.errors.values()].flat().join(' ')).toMatch(/not this agent's host/);
  });
});
