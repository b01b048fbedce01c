// Desired state: every agent's routes merged into what the front door should serve. Pure.
import type { Site, TcpListenerSite } from '../model/desired.js';
import { domainCovers } from '../model/domains.js';
import type { RouteSpec, TcpRouteSpec, Upstream } from '../model/types.js';
import { type Claims, claimedSince, httpUnit, tcpUnit } from './claims.js';

export interface AgentRoutes {
  agentId: string;
  agentName: string;
  routes: RouteSpec[];
  tcp?: TcpRouteSpec[];
  /** When the server first saw each of this agent's claims: the order of competing claims. */
  claims?: Claims;
  /**
   * Agents of one scope (their key) trust each other: they may share a host through a group.
   * An agent of another scope joins a group only on hostnames its `grants` name explicitly.
   */
  scope?: string;
  /** The key's `--domains`, when it has any. */
  grants?: string[];
}

export interface RouteOutcome {
  /** Conflicts and other reasons this route (or one of its hosts) is not served. */
  errors: string[];
  /** Why the route waits (unhealthy, starting); it is not an error. */
  pending?: string;
  /** Number of (host, path) units this route contributes upstreams to. */
  units: number;
}

export interface Desired {
  sites: Site[];
  tcp: TcpListenerSite[];
  outcomes: Map<string, RouteOutcome>;
}

export const routeKey = (agentId: string, routeId: string) => `${agentId}:${routeId}`;

/** What every kind of route has for deciding between competing claims. */
interface Claimant {
  containerId: string;
  containerName: string;
  containerCreated: number;
  lbGroup?: string;
  notReady?: string;
}

interface Claim<R extends Claimant = Claimant> {
  key: string;
  agent: AgentRoutes;
  route: R;
  /** Server time the agent's claim on this unit was first seen. */
  since: number;
}

/**
 * Settles the claims on one unit (a host and path, or a TCP port): the claim the server saw
 * first wins (then the older container, then the key, so it is deterministic); claims in its
 * load-balancing group join it when their agent may share with the winner's; every other claim
 * gets an error naming the winner. Returns the winner first, then its group.
 */
function settle<R extends Claimant>(
  claims: Claim<R>[],
  what: string,
  host: string | undefined,
  outcomes: Map<string, RouteOutcome>,
): Claim<R>[] {
  claims.sort(firstFirst);
  const winner = claims[0]!;
  const sameGroup = (c: Claim<R>) =>
    c.route.lbGroup !== undefined && c.route.lbGroup === winner.route.lbGroup;
  const mayShare = (c: Claim<R>) =>
    c.agent.agentId === winner.agent.agentId ||
    (c.agent.scope !== undefined && c.agent.scope === winner.agent.scope) ||
    (host !== undefined && (c.agent.grants ?? []).some((d) => domainCovers(d, host)));
  const members = claims.filter((c) => c === winner || (sameGroup(c) && mayShare(c)));
  for (const c of claims) {
    if (members.includes(c)) continue;
    const hint = sameGroup(c)
      ? `its group ${winner.route.lbGroup} is shared only by agents of the same key, or of a key whose --domains name ${what}`
      : `set the same ${winner.route.lbGroup ? `group (${winner.route.lbGroup})` : 'group label on both'} to share traffic`;
    outcomes.get(c.key)!.errors.push(`${what} is already claimed by ${describe(winner)}; ${hint}`);
  }
  return members;
}

/**
 * Claims on the same host and path either share traffic (same load-balancing group) or
 * compete: the oldest container wins, deterministically, and the others get an error naming it.
 */
