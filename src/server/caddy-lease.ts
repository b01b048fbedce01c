// Several replicas driving the same Caddy instances (--caddy-admin, shared store): exactly one
// applies to each Caddy at a time. It holds a lease in the store (taken when free, renewed every
// third of its TTL, released on a clean shutdown); when it dies the lease runs out and another
// replica takes it. The holder also records what it applied, so that every replica reports the
// same route statuses without touching Caddy itself.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { CaddyTarget } from '../ingress/caddy/target.js';
import { siteSignature } from '../model/desired.js';
import type { Desired } from '../reconcile/desired.js';
import type { ReconcilerOptions, ReconcileState } from '../reconcile/reconciler.js';
import type { SharedStore, Store } from '../store/store.js';

export const LEASE_TTL_MS = 3_000;

/** What the holder last applied to one Caddy, as the other replicas read it. */
interface Applied {
  replica: string;
  /** Hash of the desired sites' signatures: equal on replicas that see the same state. */
  desired: string;
  quarantined: [string, string][];
  error?: string;
  at: number;
}

interface Lease {
  name: string;
  /** This replica may apply until then (a margin short of the lease's own expiry). */
  validUntil: number;
  holder?: string;
  timer?: NodeJS.Timeout;
  applied?: Applied;
  /** What this replica last recorded as holder, to write only changes. */
  recorded?: string;
}

export interface LeaseView {
  /** The replica applying to this Caddy; undefined while nobody holds the lease. */
  holder?: string;
  /** Whether that is this replica. */
  mine: boolean;
  /** This replica's id. */
  replica: string;
}

const desiredHash = (sites: Desired['sites']): string => {
  const h = createHash('sha256');
  for (const sig of sites.map(siteSignature).sort()) h.update(`${sig}\n`);
  return h.digest('hex');
};

export class CaddyLeases {
  private readonly leases = new Map<CaddyTarget, Lease>();
  private unwatch?: () => void;
  private stopped = false;

  constructor(
    private readonly o: {
      store: Store;
      shared: SharedStore;
      targets: CaddyTarget[];
      logger: Logger;
      /** This replica just took the lease: apply everything (its view of Caddy may be stale). */
      onAcquired: (t: CaddyTarget) => void;
      /** Another replica recorded what it applied: route statuses may change. */
      onApplied: () => void;
      ttlMs?: number;
    },
  ) {
    for (const t of o.targets) this.leases.set(t, { name: `caddy:${t.admin.display}`, validUntil: 0 });
  }

  private get shared(): SharedStore {
    return this.o.shared;
  }

  private get ttl(): number {
    return this.o.ttlMs ?? LEASE_TTL_MS;
  }

  async start(): Promise<void> {
    this.unwatch = this.o.store.watch((c) => {
      if (c.kind === 'lease') {
        // Released on a clean shutdown: take it now rather than at the next try.
        for (const [t, l] of this.leases) if (l.name === c.name) this.schedule(t, l, 0);
      } else if (c.kind === 'meta') {
        for (const l of this.leases.values()) if (c.key === `applied:${l.name}`) void this.readApplied(l);
      }
    });
    await Promise.all([...this.leases].map(([t, l]) => Promise.all([this.tick(t, l), this.readApplied(l)])));
  }

  canApply(t: CaddyTarget): boolean {
    const l = this.leases.get(t);
    return l === undefined || l.validUntil > Date.now();
  }

  view(t: CaddyTarget): LeaseView {
    const l = this.leases.get(t);
    const mine = this.canApply(t);
    const holder = mine ? this.shared.replicaId : l?.holder;
    const replica = this.shared.replicaId;
    return holder ? { holder, mine, replica } : { mine, replica };
  }

  /** The reconciler's side: apply only under the lease, report the holder's result otherwise. */
  gate(): Pick<ReconcilerOptions<CaddyTarget>, 'canApply' | 'standby'> {
    return { canApply: (t) => this.canApply(t), standby: (t, desired) => this.standby(t, desired) };
  }

