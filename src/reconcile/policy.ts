// Which agents' routes may reach the front door, which hostnames each may claim and where
// their traffic may go. Pure.
import type { AgentStatus } from '../model/api.js';
import { domainAllowed, publicSuffixWildcard } from '../model/domains.js';
import { drain, pauseEvery } from '../model/slices.js';
import type { TunnelEndpoints } from '../model/tunnel.js';
import type { ContainerSummary, RouteSpec, Snapshot, TcpRouteSpec, Upstream } from '../model/types.js';
import type { AgentRecord, KeyRecord } from '../store/store.js';
import { claimedSince, httpUnit, tcpUnit } from './claims.js';
import { type AgentRoutes, routeKey } from './desired.js';
import { swarmSpeakers } from './swarm.js';
import { listenRefusal, type UpstreamRules, upstreamChecker } from './upstreams.js';

/** Routes (HTTP and TCP) one agent may have served, unless its key says otherwise. */
export const DEFAULT_MAX_ROUTES_PER_AGENT = 10_000;

export type { AgentStatus };

export interface AgentView {
  record: AgentRecord;
  key?: KeyRecord;
  snapshot?: Snapshot;
  connected: boolean;
  lastHeartbeatAt?: number;
  /** The agent's own report interval, when it told us. */
  heartbeatMs?: number;
  /** When the connection ended, or when this server started for agents not yet back. */
  disconnectedAt?: number;
}

export interface LivenessOptions {
  /** The agents' report interval: two missed heartbeats make an agent stale. */
  heartbeatMs: number;
  /** How long an offline agent's routes stay at the front door. */
  offlineGraceMs: number;
  /** Where routes may point; without it upstreams are not checked (unit tests of other rules). */
  upstreams?: UpstreamRules;
  /** Hostnames Berth serves itself (`--ui-host`), lower case: no agent may claim them. */
  reservedHosts?: ReadonlySet<string>;
  /** Local endpoints for tunnel agents' upstreams; without it a tunnel agent's routes are refused. */
  tunnels?: TunnelEndpoints;
}

export function agentStatus(a: AgentView, now: number, o: LivenessOptions): AgentStatus {
  // The agent of `berth standalone` is part of the server: no key to revoke, nothing to approve.
  if (a.record.kind !== 'local') {
    if (!a.key || a.key.revokedAt !== undefined) return 'revoked';
    if (!a.record.approved) return 'pending';
  }
  if (!a.connected) return 'offline';
  const last = a.lastHeartbeatAt ?? 0;
  return now - last > 2 * (a.heartbeatMs ?? o.heartbeatMs) + 1_000 ? 'stale' : 'online';
}

/** Why an agent's routes are withheld, or undefined when they serve. */
export function withheldBecause(a: AgentView, now: number, o: LivenessOptions): string | undefined {
  const status = agentStatus(a, now, o);
  if (status === 'revoked') return 'its key is revoked';
  if (status === 'pending') return 'the agent is pending approval (berth agents approve)';
  if (status === 'offline') {
    const since = a.disconnectedAt ?? 0;
    if (now - since > o.offlineGraceMs) {
      return `the agent has been offline for ${Math.round((now - since) / 1000)} s, longer than the offline grace`;
    }
  }
  return undefined;
}

export { domainAllowed };

export interface Admitted {
  agentRoutes: AgentRoutes[];
  /** Route key → why it is not served (domain policy). */
  errors: RouteErrors;
  /** Agent id → why none of its routes are served. */
  withheld: Map<string, string>;
  /** Agents whose swarm service routes serve, one per swarm and key (others' are not shown either). */
  swarmSpeakers?: Set<string>;
}

/** What admission decided for one agent. */
export interface AgentAdmission {
  agentId: string;
  /** Its routes that may serve; absent when none may (withheld, or no snapshot). */
  entry?: AgentRoutes;
  /** Route key → why it is not served. */
  errors: ReadonlyMap<string, string[]>;
  /** Why none of its routes are served. */
  withheld?: string;
}

