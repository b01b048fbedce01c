// What the server knows: keys, agents, their latest snapshots and who is connected. Everything
// durable goes through the store; connection state lives here, in memory. Read views (summaries,
// route statuses) are pure functions in views.ts; following other replicas of a shared store is
// replicas.ts, which uses the apply* methods here and listens to onWrite and onLive.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { errorMessage, UserError } from '../errors.js';
import type { AgentSummary, KeySummary } from '../model/api.js';
import { inSlices } from '../model/slices.js';
import type { Snapshot } from '../model/types.js';
import { claimSteps, unitsOf } from '../reconcile/claims.js';
import {
  type Admitted,
  type AgentAdmission,
  type AgentView,
  admissionSteps,
  admitAgent,
  agentStatus,
  combine,
  type LivenessOptions,
  type SwarmContext,
  swarmContext,
  withheldBecause,
} from '../reconcile/policy.js';
import { nextSwarm } from '../reconcile/swarm.js';
import { stringifyInSlices } from '../store/json-slices.js';
import type { AgentRecord, KeyRecord, Presence, Store } from '../store/store.js';
import { hashToken } from './auth.js';
import type { EventBus } from './events.js';
import { agentSummary, DEFAULT_MAX_PENDING, keySummary } from './views.js';

export type { AgentSummary, KeySummary };
export { DEFAULT_MAX_PENDING };

/** An agent's connection, as this replica knows it. */
export interface Live {
  /** A socket (or the in-process link) to this replica. */
  connected: boolean;
  lastHeartbeatAt?: number;
  disconnectedAt?: number;
  heartbeat?: Record<string, unknown>;
  /** When the agent connected to this replica. */
  connectedAt?: number;
  /** Another replica holds the agent's connection (shared store only). */
  remote?: Presence;
}

/** What happened to a connection this replica holds, for whoever publishes presence. */
export type LiveChange =
  | ({ kind: 'connected' | 'heartbeat' } & {
      since: number;
      lastHeartbeatAt?: number;
      heartbeatMs?: number;
      version?: string;
      dockerVersion?: string;
    })
  | { kind: 'disconnected' };

const newId = (prefix: string) => `${prefix}_${randomBytes(6).toString('hex')}`;

/** New agents one key may enrol per minute: a leaked key cannot flood the registry. */
export const ENROLMENTS_PER_MINUTE = 60;
/** How long an admission result is reused when nothing changed. */
const ADMITTED_TTL_MS = 250;

/** A number per snapshot object: its identity, in a string of admission inputs. */
const serials = new WeakMap<Snapshot, number>();
let lastSerial = 0;
function serialOf(s: Snapshot): number {
  let n = serials.get(s);
  if (n === undefined) {
    n = ++lastSerial;
    serials.set(s, n);
  }
  return n;
}
/**
 * A snapshot's routes name their container by the id and name its container list has, each a
 * string of its own as parsed: the routes are given the list's, so one copy is kept (about 100
 * bytes a route, 5 MiB at 50k routes). Only equal strings are swapped: nothing changes but memory.
 */
function shareContainerStrings(s: Snapshot): void {
  if (s.containers.length === 0) return;
  const byId = new Map<string, { id: string; name: string }>();
  for (const c of s.containers) byId.set(c.id, c);
  const share = (r: { containerId: string; containerName: string }) => {
    const c = byId.get(r.containerId);
    if (!c) return;
    r.containerId = c.id;
    if (r.containerName === c.name) r.containerName = c.name;
  };
  for (const r of s.routes) share(r);
  for (const r of s.tcp ?? []) share(r);
}

/**
 * Snapshots are written behind, at most once per agent per this, the latest state each time: an
 * agent sending its whole state back to back (8 MiB each, at worst) costs one write of it, not
 * one per message, and the write never runs inside the handling of a message. Routing reads
 * memory, so nothing waits for the store; a restart finds at most this much less.
 */
export const SNAPSHOT_SAVE_EVERY_MS = 500;
/** …and after a write that took long (a snapshot of 8 MiB), at most this share of the time. */
const SNAPSHOT_SAVE_SHARE = 0.1;
/** How stale a stored last-seen time may be (the record is written then with no other change). */
export const LAST_SEEN_WRITE_MS = 60_000;

