// What the server knows: keys, agents, their connections and latest snapshots. Everything
// durable goes through the store; connection state lives here, in memory. With a store shared by
// several replicas (Redis), changes the others make arrive as messages and are reloaded record by
// record (with a periodic full reload as a safety net), and each agent's connection, held by one
// replica, is published as a presence record so that every replica counts it as connected.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { errorMessage, UserError } from '../errors.js';
import { siteSignature } from '../ingress/caddy/target.js';
import type { RouteView, Snapshot } from '../model/types.js';
import { nextClaims, unitsOf } from '../reconcile/claims.js';
import { routeKey } from '../reconcile/desired.js';
import {
  type Admitted,
  type AgentStatus,
  type AgentView,
  admitRoutes,
  agentStatus,
  DEFAULT_MAX_ROUTES_PER_AGENT,
  type LivenessOptions,
} from '../reconcile/policy.js';
import { Reconciler, type ReconcileState } from '../reconcile/reconciler.js';
import type { AgentRecord, KeyRecord, Presence, Store, StoreChange } from '../store/store.js';
import { hashToken } from './auth.js';
import type { EventBus } from './events.js';

interface Live {
  /** A socket to this replica. */
  connected: boolean;
  lastHeartbeatAt?: number;
  disconnectedAt?: number;
  heartbeat?: Record<string, unknown>;
  /** When the agent connected to this replica. */
  connectedAt?: number;
  /** When this replica's presence record for the connection was last written. */
  presenceAt?: number;
  /** Another replica holds the agent's connection (shared store only). */
  remote?: Presence;
}

/** How often presence is re-read (a killed replica's agents go offline within this plus its TTL). */
const PRESENCE_POLL_MS = 1_000;
/** The safety net under change messages: everything is re-read this often. */
const FULL_RELOAD_MS = 30_000;

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
  /** With several replicas: the one holding the agent's connection. */
  replica?: string;
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
  upstreams?: string[];
  maxRoutes: number;
  maxPending: number;
  agents: number;
}

const newId = (prefix: string) => `${prefix}_${randomBytes(6).toString('hex')}`;

/** Agents of one key waiting for approval at once, unless the key says otherwise. */
export const DEFAULT_MAX_PENDING = 20;
/** New agents one key may enrol per minute: a leaked key cannot flood the registry. */
export const ENROLMENTS_PER_MINUTE = 60;
/** How long an admission result is reused when nothing changed. */
const ADMITTED_TTL_MS = 250;

