// Desired sites → the parts of a Caddy JSON config that Berth owns. Pure, no I/O.
// Berth owns only servers named `berth_*` (each with an `@id`) and one TLS automation policy
// with `@id: berth_tls`; everything else in the operator's Caddy config is left as it is.
import type { Site, SiteChanges } from '../../model/desired.js';
import { AGENT_PATH } from '../../model/protocol.js';
import { drain, pauseEvery } from '../../model/slices.js';
import { isTunnelAddress } from '../../model/tunnel.js';
import type { Upstream } from '../../model/types.js';

export type TlsMode = 'auto' | 'internal' | 'off';

/**
 * The zero-reload layout: hosts whose whole config is "this host → these upstreams" are not
 * written into Caddy at all. One catch-all route asks Berth's DNS responder, per request, for
 * the SRV records of `<host>.<zone>`, so such hosts come, go and move without a config change.
 */
export interface DynamicLayout {
  /** The DNS responder, e.g. "127.0.0.1:5353" (asked over UDP, TCP when truncated). */
  resolver: string;
  zone: string;
  /** host:port answering 404 for unknown hosts: Caddy's fallback when a lookup fails. */
  notFound: string;
  /** How long Caddy keeps an answer (Caddy duration), e.g. "1s". */
  refresh: string;
  /** URL Caddy asks before getting a certificate on demand (TLS modes). */
  ask?: string;
}

/**
 * One JSON line per request, streamed to Berth (its access log and per-route metrics). Caddy
 * writes them with a `net` writer; its filter encoder drops request and response headers (and
 * with them Authorization and Cookie) and the query string before a line leaves Caddy.
 */
export interface TrafficLog {
  /** Caddy network address Berth reads from, e.g. "unix//var/lib/berth/traffic.sock". */
  address: string;
  /** Keep query strings in `request.uri` (off by default: they often carry tokens). */
  query: boolean;
}

/** `--ui-host`: the API and web UI served at the front door, proxied to the API listener. */
export interface UiSite {
  host: string;
  /** The API listener, host:port. */
  upstream: string;
}

export interface CaddyBuildOptions {
  tls: TlsMode;
  ui?: UiSite;
  dynamic?: DynamicLayout;
  traffic?: TrafficLog;
  /** Listen addresses already include `--http-bind` when one is given. */
  httpListen: string;
  httpsListen: string;
}

// biome-ignore lint/suspicious/noExplicitAny: Caddy JSON is open-ended by design.
export type Json = any;

export interface BerthCaddyParts {
  servers: Record<string, Json>;
  tlsPolicy?: Json;
  /** apps.tls.automation.on_demand, for certificates of hosts Caddy's config does not name. */
  onDemand?: Json;
  /** Berth's own entries of `logging.logs` (named `berth_*`). */
  logs?: Record<string, Json>;
}

/**
 * Which sites the dynamic layout serves through DNS: a host with a single root site, plain
 * http upstreams, no path handling and no allow-list. Everything else needs per-route config.
 */
export function splitSites(sites: readonly Site[]): { explicit: Site[]; dynamic: Site[] } {
  const perHost = sitesPerHost(sites);
  const explicit: Site[] = [];
  const dynamic: Site[] = [];
  for (const s of sites) (servedByDns(s, perHost) ? dynamic : explicit).push(s);
  return { explicit, dynamic };
}

/**
 * splitSites kept between passes: given the changes since the list it last saw, it re-classifies
 * only the hosts they touch, so at 50k sites a pass that changed a few costs a few.
 */
export class SiteSplit {
  private sites?: readonly Site[];
  /**
   * The list before the last update and the hosts that update touched (undefined after a rebuild):
   * one split serves every reader of a pass (each Caddy target and the DNS table), and a reader
   * one step behind asks hostsSince() for the hosts of that step.
   */
  private before?: readonly Site[];
  private touched?: Set<string>;
  /** Host → its site, or its sites when it has several (most have one: no list for them). */
  private readonly byHost = new Map<string, Site | Site[]>();
  /** Host → the one site DNS serves for it. */
  readonly dynamic = new Map<string, Site>();
  private explicitSet = new Set<Site>();
  private explicitList: Site[] = [];

