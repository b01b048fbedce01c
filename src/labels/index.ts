// labels → routes + diagnostics. Pure: the same container always gives the same answer.
// Each container is read in one dialect: the first, in --dialects order, it carries routing labels of.
import type {
  ContainerInfo,
  Diagnostic,
  Explanation,
  LabelExplanation,
  RouteSpec,
  TcpRouteSpec,
} from '../model/types.js';
import { hasBerthLabels, isBerthNamespace, parseBerthLabels } from './berth.js';
import { isCaddyLabel, parseCaddyLabels } from './caddy.js';
import { isDockflareLabel, parseDockflareLabels } from './dockflare.js';
import { type DialectResult, finishDrafts, shownValue } from './draft.js';
import { isTraefikLabel, parseTraefikLabels } from './traefik.js';
import type { AddressContext } from './upstream.js';

export const DIALECTS = ['berth', 'caddy', 'traefik', 'dockflare'] as const;
export type DialectName = (typeof DIALECTS)[number];

interface Dialect {
  /** A routing label of this dialect (`berth.exec.*` is not one). */
  owns(key: string, prefix: string): boolean;
  parse(c: ContainerInfo, prefix: string): DialectResult;
}

const BY_NAME: Record<DialectName, Dialect> = {
  berth: {
    owns: (k, prefix) => k.startsWith(`${prefix}.`) && !isBerthNamespace(k, prefix),
    parse: parseBerthLabels,
  },
  caddy: { owns: isCaddyLabel, parse: parseCaddyLabels },
  traefik: { owns: isTraefikLabel, parse: parseTraefikLabels },
  dockflare: { owns: isDockflareLabel, parse: parseDockflareLabels },
};

export interface ExtractContext extends AddressContext {
  labelPrefix: string;
  /** Dialects read, in precedence order (`--dialects`); default all of DIALECTS. */
  dialects?: readonly string[];
}

export interface Extracted {
  routes: RouteSpec[];
  tcp: TcpRouteSpec[];
  diagnostics: Diagnostic[];
  /** The container carries labels Berth reads. */
  labelled: boolean;
  /** How each routing label was read, when the container has any. */
  explain?: Explanation;
}

export function extractRoutes(c: ContainerInfo, ctx: ExtractContext): Extracted {
  const order = (ctx.dialects ?? DIALECTS).filter((d): d is DialectName => d in BY_NAME);
  const present = order
    .map((name) => ({
      name,
      keys: Object.keys(c.labels)
        .filter((k) => BY_NAME[name].owns(k, ctx.labelPrefix))
        .sort(),
    }))
    .filter((d) => d.keys.length > 0);
  const chosen = present[0];
  if (!chosen || (chosen.name === 'berth' && !hasBerthLabels(c.labels, ctx.labelPrefix)))
    return { routes: [], tcp: [], diagnostics: [], labelled: false };
  const parsed = BY_NAME[chosen.name].parse(c, ctx.labelPrefix);
  const others = present.slice(1);
  for (const o of others) {
    const first = o.keys[0]!;
    const d: Diagnostic = {
      severity: 'warning',
      containerId: c.id,
      containerName: c.name,
      label: first,
      value: c.labels[first],
      message: `ignored: the container also has ${o.name} labels (${o.keys.length}); it is read as ${chosen.name}, which comes first in --dialects (${order.join(',')})`,
    };
    parsed.diagnostics.push(d);
  }
  const finished = finishDrafts(c, parsed, ctx);
  const explain = explainLabels(c, chosen.name, chosen.keys, parsed, finished, others);
  return { ...finished, labelled: true, explain };
}

/** Every container of one host; each is read on its own, so one bad container affects no other. */
export function extractAll(
  containers: ContainerInfo[],
  ctx: ExtractContext,
): Omit<Extracted, 'labelled' | 'explain'> & { explanations: Map<string, Explanation> } {
  const routes: RouteSpec[] = [];
  const tcp: TcpRouteSpec[] = [];
  const diagnostics: Diagnostic[] = [];
  const explanations = new Map<string, Explanation>();
  for (const c of containers) {
    const r = extractRoutes(c, ctx);
    routes.push(...r.routes);
    tcp.push(...r.tcp);
    diagnostics.push(...r.diagnostics);
    if (r.explain) explanations.set(c.id, r.explain);
  }
  return { routes, tcp, diagnostics, explanations };
}

