// Desired state: every agent's routes merged into what the front door should serve. Pure.
import type { RouteSpec, Upstream } from '../model/types.js';

export interface AgentRoutes {
  agentId: string;
  agentName: string;
  routes: RouteSpec[];
}

/** One (host, path) the front door serves, and the routes that put it there. */
export interface Site {
  host: string;
  path: string;
  stripPath: boolean;
  upstreams: Upstream[];
  /** Global route keys (`agentId:routeId`) whose upstreams are in this unit. */
  routeKeys: string[];
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
  outcomes: Map<string, RouteOutcome>;
}

export const routeKey = (agentId: string, routeId: string) => `${agentId}:${routeId}`;

interface Claim {
  key: string;
  agentName: string;
  route: RouteSpec;
}

/**
 * Claims on the same host and path either share traffic (same load-balancing group) or
 * compete: the oldest container wins, deterministically, and the others get an error naming it.
 */
export function computeDesired(agents: AgentRoutes[]): Desired {
  const outcomes = new Map<string, RouteOutcome>();
  const byUnit = new Map<string, Claim[]>();
  for (const a of agents) {
    for (const r of a.routes) {
      const key = routeKey(a.agentId, r.id);
      const outcome: RouteOutcome = { errors: [], units: 0 };
      if (r.notReady) outcome.pending = r.notReady;
      outcomes.set(key, outcome);
      for (const host of r.hosts) {
        const unit = `${host}\u0000${r.path}`;
        const list = byUnit.get(unit) ?? [];
        list.push({ key, agentName: a.agentName, route: r });
        byUnit.set(unit, list);
      }
    }
  }

  const sites: Site[] = [];
  for (const [unit, claims] of byUnit) {
    const [host, path] = unit.split('\u0000') as [string, string];
    claims.sort(olderFirst);
    const winner = claims[0]!;
    const team = (c: Claim) => c.route.lbGroup !== undefined && c.route.lbGroup === winner.route.lbGroup;
    const members = claims.filter((c) => c === winner || team(c));
    for (const c of claims) {
      if (members.includes(c)) continue;
      outcomes
        .get(c.key)!
        .errors.push(
          `${host}${path === '/' ? '' : path} is already claimed by ${describe(winner)}; ` +
            `set the same ${winner.route.lbGroup ? `group (${winner.route.lbGroup})` : 'group label on both'} to share traffic`,
        );
    }
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
    sites.push({ host, path, stripPath: winner.route.stripPath, upstreams, routeKeys: keys.sort() });
  }
  sites.sort((a, b) => a.host.localeCompare(b.host) || a.path.localeCompare(b.path));
  return { sites, outcomes };
}

function olderFirst(a: Claim, b: Claim): number {
  return a.route.containerCreated - b.route.containerCreated || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

function describe(c: Claim): string {
  return `container ${c.route.containerName} (${c.route.containerId.slice(0, 12)}) on ${c.agentName}`;
}
