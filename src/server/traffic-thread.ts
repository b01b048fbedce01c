// The main thread's handle on the traffic worker (traffic-worker.ts): it starts it, hands it the
// routes and the TCP figures, and asks it for counts. Every answer is a message, so nothing the
// main loop does (a long reconcile pass) can hold up the reading of Caddy's request lines.
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { ListenerCounters } from '../ingress/tcp/forwarder.js';
import type { MetricFamily } from '../metrics.js';
import type { HostTraffic } from '../model/api.js';
import type { ReplicaTraffic, TrafficRoute } from './traffic.js';
import type { FromWorker, ToWorker, TrafficWorkerData } from './traffic-worker.js';

type Ask = Extract<ToWorker, { id: number }>;
type AskWithout<T extends Ask['type']> = Omit<Extract<Ask, { type: T }>, 'id' | 'type'>;

/**
 * The thread's young generation, at most (V8's default is the main thread's, 48 MiB): what it
 * allocates is a batch of request lines at a time, short-lived, but a new route list (50k routes
 * after a full pass) grows the young generation to its largest, and it stays that size in RSS.
 */
const TRAFFIC_YOUNG_GENERATION_MB = 12;

export class TrafficThread {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly waiting = new Map<number, (value: unknown) => void>();
  private readonly ready: Promise<string>;

  constructor(data: TrafficWorkerData, logger: Logger) {
    this.worker = new Worker(new URL('./traffic-worker.js', import.meta.url), {
      workerData: data,
      resourceLimits: { maxYoungGenerationSizeMb: TRAFFIC_YOUNG_GENERATION_MB },
    });
    this.worker.unref();
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') resolve(m.address);
        else if (m.type === 'reply') {
          this.waiting.get(m.id)?.(m.value);
          this.waiting.delete(m.id);
        } else if (m.type === 'log') {
          logger[m.level]({ component: 'traffic' }, m.message);
          if (m.level === 'error') reject(new Error(m.message));
        }
      });
      this.worker.on('error', (err) => {
        logger.error({ err: err.message }, 'the traffic thread failed');
        reject(err);
      });
    });
  }

  /** Resolves with the socket address Caddy's log writer names, once the worker listens. */
  start(): Promise<string> {
    return this.ready;
  }

  /**
   * What changed in the routes served: only that crosses to the thread (50k hosts would cost
   * ~100 ms a pass); with `reset`, `added` is the whole list.
   */
  patchRoutes(
    removed: { host: string; path: string }[],
    added: TrafficRoute[],
    o: { reset?: boolean } = {},
  ): void {
    if (o.reset || removed.length > 0 || added.length > 0)
      this.post({ type: 'routes', removed, added, reset: o.reset === true });
  }

  tick(tcp: Map<number, ListenerCounters>, active: Map<number, number>): void {
    this.post({ type: 'tick', tcp: [...tcp], active: [...active] });
  }

  snapshot(replica: string, recentSlots?: number): Promise<ReplicaTraffic> {
    return this.ask('snapshot', { replica, recentSlots }) as Promise<ReplicaTraffic>;
  }

  families(): Promise<MetricFamily[]> {
    return this.ask('families', {}) as Promise<MetricFamily[]>;
  }

  async owners(): Promise<Map<string, HostTraffic['owners']>> {
    return new Map((await this.ask('owners', {})) as [string, HostTraffic['owners']][]);
  }

  reopen(): void {
    this.post({ type: 'reopen' });
  }

  async stop(): Promise<void> {
    await Promise.race([this.ask('stop', {}), new Promise((r) => setTimeout(r, 2_000))]);
    await this.worker.terminate();
  }

  private post(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  private ask<T extends Ask['type']>(type: T, rest: AskWithout<T>): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.post({ type, id, ...rest } as unknown as ToWorker);
    });
  }
}