export interface RegistryOptions {
  store: Store;
  liveness: LivenessOptions;
  /** Where fleet events go (agents enrolling, connecting, approved, removed; keys). */
  events?: EventBus;
  logger?: Logger;
  clock?: () => number;
}

export class Registry {
  private readonly agents = new Map<string, AgentRecord>();
  private readonly keys = new Map<string, KeyRecord>();
  private readonly snapshots = new Map<string, Snapshot>();
  private readonly live = new Map<string, Live>();
  private readonly changeListeners: (() => void)[] = [];
  private readonly dropListeners: ((agentIds: string[], reason: string) => void)[] = [];
  private readonly writeListeners: ((record: string) => void)[] = [];
  private readonly liveListeners: ((agentId: string, change: LiveChange) => void)[] = [];
  private readonly store: Store;
  private readonly clock: () => number;
  readonly liveness: LivenessOptions;
  /** Bumped on every change: what caches of derived views are keyed on. */
  private version = 0;
  private admittedCache?: { version: number; at: number; value: Admitted };
  /**
   * Each agent's last admission and what it was computed from: a change to one agent (or a
   * heartbeat) re-admits that agent alone, not every route of every agent.
   */
  private readonly admissions = new Map<
    string,
    { inputs: string; snapshot?: Snapshot; value: AgentAdmission }
  >();
  /** Snapshots not yet written, with their timers, and when each agent's was last written. */
  private readonly unsaved = new Map<string, { snapshot: Snapshot; timer: NodeJS.Timeout }>();
  private readonly savedAt = new Map<string, { at: number; ms: number }>();
  private readonly writing = new Set<Promise<void>>();
  /** Per agent, bumped by each snapshot write begun and by forgetting the agent: a write made stale meanwhile is skipped. */
  private readonly writeSeq = new Map<string, number>();
  /** Per agent, its store write under way. */
  private readonly storeWrites = new Map<string, Promise<void>>();
  /** When each agent's record was last written by a heartbeat. */
  private readonly seenWritten = new Map<string, number>();
  /** Recent enrolment times per key, for ENROLMENTS_PER_MINUTE. */
  private readonly enrolments = new Map<string, number[]>();

  constructor(private readonly o: RegistryOptions) {
    this.store = o.store;
    this.liveness = o.liveness;
    this.clock = o.clock ?? Date.now;
  }

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

  // ---- listeners

  onChange(fn: () => void): void {
    this.changeListeners.push(fn);
  }

  /** Connections to close: revoked keys, removed agents. */
  onDrop(fn: (agentIds: string[], reason: string) => void): void {
    this.dropListeners.push(fn);
  }

  /** Every record written to the store from here (`key:<id>`, `agent:<id>`, `snapshot:<id>`). */
  onWrite(fn: (record: string) => void): void {
    this.writeListeners.push(fn);
  }

  /** Connections this replica holds: connected, heartbeat, disconnected. */
  onLive(fn: (agentId: string, change: LiveChange) => void): void {
    this.liveListeners.push(fn);
  }

  /** Something routing depends on changed (here, or applied from another replica). */
  notifyChanged(): void {
    this.version++;
    for (const fn of this.changeListeners) fn();
  }

  /** Closes these agents' connections (revoked, removed, or held by another replica now). */
  dropConnections(ids: string[], reason: string): void {
    if (ids.length > 0) for (const fn of this.dropListeners) fn(ids, reason);
  }

  private wrote(...records: string[]): void {
    for (const r of records) for (const fn of this.writeListeners) fn(r);
  }

  private liveChanged(agentId: string, change: LiveChange): void {
    for (const fn of this.liveListeners) {
      try {
        fn(agentId, change);
      } catch (err) {
        this.o.logger?.warn({ err: errorMessage(err) }, 'a connection listener failed');
      }
    }
  }

  private async saveKey(k: KeyRecord): Promise<void> {
    try {
      await this.store.saveKey(k);
    } finally {
      this.wrote(`key:${k.id}`);
    }
  }

  private async saveAgent(a: AgentRecord): Promise<void> {
    try {
      await this.store.upsertAgent(a);
    } finally {
      this.wrote(`agent:${a.id}`);
    }
  }

