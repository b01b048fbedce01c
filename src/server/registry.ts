// What the server knows: keys, agents, their connections and latest snapshots. Everything
// durable goes through the store; connection state lives here, in memory.
import { randomBytes } from 'node:crypto';
import { UserError } from '../errors.js';
import { siteSignature } from '../ingress/caddy/target.js';
import type { RouteView, Snapshot } from '../model/types.js';
import { routeKey } from '../reconcile/desired.js';
import {
  type Admitted,
  type AgentStatus,
  type AgentView,
  admitRoutes,
  agentStatus,
  type LivenessOptions,
} from '../reconcile/policy.js';
import { Reconciler, type ReconcileState } from '../reconcile/reconciler.js';
import type { AgentRecord, KeyRecord, Store } from '../store/store.js';
import { hashToken } from './auth.js';
import type { EventBus } from './events.js';

interface Live {
  connected: boolean;
  lastHeartbeatAt?: number;
  disconnectedAt?: number;
  heartbeat?: Record<string, unknown>;
}

export interface AgentSummary {
  id: string;
  name: string;
  kind: AgentRecord['kind'];
  status: AgentStatus;
  approved: boolean;
  keyId?: string;
  keyName?: string;
  hostIp?: string;
  version?: string;
  dockerVersion?: string;
  heartbeatAgeSeconds?: number;
  routes: number;
  containers: number;
  withheld?: string;
}

export interface KeySummary {
  id: string;
  name: string;
  domains: string[];
  autoApprove: boolean;
  createdAt: string;
  revoked: boolean;
  previousValidUntil?: string;
  execAllow?: string[];
  agents: number;
}

const newId = (prefix: string) => `${prefix}_${randomBytes(6).toString('hex')}`;

export class Registry {
  private readonly agents = new Map<string, AgentRecord>();
  private readonly keys = new Map<string, KeyRecord>();
  private readonly snapshots = new Map<string, Snapshot>();
  private readonly live = new Map<string, Live>();
  private changeListeners: (() => void)[] = [];
  /** Where fleet events go (agents enrolling, connecting, approved, removed; keys). */
  events?: EventBus;
  private dropListeners: ((agentIds: string[], reason: string) => void)[] = [];

  constructor(
    private readonly store: Store,
    readonly liveness: LivenessOptions,
    private readonly clock: () => number = Date.now,
  ) {}

  /** Restores the last known state so a restarted server serves the same routes at once. */
  async load(): Promise<void> {
    const now = this.clock();
    for (const k of await this.store.listKeys()) this.keys.set(k.id, k);
    for (const a of await this.store.listAgents()) {
      this.agents.set(a.id, a);
      // Agents not yet back count as offline from now: the grace starts when this server does.
      this.live.set(a.id, { connected: false, disconnectedAt: now });
    }
    for (const s of await this.store.loadSnapshots())
      if (this.agents.has(s.agentId)) this.snapshots.set(s.agentId, s);
  }

  onChange(fn: () => void): void {
    this.changeListeners.push(fn);
  }

  /** Connections to close: revoked keys, removed agents. */
  onDrop(fn: (agentIds: string[], reason: string) => void): void {
    this.dropListeners.push(fn);
  }

  private changed(): void {
    for (const fn of this.changeListeners) fn();
  }

  // ---- keys

  async createKey(o: {
    name: string;
    domains: string[];
    autoApprove: boolean;
    execAllow?: string[];
  }): Promise<{ key: KeySummary; secret: string }> {
    if ([...this.keys.values()].some((k) => k.name === o.name && k.revokedAt === undefined)) {
      throw new UserError('CONFLICT', `a key named "${o.name}" already exists`);
    }
    const secret = `berth_agent_${randomBytes(24).toString('base64url')}`;
    const key: KeyRecord = {
      id: newId('key'),
      name: o.name,
      hash: hashToken(secret),
      domains: o.domains,
      autoApprove: o.autoApprove,
      createdAt: this.clock(),
    };
    if (o.execAllow) key.execAllow = o.execAllow;
    await this.store.saveKey(key);
    this.keys.set(key.id, key);
    this.events?.emit('key.created', `key ${key.name} created`, { keyId: key.id, key: key.name });
    return { key: this.keySummary(key), secret };
  }

