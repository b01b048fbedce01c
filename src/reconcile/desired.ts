// Desired state: every agent's routes merged into what the front door should serve. Pure.
import type { Site, SiteChanges, TcpListenerSite } from '../model/desired.js';
import { domainCovers } from '../model/domains.js';
import { drain, inSlices } from '../model/slices.js';
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
  /** What changed since the previous update of the same model (absent from a fresh one). */
  changes?: SiteChanges;
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
  refuse: (key: string, message: string) => void,
): Claim<R>[] {
  claims.sort(firstFirst);
  const winner = claims[0]!;
  const sameGroup = (c: Claim<R>) =>
    c.route.lbGroup !== undefined && c.route.lbGroup === winner.route.lbGroup;
  const mayShare = (c: Claim<R>) => mayShareWith(c, winner, host);
  const members = claims.filter((c) => c === winner || (sameGroup(c) && mayShare(c)));
  for (const c of claims) {
    if (members.includes(c)) continue;
    const hint = sameGroup(c)
      ? `its group ${winner.route.lbGroup} is shared only by agents of the same key, or of a key whose --domains name ${what}`
      : `set the same ${winner.route.lbGroup ? `group (${winner.route.lbGroup})` : 'group label on both'} to share traffic`;
    refuse(c.key, `${what} is already claimed by ${describe(winner)}; ${hint}`);
  }
  return members;
}

/**
 * Claims on the same host and path either share traffic (same load-balancing group) or
 * compete: the oldest container wins, deterministically, and the others get an error naming it.
 */
export function computeDesired(agents: readonly AgentRoutes[]): Desired {
  return new DesiredModel().update(agents);
}

/** What one unit (a host and path) settled to: its site, if any, and errors per route key (if any). */
interface UnitResult {
  site?: Site;
  /** Absent when no claim on the unit was refused (most units: one Map each would be 10 MiB at 50k). */
  errors?: Map<string, string[]>;
}

/**
 * The outcome of a route served without a word to say (nearly all of them), one frozen object per
 * number of units: an object and an empty list per route is 3 MiB at 50k routes. Frozen, so a
 * reader that tried to change one would throw rather than change every route's.
 */
const plainOutcomes: RouteOutcome[] = [];
function plainOutcome(units: number): RouteOutcome {
  let o = plainOutcomes[units];
  if (!o) {
    o = Object.freeze({ errors: Object.freeze([]) as unknown as string[], units });
    if (units < 64) plainOutcomes[units] = o;
  }
  return o;
}

/** A unit's site, whether its result is the site itself or has refused claims too. */
const siteOf = (r: Site | UnitResult | undefined): Site | undefined =>
  r === undefined ? undefined : 'routeKeys' in r ? r : r.site;
const errorsOf = (r: Site | UnitResult): Map<string, string[]> | undefined =>
  'routeKeys' in r ? undefined : r.errors;

/** Routes, units or keys dealt with between two of an update's pause points. */
const PAUSE_EVERY = 500;

/** Past this share of sites changed, the site list is sorted whole rather than merged. */
const RESORT_SHARE = 0.25;

/**
 * The desired state, kept between passes: an update re-derives only what an agent that changed
 * touches (its routes, and the units they claim or claimed), so one agent's snapshot costs work
 * in proportion to it, not to the fleet. An agent's entry that is the same object as last time
 * is unchanged (admission keeps entries per agent). A new model computes everything: that is
 * computeDesired, so the incremental and the full result are one piece of code.
 */
export class DesiredModel {
  private readonly agents = new Map<string, AgentRoutes>();
  /**
   * Unit → its claims (in no order: settling sorts them): the claim itself when there is one
   * (nearly every unit; a list each is 2.7 MiB at 50k).
   */
  private readonly claims = new Map<string, Claim<RouteSpec> | Claim<RouteSpec>[]>();
  /** Unit → what it settled to: its site itself when that is all (no refused claim). */
  private readonly results = new Map<string, Site | UnitResult>();
  /**
   * Host → its units with claims (the unit itself when it is the only one, as for nearly every
   * host): a host's first claimant holds every path of it (see hostHolder).
   */
  private readonly hostUnits = new Map<string, string | string[]>();
  /** Hosts of several paths in hostUnits: none (as in most fleets), and no host's holder is looked for. */
  private multiPathHosts = 0;
  /** HTTP route key → its route, and the route's outcome. */
  private readonly routes = new Map<string, RouteSpec>();
  private readonly outcomes = new Map<string, RouteOutcome>();
  private sites: Site[] = [];
  private tcpKeys: string[] = [];
  private updated = false;