/**
 * Keeps only routes that may serve: from agents that are approved, unrevoked and online (or
 * within the offline grace), only for hostnames their key allows (never a wildcard over a public
 * suffix), only to upstreams the agent may name, and no more than its key's route limit. A
 * refused claim is an error on that route alone.
 */
export function admitRoutes(agents: AgentView[], now: number, o: LivenessOptions): Admitted {
  const swarm = swarmContext(agents, now, o);
  return combine(
    agents.map((a) => admitAgent(a, now, o, swarm)),
    swarm,
  );
}

/**
 * One agent's admission: what admitRoutes does for each agent. An agent in a swarm also depends on
 * the others of its swarm (`swarm`, from swarmContext over every agent); any other does not.
 */
export function admitAgent(
  a: AgentView,
  now: number,
  o: LivenessOptions,
  swarm: SwarmContext = NO_SWARM,
): AgentAdmission {
  return drain(admissionSteps(a, now, o, swarm));
}

/** As admitAgent, with pause points: an agent's 10k routes and more are then checked in slices. */
export function* admissionSteps(
  a: AgentView,
  now: number,
  o: LivenessOptions,
  swarm: SwarmContext = NO_SWARM,
): Generator<void, AgentAdmission> {
  const pause = pauseEvery();
  const agentId = a.record.id;
  if (!a.snapshot) return { agentId, errors: NO_ERRORS };
  const why = withheldBecause(a, now, o);
  if (why) return { agentId, errors: NO_ERRORS, withheld: why };
  const snapshot = a.snapshot;
  const id = a.record.id;
  const errors = new Map<string, string[]>();
  const refuse = (routeId: string, message: string) => {
    const k = routeKey(id, routeId);
    const list = errors.get(k);
    if (list) list.push(message);
    else errors.set(k, [message]);
  };
  const domains = a.key?.domains ?? [];
  const subject = {
    kind: a.record.kind,
    seenFrom: a.record.seenFrom,
    hostIp: snapshot.hostIp,
    upstreams: a.key?.upstreams,
    tunnel: snapshot.tunnel !== undefined,
  };
  const check = o.upstreams && upstreamChecker(subject, o.upstreams);
  const upstreamOk = (r: { id: string; upstream: { host: string; port: number } }) => {
    const no = check?.(r.upstream.host, r.upstream.port);
    if (no) refuse(r.id, no);
    return !no;
  };
  const speaker = snapshot.swarm !== undefined && swarm.speaking.has(id);
  const inSwarm = swarm.speaking.size > 0 || snapshot.swarm !== undefined;
  const swarmOk = (r: RouteSpec): RouteSpec | undefined => {
    if (r.swarm) {
      // Another agent of this swarm speaks for its services (or none may): silently not ours.
      if (!speaker) return undefined;
      const checked = swarm.checkTask(a, r);
      if (typeof checked === 'string') {
        refuse(r.id, checked);
        return undefined;
      }
      return checked;
    }
    const instead = swarm.routedByService(a, r.containerId);
    if (instead) {
      refuse(r.id, instead);
      return undefined;
    }
    return r;
  };
  // A task's upstream is checked as its node's agent would be (swarm.checkTask did), a VIP as the speaker's.
  const routeUpstreamOk = (r: RouteSpec) => (r.swarm?.task ? true : upstreamOk(r));
  const admits = (r: RouteSpec) => {
    // Per route of up to 10k: no arrays made unless something is wrong.
    let wide: string[] | undefined;
    let suffix: string | undefined;
    for (const h of r.hosts) {
      const s = h.startsWith('*.') ? publicSuffixWildcard(h) : undefined;
      if (s === undefined) continue;
      suffix ??= s;
      wide ??= [];
      wide.push(h);
    }
    if (wide) {
      refuse(
        r.id,
        `${wide.join(', ')} would claim every name under the public suffix ${suffix}; no agent may claim that`,
      );
      return false;
    }
    const reserved = o.reservedHosts?.size
      ? r.hosts.find((h) => o.reservedHosts!.has(h.toLowerCase()))
      : undefined;
    if (reserved !== undefined) {
      refuse(r.id, `${reserved} is where Berth serves its own API and UI (--ui-host); no agent may claim it`);
      return false;
    }
    if (domains.length === 0) return routeUpstreamOk(r);
    const outside = r.hosts.filter((h) => !domainAllowed(h, domains));
    if (outside.length > 0) {
      refuse(
        r.id,
        `${outside.join(', ')} ${outside.length === 1 ? 'is' : 'are'} outside the domains allowed for key ${a.key?.name} (${domains.join(', ')})`,
      );
      return false;
    }
    return routeUpstreamOk(r);
  };
  let routes: RouteSpec[] = [];
  for (const given of snapshot.routes) {
    if (pause()) yield;
    // A service route outside a swarm is never ours (the protocol check refuses it already).
    const r = inSwarm || given.swarm ? swarmOk(given) : given;
    if (r && admits(r)) routes.push(r);
  }
  // A key limited to domains names what its hosts may claim; front-door ports are not in it.
  let tcp = (snapshot.tcp ?? []).filter((r) => {
    const taken = o.upstreams && listenRefusal(r.listen, o.upstreams);
    if (taken) {
      refuse(r.id, taken);
      return false;
    }
    if (domains.length > 0) {
      refuse(
        r.id,
        `TCP port ${r.listen}: key ${a.key?.name} is limited to domains (${domains.join(', ')}), so its agents may not claim TCP ports; use a key without --domains`,
      );
      return false;
    }
    return upstreamOk(r);
  });
  const limit =
    a.record.kind === 'local' ? Number.POSITIVE_INFINITY : (a.key?.maxRoutes ?? DEFAULT_MAX_ROUTES_PER_AGENT);
  if (routes.length + tcp.length > limit) {
    const kept = yield* withinLimit(routes, tcp, snapshot, limit);
    const keptRoutes: RouteSpec[] = [];
    for (const r of routes) {
      if (pause()) yield;
      if (kept.has(r.containerId)) keptRoutes.push(r);
      else refuse(r.id, overLimit(a, routes.length + tcp.length, limit, r.containerName));
    }
    for (const r of tcp)
      if (!kept.has(r.containerId))
        refuse(r.id, overLimit(a, routes.length + tcp.length, limit, r.containerName));
    routes = keptRoutes;
    tcp = tcp.filter((r) => kept.has(r.containerId));
  }
  if (snapshot.tunnel) ({ routes, tcp } = throughTunnel(a, routes, tcp, o.tunnels, refuse));
  const entry: AgentRoutes = { agentId: id, agentName: a.record.name, routes, tcp, scope: a.key?.id ?? id };
  if (snapshot.claims) entry.claims = snapshot.claims;
  if (domains.length > 0) entry.grants = domains;
  return { agentId, entry, errors };
}

