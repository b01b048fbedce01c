// Several server replicas on one shared store (Redis). Each replica keeps its own registry in
// memory; this follows what the others change and keeps presence true both ways. Changes arrive
// as messages and are re-read record by record (with a periodic full reload as a safety net);
// each agent's connection, held by one replica, is published as a presence record so that every
// replica counts it as connected. The registry does not know this module exists: it only
// offers ways to apply remote records and tells what it writes and who connects.
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { Presence, SharedStore, Store, StoreChange } from '../store/store.js';
import type { LiveChange, Registry } from './registry.js';

/** How often presence is re-read (a killed replica's agents go offline within this plus its TTL). */
const PRESENCE_POLL_MS = 1_000;
/** The safety net under change messages: everything is re-read this often. */
const FULL_RELOAD_MS = 30_000;

export interface FollowerOptions {
  registry: Registry;
  store: Store;
  shared: SharedStore;
  logger: Logger;
  clock?: () => number;
}

export class ReplicaFollower {
  private readonly registry: Registry;
  private readonly shared: SharedStore;
  private readonly clock: () => number;
  private timers: NodeJS.Timeout[] = [];
  private unwatch?: () => void;
  /** Remote changes are applied one at a time, in the order they were published. */
  private remoteQueue: Promise<void> = Promise.resolve();
  private presenceSync?: Promise<void>;
  private reloading?: Promise<void>;
  private readonly pending = new Set<Promise<unknown>>();
  /** When each record was last written here: a full reload must not undo what it did not see. */
  private readonly touched = new Map<string, number>();
  /** When this replica last wrote each agent's presence record (it holds that connection). */
  private readonly presenceAt = new Map<string, number>();
  private closed = false;

  constructor(private readonly o: FollowerOptions) {
    this.registry = o.registry;
    this.shared = o.shared;
    this.clock = o.clock ?? Date.now;
    o.registry.onWrite((record) => this.touched.set(record, this.clock()));
    o.registry.onLive((agentId, change) => this.publish(agentId, change));
  }