  /** Writes the agent's snapshot soon (SNAPSHOT_SAVE_EVERY_MS); a later one replaces it. */
  private saveSnapshot(s: Snapshot): void {
    const pending = this.unsaved.get(s.agentId);
    if (pending) {
      pending.snapshot = s;
      return;
    }
    const last = this.savedAt.get(s.agentId);
    const every = Math.max(SNAPSHOT_SAVE_EVERY_MS, (last?.ms ?? 0) / SNAPSHOT_SAVE_SHARE);
    const wait = Math.max(0, every - (Date.now() - (last?.at ?? 0)));
    // From a timer: a failure must be logged here, since nobody awaits it (unhandled, it would end the server).
    const timer = setTimeout(
      () =>
        this.track(
          this.writeSnapshot(s.agentId).catch((err: unknown) =>
            this.o.logger?.error(
              { agentId: s.agentId, err: errorMessage(err) },
              'could not store the agent’s snapshot',
            ),
          ),
        ),
      wait,
    );
    this.unsaved.set(s.agentId, { snapshot: s, timer });
  }

  private track(p: Promise<void>): void {
    this.writing.add(p);
    void p.finally(() => this.writing.delete(p));
  }

  private async writeSnapshot(agentId: string): Promise<void> {
    const pending = this.unsaved.get(agentId);
    if (!pending) return;
    clearTimeout(pending.timer);
    this.unsaved.delete(agentId);
    const seq = (this.writeSeq.get(agentId) ?? 0) + 1;
    this.writeSeq.set(agentId, seq);
    // Made in slices (a 25k-route snapshot's text held the event loop for 0.2 s at once).
    const body = await stringifyInSlices(pending.snapshot as unknown as Record<string, unknown>);
    // One store write per agent at a time (a store may compress first), in the order begun.
    await this.storeWrites.get(agentId);
    // A newer snapshot's write began meanwhile, or the agent was forgotten: this one is stale.
    if (this.writeSeq.get(agentId) !== seq) return;
    const at = Date.now();
    const write = this.store.saveSnapshot(pending.snapshot, body);
    this.storeWrites.set(
      agentId,
      write.then(
        () => undefined,
        () => undefined,
      ),
    );
    try {
      await write;
    } catch (err) {
      // Still served from memory; the agent's next change (or a flush) writes it again.
      this.o.logger?.warn({ agentId, err: errorMessage(err) }, 'could not store the agent’s snapshot');
    } finally {
      // No newer write began: none waits for this one.
      if (this.writeSeq.get(agentId) === seq) this.storeWrites.delete(agentId);
      this.savedAt.set(agentId, { at, ms: Date.now() - at });
      this.wrote(`snapshot:${agentId}`);
    }
  }

  /** Writes every snapshot not yet written (before the store closes). */
  async flush(): Promise<void> {
    for (const id of [...this.unsaved.keys()]) this.track(this.writeSnapshot(id));
    await Promise.all([...this.writing]);
  }

  /** Forgets an agent's unwritten snapshot (the agent is gone). */
  private dropUnsaved(agentId: string): void {
    clearTimeout(this.unsaved.get(agentId)?.timer);
    this.unsaved.delete(agentId);
    this.savedAt.delete(agentId);
    this.writeSeq.set(agentId, (this.writeSeq.get(agentId) ?? 0) + 1);
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
    this.o.events?.emit('key.created', `key ${key.name} created`, { keyId: key.id, key: key.name });
    return { key: this.summaryOfKey(key), secret };
  }

  listKeys(): KeySummary[] {
    return [...this.keys.values()].map((k) => this.summaryOfKey(k));
  }

  private summaryOfKey(k: KeyRecord): KeySummary {
    return keySummary(k, [...this.agents.values()], this.clock());
  }

  /** One key, by id or name. */
  showKey(ref: string): KeySummary {
    return this.summaryOfKey(this.findKey(ref));
  }

  /** The exec rules the server allows for an agent's key; undefined means no narrowing. */
  execRulesFor(agentId: string): string[] | undefined {
    const keyId = this.agents.get(agentId)?.keyId;
    return keyId ? this.keys.get(keyId)?.execAllow : undefined;
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
    this.o.events?.emit('key.updated', `key ${k.name} updated`, { keyId: k.id, key: k.name });
    this.notifyChanged();
    return this.summaryOfKey(k);
  }

