// labels → routes + diagnostics. Pure: the same container always gives the same answer.
// Each container is read in one dialect: the first, in --dialects order, it carries routing labels of.
import { createHash } from 'node:crypto';
import { clip, MAX_EXPLAINED_LABELS, MAX_STRING } from '../model/limits.js';
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
import { EXPLAINED_NOTE, EXPLAINED_VALUE, fitReport, oversizeLabels, routesTooBig } from './fit.js';
import { type DefaultRule, isTraefikLabel, parseTraefikLabels } from './traefik.js';
import type { AddressContext } from './upstream.js';

export const DIALECTS = ['berth', 'caddy', 'traefik', 'dockflare'] as const;
export type DialectName = (typeof DIALECTS)[number];

interface Dialect {
  /** A routing label of this dialect (`berth.exec.*` is not one). */
  owns(key: string, ctx: ExtractContext): boolean;
  parse(c: ContainerInfo, ctx: ExtractContext): DialectResult;
  /**
   * The other tool merges containers with the same labels into one load-balanced upstream set
   * (caddy-docker-proxy merges equal site blocks, Traefik the servers of one service name).
   */
  mergesReplicas?: boolean;
}

const BY_NAME: Record<DialectName, Dialect> = {
  berth: {
    owns: (k, ctx) => k.startsWith(`${ctx.labelPrefix}.`) && !isBerthNamespace(k, ctx.labelPrefix),
    parse: (c, ctx) => parseBerthLabels(c, ctx.labelPrefix),
  },
  caddy: {
    owns: (k, ctx) => isCaddyLabel(k, ctx.caddyLabelPrefix),
    parse: (c, ctx) => parseCaddyLabels(c, ctx.caddyLabelPrefix),
    mergesReplicas: true,
  },
  traefik: {
    owns: (k) => isTraefikLabel(k),
    parse: (c, ctx) =>
      parseTraefikLabels(c, {
        defaultRule: ctx.traefikDefaultRule,
        ...(ctx.traefikOutsideMiddlewares ? { outside: ctx.traefikOutsideMiddlewares } : {}),
      }),
    mergesReplicas: true,
  },
  dockflare: { owns: (k) => isDockflareLabel(k), parse: (c) => parseDockflareLabels(c) },
};

export interface ExtractContext extends AddressContext {
  labelPrefix: string;
  /** Dialects read, in precedence order (`--dialects`); default all of DIALECTS. */
  dialects?: readonly string[];
  /** caddy-docker-proxy's label prefix (`--caddy-label-prefix`, its CADDY_DOCKER_LABEL_PREFIX); default caddy. */
  caddyLabelPrefix?: string;
  /** Traefik's defaultRule (`--traefik-default-rule`), compiled: routers without a rule get it. Off by default. */
  traefikDefaultRule?: DefaultRule;
  /** `--traefik-outside-middlewares`: middlewares defined elsewhere that a router may be served without. */
  traefikOutsideMiddlewares?: readonly string[];
}

export interface Extracted {
  routes: RouteSpec[];
  tcp: TcpRouteSpec[];
  diagnostics: Diagnostic[];
  /** The container carries labels Berth reads. */
  labelled: boolean;
  /** How each routing label was read, when the container has any. */
  explain?: Explanation;
  /**
   * In dialects whose tool merges replicas: the same for every container with the same routing
   * labels (a digest of the dialect and its labels), so the agent can group such containers.
   */
  replicaKey?: string;
}

export function extractRoutes(c: ContainerInfo, ctx: ExtractContext, extra: Diagnostic[] = []): Extracted {
  const order = (ctx.dialects ?? DIALECTS).filter((d): d is DialectName => d in BY_NAME);
  const present = order
    .map((name) => ({
      name,
      keys: Object.keys(c.labels)
        .filter((k) => BY_NAME[name].owns(k, ctx))
        .sort(),
    }))
    .filter((d) => d.keys.length > 0);
  const chosen = present[0];
  if (!chosen || (chosen.name === 'berth' && !hasBerthLabels(c.labels, ctx.labelPrefix)))
    return { routes: [], tcp: [], diagnostics: fitReport(c, extra, undefined).diagnostics, labelled: false };
  // Docker allows names and ids of any length; the snapshot does not.
  if (c.id.length > MAX_STRING || c.name.length > MAX_STRING)
    c = { ...c, id: clip(c.id, MAX_STRING), name: clip(c.name, MAX_STRING) };
  const refused = oversizeLabels(c, chosen.keys, chosen.name);
  const parsed: DialectResult =
    refused.length > 0
      ? { drafts: [], diagnostics: refused, disabled: false, unread: true }
      : BY_NAME[chosen.name].parse(c, ctx);
  const others = present.slice(1);
  for (const o of others) {
    const first = o.keys[0]!;
    const d: Diagnostic = {
      severity: 'warning',
      containerId: c.id,
      containerName: c.name,
      label: first,
      value: shownValue(first, c.labels[first] ?? ''),
      message: `ignored: the container also has ${o.name} labels (${o.keys.length}); it is read as ${chosen.name}, which comes first in --dialects (${order.join(',')})`,
    };
    parsed.diagnostics.push(d);
  }
  let finished = finishDrafts(c, parsed, ctx);
  const tooBig = routesTooBig(c, finished.routes, finished.tcp);
  if (tooBig) finished = { routes: [], tcp: [], diagnostics: [...finished.diagnostics, tooBig] };
  const explain = explainLabels(c, chosen.name, chosen.keys, parsed, finished, others);
  const fitted = fitReport(c, [...finished.diagnostics, ...extra], explain, parsed.scoped);
  const out: Extracted = {
    ...finished,
    diagnostics: fitted.diagnostics,
    labelled: true,
    explain: fitted.explain,
  };
  if (BY_NAME[chosen.name].mergesReplicas && out.routes.length > 0)
    out.replicaKey = replicaKey(chosen.name, chosen.keys, c.labels);
  return out;
}

