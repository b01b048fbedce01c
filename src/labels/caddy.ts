// caddy-docker-proxy labels: `caddy=<addresses>` opens a site block (`caddy_<n>` opens more), and
// `reverse_proxy {{upstreams [http|https|h2c] [port]}}` in it, at the top or inside `handle`,
// `handle_path` or `route`, becomes a route. Label keys nest with dots; a `<n>_` prefix orders a
// directive and a `_<n>` suffix keeps same-named ones apart, so both are stripped to find its name.
// The prefix `caddy` can be another one (`--caddy-label-prefix`, as caddy-docker-proxy's own
// `--label-prefix`); `caddy_ingress_network` keeps its name whatever the prefix, as there.
import { localeOrder } from '../model/collation.js';
import type { ContainerInfo, UpstreamScheme } from '../model/types.js';
import {
  composeGroup,
  DiagnosticSink,
  type DialectResult,
  dropRepeatedClaims,
  isSelfHost,
  type LabelNote,
  type RouteDraft,
} from './draft.js';
import { checkHostname, checkName, checkPath, checkPort, defaultPort, splitAddress } from './validate.js';

export const DEFAULT_CADDY_PREFIX = 'caddy';
export const CADDY_NETWORK_LABEL = 'caddy_ingress_network';
/** Directives that hold nested directives for a path: `handle_path` also strips the path. */
const SCOPES = new Set(['handle', 'handle_path', 'route']);
/** Serving a site without these would open what the labels protect: such a scope is not routed. */
const GUARDS = new Set(['basicauth', 'basic_auth', 'forward_auth']);
// `[^{}]`, not `[^}]`: an unclosed `{{upstreams` must not make every later one rescan the rest.
const UPSTREAMS_RE = /\{\{\s*upstreams\b([^{}]*)\}\}/g;
const EXPECTED_UPSTREAMS = '{{upstreams [http|https|h2c] [port]}}';
const EXPECTED_PROXY = `reverse_proxy [<path matcher>] ${EXPECTED_UPSTREAMS}`;
const UPSTREAM_SCHEMES = new Set<string>(['http', 'https', 'h2c']);

/** `<prefix>`, `<prefix>_<n>`, and either followed by `.<directive…>`, as caddy-docker-proxy matches them. */
const blockRes = new Map<string, RegExp>();
function blockRe(prefix: string): RegExp {
  let re = blockRes.get(prefix);
  if (!re) {
    const quoted = prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    re = new RegExp(`^${quoted}(?:_(\\d+))?(?:\\.(.+))?$`);
    blockRes.set(prefix, re);
  }
  return re;
}

export function isCaddyLabel(key: string, prefix = DEFAULT_CADDY_PREFIX): boolean {
  return key === CADDY_NETWORK_LABEL || blockRe(prefix).test(key);
}

/** One label-key segment of the directive tree. */
interface Node {
  raw: string;
  name: string;
  key?: string;
  value?: string;
  children: Map<string, Node>;
}

interface Block {
  id: string;
  key?: string;
  value?: string;
  root: Node;
}

interface Target {
  scheme: UpstreamScheme;
  port: number;
}