  update(agents: readonly AgentRoutes[]): Desired {
    return drain(this.steps(agents));
  }

  /**
   * As update, yielding to the event loop whenever it has run for `sliceMs`: a full pass over
   * 50k routes, or the first snapshot of an agent with 10k, is then many short tasks, not one
   * that holds every request and heartbeat for a second. Nothing else may update the model
   * meanwhile (the reconciler runs one pass at a time); readers of the outcomes map may see it
   * part-way, as they see it change between passes.
   */
  updateInSlices(agents: readonly AgentRoutes[], sliceMs = 15): Promise<Desired> {
    return inSlices(this.steps(agents), sliceMs);
  }

  /** Work done since the last pause point: one every PAUSE_EVERY routes, units or keys. */
  private work = 0;
  private pause(): boolean {
    return ++this.work % PAUSE_EVERY === 0;
  }

  private *steps(agents: readonly AgentRoutes[]): Generator<void, Desired> {
    const dirty = new Set<string>();
    const touched = new Set<string>();
    const seen = new Set<string>();
    for (const a of agents) {
      seen.add(a.agentId);
      const prev = this.agents.get(a.agentId);
      if (prev === a) continue;
      if (!prev || !(yield* this.replace(prev, a, dirty, touched))) {
        if (prev) yield* this.drop(prev, dirty, touched);
        yield* this.add(a, dirty, touched);
      }
      this.agents.set(a.agentId, a);
    }
    for (const [id, prev] of [...this.agents]) {
      if (seen.has(id)) continue;
      yield* this.drop(prev, dirty, touched);
      this.agents.delete(id);
    }
    // A host of several paths: a change to one may change who holds the host, so all settle again.
    if (this.multiPathHosts > 0)
      for (const unit of [...dirty]) {
        const units = this.hostUnits.get(hostOf(unit));
        if (Array.isArray(units)) for (const u of units) dirty.add(u);
      }
    const holders = new Map<string, Claim<RouteSpec>>();
    const changed: Site[] = [];
    const replaced = new Set<Site>();
    for (const unit of dirty) {
      if (this.pause()) yield;
      const old = siteOf(this.results.get(unit));
      if (old) replaced.add(old);
      const list = this.claimsOf(unit);
      if (list.length === 0) {
        this.results.delete(unit);
        continue;
      }
      const holder = this.multiPathHosts > 0 ? this.hostHolder(hostOf(unit), holders) : undefined;
      const r = settleUnit(unit, list, holder);
      this.results.set(unit, r.site && !r.errors ? r.site : r);
      if (r.site) changed.push(r.site);
      for (const c of list) touched.add(c.key);
    }
    for (const key of touched) {
      if (this.pause()) yield;
      const r = this.routes.get(key);
      if (r) this.outcomes.set(key, this.outcomeOf(key, r));
    }
    const since = this.sites;
    if (dirty.size > 0) this.sites = this.sitesAfter(dirty.size, replaced, changed);
    // TCP routes are few (one per front-door port): worked out whole each time, in the same map.
    for (const key of this.tcpKeys) this.outcomes.delete(key);
    const tcp = computeTcp(agents, this.outcomes);
    // A loop, not flatMap: a list per agent, every pass, for the few agents with TCP routes.
    const tcpKeys: string[] = [];
    for (const a of agents) if (a.tcp) for (const r of a.tcp) tcpKeys.push(routeKey(a.agentId, r.id));
    this.tcpKeys = tcpKeys;
    // The outcomes map is the model's own, changed by its next update: readers use the latest.
    const d: Desired = { sites: this.sites, tcp, outcomes: this.outcomes };
    if (this.updated) d.changes = { since, added: changed, removed: [...replaced] };
    this.updated = true;
    return d;
  }

  private *add(a: AgentRoutes, dirty: Set<string>, touched: Set<string>): Generator<void> {
    for (const r of a.routes) {
      if (this.pause()) yield;
      this.addRoute(a, r, dirty, touched);
    }
  }

