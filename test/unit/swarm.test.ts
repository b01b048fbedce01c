// Swarm services → routes (agent side) and who may speak for a swarm (server side), table tests.
import { describe, expect, it } from 'vitest';
import { type SwarmService, type SwarmState, type SwarmTask, serviceRoutes } from '../../src/agent/swarm.js';
import { parseAgentMessage } from '../../src/model/protocol.js';
import type { ContainerSummary, RouteSpec, Snapshot, SwarmInfo } from '../../src/model/types.js';
import { type AgentView, admitRoutes } from '../../src/reconcile/policy.js';
import { nextSwarm, swarmSpeakers } from '../../src/reconcile/swarm.js';
import { routeViews } from '../../src/server/views.js';

const ctx = { hostIp: '10.0.0.1', labelPrefix: 'berth' };

const svc = (over: Partial<SwarmService> = {}): SwarmService => ({
  id: 'svc1',
  name: 'web',
  created: 1_700_000_000,
  labels: { 'berth.host': 'web.test', 'berth.port': '8080' },
  ports: [],
  vips: { overlay1: '10.9.0.5' },
  hostNetwork: true,
  ...over,
});

const task = (id: string, nodeId: string, over: Partial<SwarmTask> = {}): SwarmTask => ({
  id,
  serviceId: 'svc1',
  slot: Number(id.replace(/\D/g, '')) || 1,
  nodeId,
  state: 'running',
  desiredState: 'running',
  ports: [],
  ...over,
});

const state = (over: Partial<SwarmState> = {}): SwarmState => ({
  clusterId: 'cl1',
  nodeId: 'n1',
  nodeName: 'one',
  manager: true,
  leader: true,
  nodes: [
    { id: 'n1', hostname: 'one', addr: '10.0.0.1', state: 'ready', leader: true },
    { id: 'n2', hostname: 'two', addr: '10.0.0.2', state: 'ready', leader: false },
  ],
  services: [svc()],
  tasks: [task('t1', 'n1'), task('t2', 'n2')],
  ...over,
});

const upstreams = (rs: RouteSpec[]) => rs.map((r) => `${r.upstream.host}:${r.upstream.port}`).sort();

