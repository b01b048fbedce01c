import { MAX_HOSTS_PER_ROUTE, MAX_STRING } from '../model/limits.js';
import type { ContainerInfo, Diagnostic, RouteSpec, TcpRouteSpec, UpstreamScheme } from '../model/types.js';
import { type AddressContext, exposedPorts, onlyExposedPort, resolveAddress } from './upstream.js';

/** A route as a dialect read it, before the container port is turned into an address. */
export interface RouteDraft {
  group: string;
  hosts: string[];
  path: string;
  stripPath: boolean;
  scheme: UpstreamScheme;
  port?: number;
  /** The label to name when the port is missing or unreachable. */
  portLabel: string;
  network?: string;
  lbGroup?: string;
  allow?: string[];
  /** The labels this route was read from (for `berth explain`), the defining one first. */
  labels?: string[];
  /** No port label: Traefik takes the lowest exposed port; everyone else needs exactly one. */
  portDefault?: 'only' | 'lowest';
}

/** A TCP route as a dialect read it. */
export interface TcpDraft {
  name: string;
  listen: number;
  port: number;
  portLabel: string;
  allow: string[];
  network?: string;
  lbGroup?: string;
  labels?: string[];
}

/** A label and what became of it, for `berth explain`. */
export interface LabelNote {
  label: string;
  note?: string;
}

export interface DialectResult {
  drafts: RouteDraft[];
  tcp?: TcpDraft[];
  diagnostics: Diagnostic[];
  /** The container opted out (`enable=false`). */
  disabled: boolean;
  /** Labels read without producing a route of their own (e.g. `enable`, a network), for `berth explain`. */
  used?: LabelNote[];
  /** Labels left alone on purpose, needing no diagnostic (e.g. a Cloudflare DNS zone). */
  quiet?: LabelNote[];
  /** The labels were refused before any parser read them (too big or too many). */
  unread?: boolean;
  /** Errors among `diagnostics` that cost only their own router, not the container. */
  scoped?: Set<Diagnostic>;
}

export class DiagnosticSink {
  readonly list: Diagnostic[] = [];
  private errorCount = 0;
  /**
   * @param scoped errors that cost only the part they name (one Traefik router), not the whole
   *   container; shared with the DialectResult so finishDrafts and explain tell them apart.
   */
  constructor(
    private readonly c: ContainerInfo,
    readonly scoped = new Set<Diagnostic>(),
  ) {}
  error(label: string, value: string | undefined, message: string): void {
    this.add('error', label, value, message);
  }
  /** An error that keeps one part of the container (a router) out, and only that part. */
  scopedError(label: string, value: string | undefined, message: string): void {
    const d = this.make('error', label, value, message);
    this.scoped.add(d);
    this.push(d);
  }
  warning(label: string, value: string | undefined, message: string): void {
    this.add('warning', label, value, message);
  }
  private add(severity: Diagnostic['severity'], label: string, value: string | undefined, message: string) {
    this.push(this.make(severity, label, value, message));
  }
  private make(severity: Diagnostic['severity'], label: string, value: string | undefined, message: string) {
    const d: Diagnostic = { severity, containerId: this.c.id, containerName: this.c.name, label, message };
    if (value !== undefined) d.value = shownValue(label, value);
    return d;
  }
  push(...ds: Diagnostic[]): void {
    for (const d of ds) {
      this.list.push(d);
      if (d.severity === 'error' && !this.scoped.has(d)) this.errorCount++;
    }
  }
  /** The container's value of a label, for diagnostics raised away from where it was read. */
  valueOf(label: string): string | undefined {
    return this.c.labels[label];
  }
  /** Errors that cost the container all its routes (scoped ones do not count). */
  get hasErrors(): boolean {
    return this.errorCount > 0;
  }
  /** Such errors so far: a reader compares counts to see whether one step of its own failed. */
  get errors(): number {
    return this.errorCount;
  }
}

/**
 * Turns drafts into routes. Any error on the container (from the dialect or here) means it
 * contributes no route at all: half a container's routes would be a surprise worth avoiding.
 * The exception is an error a dialect scoped to one part (a Traefik router, which Traefik too
 * refuses on its own): that part has no draft, and the others route.
 */
