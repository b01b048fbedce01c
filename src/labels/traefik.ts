// Traefik's Docker provider labels: `traefik.http.routers.<r>.rule` (Host and PathPrefix, joined by
// && and ||) sends to `traefik.http.services.<s>.loadbalancer.server.port` / `.scheme`. As in
// Traefik: a router without `.service` uses the container's only service, a container without
// services has one implicitly, and without a port label the lowest exposed port is used. Option
// names are case-insensitive there, so they are compared in lower case here; names are not.
import type { ContainerInfo } from '../model/types.js';
import {
  composeGroup,
  DiagnosticSink,
  type DialectResult,
  dropRepeatedClaims,
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
  checkScheme,
} from './validate.js';

const P = 'traefik.';
/** Middlewares that guard a route: serving it without them would expose what they protect. */
const GUARDS = new Set(['basicauth', 'digestauth', 'forwardauth']);
const ALLOW = new Set(['ipallowlist', 'ipwhitelist']);
const EXPECTED_RULE = 'a rule such as Host(`app.example.com`) && PathPrefix(`/api`)';

export function isTraefikLabel(key: string): boolean {
  return key.startsWith(P);
}

type Options = Map<string, [key: string, value: string]>;

interface Service {
  port?: number;
  scheme: 'http' | 'https';
  /** Label keys read for the service. */
  labels: string[];
  /** A service label failed its check (already an error). */
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
  /** The name of Traefik's implicit service when the container defines none. */
  defaultName: string;
  /** Services some router named or defaulted to, routed or not. */
  referenced: Set<string>;
}