export class Registry {
  private readonly agents = new Map<string, AgentRecord>();
  private readonly keys = new Map<string, KeyRecord>();
  private readonly snapshots = new Map<string, Snapshot>();
  private readonly live = new Map<string, Live>();
  private changeListeners: (() => void)[] = [];
  /** Where fleet events go (agents enrolling, connecting, approved, removed; keys). */
  events?: EventBus;
  private dropListeners: ((agentIds: string[], reason: string) => void)[] = [];
  /** Where problems following a shared store go. */
  logger?: Logger;
  private timers: NodeJS.Timeout[] = [];
  private unwatch?: () => void;
  /** Remote changes are applied one at a time, in the order they were published. */
  private remoteQueue: Promise<void> = Promise.resolve();
  private presenceSync?: Promise<void>;
  private reloading?: Promise<void>;
  private readonly pending = new Set<Promise<unknown>>();
  /** When each record was last written here: a full reload must not undo what it did not see. */
  private readonly touched = new Map<string, number>();
  /** Bumped on every change: what caches of derived views are keyed on. */
  private version = 0;
  private admittedCache?: { version: number; at: number; value: Admitted };
  /** Recent enrolment times per key, for ENROLMENTS_PER_MINUTE. */
  private readonly enrolments = new Map<string, number[]>();
  private closed = false;

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
    for (const s of await this.store.loadSnapshots()) {
      if (!this.agents.has(s.agentId)) continue;
      // A generation stored before generations were bounded (1e308) would freeze the agent.
      if (!Number.isSafeInteger(s.generation)) s.generation = 0;
      this.snapshots.set(s.agentId, s);
    }
  }

  /**
   * With a shared store: applies what other replicas change, keeps this replica's presence
   * records true, and reloads everything now and then. Nothing happens for an embedded store.
   */
  follow(): void {
    const shared = this.store.shared;
    if (!shared) return;
    this.unwatch = this.store.watch((c) => {
      this.remoteQueue = this.remoteQueue
        .then(() => this.applyRemote(c))
        .catch((err) =>
          this.logger?.warn({ err: errorMessage(err), change: c.kind }, 'cannot apply a remote change'),
        );
    });
    this.timers.push(
      setInterval(() => void this.syncPresence(), PRESENCE_POLL_MS),
      setInterval(() => void this.reloadAll(), FULL_RELOAD_MS),
    );
    void this.syncPresence();
  }

  /** Stops following and forgets this replica's presence records (its agents move elsewhere). */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    this.unwatch?.();
    await Promise.allSettled([...this.pending]);
    const shared = this.store.shared;
    if (!shared) return;
    const mine = [...this.live].filter(([, l]) => l.connected || l.presenceAt !== undefined);
    await Promise.allSettled(mine.map(([id]) => shared.clearPresence(id)));
  }

  /** Runs a store write in the background, logged if it fails, awaited by close(). */
  private background(what: string, p: Promise<unknown>): void {
    const tracked = p.catch((err) => this.logger?.warn({ err: errorMessage(err) }, `cannot ${what}`));
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  onChange(fn: () => void): void {
    this.changeListeners.push(fn);
  }

  /** Connections to close: revoked keys, removed agents. */
  onDrop(fn: (agentIds: string[], reason: string) => void): void {
    this.dropListeners.push(fn);
  }

  private changed(): void {
    this.version++;
    for (const fn of this.changeListeners) fn();
  }

  private touch(...records: string[]): void {
    if (!this.store.shared) return;
    const now = this.clock();
    for (const r of records) this.touched.set(r, now);
  }

  private async saveKey(k: KeyRecord): Promise<void> {
    try {
      await this.store.saveKey(k);
    } finally {
      this.touch(`key:${k.id}`);
    }
  }

  private async saveAgent(a: AgentRecord): Promise<void> {
    try {
      await this.store.upsertAgent(a);
    } finally {
      this.touch(`agent:${a.id}`);
    }
  }

  private async saveSnapshot(s: Snapshot): Promise<void> {
    try {
      await this.store.saveSnapshot(s);
    } finally {
      this.touch(`snapshot:${s.agentId}`);
    }
  }

  // ---- what other replicas change (shared store only)

  private async applyRemote(c: StoreChange): Promise<void> {
    switch (c.kind) {
      case 'agent': {
        if (this.remoteAgent(c.id, await this.store.shared?.getAgent(c.id))) this.changed();
        return;
      }
      case 'key': {
        if (this.remoteKey(c.id, await this.store.shared?.getKey(c.id))) this.changed();
        return;
      }
      case 'snapshot': {
        const s = await this.store.shared?.getSnapshot(c.agentId);
        if (s && !this.agents.has(s.agentId)) await this.fetchAgent(s.agentId);
        if (this.remoteSnapshot(c.agentId, s)) this.changed();
        return;
      }
      case 'presence': {
        const l = this.live.get(c.agentId);
        if (!l) return;
        // Another replica says it holds a connection this replica also has: the presence
        // record decides which is newer.
        if (l.connected && c.presence) return this.syncPresence();
        if (this.setRemote(c.agentId, l, c.presence)) this.changed();
        return;
      }
      case 'reload':
        return this.reloadAll();
      default:
        return;
    }
  }

  /** An agent record another replica wrote (or deleted): true when routing may change. */
  private remoteAgent(id: string, rec: AgentRecord | undefined): boolean {
    const prev = this.agents.get(id);
    if (!rec) {
      if (!prev || prev.kind === 'local') return false;
      this.agents.delete(id);
      this.snapshots.delete(id);
      this.live.delete(id);
      this.drop([id], 'the agent was removed');
      this.events?.emit('agent.removed', `agent ${prev.name} removed`, { agentId: id, agent: prev.name });
      return true;
    }
    // This replica's own copy stays authoritative for what the connection reports.
    if (this.live.get(id)?.connected && prev) {
      rec = { ...rec, lastSeenAt: prev.lastSeenAt };
      if (prev.version) rec.version = prev.version;
      if (prev.dockerVersion) rec.dockerVersion = prev.dockerVersion;
    }
    this.agents.set(id, rec);
    if (!this.live.has(id)) this.live.set(id, { connected: false, disconnectedAt: this.clock() });
    if (prev && !prev.approved && rec.approved) {
      this.events?.emit('agent.approved', `agent ${rec.name} approved`, { agentId: id, agent: rec.name });
    }
    return !prev || prev.approved !== rec.approved || prev.keyId !== rec.keyId || prev.name !== rec.name;
  }

  /** A key another replica wrote: a revocation closes this replica's connections of that key. */
  private remoteKey(id: string, rec: KeyRecord | undefined): boolean {
    const prev = this.keys.get(id);
    if (!rec) return this.keys.delete(id);
    this.keys.set(id, rec);
    if (!prev) this.events?.emit('key.created', `key ${rec.name} created`, { keyId: id, key: rec.name });
    if (rec.revokedAt !== undefined && prev?.revokedAt === undefined) {
      const ids = this.agentsOfKey(id);
      this.drop(ids, `key ${rec.name} was revoked`);
      this.events?.emit('key.revoked', `key ${rec.name} revoked`, {
        keyId: id,
        key: rec.name,
        agents: ids.length,
      });
    }
    return (
      !prev ||
      prev.revokedAt !== rec.revokedAt ||
      prev.domains.join() !== rec.domains.join() ||
      prev.autoApprove !== rec.autoApprove ||
      (prev.upstreams ?? []).join() !== (rec.upstreams ?? []).join() ||
      prev.maxRoutes !== rec.maxRoutes
    );
  }

  private remoteSnapshot(agentId: string, s: Snapshot | undefined): boolean {
    const prev = this.snapshots.get(agentId);
    if (!s) return this.snapshots.delete(agentId);
    if (!this.agents.has(agentId) || (prev && prev.generation >= s.generation)) return false;
    this.snapshots.set(agentId, s);
    return true;
  }

  /** An agent this replica has not heard of yet (another replica just enrolled it). */
  private async fetchAgent(id: string): Promise<AgentRecord | undefined> {
    const rec = await this.store.shared?.getAgent(id);
    if (rec && !this.agents.has(id)) this.remoteAgent(id, rec);
    return this.agents.get(id);
  }

  /** Records that another replica holds (or no longer holds) the connection; true on a change. */
  private setRemote(agentId: string, l: Live, p: Presence | undefined): boolean {
    const mine = p?.replica === this.store.shared?.replicaId;
    const before = l.connected || l.remote !== undefined;
    const was = l.remote?.replica;
    l.remote = p && !mine ? p : undefined;
    const after = l.connected || l.remote !== undefined;
    const name = this.agents.get(agentId)?.name ?? agentId;
    if (before && !after) {
      l.disconnectedAt = this.clock();
      this.events?.emit('agent.disconnected', `agent ${name} disconnected`, { agentId, agent: name });
    } else if (l.remote && l.remote.replica !== was && !l.connected) {
      this.events?.emit('agent.connected', `agent ${name} connected to replica ${l.remote.replica}`, {
        agentId,
        agent: name,
        replica: l.remote.replica,
      });
    }
    return before !== after;
  }

  /**
   * Makes presence true both ways: which agents other replicas hold (a killed replica's records
   * stop counting when its own liveness record expires), this replica's records match its
   * sockets, and a connection another replica took over more recently is closed here.
   */
  private syncPresence(): Promise<void> {
    this.presenceSync ??= this.doSyncPresence().finally(() => {
      this.presenceSync = undefined;
    });
    return this.presenceSync;
  }

  private async doSyncPresence(): Promise<void> {
    const shared = this.store.shared;
    if (!shared) return;
    const startedAt = this.clock();
    let all: Map<string, Presence>;
    try {
      all = await shared.listPresence();
    } catch (err) {
      this.logger?.debug({ err: errorMessage(err) }, 'cannot read presence');
      return;
    }
    let changed = false;
    const elsewhere: string[] = [];
    for (const [id, l] of this.live) {
      if (this.agents.get(id)?.kind !== 'remote') continue;
      const p = all.get(id);
      // Only records read after this replica's own last write say anything about its sockets.
      const settled = l.presenceAt !== undefined && l.presenceAt < startedAt;
      if (l.connected && !p && (settled || l.presenceAt === undefined)) {
        // Lost (written while Redis was away, or cleared by mistake): write it again.
        const since = l.connectedAt ?? startedAt;
        const restore = this.writePresence(id, l, { since, lastHeartbeatAt: l.lastHeartbeatAt });
        this.background('restore a presence record', restore);
      } else if (l.connected && settled && p && p.replica !== shared.replicaId) elsewhere.push(id);
      if (p?.replica === shared.replicaId && !l.connected) {
        this.background('clear a stale presence record', shared.clearPresence(id));
      }
      if (this.setRemote(id, l, p)) changed = true;
    }
    this.drop(elsewhere, 'the agent connected to another replica');
    if (changed) this.changed();
  }

  /** Re-reads everything (after a reconnect, and periodically): messages may have been missed. */
  private reloadAll(): Promise<void> {
    this.reloading ??= this.doReloadAll()
      .catch((err) => this.logger?.debug({ err: errorMessage(err) }, 'cannot reload from the store'))
      .finally(() => {
        this.reloading = undefined;
      });
    return this.reloading;
  }

  private async doReloadAll(): Promise<void> {
    const shared = this.store.shared;
    if (!shared) return;
    const startedAt = this.clock();
    // Written here since this reload began: what was read may predate it.
    const fresh = (record: string) => (this.touched.get(record) ?? -1) >= startedAt;
    let changed = false;
    const keys = new Map((await this.store.listKeys()).map((k) => [k.id, k]));
    for (const id of new Set([...keys.keys(), ...this.keys.keys()])) {
      if (!fresh(`key:${id}`) && this.remoteKey(id, keys.get(id))) changed = true;
    }
    const agents = new Map((await this.store.listAgents()).map((a) => [a.id, a]));
    for (const id of new Set([...agents.keys(), ...this.agents.keys()])) {
      if (!fresh(`agent:${id}`) && this.remoteAgent(id, agents.get(id))) changed = true;
    }
    const generations = await shared.snapshotGenerations();
    for (const [id, gen] of generations) {
      if ((this.snapshots.get(id)?.generation ?? -1) >= gen) continue;
      const s = await shared.getSnapshot(id);
      if (!fresh(`snapshot:${id}`) && this.remoteSnapshot(id, s)) changed = true;
    }
    for (const id of [...this.snapshots.keys()]) {
      if (!generations.has(id) && !fresh(`snapshot:${id}`) && this.remoteSnapshot(id, undefined))
        changed = true;
    }
    if (changed) this.changed();
    await this.syncPresence();
  }

  private drop(ids: string[], reason: string): void {
    if (ids.length > 0) for (const fn of this.dropListeners) fn(ids, reason);
  }

  // ---- keys

  async createKey(o: {
    name: string;
    domains: string[];
    autoApprove: boolean;
    execAllow?: string[];
    upstreams?: string[];
    maxRoutes?: number;
    maxPending?: number;
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
    if (o.upstreams?.length) key.upstreams = o.upstreams;
    if (o.maxRoutes !== undefined) key.maxRoutes = o.maxRoutes;
    if (o.maxPending !== undefined) key.maxPending = o.maxPending;
    await this.saveKey(key);
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
      maxRoutes: k.maxRoutes ?? DEFAULT_MAX_ROUTES_PER_AGENT,
      maxPending: k.maxPending ?? DEFAULT_MAX_PENDING,
      agents: [...this.agents.values()].filter((a) => a.keyId === k.id).length,
    };
    if (k.execAllow) s.execAllow = k.execAllow;
    if (k.upstreams) s.upstreams = k.upstreams;
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

  /** Changes what a key allows; its agents' routes are re-admitted at once. */
  async updateKey(
    ref: string,
    o: {
      domains?: string[];
      upstreams?: string[];
      maxRoutes?: number;
      maxPending?: number;
      autoApprove?: boolean;
    },
  ): Promise<KeySummary> {
    const k = this.findKey(ref);
    if (k.revokedAt !== undefined) throw new UserError('CONFLICT', `key ${k.name} is revoked`);
    if (o.domains) k.domains = o.domains;
    if (o.upstreams) {
      if (o.upstreams.length > 0) k.upstreams = o.upstreams;
      else delete k.upstreams;
    }
    if (o.maxRoutes !== undefined) k.maxRoutes = o.maxRoutes;
    if (o.maxPending !== undefined) k.maxPending = o.maxPending;
    if (o.autoApprove !== undefined) k.autoApprove = o.autoApprove;
    await this.saveKey(k);
    this.events?.emit('key.updated', `key ${k.name} updated`, { keyId: k.id, key: k.name });
    this.changed();
    return this.keySummary(k);
  }

  async revokeKey(ref: string): Promise<KeySummary> {
    const k = this.findKey(ref);
    if (k.revokedAt === undefined) {
      k.revokedAt = this.clock();
      await this.saveKey(k);
      const ids = this.agentsOfKey(k.id);
      this.drop(ids, `key ${k.name} was revoked`);
      this.events?.emit('key.revoked', `key ${k.name} revoked`, {
        keyId: k.id,
        key: k.name,
        agents: ids.length,
      });
      this.changed();
    }
    return this.keySummary(k);
  }

  private agentsOfKey(keyId: string): string[] {
    return [...this.agents.values()].filter((a) => a.keyId === keyId).map((a) => a.id);
  }

  async rotateKey(ref: string, overlapMs: number): Promise<{ key: KeySummary; secret: string }> {
    const k = this.findKey(ref);
    if (k.revokedAt !== undefined)
      throw new UserError('CONFLICT', `key ${k.name} is revoked; create a new one`);
    const secret = `berth_agent_${randomBytes(24).toString('base64url')}`;
    k.previousHash = k.hash;
    k.previousExpiresAt = this.clock() + overlapMs;
    k.hash = hashToken(secret);
    await this.saveKey(k);
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
    o: { agentId?: string; name: string; version?: string; seenFrom?: string },
  ): Promise<AgentRecord> {
    const now = this.clock();
    let a = o.agentId ? (this.agents.get(o.agentId) ?? (await this.fetchAgent(o.agentId))) : undefined;
    if (a && a.keyId !== key.id) a = undefined;
    if (!a) {
      this.checkEnrolment(key, now);
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
    if (o.seenFrom) a.seenFrom = o.seenFrom;
    this.agents.set(a.id, a);
    await this.saveAgent(a);
    const live: Live = { connected: true, lastHeartbeatAt: now, connectedAt: now };
    this.live.set(a.id, live);
    this.background(
      'write a presence record',
      this.writePresence(a.id, live, { since: now, lastHeartbeatAt: now, version: a.version }),
    );
    this.events?.emit(
      'agent.connected',
      a.approved ? `agent ${a.name} connected` : `agent ${a.name} connected and waits for approval`,
      { agentId: a.id, agent: a.name, approved: a.approved },
    );
    this.changed();
    return a;
  }

  /** A new agent for this key: refused when too many wait for approval or arrive at once. */
  private checkEnrolment(key: KeyRecord, now: number): void {
    if (!key.autoApprove) {
      const max = key.maxPending ?? DEFAULT_MAX_PENDING;
      const pending = [...this.agents.values()].filter((x) => x.keyId === key.id && !x.approved).length;
      if (pending >= max) {
        throw new UserError(
          'RATE_LIMITED',
          `key ${key.name} already has ${pending} agents waiting for approval (at most ${max}); approve or remove them (berth agents list)`,
        );
      }
    }
    const recent = (this.enrolments.get(key.id) ?? []).filter((t) => now - t < 60_000);
    if (recent.length >= ENROLMENTS_PER_MINUTE) {
      throw new UserError(
        'RATE_LIMITED',
        `key ${key.name} enrolled ${recent.length} new agents in the last minute (at most ${ENROLMENTS_PER_MINUTE}); try again later`,
      );
    }
    recent.push(now);
    this.enrolments.set(key.id, recent);
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
    await this.saveAgent(a);
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
      await this.saveAgent(a);
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
    try {
      await this.store.deleteAgent(a.id);
      await this.store.deleteSnapshot(a.id);
    } finally {
      this.touch(`agent:${a.id}`, `snapshot:${a.id}`);
    }
    this.drop([a.id], 'the agent was removed');
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
    const before = `${a.version} ${a.dockerVersion} ${a.hostIp}`;
    if (info.version) a.version = info.version;
    if (info.dockerVersion) a.dockerVersion = info.dockerVersion;
    if (info.hostIp) a.hostIp = info.hostIp;
    if (!this.store.shared) {
      await this.saveAgent(a);
      return;
    }
    // Shared: heartbeats refresh the presence record; the agent record is rewritten only when
    // something in it changed, so a heartbeat cannot undo an approval made on another replica.
    const interval = info.intervalMs;
    await this.writePresence(agentId, l, {
      since: l.connectedAt ?? now,
      lastHeartbeatAt: now,
      heartbeatMs: typeof interval === 'number' ? interval : undefined,
      version: a.version,
      dockerVersion: a.dockerVersion,
    });
    if (before !== `${a.version} ${a.dockerVersion} ${a.hostIp}`) await this.saveAgent(a);
  }

  private async writePresence(agentId: string, l: Live, p: Omit<Presence, 'replica'>): Promise<void> {
    const shared = this.store.shared;
    if (!shared) return;
    const clean = Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)) as typeof p;
    await shared.setPresence(agentId, clean);
    l.presenceAt = this.clock();
  }

  disconnected(agentId: string): void {
    const l = this.live.get(agentId);
    if (!l) return;
    l.connected = false;
    l.disconnectedAt = this.clock();
    if (l.presenceAt !== undefined && this.store.shared && !this.closed) {
      l.presenceAt = undefined;
      this.background('clear the presence record', this.store.shared.clearPresence(agentId));
    }
    const name = this.agents.get(agentId)?.name ?? agentId;
    this.events?.emit('agent.disconnected', `agent ${name} disconnected`, { agentId, agent: name });
    this.changed();
  }

  /** Whether the agent is connected to this replica or, with a shared store, to another one. */
  isConnected(agentId: string): boolean {
    const l = this.live.get(agentId);
    return l !== undefined && (l.connected || l.remote !== undefined);
  }

  /** Replaces the agent's whole state. An older generation (a late message) is ignored. */
  async replaceAgentState(incoming: Snapshot): Promise<boolean> {
    const prev = this.snapshots.get(incoming.agentId);
    if (prev && prev.generation >= incoming.generation) return false;
    const a = this.agents.get(incoming.agentId);
    if (!a) throw new Error(`unknown agent ${incoming.agentId}`);
    // The order of claims is the server's: when it first saw each, whatever the agent says.
    const before =
      prev?.claims ??
      // Stored before the server kept claim times: those claims count as older than any new one.
      (prev
        ? Object.fromEntries([...unitsOf(prev.routes, prev.tcp)].map((u) => [u, { since: 0 }]))
        : undefined);
    const claims = nextClaims(
      before,
      unitsOf(incoming.routes, incoming.tcp),
      this.clock(),
      this.liveness.offlineGraceMs,
    );
    const s: Snapshot = { ...incoming, claims };
    this.snapshots.set(s.agentId, s);
    try {
      if (s.hostIp && a.hostIp !== s.hostIp) {
        a.hostIp = s.hostIp;
        await this.saveAgent(a);
      }
      await this.saveSnapshot(s);
    } finally {
      // Served from memory even when the store is away (the caller logs the failure).
      this.changed();
    }
    return true;
  }

  snapshotOf(agentId: string): Snapshot | undefined {
    return this.snapshots.get(agentId);
  }

  views(): AgentView[] {
    return [...this.agents.values()].map((record) => this.view(record));
  }

  private view(record: AgentRecord): AgentView {
    {
      const l = this.live.get(record.id) ?? { connected: false };
      const connected = l.connected || l.remote !== undefined;
      const v: AgentView = { record, connected, snapshot: this.snapshots.get(record.id) };
      if (record.keyId) v.key = this.keys.get(record.keyId);
      const lastHeartbeatAt = l.connected
        ? l.lastHeartbeatAt
        : (l.remote?.lastHeartbeatAt ?? l.lastHeartbeatAt);
      if (lastHeartbeatAt !== undefined) v.lastHeartbeatAt = lastHeartbeatAt;
      const interval = l.connected
        ? l.heartbeat?.intervalMs
        : (l.remote?.heartbeatMs ?? l.heartbeat?.intervalMs);
      if (typeof interval === 'number') v.heartbeatMs = interval;
      if (l.disconnectedAt !== undefined) v.disconnectedAt = l.disconnectedAt;
      return v;
    }
  }

  /**
   * What may serve now. Many readers ask (every pass, listings, status); it is computed again only
   * after a change, or when it is older than ADMITTED_TTL_MS (time alone moves agents to stale or
   * past their grace).
   */
  admitted(): Admitted {
    const now = this.clock();
    const c = this.admittedCache;
    if (c && c.version === this.version && now - c.at < ADMITTED_TTL_MS) return c.value;
    const value = admitRoutes(this.views(), now, this.liveness);
    this.admittedCache = { version: this.version, at: now, value };
    return value;
  }

  /** Name and status of one agent, without looking at any other (for logs). */
  statusOf(agentId: string): { name: string; status: AgentSummary['status'] } | undefined {
    const a = this.agents.get(agentId);
    return a && { name: a.name, status: agentStatus(this.view(a), this.clock(), this.liveness) };
  }

  /** `admitted` is the same for every agent: a listing computes it once, not once per agent. */
  agentSummary(a: AgentRecord, admitted: Admitted = this.admitted()): AgentSummary {
    const v = this.view(a);
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
    const remote = this.live.get(a.id)?.remote;
    const version = a.version ?? remote?.version;
    const dockerVersion = a.dockerVersion ?? remote?.dockerVersion;
    if (version) out.version = version;
    if (dockerVersion) out.dockerVersion = dockerVersion;
    const shared = this.store.shared;
    if (shared && a.kind === 'remote') {
      const replica = this.live.get(a.id)?.connected ? shared.replicaId : remote?.replica;
      if (replica) out.replica = replica;
    }
    if (v.lastHeartbeatAt) out.heartbeatAgeSeconds = Math.round((now - v.lastHeartbeatAt) / 100) / 10;
    const withheld = admitted.withheld.get(a.id);
    if (withheld) out.withheld = withheld;
    return out;
  }

  listAgents(): AgentSummary[] {
    const admitted = this.admitted();
    return [...this.agents.values()].map((a) => this.agentSummary(a, admitted));
  }

  /** Every route with its status, plus one entry per container whose labels were rejected. */
  routeViews(state: ReconcileState | undefined, o: { onlyErrors?: boolean } = {}): RouteView[] {
    const admitted = this.admitted();
    const views: RouteView[] = [];
    const sitesByKey = new Map<string, string[]>();
    const quarantine = new Map<string, string>();
    if (state) {
      for (const t of state.targets) for (const [sig, msg] of t.quarantined) quarantine.set(sig, msg);
      // Which sites each route is in: every route's status needs it; errors only when Caddy quarantined some.
      if (!o.onlyErrors || quarantine.size > 0) {
        for (const site of state.desired.sites) {
          const sig = siteSignature(site);
          for (const k of site.routeKeys) sitesByKey.set(k, [...(sitesByKey.get(k) ?? []), sig]);
        }
      }
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
        if (o.onlyErrors && errors.length === 0) continue;
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
        if (o.onlyErrors && errors.length === 0) continue;
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