export function parseCaddyLabels(c: ContainerInfo, prefix = DEFAULT_CADDY_PREFIX): DialectResult {
  const sink = new DiagnosticSink(c);
  const used: LabelNote[] = [];
  const blocks = new Map<string, Block>();
  let network: string | undefined;

  for (const [key, value] of Object.entries(c.labels).sort(([a], [b]) => localeOrder(a, b))) {
    if (key === CADDY_NETWORK_LABEL) {
      const n = checkName(value);
      if (!n.ok) sink.error(key, value, `expected ${n.expected}`);
      else {
        network = n.value;
        used.push({ label: key, note: `network "${n.value}" for unpublished ports` });
      }
      continue;
    }
    const m = blockRe(prefix).exec(key);
    if (!m) continue;
    const id = m[1] === undefined ? prefix : `${prefix}_${m[1]}`;
    const block: Block = blocks.get(id) ?? { id, root: { raw: id, name: id, children: new Map() } };
    blocks.set(id, block);
    if (m[2] === undefined) {
      block.key = key;
      block.value = value;
      continue;
    }
    let node = block.root;
    for (const raw of m[2].split('.')) {
      let next: Node | undefined = node.children.get(raw);
      if (!next) {
        next = { raw, name: raw.replace(/^\d+_/, '').replace(/_\d+$/, ''), children: new Map() };
        node.children.set(raw, next);
      }
      node = next;
    }
    node.key = key;
    node.value = value;
  }

  const drafts: RouteDraft[] = [];
  const compose = composeGroup(c.labels);
  for (const block of blocks.values()) {
    const address = (block.value ?? '').trim();
    if (!block.key || address === '') {
      for (const k of labelsOf(block.root)) {
        sink.warning(
          k,
          c.labels[k],
          `not translated: a Caddy global option (a ${prefix} label without a site address); Berth runs its own front door settings`,
        );
      }
      continue;
    }
    if (address.startsWith('(')) {
      for (const k of [block.key, ...labelsOf(block.root)]) {
        sink.warning(
          k,
          c.labels[k],
          `not translated: Caddy snippet ${address} (snippets and import are not read)`,
        );
      }
      continue;
    }
    const hosts = siteHosts(block.key, address, sink);
    if (hosts === undefined) continue;
    const siteKey = block.key;

    const proxy = (node: Node, scope: Node, basePath: string, strip: boolean, also: string[] = []): void => {
      const to = node.children.get('to');
      const spec = [node.value ?? '', to?.value ?? ''].join(' ');
      for (const child of node.children.values()) {
        if (child === to) continue;
        for (const k of labelsOf(child)) {
          sink.warning(
            k,
            c.labels[k],
            `not translated: reverse_proxy option ${child.name}; the route is made without it`,
          );
        }
      }
      const label = node.key ?? to?.key ?? labelsOf(node)[0]!;
      const parsed = parseProxy(c, spec, label, sink);
      if (!parsed) return;
      let path = basePath;
      if (parsed.matcher !== undefined && parsed.matcher !== '*') {
        const p = basePath === '/' ? toPrefix(parsed.matcher) : undefined;
        if (!p) {
          sink.warning(
            label,
            c.labels[label],
            `not translated: the matcher ${parsed.matcher} ${basePath === '/' ? 'is not a path prefix such as /api/* (named @matchers are not read)' : 'narrows a path block further'}; no route is made from it`,
          );
          return;
        }
        path = p;
      }
      const labels = [label, ...(to?.key && to.key !== label ? [to.key] : []), siteKey];
      if (scope.key && scope !== block.root) labels.push(scope.key);
      labels.push(...also);
      if (network) labels.push(CADDY_NETWORK_LABEL);
      if (hosts.length === 0) return;
      drafts.push({
        group: label,
        hosts,
        path,
        stripPath: strip && path !== '/',
        scheme: parsed.target.scheme,
        port: parsed.target.port,
        portLabel: label,
        network,
        lbGroup: compose,
        labels,
      });
    };

    /**
     * Paths of this site that a guard (basic_auth, forward_auth) protects and Berth withholds:
     * a route of the same site whose path covers one (`/` covers every path) is withheld too, or
     * it would serve the guarded path without its guard.
     */
    const guardedPaths: { path: string; label: string; guard: string }[] = [];

    /** Reads one scope: the site itself, or a handle / handle_path / route inside it. */
    const readScope = (scope: Node, basePath: string, strip: boolean, top: boolean): void => {
      // A path's guard anywhere inside it (a route in a handle too): Berth reads none of it.
      const guard = top ? [...scope.children.values()].find((n) => GUARDS.has(n.name)) : guardWithin(scope);
      if (guard && !top) guardedPaths.push({ path: basePath, label: labelsOf(guard)[0]!, guard: guard.name });
      if (guard) {
        for (const k of top ? [siteKey, ...labelsOf(scope)] : labelsOf(scope)) {
          sink.warning(
            k,
            c.labels[k],
            `not routed: ${labelsOf(guard)[0]} (${guard.name}) protects ${top ? 'this site' : 'this path'} and Berth cannot apply it; serving it without would expose it`,
          );
        }
        return;
      }
      const uri = top ? undefined : stripIdiom(scope, basePath);
      let uriApplied = false;
      for (const node of scope.children.values()) {
        if (node === uri) continue;
        if (node.name === 'reverse_proxy') {
          // `handle` sorts uri before reverse_proxy (Caddy's directive order); `route` keeps the written order.
          const strips = uri !== undefined && (scope.name === 'handle' || runsBefore(uri, node));
          uriApplied ||= strips;
          proxy(node, scope, basePath, strip || strips, strips ? [uri!.key!] : []);
        } else if (top && SCOPES.has(node.name)) {
          const matcher = (node.value ?? '').trim();
          const path = matcher === '' ? '/' : toPrefix(matcher);
          if (path === undefined) {
            // A guard under a matcher Berth cannot read: which paths it protects is unknown.
            const g = guardWithin(node);
            if (g) guardedPaths.push({ path: '/', label: labelsOf(g)[0]!, guard: g.name });
            for (const k of labelsOf(node)) {
              sink.warning(
                k,
                c.labels[k],
                `not translated: ${node.name} ${matcher} is not a path prefix (such as /api/*); routes inside it are not made`,
              );
            }
            continue;
          }
          readScope(node, path, node.name === 'handle_path', false);
        } else if (
          top &&
          node.name === 'tls' &&
          node.children.size === 0 &&
          node.value?.trim() === 'internal'
        ) {
          used.push({
            label: node.key!,
            note: 'certificates come from the front door: run Berth with --tls internal for Caddy’s local CA',
          });
        } else {
          const what = node.name.startsWith('@')
            ? `named matcher ${node.name} is not read (only path prefixes are)`
            : `Caddy directive ${node.name} is not applied by Berth; ${top ? 'the site' : 'the path'} is routed without it`;
          for (const k of labelsOf(node)) sink.warning(k, c.labels[k], `not translated: ${what}`);
        }
      }
      if (uri && uriApplied) {
        used.push({ label: uri.key!, note: `strips ${basePath} before proxying, as handle_path does` });
      } else if (uri) {
        sink.warning(
          uri.key!,
          uri.value,
          `not translated: uri strip_prefix comes after reverse_proxy in this route, and a route runs its directives in the order written (give uri the lower <n>_ prefix); the path is routed unstripped`,
        );
      }
    };

    const before = drafts.length;
    const errorsBefore = sink.errors;
    readScope(block.root, '/', false, true);
    withholdCovering(drafts, before, guardedPaths, c, sink);
    const failed = sink.errors > errorsBefore;
    if (drafts.length === before && hosts.length > 0 && !guarded(block.root) && !failed) {
      sink.warning(siteKey, address, `no route: the site has no ${EXPECTED_PROXY} that Berth can translate`);
    }
  }

  return { drafts: dropRepeatedClaims(drafts, sink), diagnostics: sink.list, disabled: false, used };
}