  /** Whether any site has this host. */
  has(host: string): boolean {
    return this.byHost.has(host);
  }

  /** Sites Caddy's config must name, in the order of the list. */
  get explicit(): Site[] {
    return this.explicitList;
  }

  /**
   * Brings the split to `sites`. Returns the hosts whose classification may have changed, or
   * undefined when it was worked out anew (every host may have).
   */
  update(sites: readonly Site[], changes?: SiteChanges): Set<string> | undefined {
    return drain(this.updateSteps(sites, changes));
  }

  /** As update, with pause points: a hostile agent's 25k changed sites are worked in slices. */
  *updateSteps(sites: readonly Site[], changes?: SiteChanges): Generator<void, Set<string> | undefined> {
    if (sites === this.sites) return new Set();
    const pause = pauseEvery();
    this.before = this.sites;
    this.touched = undefined;
    if (!changes || changes.since !== this.sites) {
      yield* this.rebuild(sites, pause);
      return undefined;
    }
    this.sites = sites;
    const hosts = new Set<string>();
    for (const s of changes.removed) {
      if (pause()) yield;
      hosts.add(s.host);
      const rest = this.sitesOf(s.host).filter((x) => x !== s);
      if (rest.length > 1) this.byHost.set(s.host, rest);
      else if (rest.length === 1) this.byHost.set(s.host, rest[0]!);
      else this.byHost.delete(s.host);
    }
    for (const s of changes.added) {
      if (pause()) yield;
      hosts.add(s.host);
      this.addSite(s);
    }
    let explicitChanged = false;
    for (const s of changes.removed) {
      if (pause()) yield;
      if (this.explicitSet.delete(s)) explicitChanged = true;
    }
    for (const host of hosts) {
      if (pause()) yield;
      this.dynamic.delete(host);
      const list = this.sitesOf(host);
      for (const s of list) this.explicitSet.delete(s);
      const one = list.length === 1 ? list[0]! : undefined;
      if (one && plainSite(one)) this.dynamic.set(host, one);
      else {
        for (const s of list) this.explicitSet.add(s);
        explicitChanged ||= list.length > 0;
      }
    }
    if (explicitChanged) {
      const explicit: Site[] = [];
      for (const s of sites) {
        if (pause()) yield;
        if (this.explicitSet.has(s)) explicit.push(s);
      }
      this.explicitList = explicit;
    }
    this.touched = hosts;
    return hosts;
  }

  /**
   * Brings the split to `sites` (if another reader has not already) and returns the hosts whose
   * classification may have changed since `from`, the list this reader last saw: undefined when
   * that is not known (the reader is further behind, or the split was worked out anew), and then
   * every host may have. The returned set is shared between readers: read it, do not change it.
   */
  *hostsSinceSteps(
    from: readonly Site[] | undefined,
    sites: readonly Site[],
    changes?: SiteChanges,
  ): Generator<void, ReadonlySet<string> | undefined> {
    if (sites !== this.sites) yield* this.updateSteps(sites, changes);
    if (from === sites) return new Set();
    return from !== undefined && from === this.before ? this.touched : undefined;
  }

  private *rebuild(sites: readonly Site[], pause: () => boolean): Generator<void> {
    this.sites = sites;
    this.byHost.clear();
    this.dynamic.clear();
    for (const s of sites) {
      if (pause()) yield;
      this.addSite(s);
    }
    const explicit: Site[] = [];
    for (const s of sites) {
      if (pause()) yield;
      if (this.byHost.get(s.host) === s && plainSite(s)) this.dynamic.set(s.host, s);
      else explicit.push(s);
    }
    this.explicitList = explicit;
    this.explicitSet = new Set(explicit);
  }

  private sitesOf(host: string): Site[] {
    const v = this.byHost.get(host);
    return v === undefined ? [] : Array.isArray(v) ? v : [v];
  }

  private addSite(s: Site): void {
    const v = this.byHost.get(s.host);
    if (v === undefined) this.byHost.set(s.host, s);
    else if (Array.isArray(v)) v.push(s);
    else this.byHost.set(s.host, [v, s]);
  }
}

