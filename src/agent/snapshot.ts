// What an agent reports about its host: every container read on its own, each kept inside what
// one container may add (labels/fit.ts), and the whole inside the server's snapshot limits
// (model/limits.ts). Pure, so the watcher and the label fuzz test build snapshots the same way.

import { createHash } from 'node:crypto';
import { jsonBytes } from '../labels/fit.js';
import { type ExtractContext, type Extracted, extractRoutes } from '../labels/index.js';
import { localeOrder } from '../model/collation.js';
import {
  clip,
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_CONTAINERS,
  MAX_DIAGNOSTICS,
  MAX_EXEC_RULES,
  MAX_ROUTES,
  MAX_STRING,
  MAX_TCP_ROUTES,
} from '../model/limits.js';
import type {
  ContainerInfo,
  ContainerSummary,
  Diagnostic,
  RouteSpec,
  Snapshot,
  SwarmInfo,
  TcpRouteSpec,
} from '../model/types.js';
import type { ServiceRoutes } from './swarm.js';

export type SnapshotContent = Pick<Snapshot, 'containers' | 'routes' | 'diagnostics'> & {
  tcp: TcpRouteSpec[];
};

/** Room left in a message for its envelope (agent id, generation, …) and JSON punctuation. */
const ENVELOPE = 64 * 1024;

export interface SnapshotOptions {
  /** The exec rules that apply to a container here (labels and the agent's policy file). */
  execRules?: (c: ContainerInfo) => string[];
  /**
   * Unique to this agent (the watcher draws one at random): replicas grouped by their labels
   * share traffic on this agent only, never with another agent's identical containers.
   */
  replicaScope?: string;
}

export function snapshotContent(
  containers: ContainerInfo[],
  ctx: ExtractContext,
  o: SnapshotOptions = {},
): SnapshotContent {
  const read = containers.slice(0, MAX_CONTAINERS).map((c) => {
    const extra: Diagnostic[] = [];
    const service = serviceOf(c, extra);
    const rules = reportedExecRules(c, o.execRules?.(c) ?? [], ctx.labelPrefix, extra);
    return { c, service, rules, r: extractRoutes(c, ctx, extra) };
  });
  groupReplicas(
    read.map((x) => x.r),
    o.replicaScope ?? '',
  );

  const routes: RouteSpec[] = [];
  const tcp: TcpRouteSpec[] = [];
  const diagnostics: Diagnostic[] = [];
  const summaries: ContainerSummary[] = [];
  let bytes = 0;
  for (const { c, service, rules, r: extracted } of read) {
    let r = extracted;
    const task = c.labels['com.docker.swarm.task.id'];
    const summary: ContainerSummary = {
      id: clip(c.id, MAX_STRING),
      name: clip(c.name, MAX_STRING),
      ...(service ? { service } : {}),
      ...(task && task.length <= MAX_STRING ? { task } : {}),
      ...(rules.length > 0 ? { execRules: rules } : {}),
      state: clip(c.state, MAX_STRING),
      health: c.health,
      labelled: r.routes.length > 0 || r.tcp.length > 0 || r.diagnostics.length > 0,
      ...(r.explain ? { explain: r.explain } : {}),
    };
    let cost = jsonBytes(r.routes) + jsonBytes(r.tcp) + jsonBytes(r.diagnostics) + jsonBytes(summary);
    const full =
      routes.length + r.routes.length > MAX_ROUTES
        ? `${MAX_ROUTES} routes`
        : tcp.length + r.tcp.length > MAX_TCP_ROUTES
          ? `${MAX_TCP_ROUTES} TCP routes`
          : diagnostics.length + r.diagnostics.length + 1 > MAX_DIAGNOSTICS
            ? `${MAX_DIAGNOSTICS} diagnostics`
            : bytes + cost > DEFAULT_MAX_MESSAGE_BYTES - ENVELOPE
              ? `${DEFAULT_MAX_MESSAGE_BYTES / 1024 / 1024} MiB`
              : undefined;
    if (full) {
      // The host is at the snapshot's limit: this container is reported, its routes are not.
      const d: Diagnostic = {
        severity: 'error',
        containerId: summary.id,
        containerName: summary.name,
        label: '',
        message: `not routed: the snapshot of this host would exceed ${full} with this container's routes and diagnostics`,
      };
      r = {
        routes: [],
        tcp: [],
        diagnostics: diagnostics.length < MAX_DIAGNOSTICS ? [d] : [],
        labelled: true,
      };
      summary.labelled = true;
      delete summary.explain;
      cost = jsonBytes(r.diagnostics) + jsonBytes(summary);
    }
    bytes += cost;
    routes.push(...r.routes);
    tcp.push(...r.tcp);
    diagnostics.push(...r.diagnostics);
    summaries.push(summary);
  }
  summaries.sort((a, b) => localeOrder(a.id, b.id));
  return { containers: summaries, routes, tcp, diagnostics };
}

