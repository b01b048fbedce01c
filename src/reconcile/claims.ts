// When the server first saw each claim of an agent: the order of competing claims. A time an
// agent reports (a container's creation time) is only a claim itself, so a hostile agent could
// say "-1e15" and win every conflict; the server's own clock decides instead. Pure.
import type { ClaimRecord, RouteSpec, TcpRouteSpec } from '../model/types.js';

export type { ClaimRecord };

export type Claims = Record<string, ClaimRecord>;

/** Released claims remembered per agent, at most (the oldest go first). */
const MAX_RELEASED = 10_000;

export const httpUnit = (host: string, path: string) => `${host}\u0000${path}`;
export const tcpUnit = (listen: number) => `tcp:${listen}`;

/** Every unit a snapshot's routes claim. */
export function unitsOf(routes: readonly RouteSpec[], tcp: readonly TcpRouteSpec[] = []): Set<string> {
  const units = new Set<string>();
  for (const r of routes) for (const h of r.hosts) units.add(httpUnit(h, r.path));
  for (const r of tcp) units.add(tcpUnit(r.listen));
  return units;
}

/**
 * The claims after a new snapshot at `now`: a unit claimed before keeps its time, also when it
 * was released no longer than `memoryMs` ago; a new one starts now; released ones are kept for
 * `memoryMs` and then forgotten.
 */
export function nextClaims(
  prev: Claims | undefined,
  units: Set<string>,
  now: number,
  memoryMs: number,
): Claims {
  const out: Claims = Object.create(null);
  // The lookup index of the new claims is made here, where their entries are at hand anyway.
  const index = new Map<string, number>();
  for (const u of units) {
    const p = prev?.[u];
    const keeps = p && (p.releasedAt === undefined || now - p.releasedAt <= memoryMs);
    // A claim held before is the same record again (no new object per unit of 25k).
    const c = keeps ? (p.releasedAt === undefined ? p : { since: p.since }) : { since: now };
    out[u] = c;
    index.set(u, c.since);
  }
  indexes.set(out, index);
  if (!prev) return out;
  const released: [string, ClaimRecord][] = [];
  for (const [u, p] of Object.entries(prev)) {
    if (units.has(u)) continue;
    const at = p.releasedAt ?? now;
    if (now - at <= memoryMs) released.push([u, { since: p.since, releasedAt: at }]);
  }
  released.sort((a, b) => b[1].releasedAt! - a[1].releasedAt!);
  for (const [u, c] of released.slice(0, MAX_RELEASED)) out[u] = c;
  return out;
}

const indexes = new WeakMap<Claims, Map<string, number>>();

/** Since when the agent claims a unit; 0 for claims recorded before the server kept them. */
export function claimedSince(claims: Claims | undefined, unit: string): number {
  if (!claims) return 0;
  // Claims stay a plain object (they are stored as JSON); lookups go through a Map made once.
  let index = indexes.get(claims);
  if (!index) {
    index = new Map();
    for (const [u, c] of Object.entries(claims)) if (c.releasedAt === undefined) index.set(u, c.since);
    indexes.set(claims, index);
  }
  return index.get(unit) ?? 0;
}
