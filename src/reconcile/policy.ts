// Which agents' routes may reach the front door, which hostnames each may claim and where
// their traffic may go. Pure.
import type { AgentStatus } from '../model/api.js';
import { domainAllowed, publicSuffixWildcard } from '../model/domains.js';
import type { RouteSpec, Snapshot, TcpRouteSpec } from '../model/types.js';
import type { AgentRecord, KeyRecord } from '../store/store.js';
import { claimedSince, httpUnit, tcpUnit } from './claims.js';
import { type AgentRoutes, routeKey } from './desired.js';
import { type UpstreamRules, upstreamChecker } from './upstreams.js';

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
  errors: Map<string, string[]>;
  /** Agent id → why none of its routes are served. */
  withheld: Map<string, string>;
}

/** What admission decided for one agent. */
export interface AgentAdmission {
  agentId: string;
  /** Its routes that may serve; absent when none may (withheld, or no snapshot). */
  entry?: AgentRoutes;
  /** Route key → why it is not served. */
  errors: [string, string[]][];
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
  return combine(agents.map((a) => admitAgent(a, now, o)));
}

/** One agent's admission, alone: what admitRoutes does for each agent. */
export function admitAgent(a: AgentView, now: number, o: LivenessOptions): AgentAdmission {
  const agentId = a.record.id;
  if (!a.snapshot) return { agentId, errors: [] };
  const why = withheldBecause(a, now, o);
  if (why) return { agentId, errors: [], withheld: why };
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
  };
  const check = o.upstreams && upstreamChecker(subject, o.upstreams);
  const upstreamOk = (r: { id: string; upstream: { host: string; port: number } }) => {
    const no = check?.(r.upstream.host, r.upstream.port);
    if (no) refuse(r.id, no);
    return !no;
  };
  let routes = snapshot.routes.filter((r) => {
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
    if (domains.length === 0) return upstreamOk(r);
    const outside = r.hosts.filter((h) => !domainAllowed(h, domains));
    if (outside.length > 0) {
      refuse(
        r.id,
        `${outside.join(', ')} ${outside.length === 1 ? 'is' : 'are'} outside the domains allowed for key ${a.key?.name} (${domains.join(', ')})`,
      );
      return false;
    }
    return upstreamOk(r);
  });
  // A key limited to domains names what its hosts may claim; front-door ports are not in it.
  let tcp = (snapshot.tcp ?? []).filter((r) => {
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
    const kept = withinLimit(routes, tcp, snapshot, limit);
    for (const r of [...routes, ...tcp]) {
      if (kept.has(r.containerId)) continue;
      refuse(
        r.id,
        `the agent has ${routes.length + tcp.length} routes and key ${a.key?.name} allows ${limit} per agent; container ${r.containerName}'s are not served (berth keys update ${a.key?.name} --max-routes N)`,
      );
    }
    routes = routes.filter((r) => kept.has(r.containerId));
    tcp = tcp.filter((r) => kept.has(r.containerId));
  }
  const entry: AgentRoutes = { agentId: id, agentName: a.record.name, routes, tcp, scope: a.key?.id ?? id };
  if (snapshot.claims) entry.claims = snapshot.claims;
  if (domains.length > 0) entry.grants = domains;
  return { agentId, entry, errors: [...errors] };
}

/** Every agent's admission as one. */
export function combine(parts: AgentAdmission[]): Admitted {
  const agentRoutes: AgentRoutes[] = [];
  const errors = new Map<string, string[]>();
  const withheld = new Map<string, string>();
  for (const p of parts) {
    if (p.entry) agentRoutes.push(p.entry);
    for (const [k, v] of p.errors) errors.set(k, v);
    if (p.withheld) withheld.set(p.agentId, p.withheld);
  }
  return { agentRoutes, errors, withheld };
}

/**
 * Containers whose routes fit an agent's limit, whole containers only: those whose claims the
 * server saw first, then by container id, so the same ones serve from pass to pass.
 */
function withinLimit(routes: RouteSpec[], tcp: TcpRouteSpec[], s: Snapshot, limit: number): Set<string> {
  // The same snapshot, routes and limit give the same answer: worked out once per snapshot.
  const memo = limitMemo.get(s);
  if (memo && memo.limit === limit && memo.routes === routes.length && memo.tcp === tcp.length)
    return memo.kept;
  const kept = fitContainers(routes, tcp, s, limit);
  limitMemo.set(s, { limit, routes: routes.length, tcp: tcp.length, kept });
  return kept;
}

const limitMemo = new WeakMap<Snapshot, { limit: number; routes: number; tcp: number; kept: Set<string> }>();

function fitContainers(routes: RouteSpec[], tcp: TcpRouteSpec[], s: Snapshot, limit: number): Set<string> {
  const per = new Map<string, { count: number; since: number }>();
  const note = (cid: string, since: number) => {
    const e = per.get(cid) ?? { count: 0, since: Number.POSITIVE_INFINITY };
    e.count++;
    e.since = Math.min(e.since, since);
    per.set(cid, e);
  };
  for (const r of routes) note(r.containerId, claimedSince(s.claims, httpUnit(r.hosts[0] ?? '', r.path)));
  for (const r of tcp) note(r.containerId, claimedSince(s.claims, tcpUnit(r.listen)));
  const order = [...per].sort(([a, x], [b, y]) => x.since - y.since || (a < b ? -1 : a > b ? 1 : 0));
  const kept = new Set<string>();
  let used = 0;
  for (const [cid, e] of order) {
    if (used + e.count > limit) continue;
    used += e.count;
    kept.add(cid);
  }
  return kept;
}
