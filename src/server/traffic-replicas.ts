// Traffic across replicas: each replica counts its own front door's requests; every few seconds
// it publishes a small summary (totals and its newest slots) to the shared store and reads the
// others', so any replica's Traffic page and `berth top` show the sum.
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { SharedStore } from '../store/store.js';
import { foldReplica, type ReplicaTraffic } from './traffic.js';

/** Slots a summary carries: enough that a reader missing one exchange loses nothing. */
const RECENT_SLOTS = 3;

export class TrafficExchange {
  private readonly others = new Map<string, ReplicaTraffic>();
  private failing = false;

  constructor(
    private readonly o: {
      shared: SharedStore;
      /** This replica's own figures (the traffic thread answers). */
      traffic: { snapshot(replica: string, recentSlots: number): ReplicaTraffic | Promise<ReplicaTraffic> };
      logger: Logger;
    },
  ) {}

  /** Publishes this replica's summary and folds in the others' latest ones. */
  async exchange(): Promise<void> {
    const { shared, traffic } = this.o;
    try {
      await shared.publishTraffic(JSON.stringify(await traffic.snapshot(shared.replicaId, RECENT_SLOTS)));
      const all = await shared.listTraffic();
      for (const id of this.others.keys()) if (!all.has(id)) this.others.delete(id);
      for (const [id, text] of all) {
        if (id === shared.replicaId) continue;
        try {
          this.others.set(id, foldReplica(this.others.get(id), JSON.parse(text) as ReplicaTraffic));
        } catch {
          // a summary this version cannot read: leave that replica out
        }
      }
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.o.logger.warn({ err: errorMessage(err) }, 'traffic summaries not exchanged');
      this.failing = true;
    }
  }

  /** The other replicas' figures as last read. */
  replicas(): ReplicaTraffic[] {
    return [...this.others.values()];
  }
}
