// When the server first saw each claim of an agent: the order of competing claims. A time an
// agent reports (a container's creation time) is only a claim itself, so a hostile agent could
// say "-1e15" and win every conflict; the server's own clock decides instead. Pure.
import { drain, pauseEvery } from '../model/slices.js';
import type { ClaimRecord, RouteSpec, TcpRouteSpec } from '../model/types.js';

export type { ClaimRecord };

export type Claims = Record<string, ClaimRecord>;

/** Released claims remembered per agent, at most (the oldest go first). */
const MAX_RELEASED = 10_000;

export const httpUnit = (host: string, path: string) => `${host}\u0000${path}`;
export const tcpUnit = (listen: number) => `tcp:${listen}`;

/** Every unit a snapshot's routes claim. */
export function unitsOf(routes: readonly RouteSpec[], tcp: readonly TcpRouteSpec[] = []): Set<string> {
  return drain(unitSteps(routes, tcp));
}

function* unitSteps(
  routes: readonly RouteSpec[],
  tcp: readonly TcpRouteSpec[],
): Generator<void, Set<string>> {
  const pause = pauseEvery();
  const units = new Set<string>();
  for (const r of routes) {
    if (pause()) yield;
    for (const h of r.hosts) units.add(httpUnit(h, r.path));
  }
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
  return drain(nextClaimSteps(prev, units, now, memoryMs));
}

/** As nextClaims of the units of these routes, with pause points (25k units are ~50 ms). */
export function* claimSteps(
  prev: Claims | undefined,
  routes: readonly RouteSpec[],
  tcp: readonly TcpRouteSpec[] | undefined,
  now: number,
  memoryMs: number,
): Generator<void, Claims> {
  return yield* nextClaimSteps(prev, yield* unitSteps(routes, tcp ?? []), now, memoryMs);
}

function* nextClaimSteps(
  prev: Claims | undefined,
  units: Set<string>,
  now: number,
  memoryMs: number,
): Generator<void, Claims> {
  const pause = pauseEvery();
  const out: Claims = Object.create(null);
  // The lookup index of the new claims is made here, where their entries are at hand anyway.
  const index = units.size >= INDEXED_FROM ? new Map<string, number>() : null;
  // The claims first seen now share one record.
  const fresh: ClaimRecord = { since: now };
  for (const u of units) {
    if (pause()) yield;
    const p = prev && Object.hasOwn(prev, u) ? prev[u] : undefined;
    const keeps = p && (p.releasedAt === undefined || now - p.releasedAt <= memoryMs);
    // A claim held before is the same record again (no new object per unit of 25k).
    const c = keeps ? (p.releasedAt === undefined ? p : { since: p.since }) : fresh;
    out[u] = c;
    index?.set(u, c.since);
  }
  indexes.set(out, index);
  if (!prev) return out;
  const released: [string, ClaimRecord][] = [];
  for (const u of Object.keys(prev)) {
    if (pause()) yield;
    if (units.has(u)) continue;
    const p = prev[u]!;
    const at = p.releasedAt ?? now;
    if (now - at <= memoryMs) released.push([u, { since: p.since, releasedAt: at }]);
  }
  released.sort((a, b) => b[1].releasedAt! - a[1].releasedAt!);
  for (const [u, c] of released.slice(0, MAX_RELEASED)) out[u] = c;
  return out;
}

/**
 * Claims stay a plain object (they are stored as JSON). Past this many units, lookups go through
 * a Map made once (a hostile agent's 25k units, looked up one by one); below it, in the object
 * itself: a Map per agent of a fleet would be 3 MiB more at 1,000 agents × 50 routes.
 */
const INDEXED_FROM = 1024;
/** Each claims object's index, or null when it is looked up in place. */
const indexes = new WeakMap<Claims, Map<string, number> | null>();

/** Since when the agent claims a unit; 0 for claims recorded before the server kept them. */
export function claimedSince(claims: Claims | undefined, unit: string): number {
  if (!claims) return 0;
  let index = indexes.get(claims);
  if (index === undefined) {
    const entries = Object.entries(claims);
    index = entries.length >= INDEXED_FROM ? new Map() : null;
    if (index) for (const [u, c] of entries) if (c.releasedAt === undefined) index.set(u, c.since);
    indexes.set(claims, index);
  }
  if (index) return index.get(unit) ?? 0;
  // Own properties only: claims read back from the store have Object's prototype.
  const c = Object.hasOwn(claims, unit) ? claims[unit] : undefined;
  return c && c.releasedAt === undefined ? c.since : 0;
}