export function finishDrafts(
  c: ContainerInfo,
  result: DialectResult,
  ctx: AddressContext,
): { routes: RouteSpec[]; tcp: TcpRouteSpec[]; diagnostics: Diagnostic[] } {
  const sink = new DiagnosticSink(c, result.scoped);
  sink.push(...result.diagnostics);
  const routes: RouteSpec[] = [];
  const notReady = readiness(c);
  for (const d of result.drafts) {
    if (!withinLimits(c, d, sink)) continue;
    let port = d.port;
    if (port === undefined && d.portDefault === 'lowest') {
      const ports = exposedPorts(c);
      if (ports.length === 0) {
        sink.error(
          d.portLabel,
          undefined,
          `no port given and the container exposes no port; set ${d.portLabel}`,
        );
        continue;
      }
      port = ports[0]!;
    } else if (port === undefined) {
      const only = onlyExposedPort(c);
      if (!only.ok) {
        const why =
          only.ports.length === 0 ? 'exposes no port' : `exposes several ports (${only.ports.join(', ')})`;
        sink.error(d.portLabel, undefined, `no port given and the container ${why}; set ${d.portLabel}`);
        continue;
      }
      port = only.port;
    }
    const addr = resolveAddress(c, port, ctx, d.network);
    if (!addr.ok) {
      sink.error(d.portLabel, String(port), addr.message);
      continue;
    }
    const route: RouteSpec = {
      id: `${c.id}/${d.group}`,
      group: d.group,
      hosts: d.hosts,
      path: d.path,
      stripPath: d.stripPath,
      upstream: { host: addr.host, port: addr.port, scheme: d.scheme },
      containerId: c.id,
      containerName: c.name,
      containerCreated: c.created,
    };
    if (d.lbGroup) route.lbGroup = d.lbGroup;
    if (d.allow) route.allow = d.allow;
    if (notReady) route.notReady = notReady;
    routes.push(route);
  }
  const tcp: TcpRouteSpec[] = [];
  for (const d of result.tcp ?? []) {
    const addr = resolveAddress(c, d.port, ctx, d.network);
    if (!addr.ok) {
      sink.error(d.portLabel, String(d.port), addr.message);
      continue;
    }
    const route: TcpRouteSpec = {
      id: `${c.id}/tcp/${d.name}`,
      name: d.name,
      listen: d.listen,
      upstream: { host: addr.host, port: addr.port },
      allow: d.allow,
      containerId: c.id,
      containerName: c.name,
      containerCreated: c.created,
    };
    if (d.lbGroup) route.lbGroup = d.lbGroup;
    if (notReady) route.notReady = notReady;
    tcp.push(route);
  }
  return sink.hasErrors
    ? { routes: [], tcp: [], diagnostics: sink.list }
    : { routes, tcp, diagnostics: sink.list };
}

/**
 * What the server's schema allows for one route (see model/limits.ts): a route beyond it is an
 * error on its container, so the snapshot it travels in stays valid for every other container.
 */
function withinLimits(c: ContainerInfo, d: RouteDraft, sink: DiagnosticSink): boolean {
  const label = d.labels?.[0] ?? d.portLabel;
  const value = sink.valueOf(label);
  if (d.hosts.length > MAX_HOSTS_PER_ROUTE) {
    sink.error(
      label,
      value,
      `${d.hosts.length} hostnames in one route; at most ${MAX_HOSTS_PER_ROUTE} are allowed (split them over several routes)`,
    );
    return false;
  }
  const id = `${c.id}/${d.group}`;
  if (id.length > MAX_STRING) {
    sink.error(
      label,
      value,
      `the route's name (${id.length} characters, from the label key) is longer than ${MAX_STRING} characters; use a shorter key`,
    );
    return false;
  }
  if (d.lbGroup && d.lbGroup.length > MAX_STRING) {
    const from = d.lbGroup.startsWith('compose:') ? 'com.docker.compose.service' : label;
    sink.error(
      from,
      sink.valueOf(from),
      `the load-balancing group is ${d.lbGroup.length} characters long; at most ${MAX_STRING} are allowed`,
    );
    return false;
  }
  return true;
}

