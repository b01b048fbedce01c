// Every flag and BERTH_* variable in one place. loadConfig is the only reader of process.env;
// it reports every problem at once and returns one typed, frozen object per kind of command
// (ServeConfig, AgentConfig, ClientConfig), so nothing else ever casts a configuration value.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { engineTarget } from './agent/docker-engine.js';
import { UserError } from './errors.js';
import { DIALECTS, type DialectName } from './labels/index.js';
import { compileDefaultRule, type DefaultRule } from './labels/traefik.js';
import { type AgentKey, parseAgentKey } from './model/agent-key.js';
import { DEFAULT_TUNNEL_MAX_STREAMS, MAX_TUNNEL_STREAMS } from './model/tunnel.js';

type Kind = 'string' | 'bool' | 'list' | 'int' | 'duration' | 'size';

export interface FlagDef {
  name: string;
  kind: Kind;
  default?: string | boolean | number | string[];
  help: string;
  /** Commands that take the flag; '*' for all. */
  for: string[] | '*';
  /** Extra environment names read before BERTH_<FLAG> (e.g. DOCKER_HOST). */
  envAlias?: string[];
  choices?: string[];
}

const SERVE = ['standalone', 'server'];
const CLIENT = [
  'routes',
  'status',
  'reconcile',
  'keys',
  'agents',
  'exec',
  'audit',
  'password',
  'explain',
  'top',
];
/** Commands that watch a Docker engine. */
const WATCH = ['standalone', 'agent'];

