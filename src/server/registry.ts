// What the server knows about agents and their snapshots, and the route views built from it.

import { siteSignature } from '../ingress/caddy/target.js';
import type { RouteView, Snapshot } from '../model/types.js';
import type { AgentRoutes } from '../reconcile/desired.js';
import { routeKey } from '../reconcile/desired.js';
import { Reconciler, type ReconcileState } from '../reconcile/reconciler.js';
import type { AgentRecord, Store } from '../store/store.js';

export class Registry {
  private readonly agents = new Map<string, AgentRecord>();
  private readonly snapshots = new Map<string, Snapshot>();
  private listeners: (() => void)[] = [];

  constructor(private readonly store: Store) {}

  /** Restores the last known state so a restarted server serves the same routes at once. */
  async load(): Promise<void> {
    for (const a of await this.store.listAgents()) this.agents.set(a.id, a);
    for (const s of await this.store.loadSnapshots())
      if (this.agents.has(s.agentId)) this.snapshots.set(s.agentId, s);
  }

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  async upsertAgent(a: AgentRecord): Promise<void> {
    this.agents.set(a.id, a);
    await this.store.upsertAgent(a);
  }

  listAgents(): AgentRecord[] {
    return [...this.agents.values()];
  }

  snapshotOf(agentId: string): Snapshot | undefined {
    return this.snapshots.get(agentId);
  }

  /** Replaces the agent's whole state. An older generation (a late message) is ignored. */
  async replaceAgentState(s: Snapshot): Promise<boolean> {
    const prev = this.snapshots.get(s.agentId);
    if (prev && prev.generation >= s.generation) return false;
    if (!this.agents.has(s.agentId)) throw new Error(`unknown agent ${s.agentId}`);
    this.snapshots.set(s.agentId, s);
    await this.store.saveSnapshot(s);
    for (const fn of this.listeners) fn();
    return true;
  }

  /** The reconciler's input: every agent's routes. */
  agentRoutes(): AgentRoutes[] {
    const out: AgentRoutes[] = [];
    for (const [id, s] of this.snapshots) {
      out.push({ agentId: id, agentName: this.agents.get(id)?.name ?? id, routes: s.routes });
    }
    return out;
  }

  /** Every route with its status, plus one entry per container whose labels were rejected. */
  routeViews(state: ReconcileState | undefined): RouteView[] {
    const views: RouteView[] = [];
    const sitesByKey = new Map<string, string[]>();
    const quarantine = new Map<string, string>();
    if (state) {
      for (const site of state.desired.sites) {
        const sig = siteSignature(site);
        for (const k of site.routeKeys) sitesByKey.set(k, [...(sitesByKey.get(k) ?? []), sig]);
      }
      for (const t of state.targets) for (const [sig, msg] of t.quarantined) quarantine.set(sig, msg);
    }
    for (const [agentId, s] of this.snapshots) {
      const agentName = this.agents.get(agentId)?.name ?? agentId;
      for (const r of s.routes) {
        const key = routeKey(agentId, r.id);
        const outcome = state?.desired.outcomes.get(key);
        const sigs = sitesByKey.get(key) ?? [];
        const errors = [...(outcome?.errors ?? [])];
        for (const sig of sigs) {
          const q = quarantine.get(sig);
          if (q) errors.push(`Caddy rejected this route: ${q}`);
        }
        let status: RouteView['status'];
        if (errors.length > 0) status = 'error';
        else if (r.notReady || !state || sigs.length === 0) status = 'pending';
        else status = sigs.every((sig) => Reconciler.servedEverywhere(state, sig)) ? 'applied' : 'pending';
        const view: RouteView = {
          id: r.id,
          agentId,
          agentName,
          hosts: r.hosts,
          path: r.path,
          stripPath: r.stripPath,
          upstreams: [`${r.upstream.scheme}://${r.upstream.host}:${r.upstream.port}`],
          container: { id: r.containerId, name: r.containerName },
          status,
          errors,
        };
        if (r.notReady) view.note = r.notReady;
        views.push(view);
      }
      const rejected = new Map<string, { name: string; messages: string[] }>();
      for (const d of s.diagnostics) {
        if (d.severity !== 'error') continue;
        const e = rejected.get(d.containerId) ?? { name: d.containerName, messages: [] };
        const value = d.value === undefined ? '' : `=${JSON.stringify(d.value)}`;
        e.messages.push(`${d.label}${value}: ${d.message}`);
        rejected.set(d.containerId, e);
      }
      for (const [cid, e] of rejected) {
        views.push({
          id: `${cid}/labels`,
          agentId,
          agentName,
          hosts: [],
          path: '',
          stripPath: false,
          upstreams: [],
          container: { id: cid, name: e.name },
          status: 'error',
          errors: e.messages.map((m) => `container ${e.name}: label ${m}`),
        });
      }
    }
    return views.sort(
      (a, b) =>
        (a.hosts[0] ?? '~').localeCompare(b.hosts[0] ?? '~') ||
        a.path.localeCompare(b.path) ||
        a.id.localeCompare(b.id),
    );
  }
}