  /**
   * Who holds a host of several paths: its first claim of all (as a unit's winner is its first).
   * Undefined for a host of one path, where the unit's own settling decides. Worked out once per
   * pass and host.
   */
  private hostHolder(host: string, memo: Map<string, Claim<RouteSpec>>): Claim<RouteSpec> | undefined {
    const units = this.hostUnits.get(host);
    if (!Array.isArray(units)) return undefined;
    let first = memo.get(host);
    if (first) return first;
    for (const u of units)
      for (const c of this.claimsOf(u)) if (!first || firstFirst(c, first) < 0) first = c;
    if (first) memo.set(host, first);
    return first;
  }

  private addRoute(a: AgentRoutes, r: RouteSpec, dirty: Set<string>, touched: Set<string>): void {
    const key = routeKey(a.agentId, r.id);
    this.routes.set(key, r);
    touched.add(key);
    for (const unit of unitsOfRoute(r)) {
      const claim = { key, agent: a, route: r, since: claimedSince(a.claims, unit) };
      const had = this.claims.get(unit);
      if (had === undefined) {
        this.claims.set(unit, claim);
        this.hostUnitAdded(unit);
      } else if (Array.isArray(had)) had.push(claim);
      else this.claims.set(unit, [had, claim]);
      dirty.add(unit);
    }
  }

  private *drop(a: AgentRoutes, dirty: Set<string>, touched: Set<string>): Generator<void> {
    for (const r of a.routes) {
      if (this.pause()) yield;
      this.dropRoute(a, r, dirty, touched);
    }
  }

  private dropRoute(a: AgentRoutes, r: RouteSpec, dirty: Set<string>, touched: Set<string>): void {
    const key = routeKey(a.agentId, r.id);
    this.routes.delete(key);
    this.outcomes.delete(key);
    touched.add(key);
    for (const unit of unitsOfRoute(r)) {
      const list = this.claimsOf(unit);
      if (list.length === 0) continue;
      const rest = list.filter((c) => c.key !== key);
      if (rest.length > 1) this.claims.set(unit, rest);
      else if (rest.length === 1) this.claims.set(unit, rest[0]!);
      else {
        this.claims.delete(unit);
        this.hostUnitGone(unit, dirty);
      }
      dirty.add(unit);
    }
  }

  private hostUnitAdded(unit: string): void {
    const host = hostOf(unit);
    const had = this.hostUnits.get(host);
    if (had === undefined) this.hostUnits.set(host, unit);
    else if (Array.isArray(had)) had.push(unit);
    else {
      this.hostUnits.set(host, [had, unit]);
      this.multiPathHosts++;
    }
  }

  /** A unit lost its last claim: the host's other units settle again (its holder may change). */
  private hostUnitGone(unit: string, dirty: Set<string>): void {
    const host = hostOf(unit);
    const had = this.hostUnits.get(host);
    if (!Array.isArray(had)) {
      this.hostUnits.delete(host);
      return;
    }
    const rest = had.filter((u) => u !== unit);
    for (const u of rest) dirty.add(u);
    if (rest.length === 1) this.multiPathHosts--;
    this.hostUnits.set(host, rest.length === 1 ? rest[0]! : rest);
  }

  /**
   * A new entry of an agent seen before, route by route: a route equal to its previous self (the
   * same data, the same claim times) keeps its claims, which only learn the new objects, and
   * dirties nothing; the others are dropped and added. An agent re-reporting 10k routes with one
   * changed then costs a comparison per route, not a re-settling of 10k units. False (nothing
   * done) when what every claim of the agent shares changed (its name, scope or grants), or when
   * route ids repeat: then the whole agent is dropped and added.
   */
  private *replace(
    prev: AgentRoutes,
    a: AgentRoutes,
    dirty: Set<string>,
    touched: Set<string>,
  ): Generator<void, boolean> {
    if (prev.agentName !== a.agentName || prev.scope !== a.scope || !sameData(prev.grants, a.grants))
      return false;
    const before = new Map<string, RouteSpec>();
    for (const r of prev.routes) {
      if (this.pause()) yield;
      before.set(r.id, r);
    }
    const ids = new Set<string>();
    for (const r of a.routes) {
      if (this.pause()) yield;
      ids.add(r.id);
    }
    if (before.size !== prev.routes.length || ids.size !== a.routes.length) return false;
    for (const r of prev.routes) {
      if (this.pause()) yield;
      if (!ids.has(r.id)) this.dropRoute(prev, r, dirty, touched);
    }
    for (const r of a.routes) {
      if (this.pause()) yield;
      const p = before.get(r.id);
      const units = p && sameData(p, r) ? unitsOfRoute(r) : undefined;
      if (units && sameClaims(prev, a, units)) {
        const key = routeKey(a.agentId, r.id);
        this.routes.set(key, r);
        for (const unit of units)
          for (const c of this.claimsOf(unit))
            if (c.key === key) {
              c.agent = a;
              c.route = r;
            }
        continue;
      }
      if (p) this.dropRoute(prev, p, dirty, touched);
      this.addRoute(a, r, dirty, touched);
    }
    return true;
  }

