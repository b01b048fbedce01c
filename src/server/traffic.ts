// What the front door's traffic looks like: every request Caddy logs (HttpAccess) is matched to
// the route that served it (host, then the longest path prefix) and its owner, written to the
// access log, and counted per route host: Prometheus counters and a latency histogram, plus
// 5-second slots over the last 15 minutes for the charts. Hosts past `maxHosts` are counted
// under "other", so a flood of names cannot grow /metrics or memory without bound. TCP listeners
// get slots too, sampled from the forwarder's counters. The report view is pure: it sums what
// this replica counted with what the other replicas published.
import type { AccessLogWriter } from '../ingress/access-log.js';
import type { HttpAccess } from '../ingress/caddy/traffic.js';
import type { ListenerCounters } from '../ingress/tcp/forwarder.js';
import { histogramSamples, type MetricFamily } from '../metrics.js';
import type { HostTraffic, TcpTraffic, TrafficReport } from '../model/api.js';
import { drain, pauseEvery } from '../model/slices.js';

export const SLOT_MS = 5_000;
export const WINDOW_SLOTS = 180;
/** Request duration buckets, seconds (Prometheus `le` bounds; the charts' percentiles too). */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
export const OTHER = 'other';
/** Status classes; `none`: no response was written (the client left before one). */
const CLASSES = ['none', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** A slot: [requests, 5xx, bytes in, bytes out, count per latency bucket (the last one +Inf)]. */
type Slot = number[];
const REQ = 0;
const ERR = 1;
const BIN = 2;
const BOUT = 3;
const B0 = 4;
const SLOT_LEN = B0 + LATENCY_BUCKETS.length + 1;
/** A TCP slot: [connections ended, bytes in, bytes out]. */
type TcpSlot = number[];

/** Cumulative figures of one host (label) since this replica started. */
interface HostTotals {
  classes: number[];
  bytesIn: number;
  bytesOut: number;
  /** Count per latency bucket (not cumulative; the last one is +Inf). */
  buckets: number[];
  durationSum: number;
}

/** One replica's traffic, as it publishes it for the others (and as the report reads it). */
export interface ReplicaTraffic {
  replica: string;
  at: number;
  hosts: Record<string, HostTotals & { slots: [number, ...number[]][] }>;
  tcp: Record<
    string,
    { active: number; connections: number; bytesIn: number; bytesOut: number; slots: [number, ...number[]][] }
  >;
}

export interface Owner {
  agent: string;
  container: string;
}

/** A route's host and path, and who serves it. */
interface RouteEntry {
  host: string;
  path: string;
  owners: (Owner & { upstream: string })[];
}

/** What the traffic counter needs to know of one site: its host and path, and who serves it. */
export type TrafficRoute = RouteEntry;

/**
 * The sites the front door serves, with their owners (agent, container, upstream host:port), for
 * the access log's `owner`. Pure; `ownerOf` finds a route by its key (`agentId:routeId`).
 */
export function trafficRoutes(
  sites: readonly { host: string; path: string; routeKeys: string[] }[],
  ownerOf: (routeKey: string) => (Owner & { upstream: string }) | undefined,
): TrafficRoute[] {
  return drain(trafficRouteSteps(sites, ownerOf));
}

/** As trafficRoutes, with pause points (a hostile agent's snapshot changes 25k sites). */
export function* trafficRouteSteps(
  sites: readonly { host: string; path: string; routeKeys: string[] }[],
  ownerOf: (routeKey: string) => (Owner & { upstream: string }) | undefined,
): Generator<void, TrafficRoute[]> {
  const pause = pauseEvery();
  const out: TrafficRoute[] = [];
  for (const s of sites) {
    if (pause()) yield;
    const owners: (Owner & { upstream: string })[] = [];
    for (const k of s.routeKeys) {
      const o = ownerOf(k);
      if (o) owners.push(o);
    }
    out.push({ host: s.host, path: s.path, owners });
  }
  return out;
}

export interface TrafficOptions {
  maxHosts: number;
  log: AccessLogWriter;
  now?: () => number;
}

export class Traffic {
  private readonly totals = new Map<string, HostTotals>();
  private readonly slots = new Map<string, Map<number, Slot>>();
  private readonly tcpSlots = new Map<string, Map<number, TcpSlot>>();
  private tcpLast = new Map<
    string,
    { connections: number; bytesIn: number; bytesOut: number; active: number }
  >();
  /** Exact host → its routes, longest path first; wildcard routes under their pattern. */
  private routes = new Map<string, RouteEntry[]>();
  private readonly now: () => number;
  /** Counters found in the current slot, by route host (see counters()); emptied every slot. */
  private readonly hot = new Map<string, { t: HostTotals; s: Slot }>();
  private hotSlot = -1;
  private isoSecond = -1;
  private isoPrefix = '';
  logged = 0;

  constructor(private readonly o: TrafficOptions) {
    this.now = o.now ?? Date.now;
  }

  /** The routes being served now (after each reconcile pass): who owns which host and path. */
  setRoutes(routes: readonly TrafficRoute[]): void {
    this.routes = new Map();
    this.patchRoutes([], routes);
  }

  /** Changes only these sites: `removed` go, then `added` come (a changed site is in both). */
  patchRoutes(removed: readonly { host: string; path: string }[], added: readonly TrafficRoute[]): void {
    for (const r of removed) {
      const rest = (this.routes.get(r.host) ?? []).filter((e) => e.path !== r.path);
      if (rest.length > 0) this.routes.set(r.host, rest);
      else this.routes.delete(r.host);
    }
    const touched = new Set<RouteEntry[]>();
    for (const r of added) {
      const entry = () => ({ host: r.host, path: r.path, owners: [...r.owners] });
      let list = this.routes.get(r.host);
      if (!list) {
        // Made at its size: a list first pushed to keeps room for 16 more, and most hosts have
        // one path (50k hosts, 6 MiB of this thread's heap).
        list = [entry()];
        this.routes.set(r.host, list);
      } else {
        const same = list.find((e) => e.path === r.path);
        if (same) same.owners.push(...r.owners);
        else list.push(entry());
      }
      touched.add(list);
    }
    for (const list of touched) list.sort((a, b) => b.path.length - a.path.length);
  }

  /** The route serving `host` + `path`, as Caddy picks it: exact name, then wildcard; longest path. */
  private route(host: string, path: string): RouteEntry | undefined {
    let list = this.routes.get(host);
    if (!list) {
      const dot = host.indexOf('.');
      if (dot > 0) list = this.routes.get(`*${host.slice(dot)}`);
    }
    if (!list) return undefined;
    const q = path.indexOf('?');
    const p = q < 0 ? path : path.slice(0, q);
    return list.find(
      (e) =>
        e.path === '/' || p === e.path || (p.startsWith(e.path) && p.charCodeAt(e.path.length) === SLASH),
    );
  }

  /** Requests from Caddy, in the order it logged them. */
  record(requests: HttpAccess[]): void {
    const slot = Math.floor(this.now() / SLOT_MS);
    if (slot !== this.hotSlot) {
      this.hot.clear();
      this.hotSlot = slot;
    }
    const logging = this.o.log.enabled;
    const lines: string[] = [];
    for (const a of requests) {
      const route = this.route(a.host, a.path);
      this.count(this.counters(route?.host, slot), a);
      if (!logging) continue;
      const owner =
        route &&
        (route.owners.length === 1 ? route.owners[0] : route.owners.find((x) => x.upstream === a.upstream));
      // Written out by hand, in the order of the TCP log's fields: JSON.stringify of an object per
      // request was most of the cost of a line. Strings still go through JSON.stringify.
      lines.push(
        `{"time":${this.iso(a.start)},"client":${str(a.client)},"host":${str(a.host)},"method":${str(a.method)},"path":${str(a.path)},"proto":${str(a.proto)},"status":${num(a.status)},"bytesIn":${num(a.bytesIn)},"bytesOut":${num(a.bytesOut)},"durationMs":${num(a.durationMs)},"upstream":${a.upstream === null ? 'null' : str(a.upstream)},"route":${route ? str(route.path === '/' ? route.host : `${route.host}${route.path}`) : 'null'},"owner":${owner ? `{"agent":${str(owner.agent)},"container":${str(owner.container)}}` : 'null'}}`,
      );
    }
    this.logged += lines.length;
    this.o.log.writeLines(lines);
  }

  /** A start time as JSON (an ISO string); the date and time up to the second is made once a second. */
  private iso(ms: number): string {
    if (!(ms >= 0 && ms < MAX_ISO_MS)) {
      const d = new Date(ms);
      return Number.isNaN(d.getTime()) ? 'null' : `"${d.toISOString()}"`;
    }
    const second = Math.floor(ms / 1000);
    if (second !== this.isoSecond) {
      this.isoSecond = second;
      // "2026-12-02T14:30:05."
      this.isoPrefix = `"${new Date(second * 1000).toISOString().slice(0, 20)}`;
    }
    const m = Math.floor(ms - second * 1000);
    return `${this.isoPrefix}${m < 10 ? '00' : m < 100 ? '0' : ''}${m}Z"`;
  }

  /**
   * The counters of a route host (undefined: no route) in this slot, found once per slot: its
   * label ("other" past maxHosts), totals and slot.
   */
  private counters(host: string | undefined, slotIndex: number): { t: HostTotals; s: Slot } {
    const key = host ?? NO_ROUTE;
    let c = this.hot.get(key);
    if (c) return c;
    const label = this.label(host);
    let t = this.totals.get(label);
    if (!t) {
      t = { classes: CLASSES.map(() => 0), bytesIn: 0, bytesOut: 0, buckets: newBuckets(), durationSum: 0 };
      this.totals.set(label, t);
    }
    let series = this.slots.get(label);
    if (!series) {
      series = new Map();
      this.slots.set(label, series);
    }
    let s = series.get(slotIndex);
    if (!s) {
      s = new Array(SLOT_LEN).fill(0);
      series.set(slotIndex, s);
    }
    c = { t, s };
    this.hot.set(key, c);
    return c;
  }

  /** The metrics label of a route host: itself while there is room, else "other". */
  private label(host: string | undefined): string {
    if (host === undefined) return OTHER;
    if (this.totals.has(host)) return host;
    // "other" takes no place of its own among the maxHosts.
    return this.totals.size - (this.totals.has(OTHER) ? 1 : 0) < this.o.maxHosts ? host : OTHER;
  }

  private count({ t, s }: { t: HostTotals; s: Slot }, a: HttpAccess): void {
    const cls = a.status < 100 ? 0 : Math.min(5, Math.floor(a.status / 100));
    t.classes[cls]!++;
    t.bytesIn += a.bytesIn;
    t.bytesOut += a.bytesOut;
    const seconds = a.durationMs / 1000;
    const b = bucketOf(seconds);
    t.buckets[b]!++;
    t.durationSum += seconds;
    s[REQ]!++;
    if (a.status >= 500) s[ERR]!++;
    s[BIN]! += a.bytesIn;
    s[BOUT]! += a.bytesOut;
    s[B0 + b]!++;
  }

  /**
   * Every SLOT_MS: the TCP forwarder's counters become this slot's TCP figures (connections and
   * bytes are counted when a connection ends), and slots older than the window go.
   */
  tick(tcp: Map<number, ListenerCounters>, active: Map<number, number>): void {
    const slot = Math.floor(this.now() / SLOT_MS);
    // Pruning may drop slots the hot counters point to.
    this.hot.clear();
    const next = new Map<
      string,
      { connections: number; bytesIn: number; bytesOut: number; active: number }
    >();
    for (const [port, c] of tcp) {
      const key = String(port);
      const cur = {
        connections: Object.values(c.closed).reduce((n, x) => n + (x ?? 0), 0),
        bytesIn: c.bytesIn,
        bytesOut: c.bytesOut,
        active: active.get(port) ?? 0,
      };
      next.set(key, cur);
      const prev = this.tcpLast.get(key);
      // A restarted forwarder starts from zero again: count from there.
      const base =
        prev && prev.connections <= cur.connections ? prev : { connections: 0, bytesIn: 0, bytesOut: 0 };
      const d = [
        cur.connections - base.connections,
        cur.bytesIn - base.bytesIn,
        cur.bytesOut - base.bytesOut,
      ];
      let series = this.tcpSlots.get(key);
      if (!series) {
        series = new Map();
        this.tcpSlots.set(key, series);
      }
      const s = series.get(slot) ?? [0, 0, 0];
      series.set(
        slot,
        s.map((v, i) => v + Math.max(0, d[i]!)),
      );
    }
    this.tcpLast = next;
    for (const key of this.tcpSlots.keys()) if (!next.has(key)) this.tcpSlots.delete(key);
    prune(this.slots, slot);
    prune(this.tcpSlots, slot);
  }

  /** This replica's figures; `recentSlots` limits the slots to the newest few (for publishing). */
  snapshot(replica: string, recentSlots = WINDOW_SLOTS): ReplicaTraffic {
    const now = this.now();
    const from = Math.floor(now / SLOT_MS) - recentSlots + 1;
    const pick = (m: Map<number, number[]> | undefined) =>
      [...(m ?? [])].filter(([i]) => i >= from).map(([i, s]) => [i, ...s] as [number, ...number[]]);
    const hosts: ReplicaTraffic['hosts'] = {};
    for (const [label, t] of this.totals) hosts[label] = { ...t, slots: pick(this.slots.get(label)) };
    const tcp: ReplicaTraffic['tcp'] = {};
    for (const [key, last] of this.tcpLast) tcp[key] = { ...last, slots: pick(this.tcpSlots.get(key)) };
    return { replica, at: now, hosts, tcp };
  }

  families(counters: { lines: number; unreadable: number }): MetricFamily[] {
    const hosts = [...this.totals];
    return [
      {
        name: 'berth_http_requests_total',
        help: `HTTP requests through the front door by route host ("${OTHER}": hosts no route serves, and hosts past --metrics-max-hosts) and status class`,
        type: 'counter',
        samples: hosts.flatMap(([host, t]) =>
          t.classes.flatMap((n, i) =>
            n > 0 ? [{ labels: { host, code_class: CLASSES[i]! }, value: n }] : [],
          ),
        ),
      },
      {
        name: 'berth_http_request_duration_seconds',
        help: 'HTTP request duration at the front door, from the request read to the response written, by route host',
        type: 'histogram',
        samples: hosts.flatMap(([host, t]) => {
          let run = 0;
          const cumulative = LATENCY_BUCKETS.map((_, i) => (run += t.buckets[i]!));
          const count = t.buckets.reduce((a, b) => a + b, 0);
          return histogramSamples(LATENCY_BUCKETS, cumulative, t.durationSum, count, { host });
        }),
      },
      {
        name: 'berth_http_bytes_total',
        help: 'HTTP body bytes by route host (in: request bodies as declared by Content-Length; out: response bodies)',
        type: 'counter',
        samples: hosts.flatMap(([host, t]) => [
          { labels: { host, direction: 'in' }, value: t.bytesIn },
          { labels: { host, direction: 'out' }, value: t.bytesOut },
        ]),
      },
      {
        name: 'berth_http_log_lines_total',
        help: 'Request lines read from Caddy, by outcome (unreadable: not the JSON Berth expects, or longer than 64 KiB)',
        type: 'counter',
        samples: [
          { labels: { outcome: 'read' }, value: counters.lines - counters.unreadable },
          { labels: { outcome: 'unreadable' }, value: counters.unreadable },
        ],
      },
    ];
  }

  /** Owners of each route host, for the report. */
  owners(): Map<string, HostTraffic['owners']> {
    const out = new Map<string, HostTraffic['owners']>();
    for (const [host, list] of this.routes) {
      out.set(
        host,
        list.flatMap((e) => e.owners.map((o) => ({ agent: o.agent, container: o.container, path: e.path }))),
      );
    }
    return out;
  }
}

/** The hot-counter key of requests no route serves (route hosts never start with a space). */
const NO_ROUTE = ' none';
/** Year 10000: from there toISOString writes a six-digit year with a sign. */
const MAX_ISO_MS = 253_402_300_800_000;
const SLASH = 47;
const str = JSON.stringify as (s: string) => string;
/** A number as JSON writes it (null when not finite). */
const num = (n: number) => (Number.isFinite(n) ? String(n) : 'null');

const newBuckets = () => new Array(LATENCY_BUCKETS.length + 1).fill(0) as number[];

function bucketOf(seconds: number): number {
  for (let i = 0; i < LATENCY_BUCKETS.length; i++) if (seconds <= LATENCY_BUCKETS[i]!) return i;
  return LATENCY_BUCKETS.length;
}

function prune(all: Map<string, Map<number, number[]>>, slot: number): void {
  for (const [key, series] of all) {
    for (const i of series.keys()) if (i <= slot - WINDOW_SLOTS) series.delete(i);
    if (series.size === 0) all.delete(key);
  }
}

/**
 * The `q` quantile (0..1) of a non-cumulative bucket histogram, in ms, interpolated within the
 * bucket as Prometheus' histogram_quantile does; null without observations.
 */
export function quantileMs(buckets: readonly number[], q: number): number | null {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    const n = buckets[i]!;
    if (n > 0 && seen + n >= rank) {
      if (i >= LATENCY_BUCKETS.length) return LATENCY_BUCKETS[LATENCY_BUCKETS.length - 1]! * 1000;
      const lo = i === 0 ? 0 : LATENCY_BUCKETS[i - 1]!;
      const hi = LATENCY_BUCKETS[i]!;
      return Math.round((lo + ((hi - lo) * (rank - seen)) / n) * 1e6) / 1e3;
    }
    seen += n;
  }
  return LATENCY_BUCKETS[LATENCY_BUCKETS.length - 1]! * 1000;
}