/** The site address list: hostnames, each optionally with a scheme; anything else is reported. */
function siteHosts(key: string, address: string, sink: DiagnosticSink): string[] | undefined {
  const hosts = new Set<string>();
  for (const a of address.split(/[\s,]+/).filter(Boolean)) {
    const parts = splitAddress(a);
    if (!parts || parts.host === '') {
      sink.warning(
        key,
        address,
        `not translated: site address "${a}" names no hostname; Berth routes by hostname`,
      );
      continue;
    }
    if (parts.scheme !== undefined && parts.scheme !== 'http' && parts.scheme !== 'https') {
      sink.warning(key, address, `not translated: site address "${a}" has scheme ${parts.scheme}`);
      continue;
    }
    if (parts.path !== undefined && parts.path !== '/') {
      sink.warning(
        key,
        address,
        `not translated: site address "${a}" has a path; use handle_path or a reverse_proxy path matcher instead`,
      );
      continue;
    }
    const h = checkHostname(parts.host);
    if (!h.ok) {
      sink.error(key, address, `expected ${h.expected} ("${parts.host}" is not one)`);
      return undefined;
    }
    if (parts.port !== undefined && parts.port !== '80' && parts.port !== '443') {
      sink.warning(
        key,
        address,
        `site address "${a}" names port ${parts.port}; Berth serves every hostname on the front door's own ports`,
      );
    }
    hosts.add(h.value);
  }
  return [...hosts];
}

/**
 * `[matcher] {{upstreams [http|https] [port]}}`, or a literal upstream naming this container.
 * Caddy proxies to port 80 (443 for https) when `upstreams` names none, and so does Berth.
 */
function parseProxy(
  c: ContainerInfo,
  spec: string,
  label: string,
  sink: DiagnosticSink,
): { matcher?: string; target: Target } | undefined {
  const value = c.labels[label];
  const targets: Target[] = [];
  let bad = false;
  // A matcher comes first: `*`, a path, or a named `@matcher`.
  const lead = /^\s*(\S+)/.exec(spec)?.[1];
  const matcher = lead && /^(\*|\/|@)/.test(lead) ? lead : undefined;
  const upstreams = matcher ? spec.trim().slice(matcher.length) : spec;
  const rest = upstreams.replace(UPSTREAMS_RE, (_m, args: string) => {
    let scheme: UpstreamScheme = 'http';
    let port: number | undefined;
    for (const arg of args.trim().split(/\s+/).filter(Boolean)) {
      // caddy-docker-proxy's templates define http, https and h2c, each prefixing the scheme.
      if (UPSTREAM_SCHEMES.has(arg)) scheme = arg as UpstreamScheme;
      else {
        const p = checkPort(arg);
        if (!p.ok) {
          sink.error(label, value, `expected ${EXPECTED_UPSTREAMS} with ${p.expected} ("${arg}" is not one)`);
          bad = true;
        } else port = p.value;
      }
    }
    targets.push({ scheme, port: port ?? defaultPort(scheme) });
    return ' ';
  });
  if (bad) return undefined;
  const others: string[] = [];
  for (const token of rest.trim().split(/\s+/).filter(Boolean)) {
    if (token.includes('{{')) {
      others.push(token);
    } else {
      const parts = splitAddress(token);
      const scheme = (parts?.scheme ?? 'http') as UpstreamScheme;
      if (parts && isSelfHost(c, parts.host) && UPSTREAM_SCHEMES.has(scheme) && !parts.path) {
        const p =
          parts.port === undefined
            ? { ok: true as const, value: defaultPort(scheme) }
            : checkPort(parts.port);
        if (!p.ok) {
          sink.error(label, value, `expected an upstream port: ${p.expected} ("${parts.port}" is not one)`);
          return undefined;
        }
        targets.push({ scheme, port: p.value });
      } else others.push(token);
    }
  }
  if (others.length > 0) {
    sink.warning(
      label,
      value,
      `not translated: upstream ${others.join(' ')} is not this container (Berth routes to the labelled container; use ${EXPECTED_UPSTREAMS})`,
    );
  }
  if (targets.length === 0) {
    if (others.length === 0) sink.error(label, value, `no upstream: expected ${EXPECTED_PROXY}`);
    return undefined;
  }
  const [first, ...extra] = targets;
  if (extra.some((t) => t.port !== first!.port || t.scheme !== first!.scheme)) {
    sink.warning(
      label,
      value,
      `several upstreams: Berth sends a route to one container port; using ${first!.scheme}://…:${first!.port}`,
    );
  }
  return { ...(matcher === undefined ? {} : { matcher }), target: first! };
}