describe('serviceRoutes', () => {
  it('routes each running task on its node (its own node at the agent host IP), one load-balancing group', () => {
    const r = serviceRoutes(state({ tasks: [task('t1', 'n1'), task('t2', 'n2')] }), {
      ...ctx,
      hostIp: '192.168.1.1',
    });
    expect(upstreams(r.routes)).toEqual(['10.0.0.2:8080', '192.168.1.1:8080']);
    expect(new Set(r.routes.map((x) => x.lbGroup))).toEqual(new Set(['swarm:cl1:svc1']));
    expect(r.routes.map((x) => x.swarm)).toEqual([
      { serviceId: 'svc1', service: 'web', task: 't1', node: 'n1' },
      { serviceId: 'svc1', service: 'web', task: 't2', node: 'n2' },
    ]);
    expect(r.routes.map((x) => x.containerName)).toEqual(['web.1', 'web.2']);
    expect(r.swarm).toMatchObject({ clusterId: 'cl1', leader: true });
    expect(r.swarm.services?.[0]).toMatchObject({ name: 'web', labelled: true });
    expect(r.swarm.services?.[0]?.explain?.dialect).toBe('berth');
  });

  it('keeps out tasks that are not running or are told to shut down', () => {
    const r = serviceRoutes(
      state({
        tasks: [
          task('t1', 'n1', { state: 'starting' }),
          task('t2', 'n2', { desiredState: 'shutdown' }),
          task('t3', 'n2'),
        ],
      }),
      ctx,
    );
    expect(r.routes.map((x) => x.swarm?.task)).toEqual(['t3']);
  });

  it('uses a published host-mode port of the task, else its node for the host network', () => {
    const bridge = svc({ hostNetwork: false, ports: [{ target: 8080, published: 30080, mode: 'host' }] });
    const r = serviceRoutes(
      state({
        services: [bridge],
        tasks: [
          task('t1', 'n2', { ports: [{ target: 8080, published: 31000, mode: 'host' }] }),
          task('t2', 'n2'),
        ],
      }),
      ctx,
    );
    expect(upstreams(r.routes)).toEqual(['10.0.0.2:30080', '10.0.0.2:31000']);
    // An ingress-published port only reaches the task through the routing mesh: not a task upstream.
    const mesh = svc({ hostNetwork: false, ports: [{ target: 8080, published: 30080, mode: 'ingress' }] });
    const m = serviceRoutes(state({ services: [mesh], tasks: [task('t1', 'n2')] }), ctx);
    expect(m.routes).toEqual([]);
    expect(m.diagnostics.map((d) => d.message).join()).toMatch(/port 8080 is not published/);
  });

  it('reads every dialect on a service', () => {
    const cases: [Record<string, string>, string][] = [
      [{ caddy: 'c.test', 'caddy.reverse_proxy': '{{upstreams 8080}}' }, 'c.test'],
      [
        {
          'traefik.enable': 'true',
          'traefik.http.routers.r.rule': 'Host(`t.test`)',
          'traefik.http.services.r.loadbalancer.server.port': '8080',
        },
        't.test',
      ],
      [
        {
          'dockflare.enable': 'true',
          'dockflare.hostname': 'd.test',
          'dockflare.service': 'http://web:8080',
        },
        'd.test',
      ],
    ];
    for (const [labels, host] of cases) {
      const r = serviceRoutes(state({ services: [svc({ labels })], tasks: [task('t1', 'n2')] }), ctx);
      expect(r.routes.map((x) => [x.hosts, `${x.upstream.host}:${x.upstream.port}`])).toEqual([
        [[host], '10.0.0.2:8080'],
      ]);
    }
  });

  it('sends the service to its VIP with --swarm-upstream vip, or with Traefik lbswarm', () => {
    const vip = serviceRoutes(state({ services: [svc({ hostNetwork: false })] }), ctx, 'vip');
    expect(upstreams(vip.routes)).toEqual(['10.9.0.5:8080']);
    expect(vip.routes[0]?.swarm).toEqual({ serviceId: 'svc1', service: 'web' });
    const lb = svc({
      hostNetwork: false,
      labels: {
        'traefik.http.routers.r.rule': 'Host(`t.test`)',
        'traefik.http.services.r.loadbalancer.server.port': '8080',
        'traefik.swarm.lbswarm': 'true',
      },
    });
    const t = serviceRoutes(state({ services: [lb] }), ctx, 'task');
    expect(upstreams(t.routes)).toEqual(['10.9.0.5:8080']);
    const used = t.swarm.services?.[0]?.explain?.labels.find((l) => l.key === 'traefik.swarm.lbswarm');
    expect(used).toMatchObject({ use: 'used' });
  });

  it('reports no services on a manager that is not the leader, and a labelled service without tasks', () => {
    const follower = serviceRoutes(state({ leader: false }), ctx);
    expect(follower.routes).toEqual([]);
    expect(follower.swarm.services).toBeUndefined();
    const idle = serviceRoutes(state({ tasks: [] }), ctx);
    expect(idle.routes).toEqual([]);
    expect(idle.diagnostics[0]?.message).toMatch(/no running task/);
  });

  it('builds snapshots the server accepts, and the server drops its own fields from an agent', () => {
    const r = serviceRoutes(state(), ctx);
    const snap: Snapshot = {
      agentId: 'a',
      generation: 1,
      hostIp: '10.0.0.1',
      takenAt: 1,
      containers: [],
      routes: r.routes,
      diagnostics: r.diagnostics,
      swarm: { ...r.swarm, leaderSince: 1, heldSince: 5 },
    };
    const m = parseAgentMessage(JSON.stringify({ type: 'snapshot', snapshot: snap }));
    expect(m.type === 'snapshot' && m.snapshot.routes.length).toBe(2);
    expect(m.type === 'snapshot' && m.snapshot.swarm).not.toHaveProperty('leaderSince');
    expect(m.type === 'snapshot' && m.snapshot.swarm).not.toHaveProperty('heldSince');
    const bad = { ...snap, swarm: { ...r.swarm, nodes: 'all of them' } };
    expect(() => parseAgentMessage(JSON.stringify({ type: 'snapshot', snapshot: bad }))).toThrow(
      /swarm.*nodes/,
    );
    // A bad service is refused alone, with its routes; the rest of the snapshot stands.
    const other = {
      ...r.routes[0]!,
      id: 'x1/default',
      containerId: 'x1',
      containerName: 'api.1',
      swarm: { serviceId: 'svc2', service: 'api' },
    };
    const hostile = {
      ...snap,
      routes: [...r.routes, other],
      swarm: {
        ...r.swarm,
        services: [
          ...(r.swarm.services ?? []),
          {
            id: 'svc2',
            name: 'api',
            labelled: true,
            tasks: [{ id: 't9', node: 'n2', state: 'running', slot: -1 }],
          },
        ],
      },
    };
    const m2 = parseAgentMessage(JSON.stringify({ type: 'snapshot', snapshot: hostile }));
    if (m2.type !== 'snapshot') throw new Error('not a snapshot');
    expect(m2.snapshot.swarm?.services?.map((x) => x.id)).toEqual(['svc1']);
    expect(m2.snapshot.routes.map((x) => x.id).sort()).toEqual(['t1/default', 't2/default']);
    expect(m2.refused?.map((d) => [d.containerId, d.containerName])).toEqual([
      ['svc2', 'api'],
      ['x1', 'api.1'],
    ]);
    expect(m2.refused?.[0]?.message).toMatch(/swarm service\.tasks\.0\.slot must be >= 0/);
    expect(m2.refused?.[1]?.message).toMatch(/its service svc2 is not in the snapshot or was refused/);
  });
});

