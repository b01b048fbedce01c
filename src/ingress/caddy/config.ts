// Desired sites → the parts of a Caddy JSON config that Berth owns. Pure, no I/O.
// Berth owns only servers named `berth_*` (each with an `@id`) and one TLS automation policy
// with `@id: berth_tls`; everything else in the operator's Caddy config is left as it is.
import type { Site } from '../../reconcile/desired.js';

export type TlsMode = 'auto' | 'internal' | 'off';

export interface CaddyBuildOptions {
  tls: TlsMode;
  /** Listen addresses already include `--http-bind` when one is given. */
  httpListen: string;
  httpsListen: string;
}

// biome-ignore lint/suspicious/noExplicitAny: Caddy JSON is open-ended by design.
export type Json = any;

export interface BerthCaddyParts {
  servers: Record<string, Json>;
  tlsPolicy?: Json;
}

export const SERVER_PREFIX = 'berth_';
export const TLS_POLICY_ID = 'berth_tls';

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
  for (const s of sites) byHost.set(s.host, [...(byHost.get(s.host) ?? []), s]);
  const hosts = [...byHost.keys()].sort(hostOrder);
  const routes: Json[] = hosts.map((h) => hostRoute(h, byHost.get(h)!));
  routes.push(versionId ? { '@id': versionId, handle: [NOT_FOUND] } : { handle: [NOT_FOUND] });

  if (opts.tls === 'off') {
    return {
      servers: {
        berth_http: {
          '@id': 'berth_http',
          listen: [opts.httpListen],
          routes,
          automatic_https: { disable: true },
        },
      },
    };
  }
  const parts: BerthCaddyParts = {
    servers: {
      berth_https: { '@id': 'berth_https', listen: [opts.httpsListen], routes },
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
  };
  if (opts.tls === 'internal' && hosts.length > 0) {
    parts.tlsPolicy = { '@id': TLS_POLICY_ID, subjects: hosts, issuers: [{ module: 'internal' }] };
  }
  return parts;
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

function proxyHandler(s: Site): Json {
  const proxy: Json = {
    handler: 'reverse_proxy',
    upstreams: s.upstreams.map((u) => ({ dial: dial(u.host, u.port) })),
  };
  if (s.upstreams[0]?.scheme === 'https') proxy.transport = { protocol: 'http', tls: {} };
  return proxy;
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
  }
  return cfg;
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
  return policy ? { servers, tlsPolicy: policy } : { servers };
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
