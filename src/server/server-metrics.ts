// The server's /metrics: reconcile and apply timings, agents and routes by status, agent
// messages, exec requests and the TCP forwarder's families. Histograms are fed by the wiring
// (onPass); the rest is read when scraped.
import { Histogram, type MetricFamily, simple } from '../metrics.js';
import type { AgentSummary, RouteView } from '../model/api.js';

export class ServerMetrics {
  /** From the first change a pass has not yet seen to the end of the pass that applied it. */
  readonly convergence = new Histogram(
    'berth_convergence_seconds',
    'Time from a change reaching the server (snapshot, approval, revocation) to the end of the reconcile pass that applied it',
  );
  readonly applyDuration = new Histogram('berth_caddy_apply_seconds', 'Duration of Caddy config applies');
  private changedSince?: number;

  /** Something changed that a pass has yet to apply. */
  changed(at = Date.now()): void {
    this.changedSince ??= at;
  }

  /** A pass ended: it applied every change made before it started. */
  passed(startedAt: number, applyMs: number[], now = Date.now()): void {
    if (this.changedSince !== undefined && startedAt >= this.changedSince) {
      this.convergence.observe((now - this.changedSince) / 1000);
      this.changedSince = undefined;
    }
    for (const ms of applyMs) this.applyDuration.observe(ms / 1000);
  }
}

export interface MetricSources {
  metrics: ServerMetrics;
  heartbeatDelay: Histogram;
  reconcile: { passes: number; applies: number; failures: number };
  agents: AgentSummary[];
  routes: RouteView[];
  hub: {
    messages: number;
    invalidMessages: number;
    oversizeMessages: number;
    snapshotsSuperseded: number;
    rejected: number;
    rateLimited: number;
  };
  exec: { allowed: number; denied: number; errors: number };
  tcp: MetricFamily[];
  /** Tunneled streams, bytes and errors per agent. */
  tunnel?: MetricFamily[];
  /** The DNS responder's counters (dynamic layout only). */
  dns?: { queries: number; answered: number; notFound: number; errors: number };
  /** The berth_http_* families (per route host), when Caddy streams request lines. */
  http?: MetricFamily[];
}

const count = <T>(list: T[], key: (x: T) => string, all: string[]) =>
  all.map(
    (v) => [{ status: v }, list.filter((x) => key(x) === v).length] as [Record<string, string>, number],
  );

export function serverFamilies(s: MetricSources): MetricFamily[] {
  return [
    s.metrics.convergence.family(),
    s.metrics.applyDuration.family(),
    s.heartbeatDelay.family(),
    simple('berth_reconcile_passes_total', 'Reconcile passes', 'counter', s.reconcile.passes),
    simple('berth_caddy_applies_total', 'Config applies sent to Caddy', 'counter', s.reconcile.applies),
    simple('berth_caddy_apply_failures_total', 'Failed Caddy applies', 'counter', s.reconcile.failures),
    simple(
      'berth_agents',
      'Agents by status',
      'gauge',
      count(s.agents, (a) => a.status, ['online', 'stale', 'offline', 'pending', 'revoked']),
    ),
    simple(
      'berth_routes',
      'Routes by status',
      'gauge',
      count(s.routes, (r) => r.status, ['applied', 'pending', 'error']),
    ),
    simple('berth_agent_messages_total', 'Messages from agents by outcome', 'counter', [
      [{ outcome: 'read' }, s.hub.messages],
      [{ outcome: 'invalid' }, s.hub.invalidMessages],
      [{ outcome: 'oversize' }, s.hub.oversizeMessages],
      [{ outcome: 'superseded' }, s.hub.snapshotsSuperseded],
    ]),
    simple('berth_agent_refusals_total', 'Agent connections refused, by reason', 'counter', [
      [{ reason: 'key' }, s.hub.rejected],
      [{ reason: 'rate' }, s.hub.rateLimited],
    ]),
    simple('berth_exec_requests_total', 'Exec requests by outcome', 'counter', [
      [{ outcome: 'allowed' }, s.exec.allowed],
      [{ outcome: 'denied' }, s.exec.denied],
      [{ outcome: 'error' }, s.exec.errors],
    ]),
    ...(s.dns
      ? [
          simple('berth_dns_queries_total', 'Queries the DNS responder answered, by result', 'counter', [
            [{ result: 'answered' }, s.dns.answered],
            [{ result: 'not_found' }, s.dns.notFound],
            [{ result: 'error' }, s.dns.errors],
          ]),
        ]
      : []),
    ...s.tcp,
    ...(s.tunnel ?? []),
    ...(s.http ?? []),
  ];
}