/** Traefik's labels in four phases: group them, read services, read each router, then note the rest. */
export function parseTraefikLabels(c: ContainerInfo): DialectResult {
  const sink = new DiagnosticSink(c);
  const used: LabelNote[] = [];
  const g = groupLabels(c, sink, used);
  if (!g.enabled) return { drafts: [], diagnostics: sink.list, disabled: true, used, quiet: [] };
  const env: Env = {
    sink,
    services: readServices(g.services, sink),
    middlewares: g.middlewares,
    network: g.network,
    compose: composeGroup(c.labels),
    defaultName: c.name.replace(/^\//, '').replace(/[^A-Za-z0-9-]/g, '-'),
    referenced: new Set(),
  };
  const drafts: RouteDraft[] = [];
  for (const [router, opts] of g.routers) drafts.push(...readRouter(router, opts, env));
  const quiet = notes(c, g, env, drafts);
  if (g.network) used.push({ label: g.network[0], note: `network "${g.network[1]}" for unpublished ports` });
  return { drafts: dropRepeatedClaims(drafts, sink), diagnostics: sink.list, disabled: false, used, quiet };
}

/** Phase 1: `enable` and `docker.network` read; routers, services and middlewares grouped by name. */
function groupLabels(c: ContainerInfo, sink: DiagnosticSink, used: LabelNote[]): Grouped {
  const g: Grouped = { enabled: true, routers: new Map(), services: new Map(), middlewares: new Map() };
  for (const [key, value] of Object.entries(c.labels).sort(([a], [b]) => a.localeCompare(b))) {
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
    } else if (rest === 'docker.network') {
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

/** Phase 2: each service's port and scheme. A bad one is an error on the container whichever router uses it. */
function readServices(services: Map<string, Options>, sink: DiagnosticSink): Map<string, Service> {
  const svc = new Map<string, Service>();
  for (const [name, opts] of services) {
    const s: Service = { scheme: 'http', labels: [], bad: false };
    for (const [opt, [key, value]] of opts) {
      if (opt === 'loadbalancer.server.port') {
        const p = checkPort(value);
        if (!p.ok) sink.error(key, value, `expected ${p.expected}`);
        else s.port = p.value;
        s.bad ||= !p.ok;
        s.labels.push(key);
      } else if (opt === 'loadbalancer.server.scheme') {
        const sc = checkScheme(value);
        if (!sc.ok) sink.error(key, value, `expected ${sc.expected}`);
        else s.scheme = sc.value;
        s.bad ||= !sc.ok;
        s.labels.push(key);
      } else if (opt === 'loadbalancer.passhostheader' && isTrue(value)) {
        s.labels.push(key);
      } else {
        sink.warning(key, value, `not translated: service option ${opt}; the service is used without it`);
      }
    }
    svc.set(name, s);
  }
  return svc;
}

/** Phase 3: one router's drafts (one per path prefix of its rule), or none with the reason reported. */
function readRouter(router: string, opts: Options, env: Env): RouteDraft[] {
  const labels = routerOptions(opts, env.sink);
  const ruleOpt = opts.get('rule');
  if (!ruleOpt) {
    const first = [...opts.values()][0]!;
    env.sink.warning(
      first[0],
      first[1],
      `not translated: router ${router} has no rule, and Traefik's default rule (Host from the container name) is not read; set traefik.http.routers.${router}.rule`,
    );
    return [];
  }
  const byPath = ruleHosts(router, ruleOpt, env.sink);
  if (!byPath) return [];
  const target = routerService(router, opts, ruleOpt, env);
  if (!target) return [];
  labels.push(...target.service.labels);
  const mw = routerMiddlewares(router, opts, env, labels);
  if (!mw) return [];
  if (env.network) labels.push(env.network[0]);

  const svcLabel = `traefik.http.services.${target.name ?? env.defaultName}.loadbalancer.server.port`;
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
    labels: [ruleOpt[0], ...labels],
  }));
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

/** The rule's hosts by path prefix; undefined when the router is not routed (the reason is reported). */
function ruleHosts(
  router: string,
  [ruleKey, rule]: [string, string],
  sink: DiagnosticSink,
): Map<string, Set<string>> | undefined {
  const parsed = parseRule(rule);
  if (!parsed.ok) {
    if (parsed.untranslatable)
      sink.warning(ruleKey, rule, `not translated: ${parsed.message}; router ${router} is not routed`);
    else sink.error(ruleKey, rule, `expected ${EXPECTED_RULE}: ${parsed.message}`);
    return undefined;
  }
  const byPath = new Map<string, Set<string>>();
  let bad = false;
  for (const t of parsed.terms) {
    if (t.hosts.length === 0) {
      sink.warning(
        ruleKey,
        rule,
        `not translated: a rule part without Host(...) matches every hostname; router ${router} is not routed`,
      );
      return undefined;
    }
    const hs: string[] = [];
    for (const h of t.hosts) {
      const ch = checkHostname(h);
      if (!ch.ok) {
        sink.error(ruleKey, rule, `expected ${ch.expected} in Host(...) ("${h}" is not one)`);
        bad = true;
      } else hs.push(ch.value);
    }
    const cp = checkPath(t.path);
    if (!cp.ok) {
      sink.warning(
        ruleKey,
        rule,
        `not translated: PathPrefix(\`${t.path}\`) is not ${cp.expected}; router ${router} is not routed`,
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
  [ruleKey, rule]: [string, string],
  env: Env,
): { name?: string; service: Service } | undefined {
  const { sink, services: svc } = env;
  let name: string | undefined;
  const svcOpt = opts.get('service');
  const labels: string[] = [];
  if (svcOpt) {
    labels.push(svcOpt[0]);
    const [named, provider] = svcOpt[1].trim().split('@');
    if (
      (provider && provider !== 'docker') ||
      (!svc.has(named!) && !(svc.size === 0 && named === env.defaultName))
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
 * The router's middlewares: an IP allow-list defined here becomes `allow`; a guard withholds the
 * router; others are warnings. Undefined when the router is not routed.
 */
function routerMiddlewares(
  router: string,
  opts: Options,
  env: Env,
  labels: string[],
): { allow?: string[] } | undefined {
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
    const kind = def ? [...def.keys()][0]!.split('.')[0]! : undefined;
    if (def && kind && GUARDS.has(kind)) {
      sink.warning(
        mwOpt[0],
        mwOpt[1],
        `not routed: middleware ${ref} (${kind}) protects router ${router} and Berth cannot apply it; serving it without would expose it`,
      );
      return undefined;
    }
    const range = def && kind && ALLOW.has(kind) ? def.get(`${kind}.sourcerange`) : undefined;
    if (range && !allow) {
      const cidrs = checkCidrList(range[1]);
      if (!cidrs.ok) {
        sink.error(range[0], range[1], `expected ${cidrs.expected}`);
        return undefined;
      }
      allow = cidrs.value;
      labels.push(mwOpt[0], range[0]);
    } else {
      sink.warning(
        mwOpt[0],
        mwOpt[1],
        def
          ? `not translated: middleware ${ref} (${kind}); router ${router} is served without it`
          : `not translated: middleware ${ref} is defined outside this container; router ${router} is served without it`,
      );
    }
  }
  return allow ? { allow } : {};
}

/** Phase 4: what `berth explain` says about labels no route was made from. */
function notes(c: ContainerInfo, g: Grouped, env: Env, drafts: RouteDraft[]): LabelNote[] {
  const quiet: LabelNote[] = [];
  const drafted = new Set(drafts.flatMap((d) => d.labels ?? []));
  for (const [router, opts] of g.routers) {
    const rule = opts.get('rule')?.[0];
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
  if (g.routers.size === 0) {
    const first = Object.keys(c.labels)
      .filter((k) => k.startsWith(P))
      .sort()[0];
    if (first && (g.services.size > 0 || first.toLowerCase() === 'traefik.enable')) {
      env.sink.warning(
        first,
        c.labels[first],
        'not translated: no traefik.http.routers.<name>.rule, and Traefik’s default rule (Host from the container name) is not read; no route',
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

type RuleResult = { ok: true; terms: Term[] } | { ok: false; untranslatable: boolean; message: string };

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
  const fail = (message: string): never => {
    throw new RuleError(message, false);
  };
  const tooMany = (): never => {
    throw new RuleError('the rule has too many combinations', true);
  };
  const and = (a: Atom[][], b: Atom[][]): Atom[][] => {
    if (a.length * b.length > MAX_TERMS) tooMany();
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
  return { ok: true, terms };
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
