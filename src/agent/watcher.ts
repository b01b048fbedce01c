// Watches one Docker engine and produces whole snapshots. Level-triggered: an event only wakes
// a full re-list, a periodic re-list repairs anything missed, and a lost connection is retried
// with backoff. While Docker is unreachable the last snapshot stands: an outage is not "no containers".
import { createHash, randomUUID } from 'node:crypto';
import type { ExtractContext } from '../labels/index.js';
import type { Logger } from '../log.js';
import type { ContainerInfo, Snapshot } from '../model/types.js';
import type { DockerSource } from './docker.js';
import { snapshotContent, withServices } from './snapshot.js';
import { type SwarmState, type SwarmUpstream, serviceRoutes } from './swarm.js';

const WAKE_ACTIONS = [
  'start',
  'die',
  'stop',
  'destroy',
  'health_status',
  'rename',
  'update',
  'pause',
  'unpause',
  'kill',
];

/** How often a host outside a swarm, or a worker, asks Docker whether that changed. */
const SWARM_RECHECK_MS = 5_000;

export interface WatcherOptions {
  agentId: string;
  source: DockerSource;
  ctx: ExtractContext;
  logger: Logger;
  onSnapshot: (s: Snapshot) => void;
  resyncIntervalMs?: number;
  /** The exec rules that apply to a container here, reported so people can pick a command. */
  execRules?: (c: ContainerInfo) => string[];
  /** Quiet period that gathers a burst of events into one re-list. */
  debounceMs?: number;
  /** Where Swarm service routes go, on the leader (--swarm-upstream). */
  swarmUpstream?: SwarmUpstream;
  /** How often the swarm leader re-lists tasks, which have no events (--swarm-poll). */
  swarmPollMs?: number;
}

export class DockerWatcher {
  private generation = 0;
  private lastHash = '';
  private last?: Snapshot;
  private timer?: NodeJS.Timeout;
  private resync?: NodeJS.Timeout;
  private stopEvents?: () => void;
  private running = false;
  private again = false;
  private stopped = false;
  private connected = false;
  private backoffMs = 250;
  private swarmPoll?: NodeJS.Timeout;
  /** The last container list: the leader's task poll re-reads the swarm only, not every container. */
  private lastContainers?: ContainerInfo[];
  /** The last swarm view read; kept when a swarm call fails, as containers are kept when Docker is away. */
  private swarmState?: SwarmState;
  private swarmReadAt = 0;
  /** A service or node event came: the swarm is read again on the next pass, whatever the node. */
  private swarmEvent = true;
  /** Names this agent's replica groups: its identical containers never join another agent's. */
  private readonly replicaScope = randomUUID();
  dockerVersion?: string;

  constructor(private readonly o: WatcherOptions) {}

  get current(): Snapshot | undefined {
    return this.last;
  }

  get isConnected(): boolean {
    return this.connected;
  }

  /** The host IP became known or changed: routes are re-read with the new address. */
  setHostIp(hostIp: string): void {
    if (this.o.ctx.hostIp === hostIp) return;
    this.o.ctx = { ...this.o.ctx, hostIp };
    this.wake();
  }