/**
 * Another replica's latest publication folded into what this replica remembers of it: totals are
 * replaced, slots overwritten by index (a publication carries the newest few), old slots dropped.
 */
export function foldReplica(prev: ReplicaTraffic | undefined, next: ReplicaTraffic): ReplicaTraffic {
  const oldest = Math.floor(next.at / SLOT_MS) - WINDOW_SLOTS + 1;
  const merge = (a: [number, ...number[]][] = [], b: [number, ...number[]][]) => {
    const m = new Map(a.filter(([i]) => i >= oldest).map((s) => [s[0], s] as const));
    for (const s of b) m.set(s[0], s);
    return [...m.values()].sort((x, y) => x[0] - y[0]);
  };
  const hosts: ReplicaTraffic['hosts'] = {};
  for (const [h, t] of Object.entries(next.hosts))
    hosts[h] = { ...t, slots: merge(prev?.hosts[h]?.slots, t.slots) };
  const tcp: ReplicaTraffic['tcp'] = {};
  for (const [k, t] of Object.entries(next.tcp))
    tcp[k] = { ...t, slots: merge(prev?.tcp[k]?.slots, t.slots) };
  return { ...next, hosts, tcp };
}

/** How much of the last minute the "now" figures cover: 11 whole slots and the current one. */
const NOW_SLOTS = 12;