function overLimit(a: AgentView, count: number, limit: number, container: string): string {
  return `the agent has ${count} routes and key ${a.key?.name} allows ${limit} per agent; container ${container}'s are not served (berth keys update ${a.key?.name} --max-routes N)`;
}

/**
 * A tunnel agent's admitted routes, pointed at their local endpoints on this server: the front
 * door dials those, and each connection there becomes a stream the agent opens.
 */
function throughTunnel(
  a: AgentView,
  routes: RouteSpec[],
  tcp: TcpRouteSpec[],
  tunnels: TunnelEndpoints | undefined,
  refuse: (routeId: string, message: string) => void,
): { routes: RouteSpec[]; tcp: TcpRouteSpec[] } {
  const snapshot = a.snapshot!;
  if (!tunnels) {
    for (const r of [...routes, ...tcp])
      refuse(r.id, 'the agent tunnels its routes (--tunnel) and this server has no tunnel endpoints');
    return { routes: [], tcp: [] };
  }
  const upstreams = [...routes.map((r) => r.upstream), ...tcp.map((r) => r.upstream)];
  const endpoint = tunnels.endpoints(a.record.id, upstreams, snapshot.tunnel!.maxStreams);
  const full = 'every tunnel endpoint of this server is in use (65534 upstreams)';
  return {
    routes: routes.flatMap((r) => {
      const e = endpoint(r.upstream.host, r.upstream.port);
      if (!e) {
        refuse(r.id, full);
        return [];
      }
      const { scheme, host } = r.upstream;
      // The certificate of an https upstream names the address the agent dials, not the endpoint.
      const upstream: Upstream = { host: e.host, port: e.port, scheme };
      if (scheme === 'https') upstream.tlsServerName = host;
      return [{ ...r, upstream }];
    }),
    tcp: tcp.flatMap((r) => {
      const e = endpoint(r.upstream.host, r.upstream.port);
      if (!e) refuse(r.id, full);
      return e ? [{ ...r, upstream: { host: e.host, port: e.port } }] : [];
    }),
  };
}