  async revokeKey(ref: string): Promise<KeySummary> {
    const k = this.findKey(ref);
    if (k.revokedAt === undefined) {
      k.revokedAt = this.clock();
      await this.saveKey(k);
      const ids = this.agentsOfKey(k.id);
      this.dropConnections(ids, `key ${k.name} was revoked`);
      this.o.events?.emit('key.revoked', `key ${k.name} revoked`, {
        keyId: k.id,
        key: k.name,
        agents: ids.length,
      });
      this.notifyChanged();
    }
    return this.summaryOfKey(k);
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
    return { key: this.summaryOfKey(k), secret };
  }

  /** The key a secret belongs to, if it is valid now. Unknown secrets leave no trace. */
  async authenticate(secret: string): Promise<KeyRecord | undefined> {
    // A pinned key string given whole (by an agent older than pins) still names its secret.
    const k = await this.store.findKeyByHash(hashToken(secret.split('.')[0]!), this.clock());
    if (!k || k.revokedAt !== undefined) return undefined;
    this.keys.set(k.id, k);
    return k;
  }

  // ---- agents

  /** An agent's record as kept here now (no store round trip). */
  agentRecord(id: string): AgentRecord | undefined {
    return this.agents.get(id);
  }

  /**
   * An agent presenting a valid key. A known agent id enrolled with the same key is the same
   * agent; anything else becomes a new agent, pending unless the key auto-approves.
   */
  async register(
    key: KeyRecord,
    o: { agentId?: string; name: string; version?: string; seenFrom?: string; cleartext?: boolean },
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
    if (o.cleartext) a.cleartext = true;
    else delete a.cleartext;
    this.agents.set(a.id, a);
    await this.saveAgent(a);
    this.connected(a, now);
    this.o.events?.emit(
      'agent.connected',
      a.approved ? `agent ${a.name} connected` : `agent ${a.name} connected and waits for approval`,
      { agentId: a.id, agent: a.name, approved: a.approved },
    );
    this.notifyChanged();
    return a;
  }

  private connected(a: AgentRecord, now: number): void {
    this.live.set(a.id, { connected: true, lastHeartbeatAt: now, connectedAt: now });
    this.liveChanged(a.id, { kind: 'connected', since: now, lastHeartbeatAt: now, version: a.version });
  }

  /** An agent record a replica sharing the store knows and this one has not seen yet. */
  private async fetchAgent(id: string): Promise<AgentRecord | undefined> {
    const rec = await this.store.shared?.getAgent(id);
    if (rec && !this.agents.has(id)) this.applyRemoteAgent(id, rec);
    return this.agents.get(id);
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

  /**
   * The agent of `berth standalone`, connected in-process: the one agent without a key, approved
   * by being part of the server. It keeps one id across restarts.
   */
  async registerLocal(id: string, name: string, version: string): Promise<AgentRecord> {
    const now = this.clock();
    const prev = this.agents.get(id);
    const a: AgentRecord = {
      id,
      name,
      kind: 'local',
      approved: true,
      createdAt: prev?.createdAt ?? now,
      lastSeenAt: now,
      version,
    };
    this.agents.set(a.id, a);
    await this.saveAgent(a);
    this.connected(a, now);
    this.o.events?.emit('agent.connected', `agent ${a.name} connected (in-process)`, {
      agentId: a.id,
      agent: a.name,
      approved: true,
    });
    this.notifyChanged();
    return a;
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
      this.o.events?.emit('agent.approved', `agent ${a.name} approved`, { agentId: a.id, agent: a.name });
      this.notifyChanged();
    }
    return this.summaryOf(a);
  }

  async removeAgent(ref: string): Promise<AgentSummary> {
    const a = this.findAgent(ref);
    if (a.kind === 'local')
      throw new UserError('CONFLICT', 'the local agent of berth standalone cannot be removed');
    const summary = this.summaryOf(a);
    this.agents.delete(a.id);
    this.snapshots.delete(a.id);
    this.live.delete(a.id);
    this.dropUnsaved(a.id);
    try {
      // A write begun before is let finish first, so that it cannot bring the snapshot back.
      await this.storeWrites.get(a.id);
      await this.store.deleteAgent(a.id);
      await this.store.deleteSnapshot(a.id);
    } finally {
      this.wrote(`agent:${a.id}`, `snapshot:${a.id}`);
    }
    this.dropConnections([a.id], 'the agent was removed');
    this.o.events?.emit('agent.removed', `agent ${a.name} removed`, { agentId: a.id, agent: a.name });
    this.notifyChanged();
    return summary;
  }

