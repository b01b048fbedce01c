// labels → routes + diagnostics. Pure: the same container always gives the same answer.
import type { ContainerInfo, Diagnostic, RouteSpec, TcpRouteSpec } from '../model/types.js';
import { hasBerthLabels, parseBerthLabels } from './berth.js';
import { finishDrafts } from './draft.js';
import type { AddressContext } from './upstream.js';

export interface ExtractContext extends AddressContext {
  labelPrefix: string;
}

export interface Extracted {
  routes: RouteSpec[];
  tcp: TcpRouteSpec[];
  diagnostics: Diagnostic[];
  /** The container carries labels Berth reads. */
  labelled: boolean;
}

export function extractRoutes(c: ContainerInfo, ctx: ExtractContext): Extracted {
  if (!hasBerthLabels(c.labels, ctx.labelPrefix))
    return { routes: [], tcp: [], diagnostics: [], labelled: false };
  const parsed = parseBerthLabels(c, ctx.labelPrefix);
  return { ...finishDrafts(c, parsed, ctx), labelled: true };
}

/** Every container of one host; each is read on its own, so one bad container affects no other. */
export function extractAll(containers: ContainerInfo[], ctx: ExtractContext): Omit<Extracted, 'labelled'> {
  const routes: RouteSpec[] = [];
  const tcp: TcpRouteSpec[] = [];
  const diagnostics: Diagnostic[] = [];
  for (const c of containers) {
    const r = extractRoutes(c, ctx);
    routes.push(...r.routes);
    tcp.push(...r.tcp);
    diagnostics.push(...r.diagnostics);
  }
  return { routes, tcp, diagnostics };
}