const MAX_LABELS = 200;
const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/**
 * Each routing label and what became of it: an error, part of a route (with the route), read
 * for something else, or left alone (and why). Compact, since it travels in every snapshot.
 */
function explainLabels(
  c: ContainerInfo,
  dialect: string,
  keys: string[],
  parsed: DialectResult,
  finished: { routes: RouteSpec[]; tcp: TcpRouteSpec[]; diagnostics: Diagnostic[] },
  others: { name: string; keys: string[] }[],
): Explanation {
  const notes = (list: { label: string; note?: string }[] | undefined) => {
    const m = new Map<string, string>();
    for (const u of list ?? []) m.set(u.label, [m.get(u.label), u.note].filter(Boolean).join('; '));
    return m;
  };
  const used = notes(parsed.used);
  const quiet = notes(parsed.quiet);
  const errors = notes(
    finished.diagnostics
      .filter((d) => d.severity === 'error')
      .map((d) => ({ label: d.label, note: d.message })),
  );
  const warnings = notes(
    finished.diagnostics
      .filter((d) => d.severity === 'warning')
      .map((d) => ({ label: d.label, note: d.message })),
  );
  const routed = new Map<string, string[]>();
  const drafted = new Set<string>();
  for (const d of parsed.drafts) {
    for (const l of d.labels ?? []) drafted.add(l);
    const r = finished.routes.find((x) => x.id === `${c.id}/${d.group}`);
    if (!r) continue;
    const text = `${r.hosts.join(',')}${r.path === '/' ? '' : r.path}${r.stripPath ? ' (strip)' : ''} → ${r.upstream.scheme}://${r.upstream.host}:${r.upstream.port}`;
    for (const l of d.labels ?? []) routed.set(l, [...(routed.get(l) ?? []), text]);
  }
  for (const d of parsed.tcp ?? []) {
    for (const l of d.labels ?? []) drafted.add(l);
    const r = finished.tcp.find((x) => x.id === `${c.id}/tcp/${d.name}`);
    if (!r) continue;
    for (const l of d.labels ?? [])
      routed.set(l, [...(routed.get(l) ?? []), `tcp :${r.listen} → ${r.upstream.host}:${r.upstream.port}`]);
  }
  const failed = finished.diagnostics.some((d) => d.severity === 'error');
  const mine = [...new Set([...keys, ...used.keys(), ...quiet.keys()])].filter((k) => k in c.labels).sort();
  const labels: LabelExplanation[] = mine.map((key) => {
    const e = (use: LabelExplanation['use'], note?: string): LabelExplanation => ({
      key: clip(key, 1000),
      value: clip(shownValue(key, c.labels[key] ?? ''), 1000),
      use,
      ...(note ? { note: clip(note, 2000) } : {}),
    });
    const warn = warnings.get(key);
    if (errors.has(key)) return e('error', errors.get(key));
    if (routed.has(key))
      return e('route', [[...new Set(routed.get(key))].join('; '), warn].filter(Boolean).join('; '));
    if (used.has(key)) return e('used', [used.get(key), warn].filter(Boolean).join('; '));
    if (drafted.has(key) && failed) return e('ignored', 'no route: the container has label errors');
    if (warn) return e('ignored', warn);
    if (quiet.has(key)) return e('ignored', quiet.get(key));
    if (parsed.disabled) return e('ignored', 'the container is not routed (enable)');
    return e('ignored', 'not used by any route (see the notes on the other labels)');
  });
  for (const o of others) {
    for (const key of o.keys) {
      labels.push({
        key: clip(key, 1000),
        value: clip(shownValue(key, c.labels[key] ?? ''), 1000),
        use: 'ignored',
        note: `${o.name} label: the container is read as ${dialect}`,
      });
    }
  }
  return { dialect, labels: labels.slice(0, MAX_LABELS) };
}
