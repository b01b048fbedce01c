import type { ContainerInfo, Diagnostic, RouteSpec, TcpRouteSpec } from '../model/types.js';
import { type AddressContext, onlyExposedPort, resolveAddress } from './upstream.js';

/** A route as a dialect read it, before the container port is turned into an address. */
export interface RouteDraft {
  group: string;
  hosts: string[];
  path: string;
  stripPath: boolean;
  scheme: 'http' | 'https';
  port?: number;
  /** The label to name when the port is missing or unreachable. */
  portLabel: string;
  network?: string;
  lbGroup?: string;
  allow?: string[];
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
}

export interface DialectResult {
  drafts: RouteDraft[];
  tcp?: TcpDraft[];
  diagnostics: Diagnostic[];
  /** The container opted out (`enable=false`). */
  disabled: boolean;
}

export class DiagnosticSink {
  readonly list: Diagnostic[] = [];
  constructor(private readonly c: ContainerInfo) {}
  error(label: string, value: string | undefined, message: string): void {
    this.add('error', label, value, message);
  }
  warning(label: string, value: string | undefined, message: string): void {
    this.add('warning', label, value, message);
  }
  private add(severity: Diagnostic['severity'], label: string, value: string | undefined, message: string) {
    const d: Diagnostic = { severity, containerId: this.c.id, containerName: this.c.name, label, message };
    if (value !== undefined) d.value = value;
    this.list.push(d);
  }
  get hasErrors(): boolean {
    return this.list.some((d) => d.severity === 'error');
  }
}

/**
 * Turns drafts into routes. Any error on the container (from the dialect or here) means it
 * contributes no route at all: half a container's routes would be a surprise worth avoiding.
 */
export function finishDrafts(
  c: ContainerInfo,
  result: DialectResult,
  ctx: AddressContext,
): { routes: RouteSpec[]; tcp: TcpRouteSpec[]; diagnostics: Diagnostic[] } {
  const sink = new DiagnosticSink(c);
  sink.list.push(...result.diagnostics);
  const routes: RouteSpec[] = [];
  const notReady = readiness(c);
  for (const d of result.drafts) {
    let port = d.port;
    if (port === undefined) {
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

function readiness(c: ContainerInfo): string | undefined {
  if (c.state !== 'running') return `container is ${c.state}`;
  if (c.health === 'unhealthy') return 'container is unhealthy';
  if (c.health === 'starting') return 'container health check has not passed yet';
  return undefined;
}
