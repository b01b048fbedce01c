// Read views of the fleet and its routes, for the API, the CLI and the UI. Pure: each is a
// function of records, snapshots, admission and what the data plane applied, so the same inputs
// always give the same listing, and every rule here has a table test.
import type { AgentSummary, KeySummary, RouteStatus, RouteView } from '../model/api.js';
import { type Site, siteSignature } from '../model/desired.js';
import type { Diagnostic, Snapshot } from '../model/types.js';
import { routeKey } from '../reconcile/desired.js';
import {
  type Admitted,
  type AgentView,
  agentStatus,
  DEFAULT_MAX_ROUTES_PER_AGENT,
  type LivenessOptions,
} from '../reconcile/policy.js';
import { type ReconcileState, servedEverywhere } from '../reconcile/reconciler.js';
import type { AgentRecord, KeyRecord, Presence } from '../store/store.js';

/** Agents of one key waiting for approval at once, unless the key says otherwise. */
export const DEFAULT_MAX_PENDING = 20;

/** What the data plane did with the desired state, as route statuses need it. */
export interface Applied {
  sites: readonly Site[];
  outcomes: ReadonlyMap<string, { errors: string[] }>;
  /** Site signature → Caddy's error, for sites it rejected. */
  quarantined: ReadonlyMap<string, string>;
  /** Whether every Caddy serves the site with this signature. */
  served(signature: string): boolean;
  signature(site: Site): string;
  /** TCP listeners by front-door port. */
  tcp: ReadonlyMap<number, { routeKeys: string[]; state: string; error?: string }>;
}

/** One agent's own facts beyond its record, for its summary. */
export interface AgentFacts {
  view: AgentView;
  /** The replica holding its connection, with several replicas. */
  replica?: string;
  /** What another replica's presence record says of it. */
  remote?: Presence;
}

export function agentSummary(
  f: AgentFacts,
  admitted: Admitted,
  now: number,
  liveness: LivenessOptions,
): AgentSummary {
  const { view: v } = f;
  const a = v.record;
  const s = v.snapshot;
  const out: AgentSummary = {
    id: a.id,
    name: a.name,
    kind: a.kind,
    status: agentStatus(v, now, liveness),
    approved: a.approved,
    routes: (s?.routes.length ?? 0) + (s?.tcp?.length ?? 0),
    containers: s?.containers.length ?? 0,
  };
  if (a.keyId) {
    out.keyId = a.keyId;
    out.keyName = v.key?.name;
  }
  const hostIp = s?.hostIp ?? a.hostIp;
  if (hostIp) out.hostIp = hostIp;
  const version = a.version ?? f.remote?.version;
  const dockerVersion = a.dockerVersion ?? f.remote?.dockerVersion;
  if (version) out.version = version;
  if (dockerVersion) out.dockerVersion = dockerVersion;
  if (f.replica && a.kind === 'remote') out.replica = f.replica;
  if (v.lastHeartbeatAt) out.heartbeatAgeSeconds = Math.round((now - v.lastHeartbeatAt) / 100) / 10;
  const withheld = admitted.withheld.get(a.id);
  if (withheld) out.withheld = withheld;
  if (a.cleartext && out.status !== 'offline' && out.status !== 'revoked') out.cleartext = true;
  if (s?.tunnel) out.tunnel = { maxStreams: s.tunnel.maxStreams };
  return out;
}

export function keySummary(k: KeyRecord, agents: readonly AgentRecord[], now: number): KeySummary {
  const s: KeySummary = {
    id: k.id,
    name: k.name,
    domains: k.domains,
    autoApprove: k.autoApprove,
    createdAt: new Date(k.createdAt).toISOString(),
    revoked: k.revokedAt !== undefined,
    maxRoutes: k.maxRoutes ?? DEFAULT_MAX_ROUTES_PER_AGENT,
    maxPending: k.maxPending ?? DEFAULT_MAX_PENDING,
    agents: agents.filter((a) => a.keyId === k.id).length,
  };
  if (k.execAllow) s.execAllow = k.execAllow;
  if (k.upstreams) s.upstreams = k.upstreams;
  if (k.previousExpiresAt && k.previousExpiresAt > now) {
    s.previousValidUntil = new Date(k.previousExpiresAt).toISOString();
  }
  return s;
}

/**
 * An HTTP route's status: an error when anything refused it; pending while its agent is
 * withheld, its container is not ready, nothing was applied yet or it is in no site; applied
 * when every Caddy serves every site it is in.
 */