  listKeys(): KeySummary[] {
    return [...this.keys.values()].map((k) => this.keySummary(k));
  }

  /** The exec rules the server allows for an agent's key; undefined means no narrowing. */
  execRulesFor(agentId: string): string[] | undefined {
    const keyId = this.agents.get(agentId)?.keyId;
    return keyId ? this.keys.get(keyId)?.execAllow : undefined;
  }

  private keySummary(k: KeyRecord): KeySummary {
    const s: KeySummary = {
      id: k.id,
      name: k.name,
      domains: k.domains,
      autoApprove: k.autoApprove,
      createdAt: new Date(k.createdAt).toISOString(),
      revoked: k.revokedAt !== undefined,
      agents: [...this.agents.values()].filter((a) => a.keyId === k.id).length,
    };
    if (k.execAllow) s.execAllow = k.execAllow;
    if (k.previousExpiresAt && k.previousExpiresAt > this.clock()) {
      s.previousValidUntil = new Date(k.previousExpiresAt).toISOString();
    }
    return s;
  }

  private findKey(ref: string): KeyRecord {
    const k =
      this.keys.get(ref) ?? [...this.keys.values()].find((x) => x.name === ref && x.revokedAt === undefined);
    if (!k) throw new UserError('NOT_FOUND', `no key "${ref}" (berth keys list shows the keys)`);
    return k;
  }

  async revokeKey(ref: string): Promise<KeySummary> {
    const k = this.findKey(ref);
    if (k.revokedAt === undefined) {
      k.revokedAt = this.clock();
      await this.store.saveKey(k);
      const ids = [...this.agents.values()].filter((a) => a.keyId === k.id).map((a) => a.id);
      for (const fn of this.dropListeners) fn(ids, `key ${k.name} was revoked`);
      this.events?.emit('key.revoked', `key ${k.name} revoked`, {
        keyId: k.id,
        key: k.name,
        agents: ids.length,
      });
      this.changed();
    }
    return this.keySummary(k);
  }

  async rotateKey(ref: string, overlapMs: number): Promise<{ key: KeySummary; secret: string }> {
    const k = this.findKey(ref);
    if (k.revokedAt !== undefined)
      throw new UserError('CONFLICT', `key ${k.name} is revoked; create a new one`);
    const secret = `berth_agent_${randomBytes(24).toString('base64url')}`;
    k.previousHash = k.hash;
    k.previousExpiresAt = this.clock() + overlapMs;
    k.hash = hashToken(secret);
    await this.store.saveKey(k);
    return { key: this.keySummary(k), secret };
  }

  /** The key a secret belongs to, if it is valid now. Unknown secrets leave no trace. */
  async authenticate(secret: string): Promise<KeyRecord | undefined> {
    const k = await this.store.findKeyByHash(hashToken(secret), this.clock());
    if (!k || k.revokedAt !== undefined) return undefined;
    this.keys.set(k.id, k);
    return k;
  }

  // ---- agents

  /**
   * An agent presenting a valid key. A known agent id enrolled with the same key is the same
   * agent; anything else becomes a new agent, pending unless the key auto-approves.
   */
  async register(
    key: KeyRecord,
    o: { agentId?: string; name: string; version?: string },
  ): Promise<AgentRecord> {
    const now = this.clock();
    let a = o.agentId ? this.agents.get(o.agentId) : undefined;
    if (a && a.keyId !== key.id) a = undefined;
    if (!a) {
      a = {
        id: newId('ag'),
        name: o.name,
        kind: 'remote',
        keyId: key.id,
        approved: key.autoApprove,
        createdAt: now,
        lastSeenAt: now,
      };
    }
    a.name = o.name;
    a.lastSeenAt = now;
    if (o.version) a.version = o.version;
    this.agents.set(a.id, a);
    await this.store.upsertAgent(a);
    this.live.set(a.id, { connected: true, lastHeartbeatAt: now });
    this.events?.emit(
      'agent.connected',
      a.approved ? `agent ${a.name} connected` : `agent ${a.name} connected and waits for approval`,
      { agentId: a.id, agent: a.name, approved: a.approved },
    );
    this.changed();
    return a;
  }

