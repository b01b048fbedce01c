// Traefik's Docker provider labels: `traefik.http.routers.<r>.rule` (Host and PathPrefix, joined by
// && and ||) sends to `traefik.http.services.<s>.loadbalancer.server.port` / `.scheme` / `.url`.
// As in Traefik: a router without `.service` uses the container's only service, a container
// without services has one implicitly, without a port label the lowest exposed port is used, and
// a router without a rule gets the default rule (only with --traefik-default-rule; Traefik's own
// default would claim a hostname made from every container's name). A problem with one router,
// or with the service it uses, keeps out that router only, as Traefik does. Option names are
// case-insensitive there, so they are compared in lower case here; names are not.
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
import {
  checkBool,
  checkCidrList,
  checkHostname,
  checkName,
  checkPath,
  checkPort,
  checkUpstreamScheme,
  defaultPort,
  splitAddress,
} from './validate.js';

const P = 'traefik.';
/** Middlewares that guard a route: serving it without them would expose what they protect. */
const GUARDS = new Set(['basicauth', 'digestauth', 'forwardauth']);
const ALLOW = new Set(['ipallowlist', 'ipwhitelist']);
const EXPECTED_RULE = 'a rule such as Host(`app.example.com`) && PathPrefix(`/api`)';
const SERVER = 'loadbalancer.server.';

export function isTraefikLabel(key: string): boolean {
  return key.startsWith(P);
}

type Option = [key: string, value: string];
type Options = Map<string, Option>;

interface Service {
  port?: number;
  scheme: UpstreamScheme;
  /** Label keys read for the service. */
  labels: string[];
  /** A service label failed its check (already an error, scoped to the routers using it). */
  bad: boolean;
}

/** Phase 1's result: the container's Traefik labels by kind and name. */
interface Grouped {
  enabled: boolean;
  network?: [key: string, name: string];
  routers: Map<string, Options>;
  services: Map<string, Options>;
  middlewares: Map<string, Options>;
}

/** What each router of one container is read against. */
interface Env {
  sink: DiagnosticSink;
  services: Map<string, Service>;
  middlewares: Map<string, Options>;
  network?: [key: string, name: string];
  compose?: string;
  /** Names of Traefik's implicit service when the container defines none (Berth's and Traefik's spelling). */
  implicit: string[];
  defaultRule?: { rule: string; key: (router: string) => string };
  /** Services some router named or defaulted to, routed or not. */
  referenced: Set<string>;
  /** Labels read as "not set" because they are empty, as Traefik reads them. */
  quiet: LabelNote[];
  /** Middlewares defined elsewhere that a router may be served without, as `name@provider`. */
  outside: Set<string>;
  /** Hosts and paths of routers withheld for a guard Berth cannot apply (see withholdCovered). */
  guarded: { hosts: string[]; path: string; router: string; ref: string }[];
}

export interface TraefikOptions {
  /** `--traefik-default-rule`, compiled. */
  defaultRule?: DefaultRule;
  /** `--traefik-outside-middlewares`: defined elsewhere, and a router may be served without them. */
  outside?: readonly string[];
}

