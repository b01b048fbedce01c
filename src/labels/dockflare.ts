// DockFlare labels (Cloudflare Tunnel ingress): `dockflare.hostname` served by `dockflare.service`
// (http://<this container>:<port>), optionally under `dockflare.path`; more routes as
// `dockflare.<n>.hostname` / `.service` / `.path`, whose service falls back to the base one. The
// legacy prefix `cloudflare.tunnel.` takes the same keys. DockFlare only manages containers with
// `enable=true`, and neither does Berth.
import { localeOrder } from '../model/collation.js';
import type { ContainerInfo } from '../model/types.js';
import {
  composeGroup,
  DiagnosticSink,
  type DialectResult,
  dropRepeatedClaims,
  isSelfHost,
  type LabelNote,
  type RouteDraft,
} from './draft.js';
import { checkBool, checkHostList, checkPath, checkPort, defaultPort, splitAddress } from './validate.js';

const PREFIXES = ['dockflare.', 'cloudflare.tunnel.'] as const;
const ROUTE_KEYS = ['hostname', 'service', 'path'] as const;
type RouteKey = (typeof ROUTE_KEYS)[number];
/** Cloudflare-side settings with no meaning at Berth's front door: read, nothing to do. */
const CLOUDFLARE_ONLY: Record<string, string> = {
  zonename: 'the Cloudflare DNS zone; Berth needs none',
};
/** Origin settings Berth cannot honour: the route still works, the setting does not apply. */
const ORIGIN_ONLY: Record<string, string> = {
  no_tls_verify: 'Berth verifies an https upstream’s certificate, so a self-signed one will fail',
  originsrvname: 'Berth sends the upstream no other TLS server name',
  httphostheader: 'Berth passes the client’s Host header',
};

export function isDockflareLabel(key: string): boolean {
  return PREFIXES.some((p) => key.startsWith(p));
}

type Entry = [key: string, value: string];

