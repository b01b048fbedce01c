// The loop that makes the front door match the registry. Wakes coalesce: a burst of changes
// costs one pass, and a pass that finds nothing new sends nothing. Failures retry with backoff.
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { ListenerStatus, ServedSites } from '../model/data-plane.js';
import { nextTurn } from '../model/slices.js';
import type { DnsTableSync, HttpTarget, TcpListenerSync } from './data-plane.js';
import type { AgentRoutes, Desired } from './desired.js';
import { DesiredModel } from './desired.js';

export interface ReconcileState {
  desired: Desired;
  /** Per target: signatures it serves, and those it rejected with Caddy's message. */
  targets: { served: ServedSites; quarantined: Map<string, string>; error?: string }[];
  /** TCP listeners by port, as the forwarder reported them after the pass. */
  tcp: Map<number, ListenerStatus>;
  passes: number;
  completedAt: number;
}

export interface ReconcilerOptions<T extends HttpTarget = HttpTarget> {
  source: () => AgentRoutes[];
  targets: T[];
  /** Berth's TCP forwarder; synced first in every pass (it is cheap and independent of Caddy). */
  tcp?: TcpListenerSync;
  /** The dynamic layout's DNS table: hosts served without a Caddy config change. */
  dns?: DnsTableSync;
  logger: Logger;
  /** Quiet time that gathers a burst into one pass, and the most a wake may wait. */
  debounceMs?: number;
  maxDelayMs?: number;
  /**
   * Apply budget: a token bucket of `burst` passes refilled at `perSecond`, charged only for
   * passes that applied to Caddy. Single changes never wait for it; a long burst of changes
   * costs at most ~`perSecond` applies a second.
   */
  budget?: { burst: number; perSecond: number };
  /**
   * Replicas sharing Caddy instances: only the replica this allows applies to a target now (it
   * holds the target's lease). The others still compute the desired state, and report for the
   * target what `standby` says the applying replica serves.
   */
  canApply?: (t: T) => boolean;
  standby?: (t: T, desired: Desired) => ReconcileState['targets'][number];
  /** Each pass's desired state, before any of it is published or applied. */
  onDesired?: (d: Desired) => void;
  /** After every completed pass: when it started, and how long each Caddy apply took. */
  onPass?: (s: ReconcileState, info: { startedAt: number; applyMs: number[] }) => void;
}

/**
 * At least this often (and on every forced pass: drift repair, a restarted Caddy) the desired
 * state is computed from scratch instead of patched: the level-triggered guarantee, whatever an
 * incremental update might have missed. It costs about a second at 50k routes, so not often.
 */
export const FULL_PASS_EVERY_MS = 5 * 60_000;

