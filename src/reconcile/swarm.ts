// Swarm services at the server: which agent speaks for a swarm's services, and whom a service
// route's task upstream must be checked against. Pure.
//
// One speaker per swarm: the agent on the raft leader reports services, others none. When the
// leader changes the old leader's agent may report "not leader" before the new one has spoken;
// the server then holds the old view (heldSince) until the new leader speaks or the grace ends, so
// routes never drop in between, and never count twice (only one speaker's service routes serve).
//
// A hostile agent may claim to lead any swarm. What it gains is bounded: a route to a task on node
// N is served only when an agent of the same key reports being node N of that swarm and runs that
// task's container, and the upstream must be one that agent may name itself. So a manager's
// service routes reach no address the agents of its swarm could not already route to.
import type { RouteSpec, Snapshot, SwarmInfo } from '../model/types.js';

/** The swarm part of a new snapshot, with the server's own fields, and the routes it carries over. */
export function nextSwarm(
  prev: Snapshot | undefined,
  incoming: Snapshot,
  now: number,
  graceMs: number,
  /** Another agent of this swarm spoke as leader after this one became leader. */
  replacedBy: (clusterId: string, since: number) => boolean,
): { swarm?: SwarmInfo; carried: RouteSpec[] } {
  if (!incoming.swarm) return { carried: [] };
  const sw: SwarmInfo = { ...incoming.swarm };
  delete sw.leaderSince;
  delete sw.heldSince;
  const before = prev?.swarm?.clusterId === sw.clusterId ? prev.swarm : undefined;
  if (sw.leader) {
    sw.leaderSince = before?.leader && !before.heldSince && before.leaderSince ? before.leaderSince : now;
    return { swarm: sw, carried: [] };
  }
  const spoke =
    before && (before.leader || before.heldSince !== undefined) && before.leaderSince !== undefined;
  if (!spoke) return { swarm: sw, carried: [] };
  const heldSince = before.heldSince ?? now;
  if (now - heldSince >= graceMs || replacedBy(sw.clusterId, before.leaderSince!))
    return { swarm: sw, carried: [] };
  // Not the leader any more, and no one else has spoken yet: keep the last view for a while.
  sw.leaderSince = before.leaderSince;
  sw.heldSince = heldSince;
  if (before.services) sw.services = before.services;
  if (before.nodes) sw.nodes = before.nodes;
  return { swarm: sw, carried: (prev?.routes ?? []).filter((r) => r.swarm) };
}

export interface SwarmCandidate {
  agentId: string;
  swarm: SwarmInfo;
}

/**
 * The agent whose service routes serve, per swarm cluster id: a leader rather than a held view,
 * then the latest to become leader (a new leader's view replaces the old), then the agent id.
 * Held views past the grace do not count.
 */
export function swarmSpeakers(
  candidates: SwarmCandidate[],
  now: number,
  graceMs: number,
): Map<string, string> {
  const best = new Map<string, SwarmCandidate>();
  const rank = (c: SwarmCandidate) =>
    [c.swarm.heldSince === undefined ? 1 : 0, c.swarm.leaderSince ?? 0] as const;
  for (const c of candidates) {
    const s = c.swarm;
    if (!s.leader && s.heldSince === undefined) continue;
    if (s.heldSince !== undefined && now - s.heldSince >= graceMs) continue;
    const cur = best.get(s.clusterId);
    if (!cur) {
      best.set(s.clusterId, c);
      continue;
    }
    const [a1, a2] = rank(c);
    const [b1, b2] = rank(cur);
    if (a1 > b1 || (a1 === b1 && (a2 > b2 || (a2 === b2 && c.agentId < cur.agentId))))
      best.set(s.clusterId, c);
  }
  return new Map([...best].map(([k, v]) => [k, v.agentId]));
}