const sw = (over: Partial<SwarmInfo> = {}): SwarmInfo => ({
  clusterId: 'cl1',
  nodeId: 'n1',
  nodeName: 'one',
  manager: true,
  leader: true,
  ...over,
});

describe('swarmSpeakers and nextSwarm', () => {
  it('picks the latest leader, a leader over a held view, and drops held views past the grace', () => {
    const pick = (c: { agentId: string; swarm: SwarmInfo }[], now = 100) =>
      swarmSpeakers(c, now, 50).get('cl1');
    expect(
      pick([
        { agentId: 'a', swarm: sw({ leaderSince: 10 }) },
        { agentId: 'b', swarm: sw({ leaderSince: 20 }) },
      ]),
    ).toBe('b');
    expect(
      pick([
        { agentId: 'a', swarm: sw({ leader: false, leaderSince: 30, heldSince: 90 }) },
        { agentId: 'b', swarm: sw({ leaderSince: 20 }) },
      ]),
    ).toBe('b');
    expect(pick([{ agentId: 'a', swarm: sw({ leader: false, leaderSince: 30, heldSince: 90 }) }])).toBe('a');
    expect(
      pick([{ agentId: 'a', swarm: sw({ leader: false, leaderSince: 30, heldSince: 10 }) }]),
    ).toBeUndefined();
    expect(pick([{ agentId: 'a', swarm: sw({ leader: false }) }])).toBeUndefined();
  });

  it('holds a former leader’s service routes until another leader speaks or the grace ends', () => {
    const route = {
      id: 't1/default',
      swarm: { serviceId: 's', service: 'web', task: 't1', node: 'n1' },
    } as RouteSpec;
    const mine = { id: 'c1/default' } as RouteSpec;
    const snap = (s: SwarmInfo, routes: RouteSpec[] = []) =>
      ({
        agentId: 'a',
        generation: 1,
        hostIp: '',
        takenAt: 0,
        containers: [],
        diagnostics: [],
        routes,
        swarm: s,
      }) as Snapshot;
    const first = nextSwarm(undefined, snap(sw()), 100, 50, () => false);
    expect(first.swarm?.leaderSince).toBe(100);
    const again = nextSwarm(snap(first.swarm!, [route]), snap(sw()), 120, 50, () => false);
    expect(again.swarm?.leaderSince).toBe(100);
    const lost = nextSwarm(
      snap(again.swarm!, [route, mine]),
      snap(sw({ leader: false }), [mine]),
      130,
      50,
      () => false,
    );
    expect(lost.swarm).toMatchObject({ leader: false, leaderSince: 100, heldSince: 130 });
    expect(lost.carried).toEqual([route]);
    const still = nextSwarm(snap(lost.swarm!, [route]), snap(sw({ leader: false })), 170, 50, () => false);
    expect(still.swarm?.heldSince).toBe(130);
    expect(
      nextSwarm(snap(lost.swarm!, [route]), snap(sw({ leader: false })), 181, 50, () => false).carried,
    ).toEqual([]);
    expect(
      nextSwarm(snap(lost.swarm!, [route]), snap(sw({ leader: false })), 140, 50, () => true).carried,
    ).toEqual([]);
  });
});

