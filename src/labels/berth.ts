// The native dialect: `berth.host`, `berth.port`, … and named groups `berth.<group>.host`, ….
import { localeOrder } from '../model/collation.js';
import type { ContainerInfo } from '../model/types.js';
import type { DialectResult, LabelNote, RouteDraft, TcpDraft } from './draft.js';
import { composeGroup, DiagnosticSink } from './draft.js';
import {
  type Check,
  checkBool,
  checkCidrList,
  checkHostList,
  checkName,
  checkPath,
  checkPort,
  checkScheme,
} from './validate.js';

const ROUTE_KEYS = ['host', 'port', 'path', 'strip_path', 'scheme', 'network', 'group', 'allow'] as const;
const TCP_KEYS = ['listen', 'port', 'allow', 'network', 'group'] as const;
type TcpKey = (typeof TCP_KEYS)[number];
type RouteKey = (typeof ROUTE_KEYS)[number];
/** Namespaces owned by other features (exec policy); never route groups. */
const NAMESPACES = new Set(['exec']);
const TOP_ONLY = new Set(['enable']);
const GROUP_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** True when the container carries routing labels of this dialect (exec rules alone are not). */
export function hasBerthLabels(labels: Record<string, string>, prefix: string): boolean {
  const p = `${prefix}.`;
  return Object.keys(labels).some((k) => k.startsWith(p) && !isBerthNamespace(k, prefix));
}

/** `berth.exec.*` and the like: read by other features, never by the route parser. */
export function isBerthNamespace(key: string, prefix: string): boolean {
  const p = `${prefix}.`;
  return key.startsWith(p) && NAMESPACES.has(key.slice(p.length).split('.')[0] ?? '');
}

export function parseBerthLabels(c: ContainerInfo, prefix: string): DialectResult {
  const sink = new DiagnosticSink(c);
  const base: Partial<Record<RouteKey, string>> = {};
  const groups = new Map<string, Partial<Record<RouteKey, string>>>();
  const tcpGroups = new Map<string, Partial<Record<TcpKey, string>>>();
  let enabled = true;
  const used: LabelNote[] = [];
  const quiet: LabelNote[] = [];
  const p = `${prefix}.`;

  for (const [key, value] of Object.entries(c.labels)) {
    if (!key.startsWith(p)) continue;
    const rest = key.slice(p.length);
    const parts = rest.split('.');
    const head = parts[0] ?? '';
    if (NAMESPACES.has(head)) {
      quiet.push({ label: key, note: `read by berth ${head}, not by routing` });
      continue;
    }
    if (head === 'tcp') {
      const name = parts[1] ?? '';
      const k = parts[2] ?? '';
      if (parts.length !== 3 || !(TCP_KEYS as readonly string[]).includes(k)) {
        sink.error(
          key,
          value,
          `unknown label; expected ${prefix}.tcp.<name>.<key> with <key> one of ${TCP_KEYS.join(', ')}`,
        );
      } else if (!GROUP_RE.test(name)) {
        sink.error(
          key,
          value,
          `"${name}" is not a valid TCP route name (lower-case letters, digits, "_" or "-")`,
        );
      } else {
        const g = tcpGroups.get(name) ?? {};
        g[k as TcpKey] = value;
        tcpGroups.set(name, g);
      }
      continue;
    }
    if (parts.length === 1 && TOP_ONLY.has(head)) {
      const b = checkBool(value);
      if (!b.ok) sink.error(key, value, `expected ${b.expected}`);
      else {
        enabled = b.value;
        used.push({ label: key, note: b.value ? undefined : 'the container opts out: no route' });
      }
      continue;
    }
    if (parts.length === 1 && isRouteKey(head)) {
      base[head] = value;
      continue;
    }
    if (parts.length === 2 && isRouteKey(parts[1]!)) {
      if (!GROUP_RE.test(head) || isRouteKey(head) || TOP_ONLY.has(head)) {
        sink.error(
          key,
          value,
          `"${head}" is not a valid route group name (lower-case letters, digits, "_" or "-")`,
        );
        continue;
      }
      const g = groups.get(head) ?? {};
      g[parts[1] as RouteKey] = value;
      groups.set(head, g);
      continue;
    }
    sink.error(
      key,
      value,
      `unknown label; expected ${prefix}.<key> or ${prefix}.<group>.<key> with <key> one of ${ROUTE_KEYS.join(', ')}, or ${prefix}.enable`,
    );
  }

  if (!enabled) return { drafts: [], diagnostics: sink.list, disabled: true, used, quiet };

  const drafts: RouteDraft[] = [];
  const compose = composeGroup(c.labels);
  const build = (
    group: string,
    own: Partial<Record<RouteKey, string>>,
    inherit: Partial<Record<RouteKey, string>>,
  ) => {
    const label = (k: RouteKey) => (group === 'default' ? `${prefix}.${k}` : `${prefix}.${group}.${k}`);
    const read = new Set<string>();
    // A group inherits how to reach the container (port, scheme, network, lb group), not where it is served.
    const pick = (k: RouteKey): [string, string] | undefined => {
      if (own[k] !== undefined) {
        read.add(label(k));
        return [label(k), own[k]!];
      }
      if (k !== 'host' && k !== 'path' && k !== 'strip_path' && inherit[k] !== undefined) {
        read.add(`${prefix}.${k}`);
        return [`${prefix}.${k}`, inherit[k]!];
      }
      return undefined;
    };
    const get = <T>(k: RouteKey, check: (s: string) => Check<T>): T | undefined => {
      const v = pick(k);
      if (!v) return undefined;
      const r = check(v[1]);
      if (!r.ok) {
        sink.error(v[0], v[1], `expected ${r.expected}`);
        return undefined;
      }
      return r.value;
    };
    const errorsBefore = sink.list.length;
    const hosts = get('host', checkHostList);
    const port = get('port', checkPort);
    const path = get('path', checkPath);
    const stripPath = get('strip_path', checkBool);
    const scheme = get('scheme', checkScheme);
    const network = get('network', checkName);
    const lbGroup = get('group', checkName);
    const allow = get('allow', checkCidrList);
    if (!pick('host')) {
      if (group !== 'default' || Object.keys(own).length > 0) {
        sink.error(label('host'), undefined, `no ${label('host')} label: the route has nowhere to be served`);
      }
      return;
    }
    // A label that failed its check must not fall back to a default (a bad port is not "no port").
    if (!hosts || sink.list.length > errorsBefore) return;
    if (stripPath && (path ?? '/') === '/') {
      sink.warning(label('strip_path'), pick('strip_path')?.[1], 'strip_path has no effect without a path');
    }
    drafts.push({
      group,
      hosts,
      path: path ?? '/',
      stripPath: stripPath ?? false,
      scheme: scheme ?? 'http',
      port,
      portLabel: label('port'),
      network,
      lbGroup: lbGroup ?? compose,
      ...(allow ? { allow } : {}),
      labels: [label('host'), ...[...read].filter((l) => l !== label('host')).sort()],
    });
  };

  const hasBase = Object.keys(base).length > 0;
  if (base.host !== undefined || (hasBase && groups.size === 0)) build('default', base, {});
  for (const [name, g] of [...groups].sort(([a], [b]) => localeOrder(a, b))) build(name, g, base);
  const tcp = [...tcpGroups]
    .sort(([a], [b]) => localeOrder(a, b))
    .flatMap(([name, g]) => tcpDraft(name, g, prefix, sink, compose) ?? []);
  return { drafts, tcp, diagnostics: sink.list, disabled: false, used, quiet };
}