export function parseDockflareLabels(c: ContainerInfo): DialectResult {
  const sink = new DiagnosticSink(c);
  const used: LabelNote[] = [];
  const quiet: LabelNote[] = [];
  const all = Object.entries(c.labels)
    .filter(([k]) => isDockflareLabel(k))
    .sort(([a], [b]) => localeOrder(a, b));
  // One prefix at a time, as DockFlare reads one: the current one wins over the legacy one.
  const prefix = all.some(([k]) => k.startsWith(PREFIXES[0])) ? PREFIXES[0] : PREFIXES[1];
  const base: Partial<Record<RouteKey, Entry>> = {};
  const indexed = new Map<number, Partial<Record<RouteKey, Entry>>>();
  let enable: Entry | undefined;
  /** dockflare[.<n>].access.* labels: Cloudflare Access, a sign-in Berth cannot put in front. */
  const access: { index: number | undefined; entry: Entry; rest: string }[] = [];

  for (const [key, value] of all) {
    if (!key.startsWith(prefix)) {
      sink.warning(
        key,
        value,
        `ignored: the container also has ${prefix}* labels, which DockFlare and Berth read instead`,
      );
      continue;
    }
    const parts = key.slice(prefix.length).split('.');
    const index = /^\d+$/.test(parts[0] ?? '') ? Number(parts[0]) : undefined;
    const rest = (index === undefined ? parts : parts.slice(1)).join('.').toLowerCase();
    if (rest === 'enable' && index === undefined) {
      enable = [key, value];
    } else if ((ROUTE_KEYS as readonly string[]).includes(rest)) {
      const into = index === undefined ? base : (indexed.get(index) ?? {});
      into[rest as RouteKey] = [key, value];
      if (index !== undefined) indexed.set(index, into);
    } else if (rest.startsWith('access.') || rest === 'access') {
      // A sign-in in front of the route: withheld below, unless the policy is bypass (public).
      access.push({ index, entry: [key, value], rest });
    } else if (CLOUDFLARE_ONLY[rest]) {
      quiet.push({ label: key, note: CLOUDFLARE_ONLY[rest] });
    } else if (ORIGIN_ONLY[rest]) {
      const b = checkBool(value);
      if (rest === 'no_tls_verify' && b.ok && !b.value) used.push({ label: key });
      else sink.warning(key, value, `not translated: ${ORIGIN_ONLY[rest]}`);
    } else {
      sink.warning(
        key,
        value,
        `not translated: unknown DockFlare label; Berth reads ${prefix}enable, .hostname, .service, .path and ${prefix}<n>.hostname / .service / .path`,
      );
    }
  }

  if (!enable) {
    const [key, value] = all.find(([k]) => k.startsWith(prefix))!;
    sink.warning(
      key,
      value,
      `no ${prefix}enable=true: DockFlare manages only containers that set it, so Berth does not route this one either`,
    );
    return { drafts: [], diagnostics: sink.list, disabled: true, used, quiet };
  }
  const on = checkBool(enable[1]);
  if (!on.ok) {
    sink.error(enable[0], enable[1], `expected ${on.expected}`);
    return { drafts: [], diagnostics: sink.list, disabled: false, used, quiet };
  }
  used.push({ label: enable[0], note: on.value ? undefined : 'the container opts out: no route' });
  if (!on.value) return { drafts: [], diagnostics: sink.list, disabled: true, used, quiet };

  const drafts: RouteDraft[] = [];
  const compose = composeGroup(c.labels);
  const build = (group: string, own: Partial<Record<RouteKey, Entry>>, label: (k: RouteKey) => string) => {
    const host = own.hostname;
    if (!host) {
      sink.error(
        label('hostname'),
        undefined,
        `no ${label('hostname')} label: the route has nowhere to be served`,
      );
      return;
    }
    // The service falls back to the base one; where it is served (path) does not.
    const service = own.service ?? (group === 'default' ? undefined : base.service);
    if (!service) {
      sink.error(
        label('service'),
        undefined,
        `no ${label('service')} label: expected the URL DockFlare sends traffic to, e.g. http://${c.name}:8080`,
      );
      return;
    }
    const hosts = checkHostList(host[1]);
    if (!hosts.ok) {
      sink.error(host[0], host[1], `expected ${hosts.expected}`);
      return;
    }
    let path = '/';
    if (own.path) {
      const p = checkPath(own.path[1]);
      if (!p.ok) {
        sink.error(own.path[0], own.path[1], `expected ${p.expected}`);
        return;
      }
      path = p.value;
    }
    const target = readService(c, service, sink);
    if (!target) return;
    drafts.push({
      group,
      hosts: hosts.value,
      path,
      stripPath: false,
      scheme: target.scheme,
      port: target.port,
      portLabel: service[0],
      lbGroup: compose,
      labels: [host[0], service[0], ...(own.path ? [own.path[0]] : [])],
    });
  };
  // A route behind Cloudflare Access (a base policy: every route of the container) is withheld:
  // served at Berth's front door it would be open to anyone. `policy=bypass` is Access's own
  // "public", so it withholds nothing.
  const guarded = (n: number | undefined): Entry | undefined => {
    const mine = access.filter((a) => a.index === undefined || a.index === n);
    const policy = mine.find((a) => a.rest === 'access.policy');
    if (mine.length === 0) return undefined;
    if (policy && policy.entry[1].trim().toLowerCase() === 'bypass' && mine.length === 1) {
      used.push({ label: policy.entry[0], note: 'Cloudflare Access bypass: the route is public, as here' });
      return undefined;
    }
    return (policy ?? mine[0]!).entry;
  };
  const withheld = (n: number | undefined, route: string): boolean => {
    const g = guarded(n);
    if (!g) return false;
    sink.warning(
      g[0],
      g[1],
      `not routed: ${route} is behind Cloudflare Access (${g[0]}), a sign-in Berth’s front door cannot apply; serving it without would open it to anyone (protect it at the upstream, or limit client networks with berth.allow and drop the access labels)`,
    );
    return true;
  };
  if (
    Object.keys(base).length > 0 &&
    (base.hostname || indexed.size === 0) &&
    !withheld(undefined, 'the route')
  )
    build('default', base, (k) => `${prefix}${k}`);
  for (const [n, own] of [...indexed].sort(([a], [b]) => a - b))
    if (!withheld(n, `route ${n}`)) build(String(n), own, (k) => `${prefix}${n}.${k}`);
  if (
    base.service &&
    !base.hostname &&
    indexed.size > 0 &&
    !drafts.some((d) => d.labels?.includes(base.service![0]))
  )
    quiet.push({ label: base.service[0], note: 'no numbered route falls back to it' });
  return { drafts: dropRepeatedClaims(drafts, sink), diagnostics: sink.list, disabled: false, used, quiet };
}

/**
 * `http(s)://<this container>[:port]`: the port is the container port to route to (80 or 443
 * when absent), the scheme the upstream's. Anything else is another machine or protocol.
 */
function readService(
  c: ContainerInfo,
  [key, value]: Entry,
  sink: DiagnosticSink,
): { scheme: 'http' | 'https'; port: number } | undefined {
  const parts = splitAddress(value);
  const scheme = parts?.scheme;
  if (!parts || scheme === undefined) {
    if (/^http_status:/i.test(value.trim())) {
      sink.warning(key, value, 'not translated: a fixed-status service has no upstream; no route is made');
      return undefined;
    }
    sink.error(key, value, `expected a service URL such as http://${c.name}:8080`);
    return undefined;
  }
  if (scheme !== 'http' && scheme !== 'https') {
    sink.warning(
      key,
      value,
      `not translated: ${scheme}:// is not an HTTP service; no route is made (Berth TCP routes use berth.tcp.<name>.listen and .port)`,
    );
    return undefined;
  }
  if (!isSelfHost(c, parts.host)) {
    sink.warning(
      key,
      value,
      `not translated: ${parts.host} is not this container; Berth routes a container's labels to that container only (expected ${scheme}://${c.name}:<port> or ${scheme}://localhost:<port>); no route is made`,
    );
    return undefined;
  }
  if (parts.path !== undefined && parts.path !== '/') {
    sink.warning(
      key,
      value,
      `not translated: the service path ${parts.path}; Berth proxies to the upstream's root, so no route is made`,
    );
    return undefined;
  }
  if (parts.port === undefined) return { scheme, port: defaultPort(scheme) };
  const p = checkPort(parts.port);
  if (!p.ok) {
    sink.error(key, value, `expected ${p.expected} in the service URL ("${parts.port}" is not one)`);
    return undefined;
  }
  return { scheme, port: p.value };
}