  async ensureLocalAgent(name: string): Promise<void> {
    const now = this.clock();
    const prev = this.agents.get('local');
    const a: AgentRecord = {
      id: 'local',
      name,
      kind: 'local',
      approved: true,
      createdAt: prev?.createdAt ?? now,
      lastSeenAt: now,
    };
    this.agents.set(a.id, a);
    this.live.set(a.id, { connected: true, lastHeartbeatAt: now });
    await this.store.upsertAgent(a);
  }

  private findAgent(ref: string): AgentRecord {
    const a = this.agents.get(ref) ?? [...this.agents.values()].find((x) => x.name === ref);
    if (!a) throw new UserError('NOT_FOUND', `no agent "${ref}" (berth agents list shows the agents)`);
    return a;
  }

  async approveAgent(ref: string): Promise<AgentSummary> {
    const a = this.findAgent(ref);
    if (!a.approved) {
      a.approved = true;
      await this.store.upsertAgent(a);
      this.events?.emit('agent.approved', `agent ${a.name} approved`, { agentId: a.id, agent: a.name });
      this.changed();
    }
    return this.agentSummary(a);
  }

  async removeAgent(ref: string): Promise<AgentSummary> {
    const a = this.findAgent(ref);
    if (a.kind === 'local')
      throw new UserError('CONFLICT', 'the local agent of berth standalone cannot be removed');
    const summary = this.agentSummary(a);
    this.agents.delete(a.id);
    this.snapshots.delete(a.id);
    this.live.delete(a.id);
    await this.store.deleteAgent(a.id);
    await this.store.deleteSnapshot(a.id);
    for (const fn of this.dropListeners) fn([a.id], 'the agent was removed');
    this.events?.emit('agent.removed', `agent ${a.name} removed`, { agentId: a.id, agent: a.name });
    this.changed();
    return summary;
  }

  async heartbeat(
    agentId: string,
    info: { version?: string; dockerVersion?: string; hostIp?: string } & Record<string, unknown>,
  ) {
    const a = this.agents.get(agentId);
    if (!a) return;
    const now = this.clock();
    const l = this.live.get(agentId) ?? { connected: true };
    l.lastHeartbeatAt = now;
    l.heartbeat = info;
    this.live.set(agentId, l);
    a.lastSeenAt = now;
    if (info.version) a.version = info.version;
    if (info.dockerVersion) a.dockerVersion = info.dockerVersion;
    if (info.hostIp) a.hostIp = info.hostIp;
    await this.store.upsertAgent(a);
  }

  disconnected(agentId: string): void {
    const l = this.live.get(agentId);
    if (!l) return;
    l.connected = false;
    l.disconnectedAt = this.clock();
    const name = this.agents.get(agentId)?.name ?? agentId;
    this.events?.emit('agent.disconnected', `agent ${name} disconnected`, { agentId, agent: name });
    this.changed();
  }

  isConnected(agentId: string): boolean {
    return this.live.get(agentId)?.connected ?? false;
  }

  /** Replaces the agent's whole state. An older generation (a late message) is ignored. */
  async replaceAgentState(s: Snapshot): Promise<boolean> {
    const prev = this.snapshots.get(s.agentId);
    if (prev && prev.generation >= s.generation) return false;
    const a = this.agents.get(s.agentId);
    if (!a) throw new Error(`unknown agent ${s.agentId}`);
    this.snapshots.set(s.agentId, s);
    if (s.hostIp && a.hostIp !== s.hostIp) {
      a.hostIp = s.hostIp;
      await this.store.upsertAgent(a);
    }
    await this.store.saveSnapshot(s);
    this.changed();
    return true;
  }

  snapshotOf(agentId: string): Snapshot | undefined {
    return this.snapshots.get(agentId);
  }

  views(): AgentView[] {
    return [...this.agents.values()].map((record) => {
      const l = this.live.get(record.id) ?? { connected: false };
      const v: AgentView = { record, connected: l.connected, snapshot: this.snapshots.get(record.id) };
      if (record.keyId) v.key = this.keys.get(record.keyId);
      if (l.lastHeartbeatAt !== undefined) v.lastHeartbeatAt = l.lastHeartbeatAt;
      const interval = l.heartbeat?.intervalMs;
      if (typeof interval === 'number') v.heartbeatMs = interval;
      if (l.disconnectedAt !== undefined) v.disconnectedAt = l.disconnectedAt;
      return v;
    });
  }