/** The Traffic page's and `berth top`'s view: every replica's figures summed, per host and listener. */
export function trafficReport(o: {
  replicas: ReplicaTraffic[];
  self: string;
  now: number;
  owners: Map<string, HostTraffic['owners']>;
  enabled: boolean;
}): TrafficReport {
  const cur = Math.floor(o.now / SLOT_MS);
  const first = cur - WINDOW_SLOTS + 1;
  const nowSeconds = (NOW_SLOTS - 1) * (SLOT_MS / 1000) + Math.max(0.001, (o.now - cur * SLOT_MS) / 1000);
  const sumSlots = (lists: [number, ...number[]][][], len: number) => {
    const out = Array.from({ length: WINDOW_SLOTS }, () => new Array(len).fill(0) as number[]);
    for (const list of lists)
      for (const [i, ...v] of list) {
        const row = out[i - first];
        if (row) for (let j = 0; j < v.length; j++) row[j]! += v[j]!;
      }
    return out;
  };

  const hostNames = new Set(o.replicas.flatMap((r) => Object.keys(r.hosts)));
  const hosts: HostTraffic[] = [...hostNames].map((host) => {
    const parts = o.replicas.map((r) => r.hosts[host]).filter((x) => x !== undefined);
    const classes = CLASSES.map(() => 0);
    let bytesIn = 0;
    let bytesOut = 0;
    for (const p of parts) {
      for (let i = 0; i < CLASSES.length; i++) classes[i]! += p.classes[i] ?? 0;
      bytesIn += p.bytesIn;
      bytesOut += p.bytesOut;
    }
    const slots = sumSlots(
      parts.map((p) => p.slots),
      SLOT_LEN,
    );
    const recent = slots.slice(-NOW_SLOTS);
    const sum = (k: number) => recent.reduce((a, s) => a + s[k]!, 0);
    const recentBuckets = newBuckets().map((_, b) => sum(B0 + b));
    const requests = sum(REQ);
    const perSecond = SLOT_MS / 1000;
    return {
      host,
      owners: o.owners.get(host) ?? [],
      total: {
        requests: classes.reduce((a, b) => a + b, 0),
        byClass: Object.fromEntries(
          CLASSES.map((c, i) => [c, classes[i]!]),
        ) as HostTraffic['total']['byClass'],
        bytesIn,
        bytesOut,
      },
      now: {
        requestsPerSecond: round(requests / nowSeconds),
        errorsPerSecond: round(sum(ERR) / nowSeconds),
        errorRate: requests > 0 ? round(sum(ERR) / requests) : 0,
        p50Ms: quantileMs(recentBuckets, 0.5),
        p99Ms: quantileMs(recentBuckets, 0.99),
        bytesInPerSecond: round(sum(BIN) / nowSeconds),
        bytesOutPerSecond: round(sum(BOUT) / nowSeconds),
      },
      series: {
        requestsPerSecond: slots.map((s) => round(s[REQ]! / perSecond)),
        errorsPerSecond: slots.map((s) => round(s[ERR]! / perSecond)),
        p50Ms: slots.map((s) => quantileMs(s.slice(B0), 0.5)),
        p99Ms: slots.map((s) => quantileMs(s.slice(B0), 0.99)),
        bytesInPerSecond: slots.map((s) => round(s[BIN]! / perSecond)),
        bytesOutPerSecond: slots.map((s) => round(s[BOUT]! / perSecond)),
      },
    };
  });
  hosts.sort((a, b) => b.now.requestsPerSecond - a.now.requestsPerSecond || a.host.localeCompare(b.host));

  const listeners = new Set(o.replicas.flatMap((r) => Object.keys(r.tcp)));
  const tcp: TcpTraffic[] = [...listeners].map((listener) => {
    const parts = o.replicas.map((r) => r.tcp[listener]).filter((x) => x !== undefined);
    const slots = sumSlots(
      parts.map((p) => p.slots),
      3,
    );
    const recent = slots.slice(-NOW_SLOTS);
    const sum = (k: number) => recent.reduce((a, s) => a + s[k]!, 0);
    const perSecond = SLOT_MS / 1000;
    return {
      listener,
      active: parts.reduce((a, p) => a + p.active, 0),
      total: {
        connections: parts.reduce((a, p) => a + p.connections, 0),
        bytesIn: parts.reduce((a, p) => a + p.bytesIn, 0),
        bytesOut: parts.reduce((a, p) => a + p.bytesOut, 0),
      },
      now: {
        connectionsPerSecond: round(sum(0) / nowSeconds),
        bytesInPerSecond: round(sum(1) / nowSeconds),
        bytesOutPerSecond: round(sum(2) / nowSeconds),
      },
      series: {
        connectionsPerSecond: slots.map((s) => round(s[0]! / perSecond)),
        bytesInPerSecond: slots.map((s) => round(s[1]! / perSecond)),
        bytesOutPerSecond: slots.map((s) => round(s[2]! / perSecond)),
      },
    };
  });
  tcp.sort((a, b) => Number(a.listener) - Number(b.listener));

  return {
    at: o.now,
    enabled: o.enabled,
    slotSeconds: SLOT_MS / 1000,
    windowSeconds: (SLOT_MS / 1000) * WINDOW_SLOTS,
    replicas: o.replicas
      .map((r) => ({ replica: r.replica, at: r.at, self: r.replica === o.self }))
      .sort((a, b) => a.replica.localeCompare(b.replica)),
    hosts,
    tcp,
  };
}

const round = (n: number) => Math.round(n * 1000) / 1000;