export function httpRouteStatus(o: {
  errors: readonly string[];
  withheld: boolean;
  notReady: boolean;
  signatures: readonly string[];
  applied?: Pick<Applied, 'served'>;
}): RouteStatus {
  if (o.errors.length > 0) return 'error';
  if (o.withheld || o.notReady || !o.applied || o.signatures.length === 0) return 'pending';
  return o.signatures.every((sig) => o.applied!.served(sig)) ? 'applied' : 'pending';
}

/** A TCP route's status: applied when its listener serves it and listens. */
export function tcpRouteStatus(o: {
  errors: readonly string[];
  withheld: boolean;
  notReady: boolean;
  serving: boolean;
  listenerState?: string;
}): RouteStatus {
  if (o.errors.length > 0) return 'error';
  return !o.withheld && !o.notReady && o.serving && o.listenerState === 'listening' ? 'applied' : 'pending';
}

export interface RouteViewInput {
  /** Each agent's latest snapshot, and its name. */
  agents: readonly { id: string; name: string; snapshot: Snapshot }[];
  admitted: Admitted;
  /** Undefined before the first pass. */
  applied?: Applied;
}

/**
 * Every route with its status, plus one entry per container whose labels were rejected.
 * `onlyErrors` leaves out the rest, and skips the work only statuses need (the events feed's scan):
 * those come in agent and snapshot order, unsorted. `unordered` skips the sort for readers that
 * only count (metrics, status).
 */
export function routeViews(
  input: RouteViewInput,
  o: { onlyErrors?: boolean; unordered?: boolean } = {},
): RouteView[] {
  const views: RouteView[] = [];
  for (const v of eachRouteView(input, o)) if (v) views.push(v);
  return o.onlyErrors || o.unordered ? views : byPlace(views);
}

/** Routes looked at between two of eachRouteView's pause points. */
const PAUSE_EVERY = 1_000;

/**
 * routeViews' views one at a time, in agent and snapshot order, with `undefined` now and then
 * (every PAUSE_EVERY routes looked at): a point where a reader going through 25k routes of a
 * hostile agent may yield to the event loop.
 */
export function* eachRouteView(
  input: RouteViewInput,
  o: { onlyErrors?: boolean } = {},
): Generator<RouteView | undefined> {
  const { admitted, applied } = input;
  let looked = 0;
  const sitesByKey = new Map<string, string[]>();
  if (applied && (!o.onlyErrors || applied.quarantined.size > 0)) {
    for (const site of applied.sites) {
      const sig = applied.signature(site);
      for (const k of site.routeKeys) sitesByKey.set(k, [...(sitesByKey.get(k) ?? []), sig]);
    }
  }
  const withErrors = o.onlyErrors ? agentsWithErrors(admitted, applied) : undefined;
  for (const { id: agentId, name: agentName, snapshot: s } of input.agents) {
    if (withErrors && !withErrors.has(agentId)) {
      yield* rejectedContainers(agentId, agentName, s.diagnostics);
      continue;
    }
    const withheld = admitted.withheld.get(agentId);
    const note = (notReady: string | undefined) => (withheld ? `not served: ${withheld}` : notReady);
    const speaks = admitted.swarmSpeakers?.has(agentId) === true;
    for (const r of s.routes) {
      if (++looked % PAUSE_EVERY === 0) yield undefined;
      // Service routes another agent speaks for (a former leader's held view): not this agent's now.
      if (r.swarm && !speaks) continue;
      const key = routeKey(agentId, r.id);
      const signatures = sitesByKey.get(key) ?? [];
      const errors = [...(admitted.errors.get(key) ?? []), ...(applied?.outcomes.get(key)?.errors ?? [])];
      for (const sig of signatures) {
        const q = applied?.quarantined.get(sig);
        if (q) errors.push(`Caddy rejected this route: ${q}`);
      }
      if (o.onlyErrors && errors.length === 0) continue;
      const view: RouteView = {
        id: r.id,
        kind: 'http',
        agentId,
        agentName,
        hosts: r.hosts,
        path: r.path,
        stripPath: r.stripPath,
        upstreams: [`${r.upstream.scheme}://${r.upstream.host}:${r.upstream.port}`],
        container: { id: r.containerId, name: r.containerName },
        status: httpRouteStatus({
          errors,
          withheld: Boolean(withheld),
          notReady: Boolean(r.notReady),
          signatures,
          applied,
        }),
        errors,
      };
      if (r.allow) view.allow = r.allow;
      if (s.tunnel) view.tunnel = `tunnel:${agentName}`;
      const n = note(r.notReady);
      if (n) view.note = n;
      yield view;
    }
    for (const r of s.tcp ?? []) {
      const key = routeKey(agentId, r.id);
      const errors = [...(admitted.errors.get(key) ?? []), ...(applied?.outcomes.get(key)?.errors ?? [])];
      const listener = applied?.tcp.get(r.listen);
      const serving = listener?.routeKeys.includes(key) === true;
      if (serving && listener?.state === 'error') errors.push(listener.error ?? 'the listener failed');
      if (o.onlyErrors && errors.length === 0) continue;
      const view: RouteView = {
        id: r.id,
        kind: 'tcp',
        agentId,
        agentName,
        hosts: [],
        path: '',
        stripPath: false,
        listen: r.listen,
        allow: r.allow,
        upstreams: [`tcp://${r.upstream.host}:${r.upstream.port}`],
        container: { id: r.containerId, name: r.containerName },
        status: tcpRouteStatus({
          errors,
          withheld: Boolean(withheld),
          notReady: Boolean(r.notReady),
          serving,
          listenerState: listener?.state,
        }),
        errors,
      };
      if (s.tunnel) view.tunnel = `tunnel:${agentName}`;
      const n = note(r.notReady);
      if (n) view.note = n;
      yield view;
    }
    yield* rejectedContainers(agentId, agentName, s.diagnostics);
  }
}