describe('admitting service routes', () => {
  const o = {
    heartbeatMs: 1_000,
    offlineGraceMs: 10_000,
    upstreams: { protected: [], localAddresses: new Set<string>() },
  };
  const taskRoute = (task: string, node: string, host: string): RouteSpec => ({
    id: `${task}/default`,
    group: 'default',
    hosts: ['web.test'],
    path: '/',
    stripPath: false,
    upstream: { host, port: 8080, scheme: 'http' },
    lbGroup: 'swarm:cl1:svc1',
    containerId: task,
    containerName: 'web.1',
    containerCreated: 1,
    swarm: { serviceId: 'svc1', service: 'web', task, node },
  });
  const taskContainer = (task: string, over: Partial<ContainerSummary> = {}): ContainerSummary => ({
    id: `ctr-${task}`,
    name: `web.1.${task}`,
    service: 'web',
    task,
    state: 'running',
    health: 'none',
    labelled: false,
    ...over,
  });
  const agent = (
    id: string,
    seenFrom: string,
    swarm: SwarmInfo,
    routes: RouteSpec[] = [],
    containers: ContainerSummary[] = [],
    keyId = 'k1',
  ): AgentView => ({
    record: { id, name: id, kind: 'remote', keyId, approved: true, createdAt: 0, lastSeenAt: 0, seenFrom },
    key: { id: keyId, name: keyId, hash: 'h', domains: [], autoApprove: true, createdAt: 0 },
    connected: true,
    lastHeartbeatAt: 100_000,
    snapshot: {
      agentId: id,
      generation: 1,
      hostIp: seenFrom,
      takenAt: 0,
      containers,
      diagnostics: [],
      routes,
      swarm,
    },
  });
  const served = (views: AgentView[]) => {
    const a = admitRoutes(views, 100_000, o);
    return {
      routes: a.agentRoutes.flatMap((x) =>
        x.routes.map((r) => `${x.agentId}:${r.upstream.host}${r.notReady ? ' (not ready)' : ''}`),
      ),
      errors: [...a.errors.values()].flat(),
    };
  };
  const leader = sw({
    leaderSince: 5,
    nodes: [{ id: 'n2', hostname: 'two', addr: '10.0.0.2', state: 'ready' }],
  });
  const worker = sw({ clusterId: '', nodeId: 'n2', nodeName: 'two', manager: false, leader: false });

  it('serves a task route once the agent on the task’s node reports the task', () => {
    const lead = agent('lead', '10.0.0.1', leader, [taskRoute('t2', 'n2', '10.0.0.2')]);
    expect(served([lead]).errors.join()).toMatch(/runs on node two, which has no connected agent/);
    const w = agent('w', '10.0.0.2', worker);
    expect(served([lead, w]).errors.join()).toMatch(/agent on node two \(w\) does not report task t2/);
    expect(served([lead, agent('w', '10.0.0.2', worker, [], [taskContainer('t2')])]).routes).toEqual([
      'lead:10.0.0.2',
    ]);
    const starting = agent('w', '10.0.0.2', worker, [], [taskContainer('t2', { health: 'starting' })]);
    expect(served([lead, starting]).routes).toEqual(['lead:10.0.0.2 (not ready)']);
  });

  it('refuses what a hostile manager claims: addresses its peers may not name, nodes of another key', () => {
    const w = agent('w', '10.0.0.2', worker, [], [taskContainer('t2')]);
    // The task is real, but the upstream is not the node's address.
    const lying = agent('lead', '10.0.0.1', leader, [taskRoute('t2', 'n2', '10.0.0.99')]);
    expect(served([lying, w]).routes).toEqual([]);
    expect(served([lying, w]).errors.join()).toMatch(
      /10\.0\.0\.99:8080 is not this agent's host.*checked as agent w on node two/,
    );
    // A node agent enrolled with another key does not vouch for this manager.
    const otherKey = agent('w', '10.0.0.2', worker, [], [taskContainer('t2')], 'k2');
    expect(
      served([agent('lead', '10.0.0.1', leader, [taskRoute('t2', 'n2', '10.0.0.2')]), otherKey]).routes,
    ).toEqual([]);
    // An agent of another key claiming to lead the same swarm, later, silences no one.
    const good = agent('lead', '10.0.0.1', leader, [taskRoute('t2', 'n2', '10.0.0.2')]);
    const rival = agent(
      'rival',
      '10.0.0.9',
      { ...leader, leaderSince: 50 },
      [taskRoute('t2', 'n2', '10.0.0.2')],
      [],
      'k2',
    );
    const s = served([good, rival, w]);
    expect(s.routes).toEqual(['lead:10.0.0.2']);
    expect(s.errors.join()).toMatch(/runs on node two, which has no connected agent of this swarm and key/);
    // Metadata addresses stay refused whoever vouches.
    const meta = agent('lead', '10.0.0.1', leader, [taskRoute('t2', 'n2', '169.254.169.254')]);
    expect(served([meta, w]).routes).toEqual([]);
  });

  it('serves one speaker’s service routes only, and a held view until the new leader speaks', () => {
    const w = agent('w', '10.0.0.2', worker, [], [taskContainer('t2')]);
    const r = [taskRoute('t2', 'n2', '10.0.0.2')];
    const old = agent('old', '10.0.0.1', { ...leader, leader: false, leaderSince: 5, heldSince: 99_000 }, r);
    expect(served([old, w]).routes).toEqual(['old:10.0.0.2']);
    const now = agent('new', '10.0.0.3', { ...leader, nodeId: 'n3', leaderSince: 99_500 }, r);
    expect(served([old, now, w]).routes).toEqual(['new:10.0.0.2']);
    // Two agents both claiming to lead: the later leader only, never both.
    const both = agent('old', '10.0.0.1', leader, r);
    expect(served([both, now, w]).routes).toEqual(['new:10.0.0.2']);
    // `berth routes` shows the speaker's service routes only, not a held view beside them.
    const views = [old, now, w];
    const shown = routeViews({
      agents: views.map((v) => ({ id: v.record.id, name: v.record.name, snapshot: v.snapshot! })),
      admitted: admitRoutes(views, 100_000, o),
    });
    expect(shown.map((v) => v.agentId)).toEqual(['new']);
  });

  it('leaves a task container’s own routing labels out when its service’s labels route it', () => {
    const own: RouteSpec = {
      ...taskRoute('x', 'n2', '10.0.0.2'),
      id: 'ctr-t2/default',
      containerId: 'ctr-t2',
    };
    delete own.swarm;
    const lead = agent(
      'lead',
      '10.0.0.1',
      {
        ...leader,
        services: [
          { id: 'svc1', name: 'web', labelled: true, tasks: [{ id: 't2', node: 'n2', state: 'running' }] },
        ],
      },
      [taskRoute('t2', 'n2', '10.0.0.2')],
    );
    const w = agent('w', '10.0.0.2', worker, [{ ...own, hosts: ['own.test'] }], [taskContainer('t2')]);
    const s = served([lead, w]);
    expect(s.routes).toEqual(['lead:10.0.0.2']);
    expect(s.errors.join()).toMatch(/task of Swarm service web, whose service labels route it/);
  });
});
