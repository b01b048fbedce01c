import { describe, expect, it } from 'vitest';
import type { RouteView } from '../../../src/model/api.js';
import type { RouteSpec, Snapshot } from '../../../src/model/types.js';
import type { Admitted, AgentView } from '../../../src/reconcile/policy.js';
import {
  type Applied,
  agentSummary,
  httpRouteStatus,
  keySummary,
  routeViews,
  tcpRouteStatus,
} from '../../../src/server/views.js';
import type { KeyRecord } from '../../../src/store/store.js';

const liveness = { heartbeatMs: 1_000, offlineGraceMs: 10_000 };
const none: Admitted = { agentRoutes: [], errors: new Map(), withheld: new Map() };

describe('httpRouteStatus', () => {
  const served = { served: (sig: string) => sig !== 'not-yet' };
  it.each([
    [
      'an error wins over everything',
      { errors: ['x'], withheld: false, notReady: false, signatures: ['a'], applied: served },
      'error',
    ],
    [
      'withheld agent',
      { errors: [], withheld: true, notReady: false, signatures: ['a'], applied: served },
      'pending',
    ],
    [
      'container not ready',
      { errors: [], withheld: false, notReady: true, signatures: ['a'], applied: served },
      'pending',
    ],
    ['nothing applied yet', { errors: [], withheld: false, notReady: false, signatures: ['a'] }, 'pending'],
    [
      'in no site',
      { errors: [], withheld: false, notReady: false, signatures: [], applied: served },
      'pending',
    ],
    [
      'one site not served yet',
      { errors: [], withheld: false, notReady: false, signatures: ['a', 'not-yet'], applied: served },
      'pending',
    ],
    [
      'every site served',
      { errors: [], withheld: false, notReady: false, signatures: ['a', 'b'], applied: served },
      'applied',
    ],
  ] as const)('%s', (_n, input, want) => {
    expect(httpRouteStatus({ ...input, signatures: [...input.signatures] })).toBe(want);
  });
});

describe('tcpRouteStatus', () => {
  it.each([
    [
      { errors: ['bind failed'], withheld: false, notReady: false, serving: true, listenerState: 'error' },
      'error',
    ],
    [{ errors: [], withheld: false, notReady: false, serving: true, listenerState: 'listening' }, 'applied'],
    [{ errors: [], withheld: false, notReady: false, serving: false, listenerState: 'listening' }, 'pending'],
    [{ errors: [], withheld: false, notReady: false, serving: true, listenerState: 'waiting' }, 'pending'],
    [{ errors: [], withheld: true, notReady: false, serving: true, listenerState: 'listening' }, 'pending'],
  ] as const)('%o → %s', (input, want) => {
    expect(tcpRouteStatus(input)).toBe(want);
  });
});

function view(over: Partial<AgentView> = {}): AgentView {
  return {
    record: {
      id: 'a1',
      name: 'host1',
      kind: 'remote',
      keyId: 'k1',
      approved: true,
      createdAt: 0,
      lastSeenAt: 0,
    },
    key: { id: 'k1', name: 'key1', hash: 'h', domains: [], autoApprove: false, createdAt: 0 },
    connected: true,
    lastHeartbeatAt: 9_750,
    ...over,
  };
}

describe('agentSummary', () => {
  it('counts routes and containers, rounds the heartbeat age, names the key', () => {
    const snapshot = {
      hostIp: '10.0.0.5',
      routes: [{}, {}],
      tcp: [{}],
      containers: [{}, {}, {}],
    } as unknown as Snapshot;
    expect(agentSummary({ view: view({ snapshot }) }, none, 10_000, liveness)).toEqual({
      id: 'a1',
      name: 'host1',
      kind: 'remote',
      status: 'online',
      approved: true,
      routes: 3,
      containers: 3,
      keyId: 'k1',
      keyName: 'key1',
      hostIp: '10.0.0.5',
      heartbeatAgeSeconds: 0.3,
    });
  });

  it('takes versions from another replica’s presence, says which replica holds it, and why it is withheld', () => {
    const withheld: Admitted = { ...none, withheld: new Map([['a1', 'the agent is pending approval']]) };
    const s = agentSummary(
      {
        view: view(),
        remote: { replica: 'r2', since: 0, version: '1.2.3', dockerVersion: '28.0' },
        replica: 'r2',
      },
      withheld,
      10_000,
      liveness,
    );
    expect(s).toMatchObject({
      version: '1.2.3',
      dockerVersion: '28.0',
      replica: 'r2',
      withheld: 'the agent is pending approval',
    });
  });

  it('shows the local agent online without a key, and never a replica for it', () => {
    const local = view({
      key: undefined,
      record: { id: 'local', name: 'box', kind: 'local', approved: true, createdAt: 0, lastSeenAt: 0 },
    });
    expect(agentSummary({ view: local, replica: 'r1' }, none, 10_000, liveness)).toMatchObject({
      kind: 'local',
      status: 'online',
    });
    expect(agentSummary({ view: local, replica: 'r1' }, none, 10_000, liveness).replica).toBeUndefined();
  });
});

