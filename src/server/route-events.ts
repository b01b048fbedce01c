// The events feed's view of routes: which newly have an error (once each), and that routes
// changed at all. Most route changes never touch Caddy's config (the dynamic layout), so no
// other event would tell a page showing routes to refresh.
import type { RouteView } from '../model/api.js';
import { nextTurn } from '../model/slices.js';
import type { EventBus } from './events.js';

/** Listing routes costs about half a second at 50k: the error scan runs at most this often. */
const SCAN_EVERY_MS = 1_000;
/**
 * route.rejected events per scan, at most: a hostile agent's 15k refused routes are one summary
 * event past this, not 15k events (each of which every open events stream would carry).
 */
export const MAX_REJECTED_EVENTS = 100;
/** A scan runs at most this long before it yields to the event loop. */
const SLICE_MS = 10;
/** routes.changed at most once per this, the last change always announced. */
const ANNOUNCE_EVERY_MS = 1_000;

export class RouteEvents {
  private lastErrors = new Set<string>();
  private scanning = false;
  private again = false;
  private stopped = false;
  private lastScanAt = 0;
  private scan?: NodeJS.Timeout;
  private version = 0;
  private announced = 0;
  private lastAnnounceAt = 0;
  private announce?: NodeJS.Timeout;

  constructor(
    private readonly o: {
      events: EventBus;
      /** Routes with errors only (the cheap listing), with `undefined` where the scan may yield. */
      errors: () => Iterable<RouteView | undefined>;
    },
  ) {}

  /** Something routing depends on changed. */
  changed(): void {
    this.version++;
  }

  /** A reconcile pass ended with these many sites and TCP listeners. */
  passed(sites: number, tcp: number): void {
    if (this.version !== this.announced) {
      clearTimeout(this.announce);
      this.announce = setTimeout(
        () => {
          this.announced = this.version;
          this.lastAnnounceAt = Date.now();
          this.o.events.emit('routes.changed', `routes changed: ${sites} sites, ${tcp} TCP listeners`, {
            sites,
            tcp,
          });
        },
        Math.max(0, ANNOUNCE_EVERY_MS - (Date.now() - this.lastAnnounceAt)),
      );
    }
    clearTimeout(this.scan);
    this.scan = setTimeout(
      () => this.scanErrors(),
      Math.max(0, SCAN_EVERY_MS - (Date.now() - this.lastScanAt)),
    );
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.scan);
    clearTimeout(this.announce);
  }

  private scanErrors(): void {
    // A pass during a scan: the state it scans may be behind, so one more scan follows.
    if (this.scanning) {
      this.again = true;
      return;
    }
    this.scanning = true;
    void this.scanInSlices();
  }

  /** Scans, yielding to the event loop whenever it has run for SLICE_MS (25k errors took 0.3 s at once). */
  private async scanInSlices(): Promise<void> {
    try {
      const slices = this.scanOnce();
      // Run to its end at once when the scan never had to yield (the common case).
      let r = slices.next();
      while (!r.done) {
        await nextTurn();
        if (this.stopped) return;
        r = slices.next();
      }
    } finally {
      this.scanning = false;
      if (this.again && !this.stopped) {
        this.again = false;
        this.scanErrors();
      }
    }
  }

  /** One scan; it pauses (yields) where it has run for SLICE_MS. */
  private *scanOnce(): Generator<void> {
    this.lastScanAt = Date.now();
    const now = new Set<string>();
    let emitted = 0;
    let more = 0;
    let sliceFrom = performance.now();
    for (const r of this.o.errors()) {
      if (!r) {
        if (performance.now() - sliceFrom < SLICE_MS) continue;
        yield;
        sliceFrom = performance.now();
        continue;
      }
      if (r.status !== 'error') continue;
      const key = `${r.agentId}:${r.id}:${r.errors.join('|')}`;
      now.add(key);
      if (this.lastErrors.has(key)) continue;
      if (emitted >= MAX_REJECTED_EVENTS) {
        more++;
        continue;
      }
      emitted++;
      const what =
        r.kind === 'tcp' ? `tcp :${r.listen}` : r.hosts.join(', ') || `container ${r.container.name}`;
      this.o.events.emit(
        'route.rejected',
        `${what} (${r.agentName}/${r.container.name}): ${r.errors.join('; ')}`,
        {
          agentId: r.agentId,
          routeId: r.id,
        },
      );
    }
    if (more > 0)
      this.o.events.emit(
        'route.rejected',
        `and ${more} more routes newly rejected (berth routes lists them all)`,
        {
          more,
        },
      );
    this.lastErrors = now;
  }
}