  start(): void {
    this.unwatch = this.o.store.watch((c) => {
      this.remoteQueue = this.remoteQueue
        .then(() => this.applyRemote(c))
        .catch((err) =>
          this.o.logger.warn({ err: errorMessage(err), change: c.kind }, 'cannot apply a remote change'),
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
    const mine = [...this.registry.liveAgents()]
      .filter(([id, l]) => l.connected || this.presenceAt.has(id))
      .map(([id]) => id);
    await Promise.allSettled(mine.map((id) => this.shared.clearPresence(id)));
  }

  /** Runs a store write in the background, logged if it fails, awaited by close(). */
  private background(what: string, p: Promise<unknown>): void {
    const tracked = p.catch((err) => this.o.logger.warn({ err: errorMessage(err) }, `cannot ${what}`));
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  /** This replica's own connections, as presence records every replica reads. */
  private publish(agentId: string, c: LiveChange): void {
    if (c.kind === 'disconnected') {
      if (this.presenceAt.has(agentId) && !this.closed) {
        this.presenceAt.delete(agentId);
        this.background('clear the presence record', this.shared.clearPresence(agentId));
      }
      return;
    }
    const p: Omit<Presence, 'replica'> = {
      since: c.since,
      lastHeartbeatAt: c.lastHeartbeatAt,
      heartbeatMs: c.heartbeatMs,
      version: c.version,
      dockerVersion: c.dockerVersion,
    };
    const what = c.kind === 'connected' ? 'write a presence record' : 'refresh a presence record';
    this.background(what, this.writePresence(agentId, p));
  }

  private async writePresence(agentId: string, p: Omit<Presence, 'replica'>): Promise<void> {
    const clean = Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)) as typeof p;
    await this.shared.setPresence(agentId, clean);
    this.presenceAt.set(agentId, this.clock());
  }

  private async applyRemote(c: StoreChange): Promise<void> {
    const r = this.registry;
    switch (c.kind) {
      case 'agent':
        if (r.applyRemoteAgent(c.id, await this.shared.getAgent(c.id))) r.notifyChanged();
        return;
      case 'key':
        if (r.applyRemoteKey(c.id, await this.shared.getKey(c.id))) r.notifyChanged();
        return;
      case 'snapshot': {
        const s = await this.shared.getSnapshot(c.agentId);
        if (s && !r.hasAgent(s.agentId)) {
          const rec = await this.shared.getAgent(s.agentId);
          if (rec && !r.hasAgent(s.agentId)) r.applyRemoteAgent(s.agentId, rec);
        }
        if (r.applyRemoteSnapshot(c.agentId, s)) r.notifyChanged();
        return;
      }
      case 'presence': {
        const l = r.liveOf(c.agentId);
        if (!l) return;
        // Another replica says it holds a connection this replica also has: the presence
        // record decides which is newer.
        if (l.connected && c.presence) return this.syncPresence();
        if (r.setRemotePresence(c.agentId, c.presence)) r.notifyChanged();
        return;
      }
      case 'reload':
        return this.reloadAll();
      default:
        return;
    }
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
    const startedAt = this.clock();
    let all: Map<string, Presence>;
    try {
      all = await this.shared.listPresence();
    } catch (err) {
      this.o.logger.debug({ err: errorMessage(err) }, 'cannot read presence');
      return;
    }
    const r = this.registry;
    let changed = false;
    const elsewhere: string[] = [];
    for (const [id, l] of r.liveAgents()) {
      if (r.kindOf(id) !== 'remote') continue;
      const p = all.get(id);
      const at = this.presenceAt.get(id);
      // Only records read after this replica's own last write say anything about its sockets.
      const settled = at !== undefined && at < startedAt;
      if (l.connected && !p && (settled || at === undefined)) {
        // Lost (written while Redis was away, or cleared by mistake): write it again.
        const restore = this.writePresence(id, {
          since: l.connectedAt ?? startedAt,
          lastHeartbeatAt: l.lastHeartbeatAt,
        });
        this.background('restore a presence record', restore);
      } else if (l.connected && settled && p && p.replica !== this.shared.replicaId) elsewhere.push(id);
      if (p?.replica === this.shared.replicaId && !l.connected) {
        this.background('clear a stale presence record', this.shared.clearPresence(id));
      }
      if (r.setRemotePresence(id, p)) changed = true;
    }
    r.dropConnections(elsewhere, 'the agent connected to another replica');
    if (changed) r.notifyChanged();
  }

  /** Re-reads everything (after a reconnect, and periodically): messages may have been missed. */
  private reloadAll(): Promise<void> {
    this.reloading ??= this.doReloadAll()
      .catch((err) => this.o.logger.debug({ err: errorMessage(err) }, 'cannot reload from the store'))
      .finally(() => {
        this.reloading = undefined;
      });
    return this.reloading;
  }

  private async doReloadAll(): Promise<void> {
    const r = this.registry;
    const startedAt = this.clock();
    // Written here since this reload began: what was read may predate it.
    const fresh = (record: string) => (this.touched.get(record) ?? -1) >= startedAt;
    let changed = false;
    const keys = new Map((await this.o.store.listKeys()).map((k) => [k.id, k]));
    for (const id of new Set([...keys.keys(), ...r.keyIds()])) {
      if (!fresh(`key:${id}`) && r.applyRemoteKey(id, keys.get(id))) changed = true;
    }
    const agents = new Map((await this.o.store.listAgents()).map((a) => [a.id, a]));
    for (const id of new Set([...agents.keys(), ...r.agentIds()])) {
      if (!fresh(`agent:${id}`) && r.applyRemoteAgent(id, agents.get(id))) changed = true;
    }
    const generations = await this.shared.snapshotGenerations();
    for (const [id, gen] of generations) {
      if ((r.snapshotOf(id)?.generation ?? -1) >= gen) continue;
      const s = await this.shared.getSnapshot(id);
      if (!fresh(`snapshot:${id}`) && r.applyRemoteSnapshot(id, s)) changed = true;
    }
    for (const id of r.snapshotIds()) {
      if (!generations.has(id) && !fresh(`snapshot:${id}`) && r.applyRemoteSnapshot(id, undefined))
        changed = true;
    }
    if (changed) r.notifyChanged();
    await this.syncPresence();
  }
}