  async heartbeat(
    agentId: string,
    info: { version?: string; dockerVersion?: string; hostIp?: string } & Record<string, unknown>,
  ): Promise<void> {
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
    const interval = info.intervalMs;
    this.liveChanged(agentId, {
      kind: 'heartbeat',
      since: l.connectedAt ?? now,
      lastHeartbeatAt: now,
      heartbeatMs: typeof interval === 'number' ? interval : undefined,
      version: a.version,
      dockerVersion: a.dockerVersion,
    });
    // With a shared store the agent record is rewritten only when something in it changed, so a
    // heartbeat cannot undo an approval made on another replica (presence carries the rest).
    // Alone, its last-seen time is written too, but at most every LAST_SEEN_WRITE_MS (1000
    // agents beating every 15 s would be 67 writes a second for a time nobody reads to the ms).
    const changed = before !== `${a.version} ${a.dockerVersion} ${a.hostIp}`;
    const seenDue = !this.store.shared && now - (this.seenWritten.get(agentId) ?? 0) >= LAST_SEEN_WRITE_MS;
    if (changed || seenDue) {
      this.seenWritten.set(agentId, now);
      await this.saveAgent(a);
    }
  }

  disconnected(agentId: string): void {
    const l = this.live.get(agentId);
    if (!l) return;
    l.connected = false;
    l.disconnectedAt = this.clock();
    this.liveChanged(agentId, { kind: 'disconnected' });
    const name = this.agents.get(agentId)?.name ?? agentId;
    this.o.events?.emit('agent.disconnected', `agent ${name} disconnected`, { agentId, agent: name });
    this.notifyChanged();
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
    // A former swarm leader's service routes stay until the new leader speaks (reconcile/swarm.ts).
    const now = this.clock();
    const { swarm, carried } = nextSwarm(
      prev,
      incoming,
      now,
      this.liveness.offlineGraceMs,
      (cluster, since) =>
        [...this.snapshots.values()].some(
          (o) =>
            o.agentId !== incoming.agentId &&
            // Only an agent of the same key replaces a former leader's view (as in admission).
            this.agents.get(o.agentId)?.keyId === a.keyId &&
            o.swarm?.clusterId === cluster &&
            o.swarm.leader &&
            (o.swarm.leaderSince ?? 0) > since,
        ),
    );
    shareContainerStrings(incoming);
    if (swarm) incoming = { ...incoming, swarm };
    if (carried.length > 0) incoming = { ...incoming, routes: [...incoming.routes, ...carried] };
    // Worked out in slices (25k units are tens of milliseconds), before the snapshot is seen.
    const claims = await inSlices(
      claimSteps(before, incoming.routes, incoming.tcp, this.clock(), this.liveness.offlineGraceMs),
    );
    const s: Snapshot = { ...incoming, claims };
    const admitted = await this.admitAhead(a, s);
    // Meanwhile the agent may have been removed, or a newer snapshot of it landed. (Its record
    // may have been replaced, approved say: the snapshot still lands, and is admitted again.)
    if (!this.agents.has(a.id)) return false;
    const now2 = this.snapshots.get(s.agentId);
    if (now2 !== prev && now2 && now2.generation >= s.generation) return false;
    this.admissions.set(a.id, admitted);
    this.snapshots.set(s.agentId, s);
    try {
      if (s.hostIp && a.hostIp !== s.hostIp) {
        a.hostIp = s.hostIp;
        await this.saveAgent(a);
      }
      this.saveSnapshot(s);
    } finally {
      // Served from memory even when the store is away (the caller logs the failure).
      this.notifyChanged();
    }
    return true;
  }

  snapshotOf(agentId: string): Snapshot | undefined {
    return this.snapshots.get(agentId);
  }

  // ---- reads

  hasAgent(id: string): boolean {
    return this.agents.has(id);
  }

  kindOf(id: string): AgentRecord['kind'] | undefined {
    return this.agents.get(id)?.kind;
  }

  agentIds(): string[] {
    return [...this.agents.keys()];
  }

  keyIds(): string[] {
    return [...this.keys.keys()];
  }

  snapshotIds(): string[] {
    return [...this.snapshots.keys()];
  }