/** Traefik's labels in four phases: group them, read services, read each router, then note the rest. */
export function parseTraefikLabels(c: ContainerInfo, o: TraefikOptions = {}): DialectResult {
  const sink = new DiagnosticSink(c);
  const used: LabelNote[] = [];
  const g = groupLabels(c, sink, used);
  if (!g.enabled) return { drafts: [], diagnostics: sink.list, disabled: true, used, quiet: [] };
  const quiet: LabelNote[] = [];
  const name = traefikName(c);
  const rule = o.defaultRule?.render({
    Name: name,
    ContainerName: c.name.replace(/^\//, ''),
    Labels: c.labels,
  });
  const env: Env = {
    sink,
    services: readServices(c, g.services, sink, quiet),
    middlewares: g.middlewares,
    network: g.network,
    compose: composeGroup(c.labels),
    implicit: [...new Set([c.name.replace(/^\//, '').replace(/[^A-Za-z0-9-]/g, '-'), name])],
    ...(rule === undefined
      ? {}
      : { defaultRule: { rule, key: (r: string) => `traefik.http.routers.${r}.rule` } }),
    referenced: new Set(),
    quiet,
    outside: new Set((o.outside ?? []).map(qualified)),
    guarded: [],
  };
  // Traefik gives a container without routers one, named after it, when it has at most one service.
  if (g.routers.size === 0 && env.defaultRule) {
    if (g.services.size <= 1) g.routers.set(name, new Map());
    else {
      const [key, value] = [...g.services.values()][0]!.values().next().value!;
      sink.warning(
        key,
        value,
        `not translated: the container defines several services (${[...g.services.keys()].join(', ')}) and no router, and Traefik makes no default router for it either; no route`,
      );
    }
  }
  const drafts: RouteDraft[] = [];
  for (const [router, opts] of g.routers) drafts.push(...readRouter(router, opts, env));
  withholdCovered(drafts, env, c);
  quiet.push(...notes(c, g, env, drafts));
  if (g.network) used.push({ label: g.network[0], note: `network "${g.network[1]}" for unpublished ports` });
  return {
    drafts: dropRepeatedClaims(drafts, sink),
    diagnostics: sink.list,
    disabled: false,
    used,
    quiet,
    scoped: sink.scoped,
  };
}

/**
 * Traefik's name for the container: `normalize` of its compose service and project
 * (`<service>_<project>`), else of its name. The default router and service are called that,
 * and it is `.Name` in the default rule.
 */
export function traefikName(c: ContainerInfo): string {
  const service = c.labels['com.docker.compose.service'];
  const project = c.labels['com.docker.compose.project'];
  return normalize(service !== undefined && project !== undefined ? `${service}_${project}` : c.name);
}

/** Traefik's `normalize`: every run of characters that are not letters or digits becomes one "-". */
export function normalize(s: string): string {
  return s
    .split(/[^\p{L}\p{N}]+/u)
    .filter(Boolean)
    .join('-');
}

/** An empty label Traefik reads as "not set": the option is as good as absent. */
function present(opt: Option | undefined, env: Env, what: string): Option | undefined {
  if (opt?.[1].trim() !== '') return opt;
  env.quiet.push({ label: opt[0], note: `empty: not set, as Traefik reads it (${what})` });
  return undefined;
}

/** Phase 1: `enable` and `docker.network` read; routers, services and middlewares grouped by name. */
function groupLabels(c: ContainerInfo, sink: DiagnosticSink, used: LabelNote[]): Grouped {
  const g: Grouped = { enabled: true, routers: new Map(), services: new Map(), middlewares: new Map() };
  for (const [key, value] of Object.entries(c.labels).sort(([a], [b]) => localeOrder(a, b))) {
    if (!key.startsWith(P)) continue;
    const parts = key.slice(P.length).split('.');
    const lower = parts.map((s) => s.toLowerCase());
    const rest = key.slice(P.length).toLowerCase();
    if (rest === 'enable') {
      const b = checkBool(value);
      if (!b.ok) sink.error(key, value, `expected ${b.expected}`);
      else {
        g.enabled = b.value;
        used.push({ label: key, note: b.value ? undefined : 'the container opts out: no route' });
      }
    } else if (rest === 'docker.lbswarm' || rest === 'swarm.lbswarm') {
      // Traefik's Swarm provider: route to the service's VIP and let Swarm balance (swarm.ts reads it).
      const b = checkBool(value);
      if (!b.ok) sink.error(key, value, `expected ${b.expected}`);
      else
        used.push({
          label: key,
          note: b.value
            ? "on a Swarm service: traffic goes to the service's virtual IP (Swarm balances), as with --swarm-upstream vip"
            : 'traffic goes to each task',
        });
    } else if (rest === 'docker.network' || rest === 'swarm.network') {
      const n = checkName(value);
      if (!n.ok) sink.error(key, value, `expected ${n.expected}`);
      else g.network = [key, n.value];
    } else if (
      lower[0] === 'http' &&
      parts.length >= 4 &&
      ['routers', 'services', 'middlewares'].includes(lower[1]!)
    ) {
      const into = lower[1] === 'routers' ? g.routers : lower[1] === 'services' ? g.services : g.middlewares;
      const opts = into.get(parts[2]!) ?? new Map();
      opts.set(lower.slice(3).join('.'), [key, value]);
      into.set(parts[2]!, opts);
    } else if (lower[0] === 'tcp' || lower[0] === 'udp') {
      sink.warning(
        key,
        value,
        `not translated: Traefik ${lower[0].toUpperCase()} routing${lower[0] === 'tcp' ? ' (Berth TCP routes use berth.tcp.<name>.listen and .port)' : ''}`,
      );
    } else {
      sink.warning(
        key,
        value,
        'not translated: Berth reads traefik.enable, traefik.docker.network and traefik.http.routers / services / middlewares',
      );
    }
  }
  return g;
}

/**
 * Phase 2: each service's port and scheme, or its url. A service label that is wrong keeps out
 * the routers using that service, not the others (in Traefik too the service alone fails).
 */
function readServices(
  c: ContainerInfo,
  services: Map<string, Options>,
  sink: DiagnosticSink,
  quiet: LabelNote[],
): Map<string, Service> {
  const svc = new Map<string, Service>();
  for (const [name, opts] of services) {
    const s: Service = { scheme: 'http', labels: [], bad: false };
    const fail = (key: string, value: string, why: string) => {
      sink.scopedError(key, value, `routers using service ${name} are not routed: ${why}`);
      s.bad = true;
    };
    const set: string[] = [];
    let url: Option | undefined;
    for (const [opt, [key, value]] of opts) {
      const empty = value.trim() === '';
      if (opt.startsWith(SERVER) && empty && ['port', 'url'].includes(opt.slice(SERVER.length))) {
        const what = opt.endsWith('port')
          ? 'the lowest exposed port is used'
          : 'the port and scheme are used';
        quiet.push({ label: key, note: `empty: not set, as Traefik reads it (${what})` });
      } else if (opt === `${SERVER}port`) {
        const p = checkPort(value);
        if (!p.ok) fail(key, value, `expected ${p.expected}`);
        else s.port = p.value;
        s.labels.push(key);
        set.push('port');
      } else if (opt === `${SERVER}scheme`) {
        const sc = checkUpstreamScheme(value);
        if (!sc.ok) fail(key, value, `expected ${sc.expected}`);
        else s.scheme = sc.value;
        s.labels.push(key);
        set.push('scheme');
      } else if (opt === `${SERVER}url`) {
        url = [key, value];
      } else if (opt === 'loadbalancer.passhostheader' && isTrue(value)) {
        s.labels.push(key);
      } else {
        sink.warning(key, value, `not translated: service option ${opt}; the service is used without it`);
      }
    }
    if (url && set.length > 0) {
      fail(
        url[0],
        url[1],
        `loadbalancer.server.url cannot be set together with ${set.join(' or ')}, and Traefik refuses such a service too`,
      );
    } else if (url && !s.bad) {
      const target = serverUrl(c, url[1]);
      if ('problem' in target) fail(url[0], url[1], target.problem);
      else {
        s.port = target.port;
        s.scheme = target.scheme;
        s.labels.push(url[0]);
      }
    }
    svc.set(name, s);
  }
  return svc;
}

/**
 * `loadbalancer.server.url`, honoured when it names this container (its name, id, compose
 * service) or localhost: its port and scheme are then the route's. Anything else would send the
 * traffic somewhere the container's labels have no say over, so it is refused, never rewritten.
 */
function serverUrl(
  c: ContainerInfo,
  raw: string,
): { port: number; scheme: UpstreamScheme } | { problem: string } {
  const parts = splitAddress(raw);
  if (!parts || parts.scheme === undefined || parts.host === '')
    return { problem: `expected a URL such as http://${c.name}:8080` };
  const scheme = checkUpstreamScheme(parts.scheme);
  if (!scheme.ok) return { problem: `expected a URL with scheme ${scheme.expected}, not ${parts.scheme}` };
  if (!isSelfHost(c, parts.host)) {
    return {
      problem: `the URL names ${parts.host}, which is not this container: Berth routes a container's labels to that container only (use ${scheme.value}://${c.name}:<port>, its compose service or localhost)`,
    };
  }
  if (parts.path !== undefined && parts.path !== '/')
    return { problem: `the URL has the path ${parts.path}; Berth proxies to the upstream's root` };
  if (parts.port === undefined) return { port: defaultPort(scheme.value), scheme: scheme.value };
  const p = checkPort(parts.port);
  if (!p.ok) return { problem: `expected ${p.expected} in the URL ("${parts.port}" is not one)` };
  return { port: p.value, scheme: scheme.value };
}

/** Phase 3: one router's drafts (one per path prefix of its rule), or none with the reason reported. */
function readRouter(router: string, opts: Options, env: Env): RouteDraft[] {
  const labels = routerOptions(opts, env.sink);
  const rule = routerRule(router, opts, env);
  if (!rule) return [];
  const byPath = ruleHosts(router, rule, opts, env);
  if (!byPath) return [];
  const target = routerService(router, opts, rule.opt, env);
  if (!target) return [];
  labels.push(...target.service.labels);
  const mw = routerMiddlewares(router, opts, env, labels);
  if (!mw) return [];
  if ('guard' in mw) {
    for (const [path, hosts] of byPath) env.guarded.push({ hosts: [...hosts], path, router, ref: mw.guard });
    return [];
  }
  if (env.network) labels.push(env.network[0]);

  const svcLabel = `traefik.http.services.${target.name ?? env.implicit[0]}.loadbalancer.server.port`;
  return [...byPath].map(([path, hosts], i) => ({
    group: i === 0 ? router : `${router}#${i + 1}`,
    hosts: [...hosts],
    path,
    stripPath: false,
    scheme: target.service.scheme,
    port: target.service.port,
    portLabel: svcLabel,
    portDefault: 'lowest' as const,
    network: env.network?.[1],
    lbGroup: env.compose,
    ...(mw.allow ? { allow: mw.allow } : {}),
    labels: [rule.opt[0], ...labels],
  }));
}

/** The router's rule: its label, else the default rule; undefined (with a warning) when it has none. */
function routerRule(router: string, opts: Options, env: Env): { opt: Option; from?: string } | undefined {
  const own = opts.get('rule');
  const ruleOpt = present(own, env, 'the default rule applies');
  if (ruleOpt) return { opt: ruleOpt };
  if (env.defaultRule) {
    return {
      opt: [env.defaultRule.key(router), env.defaultRule.rule],
      from: ' (the rule comes from --traefik-default-rule)',
    };
  }
  const [key, value] = own ?? [...opts.values()][0]!;
  env.sink.warning(
    key,
    value,
    `not translated: router ${router} has no rule, and Traefik's default rule is read only with --traefik-default-rule; set traefik.http.routers.${router}.rule`,
  );
  return undefined;
}

/** Router options Berth has no use for are warnings; the ones it reads (tls, ruleSyntax) are labels of the route. */
function routerOptions(opts: Options, sink: DiagnosticSink): string[] {
  const labels: string[] = [];
  for (const [opt, [key, value]] of opts) {
    if (opt === 'rule' || opt === 'service' || opt === 'middlewares') continue;
    if (opt === 'tls' || opt === 'rulesyntax') {
      labels.push(key);
      continue;
    }
    const why =
      opt === 'entrypoints'
        ? 'entrypoints are not translated; the route is served on the front door’s own ports'
        : opt.startsWith('tls.')
          ? `TLS option ${opt} is not translated; certificates come from the front door (--tls)`
          : `router option ${opt} is not translated; the route is made without it`;
    sink.warning(key, value, why);
  }
  return labels;
}

/**
 * The rule's hosts by path prefix, read in the router's rule syntax (`ruleSyntax`: v3, Traefik
 * v3's default, or v2); undefined when the router is not routed (the reason is reported).
 */
function ruleHosts(
  router: string,
  { opt: [ruleKey, rule], from = '' }: { opt: Option; from?: string },
  opts: Options,
  env: Env,
): Map<string, Set<string>> | undefined {
  const { sink } = env;
  const notRouted = `; router ${router} is not routed${from}`;
  // Errors start with the router, so the reader (and a clipped message) still knows what they cost.
  const refuse = (label: string, value: string, why: string) =>
    sink.scopedError(label, value, `router ${router} is not routed: ${why}${from}`);
  const parsed = parseRule(rule);
  if (!parsed.ok) {
    if (parsed.untranslatable) sink.warning(ruleKey, rule, `not translated: ${parsed.message}${notRouted}`);
    else refuse(ruleKey, rule, `expected ${EXPECTED_RULE}: ${parsed.message}`);
    return undefined;
  }
  const syntaxOpt = present(opts.get('rulesyntax'), env, 'Traefik’s default rule syntax, v3, applies');
  const syntax = syntaxOpt?.[1].trim().toLowerCase();
  if (syntaxOpt && syntax !== 'v2' && syntax !== 'v3') {
    refuse(syntaxOpt[0], syntaxOpt[1], 'expected ruleSyntax v2 or v3');
    return undefined;
  }
  const v2 = parsed.v2[0];
  if (v2 && syntax === 'v3') {
    refuse(ruleKey, rule, `ruleSyntax=v3, but ${v2.what} is Traefik v2 rule syntax (in v3, ${v2.instead})`);
    return undefined;
  }
  if (v2 && syntax === undefined) {
    sink.warning(
      ruleKey,
      rule,
      `${v2.what} is Traefik v2 rule syntax: Berth routes it, but Traefik v3 refuses it unless traefik.http.routers.${router}.ruleSyntax=v2 (in v3, ${v2.instead})`,
    );
  }
  const byPath = new Map<string, Set<string>>();
  let bad = false;
  for (const t of parsed.terms) {
    if (t.hosts.length === 0 || t.hosts.includes('*')) {
      sink.warning(
        ruleKey,
        rule,
        `not translated: ${t.hosts.length === 0 ? 'a rule part without Host(...)' : 'Host(`*`)'} matches every hostname${notRouted}`,
      );
      return undefined;
    }
    const hs: string[] = [];
    for (const h of t.hosts) {
      const ch = checkHostname(h);
      if (!ch.ok) {
        refuse(ruleKey, rule, `expected ${ch.expected} in Host(...) ("${h}" is not one)`);
        bad = true;
      } else hs.push(ch.value);
    }
    const cp = checkPath(t.path);
    if (!cp.ok) {
      sink.warning(
        ruleKey,
        rule,
        `not translated: PathPrefix(\`${t.path}\`) is not ${cp.expected}${notRouted}`,
      );
      return undefined;
    }
    const same = byPath.get(cp.value);
    if (same) for (const h of hs) same.add(h);
    else byPath.set(cp.value, new Set(hs));
  }
  return bad ? undefined : byPath;
}

/** The router's service: named, the only one defined here, or Traefik's implicit one. */
function routerService(
  router: string,
  opts: Options,
  [ruleKey, rule]: Option,
  env: Env,
): { name?: string; service: Service } | undefined {
  const { sink, services: svc } = env;
  let name: string | undefined;
  const labels: string[] = [];
  const own = opts.get('service');
  if (own) labels.push(own[0]);
  const svcOpt = present(own, env, 'the container’s only service, or its implicit one, is used');
  if (svcOpt) {
    const [named, provider] = svcOpt[1].trim().split('@');
    if (
      (provider && provider !== 'docker') ||
      (!svc.has(named!) && !(svc.size === 0 && env.implicit.includes(named!)))
    ) {
      sink.warning(
        svcOpt[0],
        svcOpt[1],
        `not translated: service ${svcOpt[1]} is not defined on this container (Berth routes to the labelled container only); router ${router} is not routed`,
      );
      return undefined;
    }
    name = svc.has(named!) ? named : undefined;
  } else if (svc.size === 1) name = [...svc.keys()][0];
  else if (svc.size > 1) {
    sink.warning(
      ruleKey,
      rule,
      `router ${router} names no service and the container defines several (${[...svc.keys()].join(', ')}); set traefik.http.routers.${router}.service (Traefik refuses this too)`,
    );
    return undefined;
  }
  if (name) env.referenced.add(name);
  const s: Service = name ? svc.get(name)! : { scheme: 'http', labels: [], bad: false };
  // A service label that failed its check is already an error; never fall back to a default port.
  if (s.bad) return undefined;
  return { ...(name ? { name } : {}), service: { ...s, labels: [...labels, ...s.labels] } };
}

/**
 * Another router of the container must not serve what a withheld guarded one would have: in
 * Traefik a Host(`a`) router gives way to Host(`a`) && PathPrefix(`/admin`) with basicauth for
 * /admin, but with that one withheld it would serve /admin itself, unguarded. So a draft loses
 * the hosts of a guarded router whose path it covers (a prefix in the text, fail closed), and is
 * dropped when none are left.
 */
function withholdCovered(drafts: RouteDraft[], env: Env, c: ContainerInfo): void {
  if (env.guarded.length === 0) return;
  for (let i = drafts.length - 1; i >= 0; i--) {
    const d = drafts[i]!;
    const hits = env.guarded.filter(
      (g) => g.path.startsWith(d.path) && g.hosts.some((h) => d.hosts.includes(h)),
    );
    if (hits.length === 0) continue;
    const taken = new Set(hits.flatMap((g) => g.hosts));
    d.hosts = d.hosts.filter((h) => !taken.has(h));
    const g = hits[0]!;
    const key = d.labels?.[0] ?? d.portLabel;
    env.sink.warning(
      key,
      c.labels[key],
      `not routed for ${[...taken].filter(Boolean).join(', ')}: router ${g.router} is withheld for middleware ${g.ref}, which protects ${g.path} there, and this route (${d.path}) would serve it without the guard`,
    );
    if (d.hosts.length === 0) drafts.splice(i, 1);
  }
}

/** A middleware reference as `name@provider`: without a provider Traefik looks in the router's own (docker). */
const qualified = (ref: string) => (ref.includes('@') ? ref : `${ref}@docker`).toLowerCase();

/** Every kind a middleware's labels define (`basicauth`, `chain`, …): a definition may have several. */
function kindsOf(def: Options): Set<string> {
  return new Set([...def.keys()].map((k) => k.split('.')[0]!));
}

/**
 * The guard a middleware holds, if any: its own kind, or a member of its chain (at any depth; a
 * member Berth cannot see counts as one, since a chain so often bundles authentication).
 */
function guardOf(name: string, env: Env, seen: Set<string> = new Set()): string | undefined {
  const def = env.middlewares.get(name);
  if (!def || seen.has(name) || seen.size > 16) return undefined;
  seen.add(name);
  const kinds = kindsOf(def);
  const own = [...kinds].find((k) => GUARDS.has(k));
  if (own) return own;
  if (!kinds.has('chain')) return undefined;
  const members = def.get('chain.middlewares')?.[1] ?? '';
  for (const ref of members
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean)) {
    const [member, provider] = ref.split('@');
    if ((provider && provider !== 'docker') || !env.middlewares.has(member!)) {
      if (env.outside.has(qualified(ref))) continue;
      return `chain member ${ref}, defined outside this container`;
    }
    const inner = guardOf(member!, env, seen);
    if (inner) return `${inner} in chain member ${ref}`;
  }
  return undefined;
}

/**
 * The router's middlewares: an IP allow-list defined here becomes `allow`; a guard withholds the
 * router (`guard` names it); others are warnings. Undefined when the router is not routed.
 */
function routerMiddlewares(
  router: string,
  opts: Options,
  env: Env,
  labels: string[],
): { allow?: string[] } | { guard: string } | undefined {
  const { sink } = env;
  let allow: string[] | undefined;
  const mwOpt = opts.get('middlewares');
  if (!mwOpt) return {};
  for (const ref of mwOpt[1]
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean)) {
    const [name, provider] = ref.split('@');
    const def = !provider || provider === 'docker' ? env.middlewares.get(name!) : undefined;
    const kinds = def ? kindsOf(def) : new Set<string>();
    const guard = def ? guardOf(name!, env) : undefined;
    if (guard) {
      sink.warning(
        mwOpt[0],
        mwOpt[1],
        `not routed: middleware ${ref} (${guard}) protects router ${router} and Berth cannot apply it; serving it without would expose it`,
      );
      return { guard: ref };
    }
    const kind = [...kinds].find((k) => ALLOW.has(k)) ?? [...kinds][0];
    const range = def && kind && ALLOW.has(kind) ? def.get(`${kind}.sourcerange`) : undefined;
    if (range && allow) {
      // Traefik lets through only who passes both; Berth keeps one list per route.
      sink.warning(
        range[0],
        range[1],
        `not routed: router ${router} has a second IP allow-list (${ref}); Traefik admits only clients in both and Berth applies one list, so serving it with either would admit more`,
      );
      return undefined;
    }
    if (range) {
      const cidrs = checkCidrList(range[1]);
      if (!cidrs.ok) {
        sink.scopedError(range[0], range[1], `router ${router} is not routed: expected ${cidrs.expected}`);
        return undefined;
      }
      allow = cidrs.value;
      labels.push(mwOpt[0], range[0]);
    } else if (def || env.outside.has(qualified(ref))) {
      sink.warning(
        mwOpt[0],
        mwOpt[1],
        def
          ? `not translated: middleware ${ref} (${kind}); router ${router} is served without it`
          : `not translated: middleware ${ref} is defined outside this container and named in --traefik-outside-middlewares; router ${router} is served without it`,
      );
    } else {
      // Fail closed: authelia@docker, auth@file and the like are a router's authentication.
      sink.warning(
        mwOpt[0],
        mwOpt[1],
        `not routed: middleware ${ref} is defined outside this container, so Berth cannot see what it does, and it may be router ${router}'s authentication (as authelia@docker is); name it in the agent's --traefik-outside-middlewares to serve the router without it`,
      );
      return { guard: ref };
    }
  }
  return allow ? { allow } : {};
}

/** Phase 4: what `berth explain` says about labels no route was made from. */
function notes(c: ContainerInfo, g: Grouped, env: Env, drafts: RouteDraft[]): LabelNote[] {
  const quiet: LabelNote[] = [];
  const drafted = new Set(drafts.flatMap((d) => d.labels ?? []));
  for (const [router, opts] of g.routers) {
    const rule = opts.get('rule')?.[0] ?? env.defaultRule?.key(router);
    if (rule && drafted.has(rule)) continue;
    for (const [key] of opts.values())
      quiet.push({ label: key, note: `router ${router} is not routed (see the notes on its other labels)` });
  }
  for (const [name, opts] of g.middlewares) {
    for (const [opt, [key]] of opts) {
      if (!drafted.has(key))
        quiet.push({
          label: key,
          note: `middleware ${name} (${opt.split('.')[0]}) definition; see the routers using it`,
        });
    }
  }
  for (const [name, s] of env.services) {
    if (!env.referenced.has(name))
      for (const key of s.labels) quiet.push({ label: key, note: `no router uses service ${name}` });
  }
  if (g.routers.size === 0 && !env.defaultRule) {
    const first = Object.keys(c.labels)
      .filter((k) => k.startsWith(P))
      .sort()[0];
    if (first && (g.services.size > 0 || first.toLowerCase() === 'traefik.enable')) {
      env.sink.warning(
        first,
        c.labels[first],
        'not translated: no traefik.http.routers.<name>.rule, and Traefik’s default rule is read only with --traefik-default-rule; no route',
      );
    }
  }
  return quiet;
}

/** One way a rule matches: an OR of these, each needing one of `hosts` and the path prefix. */
export interface Term {
  /** Empty: no Host(...) in this part, so it matches every hostname. */
  hosts: string[];
  path: string;
}

/** What in a rule only Traefik's v2 rule syntax allows, and how v3 says it. */
export interface V2Syntax {
  what: string;
  instead: string;
}

/** `v2`: what in the rule only Traefik's v2 rule syntax allows (a matcher given several values, HostHeader). */
type RuleResult =
  | { ok: true; terms: Term[]; v2: V2Syntax[] }
  | { ok: false; untranslatable: boolean; message: string };

/**
 * An atom of a rule in disjunctive normal form: a Host (any of its arguments), a PathPrefix, or
 * something Berth has no equal for. Host's arguments stay one atom, so a Host() with thousands
 * of names is one term, not thousands.
 */
type Atom = { hosts: string[] } | { prefix: string } | { other: string };

const MAX_TERMS = 64;
/** Real rules nest a few levels; a deeper one is refused before it costs stack. */
const MAX_DEPTH = 64;

class RuleError extends Error {
  constructor(
    message: string,
    readonly untranslatable: boolean,
  ) {
    super(message);
  }
}

const TOKEN_RE = /(&&|\|\||[(),!]|`[^`]*`|"(?:[^"\\]|\\.)*"|[A-Za-z][A-Za-z0-9]*|\S)/y;
const SPACE_RE = /\s*/y;

/** The rule's tokens, in one pass over it (sticky regexes, no copies of the rest of the rule); undefined when one cannot be read. */
function tokenize(rule: string): string[] | undefined {
  const tokens: string[] = [];
  let at = 0;
  for (;;) {
    SPACE_RE.lastIndex = at;
    SPACE_RE.exec(rule);
    at = SPACE_RE.lastIndex;
    if (at >= rule.length) return tokens;
    TOKEN_RE.lastIndex = at;
    const m = TOKEN_RE.exec(rule);
    if (!m) return undefined;
    // A lone quote never closes: stop here, or every later quote would be scanned to the end.
    if (m[1] === '"' || m[1] === '`') return undefined;
    tokens.push(m[1]!);
    at = TOKEN_RE.lastIndex;
  }
}

/**
 * Parses Traefik's rule language far enough to route: Host / HostHeader and PathPrefix, with &&,
 * || and parentheses. Other matchers and negation are reported as untranslatable, never widened.
 * Linear in the rule's length: each token is read once, and the expansion into terms is bounded
 * by MAX_TERMS before it is built.
 */
export function parseRule(rule: string): RuleResult {
  const tokens = tokenize(rule);
  if (!tokens) return { ok: false, untranslatable: false, message: 'a quote (` or ") is not closed' };
  let i = 0;
  let depth = 0;
  const v2: V2Syntax[] = [];
  const fail = (message: string): never => {
    throw new RuleError(message, false);
  };
  const tooMany = (): never => {
    throw new RuleError('the rule has too many combinations', true);
  };
  const and = (a: Atom[][], b: Atom[][]): Atom[][] => {
    if (a.length * b.length > MAX_TERMS) tooMany();
    // One term on the right (the common `A && B && C …`): its atoms join each left term in place,
    // so a long chain costs its length, not its square. (Every term is an array of its own.)
    if (b.length === 1) {
      for (const x of a) for (const y of b[0]!) x.push(y);
      return a;
    }
    return a.flatMap((x) => b.map((y) => [...x, ...y]));
  };
  const expr = (): Atom[][] => {
    const left = conj();
    while (tokens[i] === '||') {
      i++;
      left.push(...conj());
      if (left.length > MAX_TERMS) tooMany();
    }
    return left;
  };
  const conj = (): Atom[][] => {
    let left = unary();
    while (tokens[i] === '&&') {
      i++;
      left = and(left, unary());
    }
    return left;
  };
  const unary = (): Atom[][] => {
    const t = tokens[i];
    if (t === '!') throw new RuleError('negation (!) has no Berth equivalent', true);
    if (t === '(') {
      if (++depth > MAX_DEPTH) fail(`parentheses nest more than ${MAX_DEPTH} deep`);
      i++;
      const inner = expr();
      if (tokens[i] !== ')') fail('a "(" is not closed');
      i++;
      depth--;
      return inner;
    }
    if (!t || !/^[A-Za-z]/.test(t)) fail(t ? `unexpected "${t}"` : 'the rule ends early');
    i++;
    if (tokens[i] !== '(') fail(`${t} needs (...)`);
    i++;
    const args: string[] = [];
    while (tokens[i] !== ')') {
      const a = tokens[i];
      if (a === undefined) fail(`${t}( is not closed`);
      if (!a || !/^[`"]/.test(a)) fail(`${t}(...) takes quoted arguments such as \`app.example.com\``);
      args.push(a!.startsWith('"') ? unquote(a!, t!) : a!.slice(1, -1));
      i++;
      if (tokens[i] === ',') i++;
      else if (tokens[i] === undefined) fail(`${t}( is not closed`);
      else if (tokens[i] !== ')') fail(`${t}(...) arguments are separated by ","`);
    }
    i++;
    if (args.length === 0) fail(`${t}() needs an argument`);
    const name = t!.toLowerCase();
    if (name === 'hostheader') v2.push({ what: `${t}(…)`, instead: 'write Host(…)' });
    else if (args.length > 1 && (name === 'host' || name === 'pathprefix'))
      v2.push({
        what: `${t}(…) with ${args.length} values`,
        instead: `each matcher takes one value: ${t}(\`a\`) || ${t}(\`b\`)`,
      });
    if (name === 'host' || name === 'hostheader') return [[{ hosts: args.map((h) => h.toLowerCase()) }]];
    if (name === 'pathprefix') return args.map((p) => [{ prefix: p }]);
    return [[{ other: t! }]];
  };
  let dnf: Atom[][];
  try {
    dnf = expr();
    if (i < tokens.length) fail(`unexpected "${tokens[i]}"`);
  } catch (err) {
    if (!(err instanceof RuleError)) throw err;
    return { ok: false, untranslatable: err.untranslatable, message: err.message };
  }
  const terms: Term[] = [];
  for (const conjunct of dnf) {
    const other = conjunct.find((a) => 'other' in a);
    if (other && 'other' in other) {
      return {
        ok: false,
        untranslatable: true,
        message: `the ${other.other} matcher has no Berth equivalent`,
      };
    }
    // Host(a, b) && Host(b, c) matches b only; hosts that do not meet match nothing.
    let hosts: Set<string> | undefined;
    for (const a of conjunct) {
      if (!('hosts' in a)) continue;
      if (!hosts) hosts = new Set(a.hosts);
      else {
        const both = new Set<string>();
        for (const h of a.hosts) if (hosts.has(h)) both.add(h);
        hosts = both;
      }
    }
    if (hosts && hosts.size === 0) continue;
    const prefixes = conjunct.flatMap((a) => ('prefix' in a ? [a.prefix] : []));
    // PathPrefix(a) && PathPrefix(b) is the longer one when they nest, else nothing.
    const path = prefixes.sort((a, b) => b.length - a.length)[0] ?? '/';
    if (prefixes.some((p) => !path.startsWith(p))) continue;
    terms.push({ hosts: hosts ? [...hosts] : [], path });
  }
  if (terms.length === 0) return { ok: false, untranslatable: true, message: 'the rule can never match' };
  return { ok: true, terms, v2 };
}

/** A "double-quoted" argument (Go string syntax in Traefik; JSON's is close enough for hostnames). */
function unquote(token: string, matcher: string): string {
  try {
    return JSON.parse(token) as string;
  } catch {
    throw new RuleError(`${matcher}(...) has an argument with an escape Berth cannot read: ${token}`, false);
  }
}

function isTrue(value: string): boolean {
  const b = checkBool(value);
  return b.ok && b.value;
}

/** What Traefik's default rule template sees of a container. */
export interface RuleModel {
  /** Traefik's name for the container (see traefikName). */
  Name: string;
  ContainerName: string;
  Labels: Record<string, string>;
}

/** `--traefik-default-rule`, compiled once at start-up. */
export interface DefaultRule {
  readonly template: string;
  render(m: RuleModel): string;
}

type Expr = (m: RuleModel) => string;

const FUNCS: Record<string, (s: string) => string> = {
  normalize,
  lower: (s) => s.toLowerCase(),
  upper: (s) => s.toUpperCase(),
};
const TEMPLATE_HELP =
  'Berth reads .Name, .ContainerName, index .Labels "<label>", string literals and the functions normalize, lower and upper, also in pipelines such as {{ .Name | normalize }}';

/**
 * Traefik's `defaultRule` is a Go template (with sprig functions); Berth reads the part real
 * default rules use, e.g. ``Host(`{{ normalize .Name }}.example.com`)``, and refuses the rest
 * with a message saying what it reads. Throws an Error naming the problem.
 */
export function compileDefaultRule(template: string): DefaultRule {
  const parts: Expr[] = [];
  let at = 0;
  for (;;) {
    const open = template.indexOf('{{', at);
    const text = template.slice(at, open < 0 ? undefined : open);
    parts.push(() => text);
    if (open < 0) break;
    const close = template.indexOf('}}', open + 2);
    if (close < 0) throw new Error(`a "{{" at character ${open + 1} is not closed`);
    parts.push(
      action(
        template
          .slice(open + 2, close)
          .replace(/^-\s/, '')
          .replace(/\s-$/, ''),
      ),
    );
    at = close + 2;
  }
  return { template, render: (m) => parts.map((p) => p(m)).join('') };
}

/** One `{{ … }}`: a pipeline of commands, each later one given the value before it. */
function action(body: string): Expr {
  const stages = splitPipeline(body);
  let expr: Expr | undefined;
  for (const stage of stages) {
    const words = templateWords(stage, body);
    if (words.length === 0) throw new Error(`{{${body}}}: an empty command; ${TEMPLATE_HELP}`);
    expr = command(words, expr, body);
  }
  if (!expr) throw new Error(`{{${body}}}: an empty action; ${TEMPLATE_HELP}`);
  return expr;
}

function command(words: string[], input: Expr | undefined, body: string): Expr {
  const [head, ...args] = words;
  const fn = FUNCS[head!];
  if (fn) {
    const operands = args.map((a) => operand(a, body));
    if (input) operands.push(input);
    if (operands.length !== 1) throw new Error(`{{${body}}}: ${head} takes one value; ${TEMPLATE_HELP}`);
    const [x] = operands;
    return (m) => fn(x!(m));
  }
  if (head === 'index') {
    if (input || args.length !== 2 || args[0] !== '.Labels')
      throw new Error(`{{${body}}}: expected index .Labels "<label>"; ${TEMPLATE_HELP}`);
    const key = operand(args[1]!, body);
    return (m) => m.Labels[key(m)] ?? '';
  }
  if (input || args.length > 0) throw new Error(`{{${body}}}: ${head} is not a function; ${TEMPLATE_HELP}`);
  return operand(head!, body);
}

function operand(word: string, body: string): Expr {
  if (word === '.Name') return (m) => m.Name;
  if (word === '.ContainerName') return (m) => m.ContainerName;
  if (word.startsWith('`')) {
    const s = word.slice(1, -1);
    return () => s;
  }
  if (word.startsWith('"')) {
    let s: string;
    try {
      s = JSON.parse(word) as string;
    } catch {
      throw new Error(`{{${body}}}: cannot read the string ${word}`);
    }
    return () => s;
  }
  throw new Error(`{{${body}}}: ${word} is not something Berth reads; ${TEMPLATE_HELP}`);
}

/** The stages of a pipeline: split at `|` outside quotes. */
function splitPipeline(body: string): string[] {
  const stages: string[] = [];
  let cur = '';
  let quote: string | undefined;
  for (let i = 0; i < body.length; i++) {
    const ch = body[i]!;
    if (quote) {
      if (ch === '\\' && quote === '"') {
        cur += ch + (body[++i] ?? '');
        continue;
      }
      if (ch === quote) quote = undefined;
    } else if (ch === '"' || ch === '`') quote = ch;
    else if (ch === '|') {
      stages.push(cur);
      cur = '';
      continue;
    }
    cur += ch;
  }
  if (quote) throw new Error(`{{${body}}}: a ${quote} is not closed`);
  stages.push(cur);
  return stages;
}

const WORD_RE = /\s*("(?:[^"\\]|\\.)*"|`[^`]*`|[^\s"`]+)\s*/y;

function templateWords(stage: string, body: string): string[] {
  const words: string[] = [];
  WORD_RE.lastIndex = 0;
  while (WORD_RE.lastIndex < stage.length) {
    const at = WORD_RE.lastIndex;
    const m = WORD_RE.exec(stage);
    if (!m) {
      if (/^\s*$/.test(stage.slice(at))) break;
      throw new Error(`{{${body}}}: cannot read it; ${TEMPLATE_HELP}`);
    }
    words.push(m[1]!);
  }
  return words;
}