  /** A unit's claims, as a list. */
  private claimsOf(unit: string): Claim<RouteSpec>[] {
    const c = this.claims.get(unit);
    return c === undefined ? [] : Array.isArray(c) ? c : [c];
  }

  /** A route's outcome from its units' results, in the order of its hosts. */
  private outcomeOf(key: string, r: RouteSpec): RouteOutcome {
    const o: RouteOutcome = { errors: [], units: 0 };
    if (r.notReady) o.pending = r.notReady;
    for (const unit of unitsOfRoute(r)) {
      const res = this.results.get(unit);
      if (!res) continue;
      const errors = errorsOf(res)?.get(key);
      if (errors) o.errors.push(...errors);
      if (siteOf(res)?.routeKeys.includes(key)) o.units++;
    }
    return o.pending === undefined && o.errors.length === 0 ? plainOutcome(o.units) : o;
  }

  /** The sorted site list with the sites of dirty units (`replaced`) replaced by `changed`. */
  private sitesAfter(dirty: number, replaced: Set<Site>, changed: Site[]): Site[] {
    if (dirty > this.sites.length * RESORT_SHARE)
      return [...this.results.values()].flatMap((r) => siteOf(r) ?? []).sort(bySite);
    changed.sort(bySite);
    return mergeSites(this.sites, replaced, changed);
  }
}

/**
 * `sites` (sorted) without `removed`, with `added` (sorted) in their places, as a new array made
 * once at its final size: a list of 50k sites is 400 KiB, and a list grown by pushes or filtered
 * first allocates that several times over, on every pass. Each added site's place is found by
 * binary search and the kept runs between them are moved whole: not a comparison per site.
 */
export function mergeSites(
  sites: readonly Site[],
  removed: ReadonlySet<Site>,
  added: readonly Site[],
): Site[] {
  // concat and slice allocate exactly the length they return; the array only shrinks after.
  const out = added.length > removed.size ? sites.concat(added) : sites.slice();
  let kept = sites.length;
  if (removed.size > 0) {
    kept = 0;
    for (let i = 0; i < sites.length; i++) {
      const s = sites[i]!;
      if (!removed.has(s)) out[kept++] = s;
    }
  }
  // From the right: each added site goes after the kept ones that sort before it (or equal),
  // the kept ones after it move right by the number of added sites still to place.
  let end = kept;
  for (let j = added.length - 1; j >= 0; j--) {
    const c = added[j]!;
    let lo = 0;
    let hi = end;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bySite(out[mid]!, c) <= 0) lo = mid + 1;
      else hi = mid;
    }
    for (let i = end - 1; i >= lo; i--) out[i + j + 1] = out[i]!;
    out[lo + j] = c;
    end = lo;
  }
  out.length = kept + added.length;
  return out;
}