  liveOf(agentId: string): Readonly<Live> | undefined {
    return this.live.get(agentId);
  }

  liveAgents(): IterableIterator<[string, Readonly<Live>]> {
    return this.live.entries();
  }

  /** Each agent with its key, snapshot and connection: what admission and views read. */
  views(): AgentView[] {
    return [...this.agents.values()].map((record) => this.view(record));
  }

  private view(record: AgentRecord): AgentView {
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

  /**
   * What may serve now. Many readers ask (every pass, listings, status); it is computed again only
   * after a change, or when it is older than ADMITTED_TTL_MS (time alone moves agents to stale or
   * past their grace).
   */
  admitted(): Admitted {
    const now = this.clock();
    const c = this.admittedCache;
    if (c && c.version === this.version && now - c.at < ADMITTED_TTL_MS) return c.value;
    const parts: AgentAdmission[] = [];
    const seen = new Set<string>();
    const views = [...this.agents.values()].map((record) => this.view(record));
    // Agents in a swarm are admitted with the others of their swarm (speaker, nodes' agents).
    const swarm = views.some((v) => v.snapshot?.swarm) ? swarmContext(views, now, this.liveness) : undefined;
    const swarmKey = swarm ? this.swarmInputs(views, now, swarm) : '';
    for (const v of views) {
      seen.add(v.record.id);
      parts.push(this.admitOne(v, now, swarm, v.snapshot?.swarm ? swarmKey : ''));
    }
    for (const id of this.admissions.keys()) if (!seen.has(id)) this.admissions.delete(id);
    const value = combine(parts, swarm);
    this.admittedCache = { version: this.version, at: now, value };
    return value;
  }

  /**
   * One agent's admission, computed again only when something it reads has changed: its own
   * inputs, and for an agent in a swarm the inputs of every agent in one (`swarmKey`).
   */
  private admitOne(
    v: AgentView,
    now: number,
    swarm: SwarmContext | undefined,
    swarmKey: string,
  ): AgentAdmission {
    const inputs = swarmKey + this.admissionInputs(v, now);
    const c = this.admissions.get(v.record.id);
    // An agent outside a swarm is admitted the same whatever the swarm context (swarmKey '').
    if (c && c.inputs === inputs && c.snapshot === v.snapshot) return c.value;
    const value = admitAgent(v, now, this.liveness, swarm);
    this.admissions.set(v.record.id, { inputs, snapshot: v.snapshot, value });
    return value;
  }

  /**
   * A new snapshot's admission, worked out in slices before the snapshot is seen, so that
   * admitted() finds it ready rather than checking an agent's 25k routes in one task. It holds
   * while nothing else it reads changes meanwhile (else admitted() works it out again).
   */
  private async admitAhead(
    a: AgentRecord,
    s: Snapshot,
  ): Promise<{ inputs: string; snapshot: Snapshot; value: AgentAdmission }> {
    const now = this.clock();
    const v: AgentView = { ...this.view(a), snapshot: s };
    const views = [...this.agents.values()].map((record) => (record === a ? v : this.view(record)));
    const swarm = views.some((x) => x.snapshot?.swarm) ? swarmContext(views, now, this.liveness) : undefined;
    const inputs =
      (s.swarm && swarm ? this.swarmInputs(views, now, swarm) : '') + this.admissionInputs(v, now);
    const value = await inSlices(admissionSteps(v, now, this.liveness, swarm));
    return { inputs, snapshot: s, value };
  }

  /** What the admission of an agent in a swarm reads of the others: who speaks, and each one's inputs. */
  private swarmInputs(views: AgentView[], now: number, swarm: SwarmContext): string {
    const parts = [[...swarm.speaking].sort().join(',')];
    for (const v of views)
      if (v.snapshot?.swarm)
        parts.push(`${v.record.id}\u0001${serialOf(v.snapshot)}\u0001${this.admissionInputs(v, now)}`);
    return `${parts.join('\u0002')}\u0003`;
  }

  /**
   * What an admission reads besides the snapshot. Records and keys change in place, so their
   * fields are part of the inputs; a snapshot is replaced whole on every change, so its identity
   * stands for its content.
   */
  private admissionInputs(v: AgentView, now: number): string {
    const withheld = v.snapshot ? withheldBecause(v, now, this.liveness) : undefined;
    const r = v.record;
    const k = v.key;
    return JSON.stringify([
      withheld,
      r.name,
      r.kind,
      r.seenFrom,
      k?.id,
      k?.name,
      k?.domains,
      k?.upstreams,
      k?.maxRoutes,
    ]);
  }

  /** Name and status of one agent, without looking at any other (for logs). */
  statusOf(agentId: string): { name: string; status: AgentSummary['status'] } | undefined {
    const a = this.agents.get(agentId);
    return a && { name: a.name, status: agentStatus(this.view(a), this.clock(), this.liveness) };
  }

  private summaryOf(a: AgentRecord, admitted: Admitted = this.admitted()): AgentSummary {
    const l = this.live.get(a.id);
    const replica = l?.connected ? this.store.shared?.replicaId : l?.remote?.replica;
    return agentSummary(
      { view: this.view(a), remote: l?.remote, replica },
      admitted,
      this.clock(),
      this.liveness,
    );
  }

  listAgents(): AgentSummary[] {
    const admitted = this.admitted();
    return [...this.agents.values()].map((a) => this.summaryOf(a, admitted));
  }

  /** Every agent with a snapshot, for route views. */
  reporting(): { id: string; name: string; snapshot: Snapshot }[] {
    return [...this.snapshots].map(([id, snapshot]) => ({
      id,
      name: this.agents.get(id)?.name ?? id,
      snapshot,
    }));
  }

  // ---- what other replicas change (replicas.ts applies these)

  /** An agent record another replica wrote (or deleted): true when routing may change. */
  applyRemoteAgent(id: string, rec: AgentRecord | undefined): boolean {
    const prev = this.agents.get(id);
    if (!rec) {
      if (!prev || prev.kind === 'local') return false;
      this.agents.delete(id);
      this.snapshots.delete(id);
      this.live.delete(id);
      this.dropConnections([id], 'the agent was removed');
      this.o.events?.emit('agent.removed', `agent ${prev.name} removed`, { agentId: id, agent: prev.name });
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
      this.o.events?.emit('agent.approved', `agent ${rec.name} approved`, { agentId: id, agent: rec.name });
    }
    return !prev || prev.approved !== rec.approved || prev.keyId !== rec.keyId || prev.name !== rec.name;
  }

  /** A key another replica wrote: a revocation closes this replica's connections of that key. */
  applyRemoteKey(id: string, rec: KeyRecord | undefined): boolean {
    const prev = this.keys.get(id);
    if (!rec) return this.keys.delete(id);
    this.keys.set(id, rec);
    if (!prev) this.o.events?.emit('key.created', `key ${rec.name} created`, { keyId: id, key: rec.name });
    if (rec.revokedAt !== undefined && prev?.revokedAt === undefined) {
      const ids = this.agentsOfKey(id);
      this.dropConnections(ids, `key ${rec.name} was revoked`);
      this.o.events?.emit('key.revoked', `key ${rec.name} revoked`, {
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

  applyRemoteSnapshot(agentId: string, s: Snapshot | undefined): boolean {
    const prev = this.snapshots.get(agentId);
    if (!s) return this.snapshots.delete(agentId);
    if (!this.agents.has(agentId) || (prev && prev.generation >= s.generation)) return false;
    this.snapshots.set(agentId, s);
    return true;
  }

  /** Records that another replica holds (or no longer holds) the connection; true on a change. */
  setRemotePresence(agentId: string, p: Presence | undefined): boolean {
    const l = this.live.get(agentId);
    if (!l) return false;
    const mine = p?.replica === this.store.shared?.replicaId;
    const before = l.connected || l.remote !== undefined;
    const was = l.remote?.replica;
    l.remote = p && !mine ? p : undefined;
    const after = l.connected || l.remote !== undefined;
    const name = this.agents.get(agentId)?.name ?? agentId;
    if (before && !after) {
      l.disconnectedAt = this.clock();
      this.o.events?.emit('agent.disconnected', `agent ${name} disconnected`, { agentId, agent: name });
    } else if (l.remote && l.remote.replica !== was && !l.connected) {
      this.o.events?.emit('agent.connected', `agent ${name} connected to replica ${l.remote.replica}`, {
        agentId,
        agent: name,
        replica: l.remote.replica,
      });
    }
    return before !== after;
  }
}