export function computeDesired(agents: AgentRoutes[]): Desired {
  const outcomes = new Map<string, RouteOutcome>();
  const byUnit = new Map<string, Claim<RouteSpec>[]>();
  for (const a of agents) {
    for (const r of a.routes) {
      const key = routeKey(a.agentId, r.id);
      const outcome: RouteOutcome = { errors: [], units: 0 };
      if (r.notReady) outcome.pending = r.notReady;
      outcomes.set(key, outcome);
      for (const host of r.hosts) {
        const unit = httpUnit(host, r.path);
        const list = byUnit.get(unit) ?? [];
        list.push({ key, agent: a, route: r, since: claimedSince(a.claims, unit) });
        byUnit.set(unit, list);
      }
    }
  }

  const sites: Site[] = [];
  for (const [unit, claims] of byUnit) {
    const [host, path] = unit.split('\u0000') as [string, string];
    const members = settle(claims, `${host}${path === '/' ? '' : path}`, host, outcomes);
    const winner = members[0]!;
    const upstreams: Upstream[] = [];
    const keys: string[] = [];
    for (const m of members) {
      if (m.route.notReady) continue;
      if (m.route.upstream.scheme !== winner.route.upstream.scheme) {
        outcomes
          .get(m.key)!
          .errors.push(`${host}: upstream scheme ${m.route.upstream.scheme} differs from its group's`);
        continue;
      }
      const dup = upstreams.some((u) => u.host === m.route.upstream.host && u.port === m.route.upstream.port);
      if (!dup) upstreams.push(m.route.upstream);
      keys.push(m.key);
      outcomes.get(m.key)!.units++;
    }
    if (upstreams.length === 0) continue;
    upstreams.sort((a, b) => a.host.localeCompare(b.host) || a.port - b.port);
    const site: Site = { host, path, stripPath: winner.route.stripPath, upstreams, routeKeys: keys.sort() };
    if (winner.route.allow) site.allow = winner.route.allow;
    sites.push(site);
  }
  sites.sort((a, b) => a.host.localeCompare(b.host) || a.path.localeCompare(b.path));
  return { sites, tcp: computeTcp(agents, outcomes), outcomes };
}

/** TCP routes by front-door port, with the same conflict and load-balancing rules as HTTP. */
function computeTcp(agents: AgentRoutes[], outcomes: Map<string, RouteOutcome>): TcpListenerSite[] {
  const byPort = new Map<number, Claim<TcpRouteSpec>[]>();
  for (const a of agents) {
    for (const r of a.tcp ?? []) {
      const key = routeKey(a.agentId, r.id);
      const outcome: RouteOutcome = { errors: [], units: 0 };
      if (r.notReady) outcome.pending = r.notReady;
      outcomes.set(key, outcome);
      const claim = { key, agent: a, route: r, since: claimedSince(a.claims, tcpUnit(r.listen)) };
      byPort.set(r.listen, [...(byPort.get(r.listen) ?? []), claim]);
    }
  }
  const out: TcpListenerSite[] = [];
  for (const [listen, claims] of byPort) {
    const members = settle(claims, `TCP port ${listen}`, undefined, outcomes);
    const upstreams: TcpListenerSite['upstreams'] = [];
    const keys: string[] = [];
    for (const m of members) {
      if (m.route.notReady) continue;
      const u = m.route.upstream;
      if (!upstreams.some((x) => x.host === u.host && x.port === u.port)) upstreams.push({ ...u });
      keys.push(m.key);
      outcomes.get(m.key)!.units++;
    }
    if (upstreams.length === 0) continue;
    upstreams.sort((a, b) => a.host.localeCompare(b.host) || a.port - b.port);
    out.push({ listen, upstreams, allow: members[0]!.route.allow, routeKeys: keys.sort() });
  }
  return out.sort((a, b) => a.listen - b.listen);
}

/** The server's first sight decides; a container's age (the agent's word) only breaks ties. */
function firstFirst(a: Claim, b: Claim): number {
  return (
    a.since - b.since ||
    a.route.containerCreated - b.route.containerCreated ||
    (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
  );
}

function describe(c: Claim): string {
  return `container ${c.route.containerName} (${c.route.containerId.slice(0, 12)}) on ${c.agent.agentName}`;
}