/** `/api/*` and `/api*` are the prefix `/api`; an exact path or a named matcher is not a prefix. */
function toPrefix(matcher: string): string | undefined {
  if (matcher === '*') return '/';
  if (!matcher.startsWith('/') || !matcher.endsWith('*')) return undefined;
  const p = checkPath(matcher.slice(0, matcher.endsWith('/*') ? -2 : -1) || '/');
  return p.ok ? p.value : undefined;
}

function guarded(scope: Node): boolean {
  return [...scope.children.values()].some((n) => GUARDS.has(n.name));
}

/** The first guard directive at any depth under a node, if any. */
function guardWithin(node: Node): Node | undefined {
  for (const child of node.children.values()) {
    if (GUARDS.has(child.name)) return child;
    const deeper = guardWithin(child);
    if (deeper) return deeper;
  }
  return undefined;
}

/**
 * Withholds the site's routes (drafts from `from` on) whose path covers a guarded path: a request
 * for /admin/x would otherwise reach the route of / (or /ad) without the guard. Fail closed: a
 * prefix in the text is taken as covering, whatever the segment boundaries.
 */
function withholdCovering(
  drafts: RouteDraft[],
  from: number,
  guarded: readonly { path: string; label: string; guard: string }[],
  c: ContainerInfo,
  sink: DiagnosticSink,
): void {
  if (guarded.length === 0) return;
  for (let i = drafts.length - 1; i >= from; i--) {
    const d = drafts[i]!;
    const g = guarded.find((x) => x.path.startsWith(d.path));
    if (!g) continue;
    drafts.splice(i, 1);
    sink.warning(
      d.portLabel,
      c.labels[d.portLabel],
      `not routed: ${g.label} (${g.guard}) protects ${g.path === '/' ? 'a path of this site that Berth cannot tell' : `${g.path} of this site`}, and this route (${d.path}) would serve it without the guard; Berth cannot apply the guard, so neither is served`,
    );
  }
}

/** Every label key at or under a node. */
function labelsOf(node: Node): string[] {
  const out: string[] = node.key ? [node.key] : [];
  for (const child of node.children.values()) out.push(...labelsOf(child));
  return out;
}

/**
 * The caddy-docker-proxy spelling of handle_path inside `handle /p/*` or `route /p/*`: a `uri
 * strip_prefix /p` of exactly the block's own prefix (Caddy documents handle_path as that).
 */
function stripIdiom(scope: Node, basePath: string): Node | undefined {
  if (basePath === '/' || (scope.name !== 'handle' && scope.name !== 'route')) return undefined;
  for (const n of scope.children.values()) {
    if (n.name !== 'uri' || n.children.size > 0 || !n.key) continue;
    const m = /^\s*strip_prefix\s+(\/\S*)\s*$/.exec(n.value ?? '');
    if (m && (m[1]!.replace(/\/+$/, '') || '/') === basePath) return n;
  }
  return undefined;
}

/**
 * Whether caddy-docker-proxy writes `a` before `b` in a block: `<n>_` directives first, by
 * number, then the others alphabetically.
 */
function runsBefore(a: Node, b: Node): boolean {
  const rank = (n: Node): [number, number, string] => {
    const m = /^(\d+)_/.exec(n.raw);
    return m ? [0, Number(m[1]), n.raw] : [1, 0, n.raw];
  };
  const [x, y] = [rank(a), rank(b)];
  return x[0] !== y[0] ? x[0] < y[0] : x[1] !== y[1] ? x[1] < y[1] : x[2] < y[2];
}