/** A digest of the dialect's labels, keys and values, in order: equal labels, equal key. */
function replicaKey(dialect: string, keys: string[], labels: Record<string, string>): string {
  const h = createHash('sha256').update(dialect);
  for (const k of keys) h.update(`\u0000${k}\u0000${labels[k] ?? ''}`);
  return h.digest('hex').slice(0, 32);
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

/** Notes about one label, joined; past a note's shown size the rest is counted, not kept. */
class Notes {
  private readonly by = new Map<string, { list: string[]; size: number; more: number }>();
  add(label: string, note: string | undefined): void {
    let n = this.by.get(label);
    if (!n) {
      n = { list: [], size: 0, more: 0 };
      this.by.set(label, n);
    }
    if (!note) return;
    if (n.size > EXPLAINED_NOTE) n.more++;
    else {
      n.list.push(note);
      n.size += note.length;
    }
  }
  has(label: string): boolean {
    return this.by.has(label);
  }
  keys(): IterableIterator<string> {
    return this.by.keys();
  }
  get(label: string): string | undefined {
    const n = this.by.get(label);
    if (!n) return undefined;
    const text = [...new Set(n.list)].join('; ');
    return n.more > 0 ? `${text}; and ${n.more} more` : text;
  }
}

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
    const m = new Notes();
    for (const u of list ?? []) m.add(u.label, u.note);
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
  const routed = new Notes();
  const drafted = new Set<string>();
  const routes = new Map(finished.routes.map((r) => [r.id, r]));
  for (const d of parsed.drafts) {
    for (const l of d.labels ?? []) drafted.add(l);
    const r = routes.get(`${c.id}/${d.group}`);
    if (!r) continue;
    const shown =
      r.hosts.length > 3
        ? `${r.hosts.slice(0, 3).join(',')} and ${r.hosts.length - 3} more`
        : r.hosts.join(',');
    const text = `${shown}${r.path === '/' ? '' : r.path}${r.stripPath ? ' (strip)' : ''} → ${r.upstream.scheme}://${r.upstream.host}:${r.upstream.port}`;
    for (const l of d.labels ?? []) routed.add(l, text);
  }
  const tcpRoutes = new Map(finished.tcp.map((r) => [r.id, r]));
  for (const d of parsed.tcp ?? []) {
    for (const l of d.labels ?? []) drafted.add(l);
    const r = tcpRoutes.get(`${c.id}/tcp/${d.name}`);
    if (!r) continue;
    for (const l of d.labels ?? []) routed.add(l, `tcp :${r.listen} → ${r.upstream.host}:${r.upstream.port}`);
  }
  // Errors scoped to one router cost only that router: the others' labels still route.
  const failed = finished.diagnostics.some((d) => d.severity === 'error' && !parsed.scoped?.has(d));
  const mine = [...new Set([...keys, ...used.keys(), ...quiet.keys()])].filter((k) => k in c.labels).sort();
  const labels: LabelExplanation[] = mine.map((key) => {
    const e = (use: LabelExplanation['use'], note?: string): LabelExplanation => ({
      key: clip(key, MAX_STRING),
      value: clip(shownValue(key, c.labels[key] ?? ''), EXPLAINED_VALUE),
      use,
      ...(note ? { note: clip(note, EXPLAINED_NOTE) } : {}),
    });
    const warn = warnings.get(key);
    if (errors.has(key)) return e('error', errors.get(key));
    if (parsed.unread) return e('ignored', 'not read: the container has labels too big or too many to read');
    if (routed.has(key)) return e('route', [routed.get(key), warn].filter(Boolean).join('; '));
    if (used.has(key)) return e('used', [used.get(key), warn].filter(Boolean).join('; '));
    if (drafted.has(key) && failed) return e('ignored', 'no route: the container has label errors');
    if (warn) return e('ignored', warn);
    if (quiet.has(key)) return e('ignored', quiet.get(key));
    if (parsed.disabled) return e('ignored', 'the container is not routed (enable)');
    return e('ignored', 'not used by any route (see the notes on the other labels)');
  });
  for (const o of others) {
    for (const key of o.keys) {
      if (labels.length >= MAX_EXPLAINED_LABELS) break;
      labels.push({
        key: clip(key, MAX_STRING),
        value: clip(shownValue(key, c.labels[key] ?? ''), EXPLAINED_VALUE),
        use: 'ignored',
        note: `${o.name} label: the container is read as ${dialect}`,
      });
    }
  }
  return { dialect, labels };
}