const NO_ERRORS: ReadonlyMap<string, string[]> = new Map();

/**
 * Every agent's route errors as one map, without copying them: a route key starts with its
 * agent's id (`agentId:routeId`, and ids have no colon), which names the agent's own map. A
 * hostile agent's 15k refused routes are then not copied again on every admission.
 */
export class RouteErrors {
  constructor(private readonly byAgent: ReadonlyMap<string, ReadonlyMap<string, string[]>>) {}

  get(key: string): string[] | undefined {
    return this.byAgent.get(key.slice(0, key.indexOf(':')))?.get(key);
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  get size(): number {
    let n = 0;
    for (const m of this.byAgent.values()) n += m.size;
    return n;
  }

  *entries(): IterableIterator<[string, string[]]> {
    for (const m of this.byAgent.values()) yield* m.entries();
  }

  *keys(): IterableIterator<string> {
    for (const m of this.byAgent.values()) yield* m.keys();
  }

  *values(): IterableIterator<string[]> {
    for (const m of this.byAgent.values()) yield* m.values();
  }

  [Symbol.iterator](): IterableIterator<[string, string[]]> {
    return this.entries();
  }
}

/** Every agent's admission as one. */
export function combine(parts: AgentAdmission[], swarm: SwarmContext = NO_SWARM): Admitted {
  const agentRoutes: AgentRoutes[] = [];
  const errors = new Map<string, ReadonlyMap<string, string[]>>();
  const withheld = new Map<string, string>();
  for (const p of parts) {
    if (p.entry) agentRoutes.push(p.entry);
    if (p.errors.size > 0) errors.set(p.agentId, p.errors);
    if (p.withheld) withheld.set(p.agentId, p.withheld);
  }
  const out: Admitted = { agentRoutes, errors: new RouteErrors(errors), withheld };
  if (swarm.speaking.size > 0) out.swarmSpeakers = swarm.speaking;
  return out;
}

const taskMemo = new WeakMap<Snapshot, Map<string, ContainerSummary>>();
/** A snapshot's task containers by task id (worked out once per snapshot). */
function tasksOf(s: Snapshot): Map<string, ContainerSummary> {
  let m = taskMemo.get(s);
  if (!m) {
    m = new Map(s.containers.filter((c) => c.task).map((c) => [c.task!, c]));
    taskMemo.set(s, m);
  }
  return m;
}

const containerTaskMemo = new WeakMap<Snapshot, Map<string, string>>();
function containerTasks(s: Snapshot): Map<string, string> {
  let m = containerTaskMemo.get(s);
  if (!m) {
    m = new Map(s.containers.filter((c) => c.task).map((c) => [c.id, c.task!]));
    containerTaskMemo.set(s, m);
  }
  return m;
}

export interface SwarmContext {
  /** The agents whose service routes serve: one per swarm and key. */
  speaking: Set<string>;
  /**
   * A speaker's task route, checked against the agent on the task's node: the route to serve (not
   * ready while that container's health check says so), undefined to leave out quietly, or why not.
   */
  checkTask(a: AgentView, r: RouteSpec): RouteSpec | string | undefined;
  /** Why a container's own routes are not served: it is a task of a service routed by its labels. */
  routedByService(a: AgentView, containerId: string): string | undefined;
}

const NO_SWARM: SwarmContext = {
  speaking: new Set(),
  checkTask: () => undefined,
  routedByService: () => undefined,
};

/**
 * Who speaks for each swarm, which agent is on which node, and which tasks services route: worked
 * out once over every agent, for the admission of each agent in a swarm.
 */
export function swarmContext(agents: AgentView[], now: number, o: LivenessOptions): SwarmContext {
  const inSwarm = agents.filter((a) => a.snapshot?.swarm && !withheldBecause(a, now, o));
  if (inSwarm.length === 0) return NO_SWARM;
  // Speakers are chosen among agents of one key: an agent of another key claiming to lead the
  // same swarm silences no one (its task routes fail the node check anyway).
  const scopeOf = (a: AgentView) => (a.record.kind === 'local' ? 'local' : (a.key?.id ?? a.record.id));
  const speakers = swarmSpeakers(
    inSwarm.map((a) => ({
      agentId: a.record.id,
      swarm: { ...a.snapshot!.swarm!, clusterId: `${scopeOf(a)}\u0000${a.snapshot!.swarm!.clusterId}` },
    })),
    now,
    o.offlineGraceMs,
  );
  const speaking = new Set(speakers.values());
  const byNode = new Map<string, AgentView[]>();
  for (const a of inSwarm) {
    // Workers do not see their swarm's cluster id: nodes are known by their (unique) node id.
    const k = a.snapshot!.swarm!.nodeId;
    byNode.set(k, [...(byNode.get(k) ?? []), a]);
  }
  // Tasks of services whose own labels route them: their containers' routing labels step aside
  // (for the speaker's own key only).
  const routedTasks = new Map<string, string>();
  for (const sp of inSwarm.filter((a) => speaking.has(a.record.id))) {
    const routed = new Set(sp.snapshot!.routes.filter((r) => r.swarm).map((r) => r.swarm!.serviceId));
    for (const svc of sp.snapshot!.swarm!.services ?? []) {
      if (!routed.has(svc.id)) continue;
      for (const t of svc.tasks) routedTasks.set(`${scopeOf(sp)}\u0000${t.id}`, svc.name);
    }
  }
  const checkers = new Map<string, (host: string, port: number) => string | undefined>();
  const checkerOf = (b: AgentView) => {
    let c = checkers.get(b.record.id);
    if (!c) {
      c = o.upstreams
        ? upstreamChecker(
            {
              kind: b.record.kind,
              seenFrom: b.record.seenFrom,
              hostIp: b.snapshot?.hostIp,
              upstreams: b.key?.upstreams,
            },
            o.upstreams,
          )
        : () => undefined;
      checkers.set(b.record.id, c);
    }
    return c;
  };
  return {
    speaking,
    checkTask(a, r) {
      const sw = a.snapshot!.swarm!;
      const src = r.swarm!;
      if (!src.task) return r; // --swarm-upstream vip: checked as the speaker's own upstream
      const nodeName = sw.nodes?.find((n) => n.id === src.node)?.hostname ?? src.node ?? '?';
      const peers = (byNode.get(src.node ?? '') ?? []).filter(
        // The speaker's own key (or the server's own agent) vouches for the node's agent.
        (b) =>
          (b.snapshot!.swarm!.clusterId === sw.clusterId || b.snapshot!.swarm!.clusterId === '') &&
          (a.record.kind === 'local' ||
            b.record.id === a.record.id ||
            (b.key !== undefined && b.key.id === a.key?.id)),
      );
      if (peers.length === 0)
        return `task ${src.service}.${r.containerName.split('.').pop()} runs on node ${nodeName}, which has no connected agent of this swarm and key; run berth agent on every node`;
      let why: string | undefined;
      for (const b of peers) {
        const c = tasksOf(b.snapshot!).get(src.task);
        if (!c) {
          why ??= `the agent on node ${nodeName} (${b.record.name}) does not report task ${src.task} running`;
          continue;
        }
        const no = checkerOf(b)(r.upstream.host, r.upstream.port);
        if (no) {
          why = `${no} (checked as agent ${b.record.name} on node ${nodeName}, which runs the task)`;
          continue;
        }
        if (c.state !== 'running') return undefined;
        if (c.health === 'starting' || c.health === 'unhealthy')
          return {
            ...r,
            notReady: `task container on node ${nodeName} is ${c.health === 'starting' ? 'starting (health check)' : 'unhealthy'}`,
          };
        return r;
      }
      return why;
    },
    routedByService(a, containerId) {
      const sw = a.snapshot!.swarm;
      if (!sw) return undefined;
      const task = containerTasks(a.snapshot!).get(containerId);
      const svc = task ? routedTasks.get(`${scopeOf(a)}\u0000${task}`) : undefined;
      return svc
        ? `not served from the container's labels: it is a task of Swarm service ${svc}, whose service labels route it (berth explain ${svc})`
        : undefined;
    },
  };
}

/**
 * Containers whose routes fit an agent's limit, whole containers only: those whose claims the
 * server saw first, then by container id, so the same ones serve from pass to pass.
 */
function* withinLimit(
  routes: RouteSpec[],
  tcp: TcpRouteSpec[],
  s: Snapshot,
  limit: number,
): Generator<void, Set<string>> {
  // The same snapshot, routes and limit give the same answer: worked out once per snapshot.
  const memo = limitMemo.get(s);
  if (memo && memo.limit === limit && memo.routes === routes.length && memo.tcp === tcp.length)
    return memo.kept;
  const kept = yield* fitContainers(routes, tcp, s, limit);
  limitMemo.set(s, { limit, routes: routes.length, tcp: tcp.length, kept });
  return kept;
}

const limitMemo = new WeakMap<Snapshot, { limit: number; routes: number; tcp: number; kept: Set<string> }>();

function* fitContainers(
  routes: RouteSpec[],
  tcp: TcpRouteSpec[],
  s: Snapshot,
  limit: number,
): Generator<void, Set<string>> {
  const pause = pauseEvery();
  // Per container (by slot): its routes and its oldest claim. Plain arrays, not an object per
  // container: a hostile snapshot has 25k containers, and this runs for each of its snapshots.
  const slot = new Map<string, number>();
  const ids: string[] = [];
  const counts: number[] = [];
  const since: number[] = [];
  const note = (cid: string, t: number) => {
    let i = slot.get(cid);
    if (i === undefined) {
      i = ids.length;
      slot.set(cid, i);
      ids.push(cid);
      counts.push(0);
      since.push(Number.POSITIVE_INFINITY);
    }
    counts[i]!++;
    if (t < since[i]!) since[i] = t;
  };
  for (const r of routes) {
    if (pause()) yield;
    note(r.containerId, claimedSince(s.claims, httpUnit(r.hosts[0] ?? '', r.path)));
  }
  for (const r of tcp) note(r.containerId, claimedSince(s.claims, tcpUnit(r.listen)));
  yield;
  const order = ids.map((_, i) => i);
  order.sort((a, b) => since[a]! - since[b]! || (ids[a]! < ids[b]! ? -1 : ids[a]! > ids[b]! ? 1 : 0));
  yield;
  const kept = new Set<string>();
  let used = 0;
  for (const i of order) {
    if (pause()) yield;
    if (used + counts[i]! > limit) continue;
    used += counts[i]!;
    kept.add(ids[i]!);
  }
  return kept;
}