/** Whether two JSON-like values (a route, a list of grants) hold the same data. */
export function sameData(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameData(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  let n = 0;
  for (const k in x) {
    if (x[k] === undefined) continue;
    n++;
    if (!sameData(x[k], y[k])) return false;
  }
  for (const k in y) if (y[k] !== undefined) n--;
  return n === 0;
}

/** Whether these units (of one route) were first claimed at the same times in both entries of its agent. */
function sameClaims(prev: AgentRoutes, a: AgentRoutes, units: readonly string[]): boolean {
  if (prev.claims === a.claims) return true;
  for (const unit of units)
    if (claimedSince(prev.claims, unit) !== claimedSince(a.claims, unit)) return false;
  return true;
}

/** The units a route claims, each once. */
function unitsOfRoute(r: RouteSpec): readonly string[] {
  // Most routes have one host: no set made for them (this runs per route of every changed agent).
  if (r.hosts.length === 1) return [httpUnit(r.hosts[0]!, r.path)];
  return [...new Set(r.hosts.map((host) => httpUnit(host, r.path)))];
}

/** A unit's host: the text before its NUL. */
const hostOf = (unit: string) => unit.slice(0, unit.indexOf('\u0000'));

/** Whether a claim's agent may serve where `holder`'s does: itself, its key, or a key whose --domains name the host. */
const mayShareWith = (c: Claim, holder: Claim, host: string | undefined) =>
  c.agent.agentId === holder.agent.agentId ||
  (c.agent.scope !== undefined && c.agent.scope === holder.agent.scope) ||
  (host !== undefined && (c.agent.grants ?? []).some((d) => domainCovers(d, host)));

/**
 * One unit settled. `holder` is the host's first claim of all its paths, when it has several: a
 * claim on another path of the host by an agent that may not share with the holder is refused
 * before the unit settles, so no agent of another key takes /login out of a host another holds.
 */
function settleUnit(unit: string, all: Claim<RouteSpec>[], holder?: Claim<RouteSpec>): UnitResult {
  const [host, path] = unit.split('\u0000') as [string, string];
  let errors: Map<string, string[]> | undefined;
  const refuse = (key: string, message: string) => {
    errors ??= new Map();
    const list = errors.get(key);
    if (list) list.push(message);
    else errors.set(key, [message]);
  };
  let claims = all;
  if (holder && all.some((c) => !mayShareWith(c, holder, host))) {
    claims = [];
    const at = `${holder.route.path === '/' ? host : `${host}${holder.route.path}`}`;
    for (const c of all) {
      if (mayShareWith(c, holder, host)) claims.push(c);
      else
        refuse(
          c.key,
          `${host} is already claimed by ${describe(holder)} (at ${at}, first); an agent of another key may not serve a path of it: use the same key, or a key whose --domains name ${host}`,
        );
    }
    if (claims.length === 0) return { errors: errors! };
  }
  const members = settle(claims, `${host}${path === '/' ? '' : path}`, host, refuse);
  const winner = members[0]!;
  const upstreams: Upstream[] = [];
  const keys: string[] = [];
  for (const m of members) {
    if (m.route.notReady) continue;
    if (m.route.upstream.scheme !== winner.route.upstream.scheme) {
      refuse(m.key, `${host}: upstream scheme ${m.route.upstream.scheme} differs from its group's`);
      continue;
    }
    const dup = upstreams.some((u) => u.host === m.route.upstream.host && u.port === m.route.upstream.port);
    if (!dup) upstreams.push(m.route.upstream);
    keys.push(m.key);
  }
  if (upstreams.length === 0) return errors ? { errors } : {};
  upstreams.sort((a, b) => a.host.localeCompare(b.host) || a.port - b.port);
  // Copied to their exact size: a pushed-to array keeps room for 16 more, 2 × 128 bytes per site,
  // and sites are what the server keeps most of (one per host and path of the fleet).
  const site: Site = {
    // The route's own string rather than a slice of the unit's, which would keep the unit's
    // text alive with it (one more string per site).
    host: winner.route.hosts.find((h) => h === host) ?? host,
    path,
    stripPath: winner.route.stripPath,
    upstreams: upstreams.slice(),
    routeKeys: keys.sort().slice(),
  };
  if (winner.route.allow) site.allow = winner.route.allow;
  return errors ? { site, errors } : { site };
}

/** localeCompare's order, from one collator made once (several times cheaper at 50k sites). */
const collate = new Intl.Collator().compare;
const bySite = (a: Site, b: Site) => collate(a.host, b.host) || collate(a.path, b.path);

/** TCP routes by front-door port, with the same conflict and load-balancing rules as HTTP. */
function computeTcp(agents: readonly AgentRoutes[], outcomes: Map<string, RouteOutcome>): TcpListenerSite[] {
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
    const members = settle(claims, `TCP port ${listen}`, undefined, (k, m) =>
      outcomes.get(k)!.errors.push(m),
    );
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