/** How many sites each host has. */
export function sitesPerHost(sites: readonly Site[]): Map<string, number> {
  const perHost = new Map<string, number>();
  for (const s of sites) perHost.set(s.host, (perHost.get(s.host) ?? 0) + 1);
  return perHost;
}

/** Whether the dynamic layout serves this site through DNS (see splitSites). */
export function servedByDns(s: Site, perHost: ReadonlyMap<string, number>): boolean {
  return perHost.get(s.host) === 1 && plainSite(s);
}

/** A site DNS can serve when it is its host's only one: no path handling, plain http upstreams. */
function plainSite(s: Site): boolean {
  return (
    // An IPv6 literal cannot be a DNS label of the responder's zone.
    !s.host.includes(':') &&
    s.path === '/' &&
    !s.stripPath &&
    !s.allow?.length &&
    s.upstreams.every((u) => u.scheme === 'http')
  );
}

export const SERVER_PREFIX = 'berth_';
export const TLS_POLICY_ID = 'berth_tls';
/** The logger Berth's servers log requests to, and the `logging.logs` entry that writes it. */
export const ACCESS_LOG = 'berth_access';
export const ACCESS_LOGGER = `http.log.access.${ACCESS_LOG}`;

/**
 * Caddy 2.6's access log has no field for the upstream that served a request, none for the
 * request body's size, and status 0 for an upgraded (WebSocket) connection. `user_id` is filled
 * from the `http.auth.user.id` placeholder when the line is written, and Berth's routes never
 * authenticate, so a `map` handler (resolved lazily, at log time) defines that placeholder as
 * "<upstream host:port> <Content-Length> <Upgrade>".
 */
export const TRAFFIC_MAP = {
  handler: 'map',
  source: '{http.request.host}',
  destinations: ['{http.auth.user.id}'],
  defaults: [
    '{http.reverse_proxy.upstream.hostport} {http.request.header.Content-Length} {http.request.header.Upgrade}',
  ],
};

function trafficLog(t: TrafficLog): Json {
  const fields: Json = {
    'request>headers': { filter: 'delete' },
    'request>tls': { filter: 'delete' },
    resp_headers: { filter: 'delete' },
  };
  if (!t.query) fields['request>uri'] = { filter: 'regexp', regexp: '\\?.*$', value: '' };
  return {
    writer: { output: 'net', address: t.address, dial_timeout: '2s' },
    encoder: {
      format: 'filter',
      // Leaner lines: no level, logger name or message (always the same here).
      wrap: { format: 'json', message_key: '', level_key: '', name_key: '' },
      fields,
    },
    include: [ACCESS_LOGGER],
  };
}

const NOT_FOUND = {
  handler: 'static_response',
  status_code: 404,
  headers: { 'Content-Type': ['text/plain; charset=utf-8'] },
  body: 'berth: no route for this host or path\n',
};

/**
 * `versionId` becomes the `@id` of the final fallback route: one cheap `GET /id/<versionId>`
 * then tells whether Caddy still holds exactly this config.
 */
