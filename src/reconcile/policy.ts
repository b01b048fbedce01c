// Which agents' routes may reach the front door, and which hostnames each may claim. Pure.
import type { Snapshot } from '../model/types.js';
import type { AgentRecord, KeyRecord } from '../store/store.js';
import { type AgentRoutes, routeKey } from './desired.js';

export type AgentStatus = 'pending' | 'online' | 'stale' | 'offline' | 'revoked';

export interface AgentView {
  record: AgentRecord;
  key?: KeyRecord;
  snapshot?: Snapshot;
  connected: boolean;
  lastHeartbeatAt?: number;
  /** The agent's own report interval, when it told us. */
  heartbeatMs?: number;
  /** When the connection ended, or when this server started for agents not yet back. */
  disconnectedAt?: number;
}

export interface LivenessOptions {
  /** The agents' report interval: two missed heartbeats make an agent stale. */
  heartbeatMs: number;
  /** How long an offline agent's routes stay at the front door. */
  offlineGraceMs: number;
}

export function agentStatus(a: AgentView, now: number, o: LivenessOptions): AgentStatus {
  if (a.record.kind === 'local') return 'online';
  if (!a.key || a.key.revokedAt !== undefined) return 'revoked';
  if (!a.record.approved) return 'pending';
  if (!a.connected) return 'offline';
  const last = a.lastHeartbeatAt ?? 0;
  return now - last > 2 * (a.heartbeatMs ?? o.heartbeatMs) + 1_000 ? 'stale' : 'online';
}

/** Why an agent's routes are withheld, or undefined when they serve. */
export function withheldBecause(a: AgentView, now: number, o: LivenessOptions): string | undefined {
  const status = agentStatus(a, now, o);
  if (status === 'revoked') return 'its key is revoked';
  if (status === 'pending') return 'the agent is pending approval (berth agents approve)';
  if (status === 'offline') {
    const since = a.disconnectedAt ?? 0;
    if (now - since > o.offlineGraceMs) {
      return `the agent has been offline for ${Math.round((now - since) / 1000)} s, longer than the offline grace`;
    }
  }
  return undefined;
}

/** `*.example.com` covers every name below example.com (and the wildcard itself); others match exactly. */
export function domainAllowed(host: string, domains: string[]): boolean {
  if (domains.length === 0) return true;
  return domains.some((d) => {
    if (d === host) return true;
    if (!d.startsWith('*.')) return false;
    const suffix = d.slice(1); // ".example.com"
    return host.endsWith(suffix) && host.length > suffix.length;
  });
}

export interface Admitted {
  agentRoutes: AgentRoutes[];
  /** Route key → why it is not served (domain policy). */
  errors: Map<string, string[]>;
  /** Agent id → why none of its routes are served. */
  withheld: Map<string, string>;
}

/**
 * Keeps only routes that may serve: from agents that are approved, unrevoked and online (or
 * within the offline grace), and only for hostnames their key allows. A claim outside the key's
 * domains is an error on that route alone.
 */
export function admitRoutes(agents: AgentView[], now: number, o: LivenessOptions): Admitted {
  const agentRoutes: AgentRoutes[] = [];
  const errors = new Map<string, string[]>();
  const withheld = new Map<string, string>();
  for (const a of agents) {
    if (!a.snapshot) continue;
    const why = withheldBecause(a, now, o);
    if (why) {
      withheld.set(a.record.id, why);
      continue;
    }
    const domains = a.key?.domains ?? [];
    const routes = a.snapshot.routes.filter((r) => {
      const outside = r.hosts.filter((h) => !domainAllowed(h, domains));
      if (outside.length === 0) return true;
      errors.set(routeKey(a.record.id, r.id), [
        `${outside.join(', ')} ${outside.length === 1 ? 'is' : 'are'} outside the domains allowed for key ${a.key?.name} (${domains.join(', ')})`,
      ]);
      return false;
    });
    // A key limited to domains names what its hosts may claim; front-door ports are not in it.
    const tcp = (a.snapshot.tcp ?? []).filter((r) => {
      if (domains.length === 0) return true;
      errors.set(routeKey(a.record.id, r.id), [
        `TCP port ${r.listen}: key ${a.key?.name} is limited to domains (${domains.join(', ')}), so its agents may not claim TCP ports; use a key without --domains`,
      ]);
      return false;
    });
    agentRoutes.push({ agentId: a.record.id, agentName: a.record.name, routes, tcp });
  }
  return { agentRoutes, errors, withheld };
}