  /**
   * For a replica that may not apply: what the holder says Caddy serves, when this replica's
   * desired state is the one the holder applied; else nothing is known to be served yet.
   */
  standby(t: CaddyTarget, desired: Desired): ReconcileState['targets'][number] {
    const a = this.leases.get(t)?.applied;
    if (!a || a.desired !== desiredHash(desired.sites)) return { served: new Set(), quarantined: new Map() };
    const quarantined = new Map(a.quarantined);
    const served = new Set(desired.sites.map(siteSignature).filter((sig) => !quarantined.has(sig)));
    return a.error ? { served, quarantined, error: a.error } : { served, quarantined };
  }

  /** After a pass: the holder records what it applied to each Caddy it holds. */
  report(state: ReconcileState): void {
    let hash: string | undefined;
    this.o.targets.forEach((t, i) => {
      const l = this.leases.get(t);
      const r = state.targets[i];
      if (!l || !r || !this.canApply(t)) return;
      hash ??= desiredHash(state.desired.sites);
      const applied: Applied = {
        replica: this.shared.replicaId,
        desired: hash,
        quarantined: [...r.quarantined],
        at: Date.now(),
      };
      if (r.error) applied.error = r.error;
      const key = JSON.stringify({ ...applied, at: 0 });
      if (key === l.recorded) return;
      l.recorded = key;
      l.applied = applied;
      this.o.store.setMeta(`applied:${l.name}`, JSON.stringify(applied)).catch((err) => {
        l.recorded = undefined;
        this.o.logger.warn({ err: errorMessage(err) }, 'cannot record what was applied to Caddy');
      });
    });
  }

  /** A replica that does not apply still knows whether Caddy answers (for readiness). */
  async probe(t: CaddyTarget): Promise<void> {
    try {
      await t.admin.request('GET', '/config/admin');
      t.stats.reachable = true;
    } catch (err) {
      t.stats.reachable = false;
      t.stats.lastError = errorMessage(err);
    }
  }

  /** Gives every held lease up, so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unwatch?.();
    await Promise.allSettled(
      [...this.leases].map(async ([t, l]) => {
        clearTimeout(l.timer);
        const held = this.canApply(t);
        l.validUntil = 0;
        if (held) await this.shared.releaseLease(l.name);
      }),
    );
  }

  private schedule(t: CaddyTarget, l: Lease, ms: number): void {
    if (this.stopped) return;
    clearTimeout(l.timer);
    l.timer = setTimeout(() => void this.tick(t, l), ms);
  }

  private async tick(t: CaddyTarget, l: Lease): Promise<void> {
    const startedAt = Date.now();
    const had = this.canApply(t);
    let next = this.ttl / 3;
    try {
      const r = await this.shared.acquireLease(l.name, this.ttl);
      if (this.stopped) return;
      l.holder = r.holder;
      if (r.held) {
        // Counted from before the request, short of the TTL: never later than the store's expiry.
        l.validUntil = startedAt + this.ttl - Math.min(500, this.ttl / 6);
        if (!had) {
          this.o.logger.info(
            { admin: t.admin.display, replica: r.holder },
            'took the lease: this replica applies to Caddy',
          );
          this.o.onAcquired(t);
        }
      } else {
        l.validUntil = 0;
        // Try again right when the holder's lease would run out.
        next = Math.min(next, r.ttlMs + 20);
      }
    } catch (err) {
      // The store is away: keep applying only while the lease surely is still ours.
      this.o.logger.debug({ err: errorMessage(err) }, 'cannot renew the Caddy lease');
      next = Math.min(next, 500);
    }
    if (had && !this.canApply(t)) {
      this.o.logger.warn(
        { admin: t.admin.display, holder: l.holder },
        'lost the lease: another replica applies to Caddy now',
      );
    }
    this.schedule(t, l, next);
  }

  private async readApplied(l: Lease): Promise<void> {
    try {
      const raw = await this.o.store.getMeta(`applied:${l.name}`);
      const applied = raw ? (JSON.parse(raw) as Applied) : undefined;
      if (applied?.replica === this.shared.replicaId) return;
      l.applied = applied;
      this.o.onApplied();
    } catch (err) {
      this.o.logger.debug({ err: errorMessage(err) }, 'cannot read what was applied to Caddy');
    }
  }
}