export class Reconciler<T extends HttpTarget = HttpTarget> {
  private timer?: NodeJS.Timeout;
  private model = new DesiredModel();
  private fullPassAt = 0;
  private firstWakeAt = 0;
  private tokens = 3;
  private refilledAt = Date.now();
  private running = false;
  private dirty = false;
  private force = false;
  private retryMs = 250;
  private lastPassMs = 0;
  private lastPassEnd = 0;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];
  state?: ReconcileState;
  counters = { passes: 0, applies: 0, loads: 0, failures: 0 };

  constructor(private readonly o: ReconcilerOptions<T>) {}

  wake(opts: { force?: boolean } = {}): void {
    if (this.stopped) return;
    if (opts.force) this.force = true;
    if (this.running) {
      this.dirty = true;
      return;
    }
    const now = Date.now();
    if (!this.timer) this.firstWakeAt = now;
    clearTimeout(this.timer);
    const debounce = this.o.debounceMs ?? 50;
    const wait = Math.max(
      0,
      Math.min(debounce, this.firstWakeAt + (this.o.maxDelayMs ?? 1_000) - now),
      this.msUntilToken(now),
      // A pass is CPU-bound (tens of ms at 1k routes, about a second at 50k): after one, wait
      // as long as it took, so agents' messages and the API get at least half the time.
      this.lastPassMs - (now - this.lastPassEnd),
    );
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.pass();
    }, wait);
  }

  /** Resolves when no pass is running or scheduled (for tests and orderly shutdown). */
  idle(): Promise<void> {
    if (!this.running && !this.timer) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private msUntilToken(now: number): number {
    const { burst, perSecond } = this.o.budget ?? { burst: 3, perSecond: 2 };
    this.tokens = Math.min(burst, this.tokens + ((now - this.refilledAt) / 1000) * perSecond);
    this.refilledAt = now;
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / perSecond) * 1000);
  }

  private async pass(): Promise<void> {
    this.running = true;
    this.msUntilToken(Date.now());
    this.tokens -= 1;
    this.dirty = false;
    const force = this.force;
    this.force = false;
    let failed = false;
    const startedAt = Date.now();
    const applyMs: number[] = [];
    try {
      // Each step of a big pass is tens of milliseconds: between them, requests and agents'
      // messages are answered, so a pass over 10k routes never holds the loop for all of it.
      const source = this.o.source();
      await yieldToIo();
      if (force || startedAt - this.fullPassAt >= FULL_PASS_EVERY_MS) {
        this.model = new DesiredModel();
        this.fullPassAt = startedAt;
      }
      const desired = await this.model.updateInSlices(source);
      await yieldToIo();
      // Before anything serves it: whoever must know the new state first (the traffic counter).
      this.o.onDesired?.(desired);
      await yieldToIo();
      // Hosts moving into Caddy's config stay in DNS until every apply below has landed.
      await this.o.dns?.publish(desired.sites, { transition: true }, desired.changes);
      await yieldToIo();
      let tcp = new Map<number, ListenerStatus>();
      if (this.o.tcp) {
        await this.o.tcp.sync(desired.tcp);
        tcp = new Map(this.o.tcp.status().map((l) => [l.listen, l]));
      }
      const results: ReconcileState['targets'] = [];
      for (const t of this.o.targets) {
        if (this.o.canApply && !this.o.canApply(t)) {
          results.push(this.o.standby?.(t, desired) ?? { served: new Set(), quarantined: new Map() });
          continue;
        }
        if (force) {
          t.invalidate();
          t.forgetRejections();
        }
        try {
          await yieldToIo();
          const r = await t.apply(desired.sites, desired.changes);
          if (r.changed) {
            applyMs.push(r.ms);
            this.counters.applies++;
            this.counters.loads += r.loads;
            this.o.logger.info(
              { admin: t.name, sites: desired.sites.length, ms: r.ms, quarantined: r.quarantined.size },
              'applied routes to caddy',
            );
          }
          results.push({ served: r.served, quarantined: r.quarantined });
        } catch (err) {
          failed = true;
          this.counters.failures++;
          this.o.logger.warn({ admin: t.name, err: errorMessage(err) }, 'apply failed; will retry');
          // What Caddy serves is unknown now: assume the previous state until a pass succeeds.
          const prev = this.state?.targets[results.length];
          results.push({
            served: prev?.served ?? new Set(),
            quarantined: prev?.quarantined ?? new Map(),
            error: errorMessage(err),
          });
        }
      }
      if (!failed) {
        await yieldToIo();
        await this.o.dns?.publish(desired.sites);
      }
      // The budget is for Caddy applies (each re-provisions Caddy's whole config): a pass that
      // changed only the DNS table or TCP listeners gives its token back, so containers starting
      // one after another each go live at once.
      if (applyMs.length === 0) this.tokens = Math.min(this.o.budget?.burst ?? 3, this.tokens + 1);
      this.counters.passes++;
      this.state = { desired, targets: results, tcp, passes: this.counters.passes, completedAt: Date.now() };
      await yieldToIo();
      this.o.onPass?.(this.state, { startedAt, applyMs });
    } catch (err) {
      failed = true;
      this.o.logger.error({ err: errorMessage(err) }, 'reconcile pass failed');
    } finally {
      this.running = false;
      this.lastPassEnd = Date.now();
      this.lastPassMs = this.lastPassEnd - startedAt;
    }
    if (failed && !this.stopped) {
      const delay = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, 10_000);
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.wake();
      }, delay);
    } else {
      this.retryMs = 250;
      if (this.dirty) this.wake();
    }
    if (!this.running && !this.timer) for (const r of this.idleWaiters.splice(0)) r();
  }

  /**
   * Asks every target this replica applies to whether it still holds what it was given (Caddy
   * restarted, or its config was edited); a target that does not is repaired by the pass this wakes.
   */
  async checkDrift(): Promise<void> {
    for (const t of this.o.targets) {
      if (this.o.canApply && !this.o.canApply(t)) continue;
      if (await t.drifted()) this.wake();
    }
  }
}

/** Whether a site (by signature) is live on every target. */
export function servedEverywhere(state: ReconcileState, sig: string): boolean {
  return state.targets.length > 0 && state.targets.every((t) => t.served.has(sig));
}

/** Lets pending I/O (agents' messages, API requests) run between the CPU-bound steps of a pass. */
const yieldToIo = nextTurn;