/**
 * Adds the swarm leader's service routes to a host's content, inside the same snapshot limits: past
 * them the service routes are left out with one error saying so (the host's containers come first).
 */
export function withServices(
  content: SnapshotContent,
  sr: ServiceRoutes | undefined,
): SnapshotContent & { swarm?: SwarmInfo } {
  if (!sr) return content;
  const out = { ...content, swarm: sr.swarm };
  const full =
    content.routes.length + sr.routes.length > MAX_ROUTES ||
    content.tcp.length + sr.tcp.length > MAX_TCP_ROUTES ||
    content.diagnostics.length + sr.diagnostics.length + 1 > MAX_DIAGNOSTICS ||
    jsonBytes(content) + jsonBytes(sr) > DEFAULT_MAX_MESSAGE_BYTES - ENVELOPE;
  if (full) {
    const d: Diagnostic = {
      severity: 'error',
      containerId: sr.swarm.clusterId,
      containerName: 'swarm services',
      label: '',
      message: `Swarm services not routed: with them the snapshot of this host would exceed its limits (${MAX_ROUTES} routes, ${DEFAULT_MAX_MESSAGE_BYTES / 1024 / 1024} MiB)`,
    };
    const { services: _s, nodes: _n, ...swarm } = sr.swarm;
    return {
      ...out,
      swarm,
      diagnostics:
        content.diagnostics.length < MAX_DIAGNOSTICS ? [...content.diagnostics, d] : content.diagnostics,
    };
  }
  return {
    ...out,
    routes: [...content.routes, ...sr.routes],
    tcp: [...content.tcp, ...sr.tcp],
    diagnostics: [...content.diagnostics, ...sr.diagnostics],
  };
}

/**
 * caddy-docker-proxy and Traefik merge containers with identical labels into one upstream set.
 * Here such containers of this agent get one load-balancing group (unless they have one, e.g.
 * their compose service), named for this agent only: another agent's identical containers stay
 * separate claims, so Berth's rules for who holds a host are unchanged across hosts.
 */
function groupReplicas(extracted: Extracted[], scope: string): void {
  const count = new Map<string, number>();
  for (const r of extracted) if (r.replicaKey) count.set(r.replicaKey, (count.get(r.replicaKey) ?? 0) + 1);
  for (const r of extracted) {
    if (!r.replicaKey || (count.get(r.replicaKey) ?? 0) < 2) continue;
    const group = `replicas:${createHash('sha256').update(`${scope}\u0000${r.replicaKey}`).digest('hex').slice(0, 24)}`;
    for (const route of r.routes) route.lbGroup ??= group;
  }
}

/** The Swarm service (else the compose service) a container is a task of, for exec by service name. */
function serviceOf(c: ContainerInfo, extra: Diagnostic[]): string | undefined {
  const swarm = 'com.docker.swarm.service.name';
  const label = c.labels[swarm] !== undefined ? swarm : 'com.docker.compose.service';
  const service = c.labels[label];
  if (!service) return undefined;
  if (service.length <= MAX_STRING) return service;
  extra.push(
    warning(
      c,
      label,
      service,
      `${label} is ${service.length} characters; at most ${MAX_STRING} are reported, so berth exec cannot target this container by service`,
    ),
  );
  return undefined;
}

/**
 * The exec rules reported for a container (so people can pick a command): each at most
 * MAX_STRING characters and at most MAX_EXEC_RULES of them. A rule left out still applies on
 * the host (the agent enforces its own policy); it is only not listed.
 */
function reportedExecRules(c: ContainerInfo, rules: string[], prefix: string, extra: Diagnostic[]): string[] {
  if (rules.length === 0) return [];
  const base = `${prefix}.exec.allow`;
  const from = new Map<string, string>();
  for (const [k, v] of Object.entries(c.labels)) if (k === base || k.startsWith(`${base}.`)) from.set(v, k);
  const out: string[] = [];
  for (const rule of rules) {
    if (rule.length > MAX_STRING) {
      const label = from.get(rule) ?? '';
      extra.push(
        warning(
          c,
          label,
          rule,
          `exec rule of ${rule.length} characters${label ? '' : " (from the agent's --exec-policy)"} is not listed: at most ${MAX_STRING} are reported; it still applies on this host`,
        ),
      );
    } else out.push(rule);
  }
  if (out.length > MAX_EXEC_RULES) {
    extra.push(
      warning(
        c,
        base,
        undefined,
        `${out.length} exec rules apply to this container; only the first ${MAX_EXEC_RULES} are listed (all of them still apply on this host)`,
      ),
    );
  }
  return out.slice(0, MAX_EXEC_RULES);
}

function warning(c: ContainerInfo, label: string, value: string | undefined, message: string): Diagnostic {
  const d: Diagnostic = { severity: 'warning', containerId: c.id, containerName: c.name, label, message };
  if (value !== undefined) d.value = value;
  return d;
}