export const FLAGS: FlagDef[] = [
  {
    name: 'data-dir',
    kind: 'string',
    default: './berth-data',
    help: 'Where the SQLite store, token and Caddy state live',
    for: '*',
  },
  {
    name: 'store',
    kind: 'string',
    help: 'Shared store for several server replicas: redis://[:password@]host:port[/db][?prefix=berth:]. Default: SQLite in --data-dir',
    for: SERVE,
  },
  {
    name: 'api-listen',
    kind: 'string',
    default: '127.0.0.1:7080',
    help: 'HTTP API address (host:port)',
    for: SERVE,
  },
  {
    name: 'agent-listen',
    kind: 'string',
    default: '0.0.0.0:7443',
    help: "Agents' TLS address (host:port), serving only the agent WebSocket, with Berth's own CA or --agent-tls-cert; off: none (agents then use --api-listen)",
    for: SERVE,
  },
  {
    name: 'public-name',
    kind: 'list',
    default: [],
    help: 'Names and addresses agents use to reach this server (comma-separated); the agent certificate covers them, and keys create shows them',
    for: SERVE,
  },
  {
    name: 'agent-tls-cert',
    kind: 'string',
    help: "PEM chain for --agent-listen instead of Berth's own CA (leaf first; the last certificate is the one keys pin)",
    for: SERVE,
  },
  {
    name: 'agent-tls-key',
    kind: 'string',
    help: 'PEM private key of --agent-tls-cert',
    for: SERVE,
  },
  {
    name: 'ui-host',
    kind: 'string',
    help: 'Serve the API and web UI at the front door under this hostname, with its TLS (for remote operators); --api-listen stays as it is',
    for: SERVE,
  },
  {
    name: 'docker',
    kind: 'string',
    help: 'Docker endpoint (unix:///path or tcp://host:port); default DOCKER_HOST, then the local socket',
    for: WATCH,
    envAlias: ['DOCKER_HOST'],
  },
  {
    name: 'host-ip',
    kind: 'string',
    help: "Address at which this host's published and host-network ports are reached (default: auto)",
    for: WATCH,
  },
  {
    name: 'network',
    kind: 'string',
    help: 'Docker network whose container IP is used for unpublished ports',
    for: WATCH,
  },
  {
    name: 'caddy-admin',
    kind: 'list',
    default: [],
    help: 'Drive existing Caddy instances (http://host:2019 or unix:///path); repeatable. Default: run our own Caddy',
    for: SERVE,
  },
  {
    name: 'caddy-bin',
    kind: 'string',
    default: 'caddy',
    help: 'Caddy binary for the Caddy Berth runs itself',
    for: SERVE,
  },
  { name: 'http-listen', kind: 'string', default: ':80', help: 'Front-door HTTP address', for: SERVE },
  { name: 'https-listen', kind: 'string', default: ':443', help: 'Front-door HTTPS address', for: SERVE },
  {
    name: 'keep-sysctls',
    kind: 'bool',
    default: false,
    help: "Change no kernel setting: leave net.ipv4.tcp_migrate_req at 0 (Caddy's reloads then reset connections waiting to be accepted) and only warn",
    for: SERVE,
  },
  {
    name: 'caddy-layout',
    kind: 'string',
    default: 'dynamic',
    choices: ['dynamic', 'static'],
    help: 'dynamic: simple hosts are served through DNS lookups (route changes need no Caddy reload); static: every host written into the config',
    for: SERVE,
  },
  {
    name: 'dns-listen',
    kind: 'string',
    default: '127.0.0.1:0',
    help: 'Address of the DNS responder Caddy asks in the dynamic layout (port 0: pick one once, keep it)',
    for: SERVE,
  },
  {
    name: 'http-bind',
    kind: 'string',
    help: 'Serve the HTTP(S) front door on this IP address only (e.g. a Tailscale address)',
    for: SERVE,
  },
  {
    name: 'tcp-bind',
    kind: 'string',
    default: '0.0.0.0',
    help: 'Address for TCP route listeners: an IP, or an interface name (e.g. tailscale0), re-resolved when it changes',
    for: SERVE,
  },
  {
    name: 'tcp-access-log',
    kind: 'string',
    help: 'File for TCP access-log lines (one JSON line per connection); default stdout',
    for: SERVE,
  },
  {
    name: 'traffic',
    kind: 'string',
    default: 'on',
    choices: ['on', 'off'],
    help: 'on: Caddy streams one line per request to Berth for the HTTP access log, per-route metrics and the Traffic charts; off: none of them, no cost per request',
    for: SERVE,
  },
  {
    name: 'access-log',
    kind: 'string',
    default: 'stdout',
    help: 'HTTP access log (one JSON line per request): a file, stdout or off',
    for: SERVE,
  },
  {
    name: 'access-log-max-size',
    kind: 'size',
    help: 'Rotate the access-log files (HTTP and --tcp-access-log) when one would grow past this size (e.g. 100MiB); default never (logrotate, then SIGHUP)',
    for: SERVE,
  },
  {
    name: 'access-log-keep',
    kind: 'int',
    default: 5,
    help: 'Rotated access-log files kept (FILE.1 … FILE.N)',
    for: SERVE,
  },
  {
    name: 'access-log-query',
    kind: 'bool',
    default: false,
    help: 'Keep query strings in the HTTP access log (off: they often carry tokens)',
    for: SERVE,
  },
  {
    name: 'metrics-max-hosts',
    kind: 'int',
    default: 1000,
    help: 'Route hosts with series of their own in /metrics and the Traffic page; more are counted as host="other"',
    for: SERVE,
  },
  {
    name: 'tcp-idle-timeout',
    kind: 'duration',
    default: 3_600_000,
    help: 'Close a TCP connection with no traffic either way for this long (0: never)',
    for: SERVE,
  },
  {
    name: 'tcp-max-connections',
    kind: 'int',
    default: 1024,
    help: 'Connections per TCP listener; more are refused and logged',
    for: SERVE,
  },
  {
    name: 'tls',
    kind: 'string',
    default: 'auto',
    choices: ['auto', 'internal', 'off'],
    help: "auto: Caddy's automatic HTTPS; internal: Caddy's local CA; off: plain HTTP only",
    for: SERVE,
  },
  {
    name: 'label-prefix',
    kind: 'string',
    default: 'berth',
    help: 'Label prefix read from containers',
    for: WATCH,
  },
  {
    name: 'dialects',
    kind: 'list',
    default: [...DIALECTS],
    choices: [...DIALECTS],
    help: 'Label dialects read, comma-separated, in precedence order: a container labelled in two is read by the first',
    for: WATCH,
  },
  {
    name: 'caddy-label-prefix',
    kind: 'string',
    default: 'caddy',
    help: 'Prefix of caddy-docker-proxy labels, as its --label-prefix / CADDY_DOCKER_LABEL_PREFIX (caddy_ingress_network keeps its name)',
    for: WATCH,
  },
  {
    name: 'traefik-default-rule',
    kind: 'string',
    help: "Traefik's defaultRule, e.g. 'Host(`{{ normalize .Name }}.example.com`)': routers without a rule, and containers with Traefik labels but no router, get it. Off by default",
    for: WATCH,
  },
  {
    name: 'traefik-outside-middlewares',
    kind: 'string',
    help: 'Traefik middlewares defined outside the container (e.g. redirect-to-https@file,compress@file) that a router may be served without. Any other middleware Berth cannot see (authelia@docker, auth@file) withholds its router, since it may be its authentication',
    for: WATCH,
  },
  {
    name: 'resync-interval',
    kind: 'duration',
    default: 30_000,
    help: 'Periodic full re-list of containers (safety net for missed events)',
    for: WATCH,
  },
  {
    name: 'swarm-upstream',
    kind: 'string',
    default: 'task',
    choices: ['task', 'vip'],
    help: "On a Swarm manager: where a service's routes send traffic. task: each running task on its node's address (published host-mode port or host network); vip: the service's virtual IP (the front door must share an overlay network with it)",
    for: WATCH,
  },
  {
    name: 'swarm-poll',
    kind: 'duration',
    default: 500,
    help: 'On the Swarm leader: how often tasks are re-listed (Swarm has no task events); a task that moves moves its route within about this',
    for: WATCH,
  },
  {
    name: 'drift-interval',
    kind: 'duration',
    default: 1_000,
    help: "How often Caddy's config is checked for drift",
    for: SERVE,
  },
  {
    name: 'agent-max-message',
    kind: 'size',
    default: 8 * 1024 * 1024,
    help: 'Largest message read from an agent (e.g. 8MiB); a bigger one closes its connection unread',
    for: SERVE,
  },
  {
    name: 'trusted-proxies',
    kind: 'list',
    default: ['127.0.0.0/8', '::1/128'],
    help: "Proxies whose X-Forwarded-For names the client (comma-separated IPs or CIDRs); default loopback, where Berth's own Caddy is",
    for: SERVE,
  },
  {
    name: 'log-level',
    kind: 'string',
    default: 'info',
    choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
    help: 'Log level (JSON logs on stderr)',
    for: '*',
  },
  {
    name: 'server',
    kind: 'string',
    help: 'Berth server URL (CLI commands default to http://127.0.0.1:7080; required for berth agent)',
    for: [...CLIENT, 'agent'],
  },
  {
    name: 'key',
    kind: 'string',
    help: 'Agent key (from berth keys create); set BERTH_AGENT_KEY or use --key-file: as a flag, any local user can read it (a warning is logged)',
    for: ['agent'],
    envAlias: ['BERTH_AGENT_KEY'],
  },
  {
    name: 'key-file',
    kind: 'string',
    help: 'File holding the agent key (keeps it off the command line)',
    for: ['agent'],
  },
  {
    name: 'ca-file',
    kind: 'string',
    help: "PEM CA the server's certificate must chain to (an operator CA), instead of the pin in the key",
    for: ['agent'],
  },
  {
    name: 'insecure-transport',
    kind: 'bool',
    default: false,
    help: 'Allow http:// or ws:// to a server that is not on loopback: the key, snapshots and exec output cross the network in clear (a warning at every connect)',
    for: ['agent'],
  },
  {
    name: 'jit',
    kind: 'bool',
    default: false,
    help: "Let V8 compile the agent's hot code (baseline and optimizing compilers): about 10 MiB more RSS for work an agent seldom has",
    for: ['agent'],
  },
  {
    name: 'name',
    kind: 'string',
    help: 'Agent name (default: hostname); for keys create: the key name',
    for: ['agent', 'keys'],
  },
  {
    name: 'tunnel',
    kind: 'bool',
    default: false,
    help: "Carry every route's traffic over connections this agent opens to the server (for hosts the front door cannot reach); nothing listens on this host",
    for: ['agent'],
  },
  {
    name: 'tunnel-max-streams',
    kind: 'int',
    default: DEFAULT_TUNNEL_MAX_STREAMS,
    help: `With --tunnel: streams open at once (1 to ${MAX_TUNNEL_STREAMS}); more are refused`,
    for: ['agent'],
  },
  {
    name: 'report-interval',
    kind: 'duration',
    default: 15_000,
    help: 'Agent heartbeat interval',
    for: ['agent'],
  },
  {
    name: 'offline-grace',
    kind: 'duration',
    default: 600_000,
    help: "How long an offline agent's routes stay at the front door",
    for: SERVE,
  },
  {
    name: 'agent-heartbeat',
    kind: 'duration',
    default: 15_000,
    help: 'Report interval assumed for agents that do not announce one (stale after two missed)',
    for: SERVE,
  },
  {
    name: 'domains',
    kind: 'string',
    help: "Hostnames the key's agents may claim, comma-separated (exact or *.example.com); default any",
    for: ['keys'],
  },
  {
    name: 'upstreams',
    kind: 'list',
    help: "Networks (CIDR, comma-separated) the key's agents may route to besides their own host's address; for keys update, '' allows none",
    for: ['keys'],
  },
  {
    name: 'max-routes',
    kind: 'int',
    help: 'Routes (HTTP and TCP) one agent of the key may have served (default 10000)',
    for: ['keys'],
  },
  {
    name: 'max-pending',
    kind: 'int',
    help: 'Agents of the key waiting for approval at once; more are refused (default 20)',
    for: ['keys'],
  },
  {
    name: 'auto-approve',
    kind: 'bool',
    default: false,
    help: 'Agents enrolling with this key are approved at once',
    for: ['keys'],
  },
  {
    name: 'exec-allow',
    kind: 'list',
    default: [],
    help: "Exec rules the server allows for this key's agents (narrows the agents' own rules); repeatable",
    for: ['keys'],
  },
  {
    name: 'metrics-listen',
    kind: 'string',
    help: 'Serve Prometheus /metrics for this agent on host:port (off by default: agents open no port)',
    for: ['agent'],
  },
  {
    name: 'exec-policy',
    kind: 'string',
    help: 'Exec policy file (JSON) for this host: rules per container, limits, or exec disabled',
    for: WATCH,
  },
  {
    name: 'agent',
    kind: 'string',
    help: 'Agent id or name that holds the container',
    for: ['exec', 'explain'],
  },
  {
    name: 'node',
    kind: 'string',
    help: 'Swarm node (hostname as docker node ls shows it, or node id) whose task of the service to use',
    for: ['exec'],
  },
  {
    name: 'task',
    kind: 'int',
    help: 'Swarm task slot of the service to use (the 2 of photos.2)',
    for: ['exec'],
  },
  {
    name: 'timeout',
    kind: 'duration',
    default: 60_000,
    help: 'Kill the command after this long',
    for: ['exec'],
  },
  { name: 'limit', kind: 'int', default: 100, help: 'How many entries to show', for: ['audit', 'top'] },
  {
    name: 'interval',
    kind: 'duration',
    default: 2_000,
    help: 'How often the figures refresh',
    for: ['top'],
  },
  {
    name: 'overlap',
    kind: 'duration',
    default: 86_400_000,
    help: 'How long the old key stays valid after keys rotate',
    for: ['keys'],
  },
  {
    name: 'token',
    kind: 'string',
    help: 'Admin token for CLI commands (default: <data-dir>/admin.token)',
    for: CLIENT,
  },
  { name: 'json', kind: 'bool', default: false, help: 'Machine-readable output', for: CLIENT },
  {
    name: 'force',
    kind: 'bool',
    default: false,
    help: 'Re-send the whole config and retry quarantined routes',
    for: ['reconcile'],
  },
  { name: 'help', kind: 'bool', default: false, help: 'Show help', for: '*' },
];