/**
 * One container claiming the same host and path twice would conflict with itself at the front
 * door (Traefik users often repeat a rule per entrypoint): the first claim stays; a repeat with
 * the same target merges into it quietly, one with another target is dropped with a warning.
 */
export function dropRepeatedClaims(drafts: RouteDraft[], sink: DiagnosticSink): RouteDraft[] {
  const seen = new Map<string, RouteDraft>();
  const out: RouteDraft[] = [];
  for (const d of drafts) {
    const hosts: string[] = [];
    // Hosts this draft loses, by the draft that keeps them: one warning each, however many hosts.
    const lost = new Map<RouteDraft, string[]>();
    const merged = new Set<RouteDraft>();
    for (const h of d.hosts) {
      const unit = `${h}\u0000${d.path}`;
      const first = seen.get(unit);
      if (!first) {
        seen.set(unit, d);
        hosts.push(h);
      } else if (first === d) {
        // the same host twice in one draft
      } else if (sameTarget(first, d)) {
        merged.add(first);
      } else {
        const list = lost.get(first) ?? [];
        if (list.length === 0) lost.set(first, list);
        list.push(h);
      }
    }
    for (const first of merged) first.labels = [...new Set([...(first.labels ?? []), ...(d.labels ?? [])])];
    for (const [first, hs] of lost) {
      const where = hs
        .slice(0, 3)
        .map((h) => `${h}${d.path === '/' ? '' : d.path}`)
        .join(', ');
      const more = hs.length > 3 ? ` and ${hs.length - 3} more` : '';
      const by = first.labels?.[0] ?? first.portLabel;
      const label = d.labels?.[0] ?? d.portLabel;
      sink.warning(
        label,
        sink.valueOf(label),
        `${where}${more} ${hs.length === 1 ? 'is' : 'are'} already routed by ${by} to another target; this route is ignored there`,
      );
    }
    if (hosts.length > 0) out.push(hosts.length === d.hosts.length ? d : { ...d, hosts });
  }
  return out;
}

function sameTarget(a: RouteDraft, b: RouteDraft): boolean {
  return (
    a.port === b.port &&
    a.scheme === b.scheme &&
    a.stripPath === b.stripPath &&
    a.network === b.network &&
    a.lbGroup === b.lbGroup &&
    (a.allow ?? []).join(',') === (b.allow ?? []).join(',')
  );
}

/** Replicas of one compose service share traffic without any extra label. */
export function composeGroup(labels: Record<string, string>): string | undefined {
  const project = labels['com.docker.compose.project'];
  const service = labels['com.docker.compose.service'];
  return project && service ? `compose:${project}/${service}` : undefined;
}

/**
 * Whether an upstream host written in another tool's labels means this container itself: its
 * name, its id, its compose service, or loopback. Berth routes to the labelled container only.
 */
export function isSelfHost(c: ContainerInfo, raw: string): boolean {
  const h = raw.toLowerCase().replace(/^\[|\]$/g, '');
  if (['localhost', '127.0.0.1', '::1'].includes(h)) return true;
  if (h === c.name.toLowerCase().replace(/^\//, '')) return true;
  if (h.length >= 12 && c.id.toLowerCase().startsWith(h)) return true;
  // A service name resolves to its containers (compose) or tasks (Swarm) on their networks.
  const service = c.labels['com.docker.compose.service'] ?? c.labels['com.docker.swarm.service.name'];
  return service !== undefined && h === service.toLowerCase();
}

function readiness(c: ContainerInfo): string | undefined {
  if (c.state !== 'running') return `container is ${c.state}`;
  if (c.health === 'unhealthy') return 'container is unhealthy';
  if (c.health === 'starting') return 'container health check has not passed yet';
  return undefined;
}

/**
 * Labels that carry credentials (caddy `basic_auth` users, Traefik `basicauth.users`, DockFlare
 * access tokens, …): their values never leave the agent, in diagnostics or explanations.
 */
const SECRET_LABEL = /(auth|passw|secret|token|credential|api_?key|\.users?(file)?$)/i;

export function shownValue(label: string, value: string): string {
  return SECRET_LABEL.test(label) ? '(redacted: credentials)' : value;
}
