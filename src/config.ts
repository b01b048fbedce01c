// Every flag and BERTH_* variable in one place. loadConfig is the only reader of process.env;
// it reports every problem at once and returns a frozen object.
import { UserError } from './errors.js';
import { DIALECTS } from './labels/index.js';

type Kind = 'string' | 'bool' | 'list' | 'int' | 'duration';

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
const CLIENT = ['routes', 'status', 'reconcile', 'keys', 'agents', 'exec', 'audit', 'password', 'explain'];
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
    name: 'resync-interval',
    kind: 'duration',
    default: 30_000,
    help: 'Periodic full re-list of containers (safety net for missed events)',
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
    help: 'Agent key (from berth keys create)',
    for: ['agent'],
    envAlias: ['BERTH_AGENT_KEY'],
  },
  { name: 'key-file', kind: 'string', help: 'File holding the agent key', for: ['agent'] },
  {
    name: 'name',
    kind: 'string',
    help: 'Agent name (default: hostname); for keys create: the key name',
    for: ['agent', 'keys'],
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
    name: 'timeout',
    kind: 'duration',
    default: 60_000,
    help: 'Kill the command after this long',
    for: ['exec'],
  },
  { name: 'limit', kind: 'int', default: 100, help: 'How many entries to show', for: ['audit'] },
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

export type Config = Readonly<Record<string, string | boolean | number | string[] | undefined>>;

export const envName = (flag: string) => `BERTH_${flag.toUpperCase().replace(/-/g, '_')}`;

/**
 * Flags win over BERTH_* variables, which win over defaults. Unknown flags, bad values and
 * missing values are all collected and reported together.
 */
export function loadConfig(
  command: string,
  argv: string[],
  env: NodeJS.ProcessEnv,
): { config: Config; rest: string[] } {
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
    else out[def.name] = parsed;
  }
  if (problems.length > 0) {
    throw new UserError('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
  return { config: Object.freeze(out), rest };
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
          : ` (default ${f.kind === 'duration' ? `${f.default}ms` : JSON.stringify(f.default)})`;
      return `  --${f.name.padEnd(16)} ${f.help}${dflt}\n  ${''.padEnd(18)} env ${envName(f.name)}${f.envAlias ? `, ${f.envAlias.join(', ')}` : ''}`;
    })
    .join('\n');
}