/** Flag values as parsed, by flag name: only the typed builders below read these. */
type RawConfig = Readonly<Record<string, string | boolean | number | string[] | undefined>>;

export const envName = (flag: string) => `BERTH_${flag.toUpperCase().replace(/-/g, '_')}`;

/**
 * Flags win over BERTH_* variables, which win over defaults. Unknown flags, bad values and
 * missing values are all collected and reported together.
 */
function parseFlags(
  command: string,
  argv: string[],
  env: NodeJS.ProcessEnv,
): {
  config: RawConfig;
  rest: string[];
  /** Where each set value came from: `--flag` or the variable's name (e.g. to warn about --key). */
  sources: Readonly<Record<string, string>>;
} {
  const defs = FLAGS.filter((f) => f.for === '*' || f.for.includes(command));
  const byName = new Map(defs.map((f) => [f.name, f]));
  const problems: string[] = [];
  const raw = new Map<string, string[]>();
  const rest: string[] = [];

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      rest.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    const def = byName.get(name);
    if (!def) {
      problems.push(`unknown flag --${name} for "berth ${command}" (see berth ${command} --help)`);
      continue;
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (def.kind === 'bool') value = 'true';
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) value = argv[++i]!;
    else {
      problems.push(`--${name} needs a value`);
      continue;
    }
    raw.set(name, [...(raw.get(name) ?? []), value]);
  }

  const out: Record<string, string | boolean | number | string[] | undefined> = {};
  const sources: Record<string, string> = {};
  for (const def of defs) {
    let values = raw.get(def.name);
    let source = `--${def.name}`;
    if (!values) {
      const envKey = [envName(def.name), ...(def.envAlias ?? [])].find(
        (k) => env[k] !== undefined && env[k] !== '',
      );
      if (envKey) {
        values =
          def.kind === 'list'
            ? env[envKey]!.split(',')
                .map((s) => s.trim())
                .filter(Boolean)
            : [env[envKey]!];
        source = envKey;
      }
    }
    if (!values) {
      out[def.name] = def.default;
      continue;
    }
    const parsed = parseValue(def, values, source);
    if (typeof parsed === 'object' && parsed && 'problem' in parsed) problems.push(parsed.problem);
    else {
      out[def.name] = parsed;
      sources[def.name] = source;
    }
  }
  if (problems.length > 0) {
    throw new UserError('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
  return { config: Object.freeze(out), rest, sources: Object.freeze(sources) };
}

// ---- typed configuration, per kind of command

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
export type TlsMode = 'auto' | 'internal' | 'off';

export interface Listen {
  host: string;
  port: number;
}

interface Common {
  dataDir: string;
  logLevel: LogLevel;
  help: boolean;
}

/** How an agent (standalone's local one included) watches its Docker and reads labels. */
export interface WatchConfig {
  docker: string;
  /** Fixed by --host-ip; otherwise worked out (loopback for a local engine, the connection's address). */
  hostIp?: string;
  network?: string;
  labelPrefix: string;
  dialects: DialectName[];
  resyncIntervalMs: number;
  /** Where Swarm service routes go (--swarm-upstream). */
  swarmUpstream: 'task' | 'vip';
  /** How often the leader re-lists tasks (--swarm-poll). */
  swarmPollMs: number;
  execPolicy?: string;
  name: string;
  /** caddy-docker-proxy's label prefix (its --label-prefix). */
  caddyLabelPrefix: string;
  /** Traefik's defaultRule, compiled once; off unless given. */
  traefikDefaultRule?: DefaultRule;
  /** --traefik-outside-middlewares: middlewares defined elsewhere that a router may be served without. */
  traefikOutsideMiddlewares?: string[];
}

export interface ServeConfig extends Common {
  command: 'server' | 'standalone';
  store?: string;
  apiListen: Listen;
  /** BERTH_ADMIN_TOKEN, when the operator sets the token (replicas share it). */
  adminToken?: string;
  caddy: {
    admin: string[];
    bin: string;
    layout: 'dynamic' | 'static';
    /** Front-door addresses, with --http-bind applied. */
    httpListen: string;
    httpsListen: string;
    httpBind?: string;
    tls: TlsMode;
    dnsListen: string;
    /** --keep-sysctls: never set net.ipv4.tcp_migrate_req, only warn. */
    keepSysctls: boolean;
  };
  tcp: {
    bind: string;
    accessLog?: string;
    idleTimeoutMs: number;
    maxConnections: number;
    rotate?: { maxBytes: number; keep: number };
  };
  /** Caddy's request lines: the HTTP access log and per-route figures. */
  traffic: {
    enabled: boolean;
    /** 'stdout', 'off' or an absolute file path. */
    accessLog: string;
    rotate?: { maxBytes: number; keep: number };
    query: boolean;
    maxHosts: number;
  };
  driftIntervalMs: number;
  offlineGraceMs: number;
  agentHeartbeatMs: number;
  agentMaxMessageBytes: number;
  trustedProxies: string[];
  /** The agent channel's TLS listener; listen undefined: `--agent-listen off`. */
  agentTls: {
    listen?: Listen;
    publicNames: string[];
    certFile?: string;
    keyFile?: string;
  };
  /** --ui-host: the API and UI at the front door under this name. */
  uiHost?: string;
  /** The local agent of `berth standalone`. */
  watch?: WatchConfig;
}

export interface AgentConfig extends Common, WatchConfig {
  servers: string[];
  key: string;
  /** Where the key came from (`--key` on a command line draws a warning). */
  keySource: string;
  reportIntervalMs: number;
  metricsListen?: Listen;
  /** --jit: leave V8's compilers on (by default the agent runs on the interpreter alone). */
  jit: boolean;
  /** How the agent checks the server over https:// (wss://). */
  trust: {
    /** SHA-256 of the server CA's public key, from the key string. */
    pin?: string;
    /** --ca-file's PEM. */
    ca?: string;
    caFile?: string;
    /** --insecure-transport: http:// to a non-loopback server was allowed. */
    insecureTransport: boolean;
  };
  /** --tunnel: routes are reached through streams the agent opens; --tunnel-max-streams. */
  tunnel?: { maxStreams: number };
}

export interface ClientConfig extends Common {
  server: string;
  /** --token, BERTH_TOKEN or BERTH_ADMIN_TOKEN; else the local data dir's admin.token is read. */
  token?: string;
  json: boolean;
  name?: string;
  domains?: string[];
  upstreams?: string[];
  maxRoutes?: number;
  maxPending?: number;
  autoApprove: boolean;
  execAllow: string[];
  agent?: string;
  /** berth exec: the Swarm node and task slot of a service's task. */
  node?: string;
  task?: number;
  timeoutMs: number;
  limit: number;
  intervalMs: number;
  overlapMs: number;
  force: boolean;
}

export type Loaded =
  | { kind: 'serve'; config: ServeConfig; rest: string[] }
  | { kind: 'agent'; config: AgentConfig; rest: string[] }
  | { kind: 'client'; config: ClientConfig; rest: string[] };

/** Reads flags and BERTH_* variables for a command, checks everything at once, returns it typed. */
export function loadConfig(command: string, argv: string[], env: NodeJS.ProcessEnv): Loaded {
  const { config: raw, rest, sources } = parseFlags(command, argv, env);
  const problems: string[] = [];
  const common: Common = {
    dataDir: resolve(str(raw['data-dir'])),
    logLevel: str(raw['log-level']) as LogLevel,
    help: raw.help === true,
  };
  let loaded: Loaded;
  if (command === 'server' || command === 'standalone') {
    loaded = { kind: 'serve', config: serveConfig(command, raw, env, common, problems), rest };
  } else if (command === 'agent') {
    loaded = { kind: 'agent', config: agentConfig(raw, sources, common, problems), rest };
  } else {
    loaded = { kind: 'client', config: clientConfig(raw, env, common), rest };
  }
  // --help needs no valid configuration: the flags' descriptions are what it shows.
  if (problems.length > 0 && !common.help) {
    throw new UserError('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
  Object.freeze(loaded.config);
  return loaded;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const opt = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const num = (v: unknown): number => (typeof v === 'number' ? v : 0);
const list = (v: unknown): string[] => (Array.isArray(v) ? v.map(String) : []);

/** A listen flag, or a problem added to the list. */
function listen(flag: string, value: string, problems: string[]): Listen {
  try {
    return parseListen(flag, value);
  } catch (err) {
    problems.push((err as Error).message);
    return { host: '', port: 0 };
  }
}

function watchConfig(raw: RawConfig, problems: string[]): WatchConfig {
  const w: WatchConfig = {
    docker: opt(raw.docker) ?? 'unix:///var/run/docker.sock',
    labelPrefix: str(raw['label-prefix']),
    caddyLabelPrefix: opt(raw['caddy-label-prefix']) ?? 'caddy',
    dialects: list(raw.dialects) as DialectName[],
    resyncIntervalMs: num(raw['resync-interval']),
    swarmUpstream: str(raw['swarm-upstream']) === 'vip' ? 'vip' : 'task',
    swarmPollMs: Math.max(100, num(raw['swarm-poll'])),
    name: opt(raw.name) ?? hostname(),
  };
  try {
    engineTarget(w.docker);
  } catch (err) {
    problems.push(`--docker: ${(err as Error).message}`);
  }
  const hostIp = opt(raw['host-ip']);
  if (hostIp) w.hostIp = hostIp;
  const network = opt(raw.network);
  if (network) w.network = network;
  const policy = opt(raw['exec-policy']);
  if (policy) w.execPolicy = policy;
  const outside = opt(raw['traefik-outside-middlewares']);
  if (outside) {
    const names = outside
      .split(',')
      .map((m) => m.trim())
      .filter(Boolean);
    const bad = names.filter((m) => !/^[A-Za-z0-9_.-]+(@[A-Za-z0-9_.-]+)?$/.test(m));
    if (bad.length > 0)
      problems.push(
        `--traefik-outside-middlewares: expected middleware names such as redirect-to-https@file, not ${bad.map((b) => JSON.stringify(b)).join(', ')}`,
      );
    else w.traefikOutsideMiddlewares = names;
  }
  const rule = opt(raw['traefik-default-rule']);
  if (rule) {
    try {
      w.traefikDefaultRule = compileDefaultRule(rule);
    } catch (err) {
      problems.push(`--traefik-default-rule: ${(err as Error).message}`);
    }
  }
  return w;
}

function serveConfig(
  command: 'server' | 'standalone',
  raw: RawConfig,
  env: NodeJS.ProcessEnv,
  common: Common,
  problems: string[],
): ServeConfig {
  const store = opt(raw.store);
  if (command === 'standalone' && store) {
    problems.push(
      '--store is for berth server replicas (berth standalone keeps its agent in-process); run berth agent on each host',
    );
  }
  const httpBind = opt(raw['http-bind']);
  if (httpBind !== undefined && isIP(httpBind) === 0) {
    problems.push(`--http-bind ${httpBind}: expected an IP address such as 100.64.0.7`);
  }
  const bind = (flag: string): string => {
    const value = str(raw[flag]);
    const { host, port } = listen(flag, value, problems);
    if (httpBind === undefined || isIP(httpBind) === 0) return value;
    if (host && host !== httpBind) {
      problems.push(`--${flag} ${value} names another address than --http-bind ${httpBind}`);
    }
    return httpBind.includes(':') ? `[${httpBind}]:${port}` : `${httpBind}:${port}`;
  };
  const c: ServeConfig = {
    ...common,
    command,
    apiListen: listen('api-listen', str(raw['api-listen']), problems),
    caddy: {
      admin: list(raw['caddy-admin']),
      bin: str(raw['caddy-bin']),
      layout: str(raw['caddy-layout']) as 'dynamic' | 'static',
      httpListen: bind('http-listen'),
      httpsListen: bind('https-listen'),
      tls: str(raw.tls) as TlsMode,
      dnsListen: str(raw['dns-listen']),
      keepSysctls: raw['keep-sysctls'] === true,
    },
    tcp: {
      bind: str(raw['tcp-bind']),
      idleTimeoutMs: num(raw['tcp-idle-timeout']),
      maxConnections: num(raw['tcp-max-connections']),
    },
    traffic: {
      enabled: str(raw.traffic) === 'on',
      accessLog: ['stdout', 'off'].includes(str(raw['access-log']))
        ? str(raw['access-log'])
        : resolve(str(raw['access-log'])),
      query: raw['access-log-query'] === true,
      maxHosts: num(raw['metrics-max-hosts']),
    },
    driftIntervalMs: num(raw['drift-interval']),
    offlineGraceMs: num(raw['offline-grace']),
    agentHeartbeatMs: num(raw['agent-heartbeat']),
    agentMaxMessageBytes: num(raw['agent-max-message']),
    trustedProxies: list(raw['trusted-proxies']),
    agentTls: {
      publicNames: list(raw['public-name'])
        .flatMap((v) => v.split(','))
        .map((v) => v.trim())
        .filter(Boolean),
    },
  };
  const agentListen = str(raw['agent-listen']);
  if (agentListen !== 'off') c.agentTls.listen = listen('agent-listen', agentListen, problems);
  for (const n of c.agentTls.publicNames) {
    const v = n.replace(/^\[|\]$/g, '');
    if (
      isIP(v) === 0 &&
      !/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*$/.test(v)
    )
      problems.push(`--public-name ${n}: expected a DNS name or an IP address`);
  }
  const uiHost = opt(raw['ui-host']);
  if (uiHost !== undefined) {
    if (
      !/^[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*$/.test(uiHost) ||
      isIP(uiHost)
    )
      problems.push(`--ui-host ${uiHost}: expected a DNS name such as berth.example.com`);
    else c.uiHost = uiHost.toLowerCase();
  }
  const tlsCert = opt(raw['agent-tls-cert']);
  const tlsKey = opt(raw['agent-tls-key']);
  if (Boolean(tlsCert) !== Boolean(tlsKey))
    problems.push(
      "--agent-tls-cert and --agent-tls-key go together: give both, or neither for Berth's own CA",
    );
  if (tlsCert && tlsKey) {
    c.agentTls.certFile = resolve(tlsCert);
    c.agentTls.keyFile = resolve(tlsKey);
  }
  if (store) c.store = store;
  if (httpBind) c.caddy.httpBind = httpBind;
  const accessLog = opt(raw['tcp-access-log']);
  if (accessLog) c.tcp.accessLog = resolve(accessLog);
  if (typeof raw['access-log-max-size'] === 'number') {
    const rotate = { maxBytes: raw['access-log-max-size'], keep: num(raw['access-log-keep']) };
    c.traffic.rotate = rotate;
    c.tcp.rotate = rotate;
  }
  if (c.traffic.maxHosts < 1) problems.push('--metrics-max-hosts: expected at least 1');
  const token = opt(env.BERTH_ADMIN_TOKEN);
  if (token) c.adminToken = token;
  if (command === 'standalone') c.watch = watchConfig(raw, problems);
  return c;
}

function agentConfig(
  raw: RawConfig,
  sources: Readonly<Record<string, string>>,
  common: Common,
  problems: string[],
): AgentConfig {
  const servers = str(raw.server)
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  if (servers.length === 0) {
    problems.push(
      '--server is required: the Berth server URL, e.g. https://berth.example.com (several replicas: comma-separated)',
    );
  }
  const bad = servers.find((u) => !/^(https?|wss?):\/\/[^/\s]+/.test(u));
  if (bad !== undefined) problems.push(`--server ${bad}: expected an https:// (or http://) URL`);
  const insecureTransport = raw['insecure-transport'] === true;
  for (const u of servers) {
    if (!/^(http|ws):\/\//.test(u) || insecureTransport) continue;
    let host = '';
    try {
      host = new URL(u).hostname.replace(/^\[|\]$/g, '');
    } catch {
      continue; // reported above
    }
    if (!isLoopbackHost(host))
      problems.push(
        `--server ${u}: plain ${u.split(':')[0]}:// to ${host} would send the agent key, snapshots and exec output in clear; use https://${host}:7443 (the server's --agent-listen), or --insecure-transport to accept that`,
      );
  }
  let key = '';
  let keySource = '';
  const keyFile = opt(raw['key-file']);
  if (opt(raw.key)) {
    key = str(raw.key).trim();
    keySource = sources.key ?? '--key';
  } else if (keyFile) {
    keySource = '--key-file';
    try {
      key = readFileSync(keyFile, 'utf8').trim();
    } catch (err) {
      problems.push(`--key-file ${keyFile}: ${(err as Error).message}`);
    }
  } else {
    problems.push(
      'an agent key is required: --key-file, BERTH_AGENT_KEY or --key (berth keys create prints one)',
    );
  }
  let parsed: AgentKey = { secret: key };
  if (key) {
    try {
      parsed = parseAgentKey(key);
    } catch (err) {
      problems.push(
        `${keySource === '--key-file' ? `--key-file ${keyFile}` : keySource}: ${(err as Error).message}`,
      );
    }
  }
  const c: AgentConfig = {
    ...common,
    ...watchConfig(raw, problems),
    servers,
    key: parsed.secret,
    keySource,
    reportIntervalMs: num(raw['report-interval']),
    jit: raw.jit === true,
    trust: { insecureTransport },
  };
  if (parsed.pin) c.trust.pin = parsed.pin;
  const caFile = opt(raw['ca-file']);
  if (caFile) {
    try {
      const pem = readFileSync(caFile, 'utf8');
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
      c.trust.ca = pem;
      c.trust.caFile = resolve(caFile);
    } catch (err) {
      problems.push(`--ca-file ${caFile}: ${(err as Error).message}`);
    }
  }
  const metrics = opt(raw['metrics-listen']);
  if (metrics) c.metricsListen = listen('metrics-listen', metrics, problems);
  const maxStreams = num(raw['tunnel-max-streams']);
  if (!Number.isInteger(maxStreams) || maxStreams < 1 || maxStreams > MAX_TUNNEL_STREAMS)
    problems.push(
      `--tunnel-max-streams ${maxStreams}: expected a whole number from 1 to ${MAX_TUNNEL_STREAMS}`,
    );
  else if (raw.tunnel === true) c.tunnel = { maxStreams };
  return c;
}

function clientConfig(raw: RawConfig, env: NodeJS.ProcessEnv, common: Common): ClientConfig {
  const c: ClientConfig = {
    ...common,
    server: (opt(raw.server) ?? `http://${env.BERTH_API_LISTEN || '127.0.0.1:7080'}`).replace(/\/$/, ''),
    json: raw.json === true,
    autoApprove: raw['auto-approve'] === true,
    execAllow: list(raw['exec-allow']),
    timeoutMs: num(raw.timeout),
    limit: num(raw.limit),
    intervalMs: num(raw.interval),
    overlapMs: num(raw.overlap),
    force: raw.force === true,
  };
  const token = opt(raw.token) ?? opt(env.BERTH_ADMIN_TOKEN);
  if (token) c.token = token;
  const name = opt(raw.name);
  if (name) c.name = name;
  const items = (v: unknown) =>
    String(v)
      .split(',')
      .map((d) => d.trim())
      .filter(Boolean);
  if (raw.domains !== undefined) c.domains = items(raw.domains);
  if (raw.upstreams !== undefined) c.upstreams = list(raw.upstreams).flatMap(items);
  if (typeof raw['max-routes'] === 'number') c.maxRoutes = raw['max-routes'];
  if (typeof raw['max-pending'] === 'number') c.maxPending = raw['max-pending'];
  const agent = opt(raw.agent);
  if (agent) c.agent = agent;
  const node = opt(raw.node);
  if (node) c.node = node;
  if (typeof raw.task === 'number') c.task = raw.task;
  return c;
}

/** The admin token the CLI uses when none is given: the one the server wrote to its data dir. */
export function localAdminToken(dataDir: string): string | undefined {
  try {
    return readFileSync(join(dataDir, 'admin.token'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

function parseValue(
  def: FlagDef,
  values: string[],
  source: string,
): string | boolean | number | string[] | { problem: string } {
  const last = values[values.length - 1]!;
  switch (def.kind) {
    case 'list': {
      if (!def.choices) return values;
      // A choice list is also written comma-separated: --dialects caddy,traefik.
      const items = [...new Set(values.flatMap((v) => v.split(',')).map((v) => v.trim()))].filter(Boolean);
      const bad = items.filter((v) => !def.choices!.includes(v));
      if (bad.length > 0 || items.length === 0) {
        const what = bad.length > 0 ? `got ${bad.map((b) => `"${b}"`).join(', ')}` : 'got none';
        return {
          problem: `${source}: expected a comma-separated list of ${def.choices.join(', ')}, ${what}`,
        };
      }
      return items;
    }
    case 'bool':
      if (/^(true|1|yes)$/i.test(last)) return true;
      if (/^(false|0|no)$/i.test(last)) return false;
      return { problem: `${source}: expected true or false, got "${last}"` };
    case 'int':
      if (/^\d+$/.test(last)) return Number(last);
      return { problem: `${source}: expected a whole number, got "${last}"` };
    case 'size': {
      const bytes = parseSize(last);
      return bytes === undefined
        ? { problem: `${source}: expected a size such as 8MiB, 512KiB or 1048576, got "${last}"` }
        : bytes;
    }
    case 'duration': {
      const ms = parseDuration(last);
      return ms === undefined
        ? { problem: `${source}: expected a duration such as 500ms, 15s, 10m or 24h, got "${last}"` }
        : ms;
    }
    default:
      if (def.choices && !def.choices.includes(last)) {
        return { problem: `${source}: expected one of ${def.choices.join(', ')}, got "${last}"` };
      }
      return last;
  }
}

export function parseDuration(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  return Math.round(n * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[unit as 'ms']);
}

/** `8MiB`, `512KiB`, `1GiB`, `1048576` (bytes); also `MB`/`KB` as the same binary units. */
export function parseSize(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$/i.exec(s.trim());
  if (!m) return undefined;
  const unit = (m[2] ?? 'b').toLowerCase()[0] as 'b' | 'k' | 'm' | 'g';
  const bytes = Math.round(Number(m[1]) * { b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[unit]);
  return bytes >= 1 && Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** 127.0.0.0/8, ::1 and localhost: where clear text never leaves the machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return (
    h === 'localhost' ||
    h.endsWith('.localhost') ||
    h === '::1' ||
    /^127\.\d+\.\d+\.\d+$/.test(h) ||
    h === '::ffff:127.0.0.1'
  );
}

/** `host:port` or `:port` → parts, for listen flags. */
export function parseListen(flag: string, value: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port < 1 || port > 65535) {
    throw new UserError('CONFIG_INVALID', `--${flag} ${value}: expected host:port or :port`);
  }
  return { host: m[1] ?? m[2] ?? '', port };
}

export function helpFor(command: string): string {
  const defs = FLAGS.filter((f) => f.for === '*' || f.for.includes(command));
  return defs
    .map((f) => {
      const dflt =
        f.default === undefined || (Array.isArray(f.default) && f.default.length === 0) || f.default === false
          ? ''
          : ` (default ${f.kind === 'duration' ? `${f.default}ms` : f.kind === 'size' ? `${f.default} bytes` : JSON.stringify(f.default)})`;
      return `  --${f.name.padEnd(16)} ${f.help}${dflt}\n  ${''.padEnd(18)} env ${envName(f.name)}${f.envAlias ? `, ${f.envAlias.join(', ')}` : ''}`;
    })
    .join('\n');
}