export function buildCaddyParts(sites: Site[], opts: CaddyBuildOptions, versionId?: string): BerthCaddyParts {
  const byHost = new Map<string, Site[]>();
  const own = opts.dynamic ? splitSites(sites).explicit : sites;
  for (const s of own) byHost.set(s.host, [...(byHost.get(s.host) ?? []), s]);
  const hosts = [...byHost.keys()].sort(hostOrder);
  const routes: Json[] = hosts.map((h) => hostRoute(h, byHost.get(h)!));
  const last = opts.dynamic ? { handle: [dynamicProxy(opts.dynamic)] } : { handle: [NOT_FOUND] };
  routes.push(versionId ? { '@id': versionId, ...last } : last);
  if (opts.ui) routes.unshift(uiRoute(opts.ui));
  if (opts.traffic) routes.unshift({ handle: [TRAFFIC_MAP] });
  // Only the server that routes logs requests (plain HTTP only redirects when TLS is on).
  const logs = opts.traffic ? { logs: { default_logger_name: ACCESS_LOG } } : {};
  const logParts = opts.traffic ? { logs: { [ACCESS_LOG]: trafficLog(opts.traffic) } } : {};

  if (opts.tls === 'off') {
    return {
      servers: {
        berth_http: {
          '@id': 'berth_http',
          listen: [opts.httpListen],
          routes,
          automatic_https: { disable: true },
          ...logs,
        },
      },
      ...logParts,
    };
  }
  const parts: BerthCaddyParts = {
    servers: {
      berth_https: {
        '@id': 'berth_https',
        listen: [opts.httpsListen],
        routes,
        // The dynamic layout names no hosts, so TLS must be switched on explicitly.
        ...(opts.dynamic ? { tls_connection_policies: [{}] } : {}),
        ...logs,
      },
      // Plain HTTP only redirects; Caddy answers ACME HTTP challenges on it before any route.
      berth_http: {
        '@id': 'berth_http',
        listen: [opts.httpListen],
        routes: [
          {
            handle: [
              {
                handler: 'static_response',
                status_code: 308,
                headers: {
                  Location: [
                    `https://{http.request.host}${httpsPortSuffix(opts.httpsListen)}{http.request.uri}`,
                  ],
                },
              },
            ],
          },
        ],
        automatic_https: { disable_redirects: true },
      },
    },
    ...logParts,
  };
  if (opts.dynamic) {
    // Hosts Caddy's config never names get certificates on demand, if Berth says they are routed.
    parts.tlsPolicy = { '@id': TLS_POLICY_ID, on_demand: true };
    if (opts.tls === 'internal') parts.tlsPolicy.issuers = [{ module: 'internal' }];
    if (opts.dynamic.ask) parts.onDemand = { ask: opts.dynamic.ask };
  } else if (opts.tls === 'internal' && (hosts.length > 0 || opts.ui)) {
    const subjects = opts.ui && !hosts.includes(opts.ui.host) ? [opts.ui.host, ...hosts] : hosts;
    parts.tlsPolicy = { '@id': TLS_POLICY_ID, subjects, issuers: [{ module: 'internal' }] };
  }
  return parts;
}

/**
 * The UI host, before every agent's route (admission refuses agents' claims on it). Agent
 * links are refused here: through Caddy, every config change would close them.
 */
function uiRoute(ui: UiSite): Json {
  return {
    match: [{ host: [ui.host] }],
    handle: [
      {
        handler: 'subroute',
        routes: [
          {
            match: [{ path: [AGENT_PATH, `${AGENT_PATH.slice(0, AGENT_PATH.indexOf('/', 1))}/*`] }],
            handle: [
              {
                handler: 'static_response',
                status_code: 404,
                headers: { 'Content-Type': ['text/plain; charset=utf-8'] },
                body: "berth: agents connect to the server's agent listener (--agent-listen, :7443), not through the front door\n",
              },
            ],
          },
          { handle: [{ handler: 'reverse_proxy', upstreams: [{ dial: ui.upstream }] }] },
        ],
      },
    ],
    terminal: true,
  };
}

function dynamicProxy(d: DynamicLayout): Json {
  const resolver = { addresses: [`udp/${d.resolver}`] };
  return {
    handler: 'reverse_proxy',
    dynamic_upstreams: {
      source: 'srv',
      name: `{http.request.host}.${d.zone}`,
      refresh: d.refresh,
      resolver,
      dial_timeout: '3s',
    },
    // Used only when a lookup fails (a name DNS cannot carry, or the responder is gone): a clean 404.
    upstreams: [{ dial: d.notFound }],
    // Lookups are cached for `refresh`: a replica that just left may still be picked, so a refused
    // connection is tried again (on another, at random). No passive health check here: most of these
    // hosts have one upstream, and marking it down would turn a 502 into a 503.
    load_balancing: { try_duration: '2s', try_interval: '100ms' },
    // SRV targets are names the same responder answers.
    transport: { protocol: 'http', resolver },
  };
}