describe('keySummary', () => {
  const k: KeyRecord = {
    id: 'k1',
    name: 'web',
    hash: 'secret-hash',
    domains: ['*.example.com'],
    autoApprove: true,
    createdAt: 0,
  };
  it('fills in the default limits, counts agents, never carries the hash', () => {
    const agents = [
      { id: 'a', keyId: 'k1' },
      { id: 'b', keyId: 'k2' },
      { id: 'c', keyId: 'k1' },
    ] as never;
    const s = keySummary(k, agents, 0);
    expect(s).toMatchObject({
      maxRoutes: 10_000,
      maxPending: 20,
      agents: 2,
      revoked: false,
      createdAt: '1970-01-01T00:00:00.000Z',
    });
    expect(JSON.stringify(s)).not.toContain('secret-hash');
  });
  it('says until when the old secret of a rotation is valid, only while it is', () => {
    const rotated = { ...k, previousHash: 'old', previousExpiresAt: 5_000 };
    expect(keySummary(rotated, [], 1_000).previousValidUntil).toBe('1970-01-01T00:00:05.000Z');
    expect(keySummary(rotated, [], 6_000).previousValidUntil).toBeUndefined();
  });
});

const route = (id: string, over: Partial<RouteSpec> = {}): RouteSpec => ({
  id: `${id}/default`,
  group: 'default',
  hosts: [`${id}.example.com`],
  path: '/',
  stripPath: false,
  upstream: { host: '10.0.0.5', port: 80, scheme: 'http' },
  containerId: id,
  containerName: `n-${id}`,
  containerCreated: 1,
  ...over,
});

