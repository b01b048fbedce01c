// `GET /api/status` and `/readyz`: readiness with its reasons, agents, each Caddy, route counts.
import type { RouteView, StatusReport } from '../model/api.js';
import { VERSION } from '../version.js';

export interface CaddyFacts {
  display: string;
  reachable: boolean;
  facts: Record<string, unknown>;
}

export interface StatusSources {
  startedAt: number;
  routes: () => RouteView[];
  agents: () => StatusReport['agents'];
  /** Whether a reconcile pass has completed, and the reconciler's counters. */
  reconcile: () => { done: boolean; counters: Record<string, unknown> };
  caddy: () => CaddyFacts[];
  /** The local agent's Docker (standalone only). */
  dockerConnected?: () => boolean;
  clock?: () => number;
}

export function statusReport(o: StatusSources): StatusReport {
  const now = (o.clock ?? Date.now)();
  const routes = o.routes();
  const reconcile = o.reconcile();
  const caddy = o.caddy();
  const notReady: string[] = [];
  if (!reconcile.done) notReady.push('no reconcile pass has completed yet');
  for (const c of caddy) if (!c.reachable) notReady.push(`Caddy ${c.display} is unreachable`);
  if (o.dockerConnected && !o.dockerConnected()) notReady.push('docker is unreachable');
  return {
    version: VERSION,
    uptimeSeconds: Math.round((now - o.startedAt) / 1000),
    ready: notReady.length === 0,
    notReady,
    agents: o.agents(),
    caddy: caddy.map((c) => c.facts),
    routes: {
      total: routes.length,
      applied: routes.filter((r) => r.status === 'applied').length,
      pending: routes.filter((r) => r.status === 'pending').length,
      error: routes.filter((r) => r.status === 'error').length,
    },
    reconcile: reconcile.counters,
  };
}