/**
 * Agents with at least one route in error: the events feed's scan runs every second, and at 50k
 * routes looking at every route of every agent to find a few errors cost more than the pass.
 */
function agentsWithErrors(admitted: Admitted, applied: Applied | undefined): Set<string> {
  const agents = new Set<string>();
  const add = (key: string) => agents.add(key.slice(0, key.indexOf(':')));
  for (const k of admitted.errors.keys()) add(k);
  if (!applied) return agents;
  // forEach, not for…of: an entry array per route, 50k every second, was most of this scan's garbage.
  applied.outcomes.forEach((out, k) => {
    if (out.errors.length > 0) add(k);
  });
  if (applied.quarantined.size > 0)
    for (const site of applied.sites)
      if (applied.quarantined.has(applied.signature(site))) for (const k of site.routeKeys) add(k);
  for (const l of applied.tcp.values()) if (l.state === 'error') for (const k of l.routeKeys) add(k);
  return agents;
}

/** One entry per container whose labels (or items, refused by the server) were errors. */
function rejectedContainers(agentId: string, agentName: string, diagnostics: Diagnostic[]): RouteView[] {
  const rejected = new Map<string, { name: string; messages: string[] }>();
  for (const d of diagnostics) {
    if (d.severity !== 'error') continue;
    const e = rejected.get(d.containerId) ?? { name: d.containerName, messages: [] };
    const value = d.value === undefined ? '' : `=${JSON.stringify(d.value)}`;
    // A label's error names the label; one the server made of a refused item has none.
    e.messages.push(
      d.label
        ? `container ${e.name}: label ${d.label}${value}: ${d.message}`
        : `container ${e.name}: ${d.message}`,
    );
    rejected.set(d.containerId, e);
  }
  return [...rejected].map(([cid, e]) => ({
    id: `${cid}/labels`,
    kind: 'http' as const,
    agentId,
    agentName,
    hosts: [],
    path: '',
    stripPath: false,
    upstreams: [],
    container: { id: cid, name: e.name },
    status: 'error' as const,
    errors: e.messages,
  }));
}

/**
 * By hostname, TCP port or neither, in the locale's order: which puts rejected containers (`~~`)
 * and TCP ports (`~05432`) before hostnames, as listings always have.
 */
/** localeCompare's order, from one collator made once (localeCompare itself is several times slower). */
const collate = new Intl.Collator().compare;

/** Routes by host (TCP by port, after hosts), path and id: each key made once per route, not per comparison. */
function byPlace(views: RouteView[]): RouteView[] {
  const place = (r: RouteView) => r.hosts[0] ?? (r.listen ? `~${String(r.listen).padStart(5, '0')}` : '~~');
  return views
    .map((v) => ({ v, place: place(v) }))
    .sort((a, b) => collate(a.place, b.place) || collate(a.v.path, b.v.path) || collate(a.v.id, b.v.id))
    .map((x) => x.v);
}

/**
 * What the last reconcile pass applied, as route statuses read it: a route is applied when every
 * Caddy serves each of its sites; a quarantined site carries Caddy's message.
 */
export function appliedFrom(state: ReconcileState): Applied {
  const quarantined = new Map<string, string>();
  for (const t of state.targets) for (const [sig, msg] of t.quarantined) quarantined.set(sig, msg);
  return {
    sites: state.desired.sites,
    outcomes: state.desired.outcomes,
    quarantined,
    served: (sig) => servedEverywhere(state, sig),
    signature: siteSignature,
    tcp: state.tcp,
  };
}