function hostRoute(host: string, sites: Site[]): Json {
  const match = [{ host: [host] }];
  // The common case, one upstream set for the whole host, needs no subroute.
  if (sites.length === 1 && sites[0]!.path === '/')
    return { match, handle: [...guard(sites[0]!), proxyHandler(sites[0]!)], terminal: true };
  // Longest prefix first, so /api/v2 is tried before /api and / comes last.
  const ordered = [...sites].sort((a, b) => b.path.length - a.path.length || a.path.localeCompare(b.path));
  const sub: Json[] = ordered.map((s) => {
    const handle: Json[] = guard(s);
    if (s.stripPath && s.path !== '/') handle.push({ handler: 'rewrite', strip_path_prefix: s.path });
    handle.push(proxyHandler(s));
    const r: Json = { handle };
    if (s.path !== '/') r.match = [{ path: [s.path, `${s.path}/*`] }];
    return r;
  });
  if (!ordered.some((s) => s.path === '/')) sub.push({ handle: [NOT_FOUND] });
  return { match, handle: [{ handler: 'subroute', routes: sub }], terminal: true };
}

const FORBIDDEN = {
  handler: 'static_response',
  status_code: 403,
  headers: { 'Content-Type': ['text/plain; charset=utf-8'] },
  body: 'berth: your address may not use this route\n',
};

/** For a site with an allow-list: a 403 for every client outside it, before anything else. */
function guard(s: Site): Json[] {
  if (!s.allow || s.allow.length === 0) return [];
  return [
    {
      handler: 'subroute',
      routes: [{ match: [{ not: [{ remote_ip: { ranges: s.allow } }] }], handle: [FORBIDDEN] }],
    },
  ];
}

/**
 * With several upstreams, a request whose upstream refuses the connection (a replica that has just
 * stopped, e.g. a Swarm task in a rolling update, before its route is gone) is tried on another,
 * and that upstream is avoided for a moment; the client sees no error.
 */
const RETRY: Json = {
  load_balancing: { try_duration: '3s', try_interval: '100ms' },
  health_checks: { passive: { fail_duration: '2s', max_fails: 1 } },
};

function proxyHandler(s: Site): Json {
  const proxy: Json = {
    handler: 'reverse_proxy',
    upstreams: s.upstreams.map((u) => ({ dial: dial(u.host, u.port) })),
    ...(s.upstreams.length > 1 ? RETRY : {}),
  };
  const scheme = s.upstreams[0]?.scheme;
  if (scheme === 'https') proxy.transport = { protocol: 'http', tls: upstreamTls(s.upstreams) };
  // HTTP/2 without TLS (gRPC and friends): Caddy speaks h2c when it is the only version offered.
  else if (scheme === 'h2c') proxy.transport = { protocol: 'http', versions: ['h2c'] };
  return proxy;
}

/**
 * TLS to https upstreams. Caddy checks the certificate (against the system's roots) for the
 * address it dials; a tunnel agent's upstream is dialled at this server's local endpoint, which
 * no certificate names, so it is checked for the address the agent dials, as it would be if the
 * front door reached it directly. The name is one per handler: when a site's upstreams would need
 * different ones (a tunneled upstream in a group with others), the dialled addresses are used.
 * A name is taken only for an endpoint address, which no agent's own route may point at.
 */
function upstreamTls(upstreams: readonly Upstream[]): Json {
  const names = new Set(
    upstreams.map((u) => (isTunnelAddress(u.host) && u.tlsServerName ? u.tlsServerName : undefined)),
  );
  const [name] = names;
  return names.size === 1 && name ? { server_name: name } : {};
}