describe('routeViews', () => {
  const snapshot: Snapshot = {
    agentId: 'a1',
    generation: 1,
    hostIp: '10.0.0.5',
    takenAt: 0,
    containers: [],
    routes: [
      route('zed'),
      route('alpha'),
      route('sick', { notReady: 'container is unhealthy' }),
      route('bad'),
    ],
    tcp: [
      {
        id: 'db/tcp/pg',
        name: 'pg',
        listen: 5432,
        upstream: { host: '10.0.0.5', port: 5432 },
        allow: [],
        containerId: 'db',
        containerName: 'db',
        containerCreated: 1,
      },
    ],
    diagnostics: [
      {
        severity: 'error',
        containerId: 'c9',
        containerName: 'broken',
        label: 'berth.port',
        value: 'x',
        message: 'expected a port',
      },
      {
        severity: 'error',
        containerId: 'c8',
        containerName: 'huge',
        label: '',
        message: 'refused by the server: route 0.hosts must NOT have more than 100 items',
      },
      { severity: 'warning', containerId: 'c7', containerName: 'fine', label: 'berth.x', message: 'odd' },
    ],
  };
  const applied: Applied = {
    sites: [
      {
        host: 'alpha.example.com',
        path: '/',
        stripPath: false,
        upstreams: [],
        routeKeys: ['a1:alpha/default'],
      },
      { host: 'zed.example.com', path: '/', stripPath: false, upstreams: [], routeKeys: ['a1:zed/default'] },
      { host: 'bad.example.com', path: '/', stripPath: false, upstreams: [], routeKeys: ['a1:bad/default'] },
    ],
    outcomes: new Map(),
    quarantined: new Map([['bad.example.com', 'unrecognized directive']]),
    served: (sig) => sig === 'alpha.example.com',
    signature: (s) => s.host,
    tcp: new Map([[5432, { routeKeys: ['a1:db/tcp/pg'], state: 'listening' }]]),
  };
  const admitted: Admitted = {
    ...none,
    errors: new Map([['a1:zed/default', ['zed.example.com is outside the domains allowed for key k']]]),
  };
  const agents = [{ id: 'a1', name: 'host1', snapshot }];

  it('gives each route its status and errors, in a stable order', () => {
    const v = routeViews({ agents, admitted, applied });
    expect(v.map((r) => [r.hosts[0] ?? `${r.listen ?? r.container.name}`, r.status])).toEqual([
      ['huge', 'error'],
      ['broken', 'error'],
      ['5432', 'applied'],
      ['alpha.example.com', 'applied'],
      ['bad.example.com', 'error'],
      ['sick.example.com', 'pending'],
      ['zed.example.com', 'error'],
    ]);
    expect(v.find((r) => r.hosts[0] === 'bad.example.com')!.errors).toEqual([
      'Caddy rejected this route: unrecognized directive',
    ]);
    expect(v.find((r) => r.hosts[0] === 'sick.example.com')!.note).toBe('container is unhealthy');
    expect(v.find((r) => r.container.name === 'broken')!.errors).toEqual([
      'container broken: label berth.port="x": expected a port',
    ]);
    expect(v.find((r) => r.container.name === 'huge')!.errors).toEqual([
      'container huge: refused by the server: route 0.hosts must NOT have more than 100 items',
    ]);
  });

  it("shows a tunnel agent's routes as tunnel:<agent>, with the addresses the agent dials", () => {
    const tunneled = [{ id: 'a1', name: 'host1', snapshot: { ...snapshot, tunnel: { maxStreams: 8 } } }];
    const v = routeViews({ agents: tunneled, admitted, applied });
    // Every route (not the rows of refused containers, which have no upstream).
    expect(new Set(v.filter((r) => r.upstreams.length > 0).map((r) => r.tunnel))).toEqual(
      new Set(['tunnel:host1']),
    );
    expect(routeViews({ agents, admitted, applied }).some((r) => r.tunnel)).toBe(false);
    const summary = agentSummary({ view: view({ snapshot: tunneled[0]!.snapshot }) }, none, 10_000, liveness);
    expect(summary.tunnel).toEqual({ maxStreams: 8 });
  });

  it('lists only routes with errors when asked, and shows every route pending before any pass', () => {
    expect(routeViews({ agents, admitted, applied }, { onlyErrors: true }).map((r) => r.status)).toEqual([
      'error',
      'error',
      'error',
      'error',
    ]);
    expect(
      new Set(
        routeViews({ agents, admitted: none })
          .filter((r) => r.kind === 'http' && r.hosts.length)
          .map((r) => r.status),
      ),
    ).toEqual(new Set(['pending']));
  });

  it('finds the same errors through its shortcut as the whole listing, however they arise', () => {
    const clean = { id: 'a2', name: 'host2', snapshot: { ...snapshot, agentId: 'a2', diagnostics: [] } };
    // Each way a2, otherwise clean, can have an error: a claim lost, its listener failed, its
    // site rejected by Caddy.
    const lost: Applied = {
      ...applied,
      outcomes: new Map([['a2:alpha/default', { errors: ['alpha.example.com is already claimed'] }]]),
    };
    const failedTcp: Applied = {
      ...applied,
      tcp: new Map([[5432, { routeKeys: ['a2:db/tcp/pg'], state: 'error', error: 'address in use' }]]),
    };
    const rejected: Applied = {
      ...applied,
      sites: applied.sites.map((x) =>
        x.host === 'bad.example.com' ? { ...x, routeKeys: ['a2:bad/default'] } : x,
      ),
    };
    for (const a of [applied, lost, failedTcp, rejected]) {
      const input = { agents: [...agents, clean], admitted, applied: a };
      const ids = (v: RouteView[]) => v.map((r) => `${r.agentId} ${r.kind} ${r.id}`).sort();
      expect(ids(routeViews(input, { onlyErrors: true }))).toEqual(
        ids(routeViews(input).filter((r) => r.status === 'error')),
      );
    }
  });

  it('says why a withheld agent’s routes do not serve', () => {
    const withheld: Admitted = { ...none, withheld: new Map([['a1', 'its key is revoked']]) };
    const v = routeViews({ agents, admitted: withheld, applied });
    expect(v.find((r) => r.hosts[0] === 'alpha.example.com')).toMatchObject({
      status: 'pending',
      note: 'not served: its key is revoked',
    });
  });
});