  admitted(): Admitted {
    return admitRoutes(this.views(), this.clock(), this.liveness);
  }

  agentSummary(a: AgentRecord): AgentSummary {
    const v = this.views().find((x) => x.record.id === a.id)!;
    const now = this.clock();
    const s = this.snapshots.get(a.id);
    const out: AgentSummary = {
      id: a.id,
      name: a.name,
      kind: a.kind,
      status: agentStatus(v, now, this.liveness),
      approved: a.approved,
      routes: (s?.routes.length ?? 0) + (s?.tcp?.length ?? 0),
      containers: s?.containers.length ?? 0,
    };
    if (a.keyId) {
      out.keyId = a.keyId;
      out.keyName = this.keys.get(a.keyId)?.name;
    }
    const hostIp = s?.hostIp ?? a.hostIp;
    if (hostIp) out.hostIp = hostIp;
    if (a.version) out.version = a.version;
    if (a.dockerVersion) out.dockerVersion = a.dockerVersion;
    if (v.lastHeartbeatAt) out.heartbeatAgeSeconds = Math.round((now - v.lastHeartbeatAt) / 100) / 10;
    const withheld = this.admitted().withheld.get(a.id);
    if (withheld) out.withheld = withheld;
    return out;
  }

  listAgents(): AgentSummary[] {
    return [...this.agents.values()].map((a) => this.agentSummary(a));
  }

  /** Every route with its status, plus one entry per container whose labels were rejected. */
  routeViews(state: ReconcileState | undefined): RouteView[] {
    const admitted = this.admitted();
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
      const withheld = admitted.withheld.get(agentId);
      for (const r of s.routes) {
        const key = routeKey(agentId, r.id);
        const outcome = state?.desired.outcomes.get(key);
        const sigs = sitesByKey.get(key) ?? [];
        const errors = [...(admitted.errors.get(key) ?? []), ...(outcome?.errors ?? [])];
        for (const sig of sigs) {
          const q = quarantine.get(sig);
          if (q) errors.push(`Caddy rejected this route: ${q}`);
        }
        let status: RouteView['status'];
        if (errors.length > 0) status = 'error';
        else if (withheld || r.notReady || !state || sigs.length === 0) status = 'pending';
        else status = sigs.every((sig) => Reconciler.servedEverywhere(state, sig)) ? 'applied' : 'pending';
        const view: RouteView = {
          id: r.id,
          kind: 'http',
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
        if (r.allow) view.allow = r.allow;
        const note = withheld ? `not served: ${withheld}` : r.notReady;
        if (note) view.note = note;
        views.push(view);
      }
      for (const r of s.tcp ?? []) {
        const key = routeKey(agentId, r.id);
        const outcome = state?.desired.outcomes.get(key);
        const errors = [...(admitted.errors.get(key) ?? []), ...(outcome?.errors ?? [])];
        const listener = state?.tcp.get(r.listen);
        const serving = listener?.routeKeys.includes(key) === true;
        if (serving && listener?.state === 'error') errors.push(listener.error ?? 'the listener failed');
        let status: RouteView['status'];
        if (errors.length > 0) status = 'error';
        else
          status =
            !withheld && !r.notReady && serving && listener?.state === 'listening' ? 'applied' : 'pending';
        const view: RouteView = {
          id: r.id,
          kind: 'tcp',
          agentId,
          agentName,
          hosts: [],
          path: '',
          stripPath: false,
          listen: r.listen,
          allow: r.allow,
          upstreams: [`tcp://${r.upstream.host}:${r.upstream.port}`],
          container: { id: r.containerId, name: r.containerName },
          status,
          errors,
        };
        const note = withheld ? `not served: ${withheld}` : r.notReady;
        if (note) view.note = note;
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
          kind: 'http',
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
        (a.hosts[0] ?? (a.listen ? `~${String(a.listen).padStart(5, '0')}` : '~~')).localeCompare(
          b.hosts[0] ?? (b.listen ? `~${String(b.listen).padStart(5, '0')}` : '~~'),
        ) ||
        a.path.localeCompare(b.path) ||
        a.id.localeCompare(b.id),
    );
  }
}