/** `berth.tcp.<name>.listen` and `.port` are required; `.allow`, `.network` and `.group` are optional. */
function tcpDraft(
  name: string,
  g: Partial<Record<TcpKey, string>>,
  prefix: string,
  sink: DiagnosticSink,
  compose: string | undefined,
): TcpDraft | undefined {
  const label = (k: TcpKey) => `${prefix}.tcp.${name}.${k}`;
  const errorsBefore = sink.list.length;
  const get = <T>(k: TcpKey, check: (s: string) => Check<T>): T | undefined => {
    const v = g[k];
    if (v === undefined) return undefined;
    const r = check(v);
    if (!r.ok) sink.error(label(k), v, `expected ${r.expected}`);
    return r.ok ? r.value : undefined;
  };
  const listen = get('listen', checkPort);
  const port = get('port', checkPort);
  const allow = get('allow', checkCidrList);
  const network = get('network', checkName);
  const lbGroup = get('group', checkName);
  for (const k of ['listen', 'port'] as const) {
    if (g[k] === undefined) {
      sink.error(
        label(k),
        undefined,
        k === 'listen'
          ? `no ${label('listen')} label: the TCP route needs a front-door port`
          : `no ${label('port')} label: the TCP route needs the container port to forward to`,
      );
    }
  }
  if (sink.list.length > errorsBefore || listen === undefined || port === undefined) return undefined;
  const d: TcpDraft = {
    name,
    listen,
    port,
    portLabel: label('port'),
    allow: allow ?? [],
    labels: TCP_KEYS.filter((k) => g[k] !== undefined).map(label),
  };
  if (network) d.network = network;
  const group = lbGroup ?? compose;
  if (group) d.lbGroup = group;
  return d;
}

function isRouteKey(k: string): k is RouteKey {
  return (ROUTE_KEYS as readonly string[]).includes(k);
}