  start(): void {
    void this.connect();
    this.resync = setInterval(() => this.wake(), this.o.resyncIntervalMs ?? 30_000);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.resync);
    clearInterval(this.swarmPoll);
    this.stopEvents?.();
  }

  wake(): void {
    if (this.stopped || !this.connected) return;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.pass();
    }, this.o.debounceMs ?? 50);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const { source, logger } = this.o;
    try {
      this.dockerVersion = await source.version();
      this.stopEvents = await source.events(
        (e) => {
          if (e.type === 'service' || e.type === 'node') {
            this.swarmEvent = true;
            this.wake();
          } else if (e.type === 'container' && WAKE_ACTIONS.some((a) => e.action.startsWith(a))) this.wake();
        },
        (err) => this.lost(err ?? new Error('event stream ended')),
      );
      this.connected = true;
      this.backoffMs = 250;
      logger.info({ docker: source.endpoint, version: this.dockerVersion }, 'connected to docker');
      await this.pass();
    } catch (err) {
      this.lost(err as Error);
    }
  }

  private lost(err: Error): void {
    if (this.stopped) return;
    const wasConnected = this.connected;
    this.connected = false;
    this.stopEvents?.();
    this.stopEvents = undefined;
    const delay = this.backoffMs * (0.5 + Math.random());
    this.backoffMs = Math.min(this.backoffMs * 2, 15_000);
    const log = wasConnected
      ? this.o.logger.warn.bind(this.o.logger)
      : this.o.logger.debug.bind(this.o.logger);
    log(
      { docker: this.o.source.endpoint, err: err.message, retryInMs: Math.round(delay) },
      'docker connection lost; retrying',
    );
    setTimeout(() => void this.connect(), delay).unref?.();
  }

  /** One full re-list; concurrent wakes fold into one more pass. */
  private async pass(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        let containers: ContainerInfo[];
        try {
          containers = await this.o.source.list();
        } catch (err) {
          this.lost(err as Error);
          return;
        }
        await this.readSwarm();
        this.lastContainers = containers;
        this.publish(containers);
      } while (this.again && !this.stopped);
    } finally {
      this.running = false;
    }
  }

  /**
   * The swarm view, if the engine is in a swarm. Only the leader lists services and tasks, and it
   * polls them (tasks have no events); any other node polls nothing and reports who it is.
   */
  private async readSwarm(): Promise<void> {
    if (!this.o.source.swarm) return;
    // Outside a swarm or on a worker the answer rarely changes: asked at most every few seconds
    // (and at once after a service or node event), not on every container event.
    const now = Date.now();
    if (!this.swarmState?.manager && !this.swarmEvent && now - this.swarmReadAt < SWARM_RECHECK_MS) return;
    this.swarmEvent = false;
    this.swarmReadAt = now;
    try {
      this.swarmState = await this.o.source.swarm();
    } catch (err) {
      this.o.logger.debug({ err: (err as Error).message }, 'cannot read the swarm; the last view stands');
    }
    const leader = this.swarmState?.leader === true;
    if (leader && !this.swarmPoll) {
      this.swarmPoll = setInterval(() => void this.swarmTick(), this.o.swarmPollMs ?? 500);
      this.swarmPoll.unref?.();
    } else if (!leader && this.swarmPoll) {
      clearInterval(this.swarmPoll);
      this.swarmPoll = undefined;
    }
  }

  /** The leader's task poll: the swarm read again, the containers as last listed. */
  private async swarmTick(): Promise<void> {
    if (this.stopped || !this.connected || this.running || this.timer) return; // a pass is due anyway
    const containers = this.lastContainers;
    if (!containers) return this.wake();
    this.running = true;
    try {
      await this.readSwarm();
      if (!this.stopped) this.publish(containers);
    } finally {
      this.running = false;
    }
    // A wake that came meanwhile found us running: its pass runs now.
    if (this.again) {
      this.again = false;
      void this.pass();
    }
  }

  private publish(containers: ContainerInfo[]): void {
    const sr = this.swarmState && serviceRoutes(this.swarmState, this.o.ctx, this.o.swarmUpstream);
    const {
      containers: summaries,
      routes,
      tcp,
      diagnostics,
      swarm,
    } = withServices(
      snapshotContent(containers, this.o.ctx, {
        execRules: this.o.execRules,
        replicaScope: this.replicaScope,
      }),
      sr,
    );
    const body = JSON.stringify({ summaries, routes, tcp, diagnostics, swarm, hostIp: this.o.ctx.hostIp });
    const hash = createHash('sha256').update(body).digest('hex');
    if (hash === this.lastHash) return;
    this.lastHash = hash;
    // Time-based generations stay monotonic across agent restarts without persisting a counter.
    this.generation = Math.max(this.generation + 1, Date.now());
    this.last = {
      agentId: this.o.agentId,
      generation: this.generation,
      hostIp: this.o.ctx.hostIp,
      takenAt: Date.now(),
      containers: summaries,
      routes,
      tcp,
      diagnostics,
      ...(swarm ? { swarm } : {}),
    };
    this.o.onSnapshot(this.last);
  }
}