function dial(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Exact names before wildcards, so a.example.com beats *.example.com whatever the order of claims. */
function hostOrder(a: string, b: string): number {
  const wa = a.startsWith('*.');
  const wb = b.startsWith('*.');
  if (wa !== wb) return wa ? 1 : -1;
  if (wa && wb && a.length !== b.length) return b.length - a.length;
  return a.localeCompare(b);
}

function httpsPortSuffix(listen: string): string {
  const port = listen.slice(listen.lastIndexOf(':') + 1);
  return port === '443' || port === '' ? '' : `:${port}`;
}

/**
 * Puts Berth's parts into an existing Caddy config: replaces Berth's own servers and TLS
 * policy, keeps every other server, route, app and the admin settings exactly as they were.
 */
export function mergeIntoConfig(current: Json, parts: BerthCaddyParts): Json {
  // Shallow copies along the paths Berth changes: the rest is shared, never modified.
  const cfg: Json = { ...(current && typeof current === 'object' ? current : {}) };
  cfg.apps = { ...(cfg.apps ?? {}) };
  cfg.apps.http = { ...(cfg.apps.http ?? {}) };
  const servers: Json = { ...(cfg.apps.http.servers ?? {}) };
  for (const name of Object.keys(servers)) if (name.startsWith(SERVER_PREFIX)) delete servers[name];
  Object.assign(servers, parts.servers);
  cfg.apps.http.servers = servers;

  const tls = cfg.apps.tls;
  const policies: Json[] = (tls?.automation?.policies ?? []).filter(
    (p: Json) => p?.['@id'] !== TLS_POLICY_ID,
  );
  if (parts.tlsPolicy) policies.unshift(parts.tlsPolicy);
  if (policies.length > 0 || tls?.automation) {
    cfg.apps.tls = { ...(tls ?? {}), automation: { ...(tls?.automation ?? {}), policies } };
    if (parts.onDemand) cfg.apps.tls.automation.on_demand = parts.onDemand;
  }
  mergeLogs(cfg, parts.logs);
  return cfg;
}

/**
 * Berth's `berth_*` log entries replace the old ones. The default log would also write every
 * request line (to stderr), so it excludes Berth's logger while Berth logs requests; an operator's
 * default log that includes only other namespaces needs no exclusion.
 */
function mergeLogs(cfg: Json, own: Record<string, Json> | undefined): void {
  const before: Json = cfg.logging?.logs;
  if (!before && !own) return;
  const logs: Json = { ...(before ?? {}) };
  for (const name of Object.keys(logs)) if (name.startsWith(SERVER_PREFIX)) delete logs[name];
  Object.assign(logs, own ?? {});
  const dflt: Json = { ...(logs.default ?? {}) };
  const exclude: string[] = (dflt.exclude ?? []).filter((n: string) => n !== ACCESS_LOGGER);
  const includes: string[] | undefined = dflt.include;
  const covered =
    !includes?.length || includes.some((n) => ACCESS_LOGGER === n || ACCESS_LOGGER.startsWith(`${n}.`));
  if (own && covered) exclude.push(ACCESS_LOGGER);
  if (exclude.length > 0) dflt.exclude = exclude;
  else delete dflt.exclude;
  if (Object.keys(dflt).length > 0) logs.default = dflt;
  else delete logs.default;
  cfg.logging = { ...(cfg.logging ?? {}) };
  if (Object.keys(logs).length > 0) cfg.logging.logs = logs;
  else delete cfg.logging.logs;
  if (Object.keys(cfg.logging).length === 0) delete cfg.logging;
}

/** Berth's parts as found in a live config, for drift checks. */
export function extractParts(current: Json): BerthCaddyParts {
  const servers: Record<string, Json> = {};
  for (const [name, s] of Object.entries(current?.apps?.http?.servers ?? {})) {
    if (name.startsWith(SERVER_PREFIX)) servers[name] = s;
  }
  const policy = (current?.apps?.tls?.automation?.policies ?? []).find(
    (p: Json) => p?.['@id'] === TLS_POLICY_ID,
  );
  const parts: BerthCaddyParts = policy ? { servers, tlsPolicy: policy } : { servers };
  const onDemand = current?.apps?.tls?.automation?.on_demand;
  if (policy?.on_demand && onDemand) parts.onDemand = onDemand;
  const logs = Object.entries(current?.logging?.logs ?? {}).filter(([n]) => n.startsWith(SERVER_PREFIX));
  if (logs.length > 0) parts.logs = Object.fromEntries(logs);
  return parts;
}

/** Stable JSON (sorted keys) so equal configs hash equally whatever order Caddy returns. */
export function canonicalJson(v: Json): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => v[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}
