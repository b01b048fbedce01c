// One agent: a Docker watcher that reports whole snapshots, and an exec runner that enforces this
// host's allow-list. The same assembly serves `berth agent` (reporting over a WebSocket) and the
// local agent of `berth standalone` (connected in-process); only the link differs.
import { existsSync } from 'node:fs';
import type { WatchConfig } from '../config.js';
import type { Logger } from '../log.js';
import { type MetricFamily, simple } from '../metrics.js';
import type { ExecEvent, ExecRequest, Heartbeat } from '../model/protocol.js';
import type { Snapshot } from '../model/types.js';
import { createDockerSource, type DockerSource } from './docker.js';
import { rulesFor } from './exec-policy.js';
import { loadExecPolicy } from './exec-policy-file.js';
import { ExecRunner } from './exec-runner.js';
import { DockerWatcher } from './watcher.js';

/** Where an agent's reports go: its link to the server, whichever kind. */
export interface AgentOutput {
  publish(s: Snapshot): void;
  execEvent(e: ExecEvent): void;
}

export type HeartbeatFields = Omit<Heartbeat, 'type' | 'version' | 'intervalMs'>;

export class Agent {
  private watcher?: DockerWatcher;
  readonly runner: ExecRunner;
  private readonly source: DockerSource;
  private readonly policy: ReturnType<typeof loadExecPolicy>;

  constructor(
    private readonly o: {
      watch: WatchConfig;
      logger: Logger;
      output: AgentOutput;
      /** A ready source (tests, benches); otherwise one for `watch.docker`. */
      source?: DockerSource;
    },
  ) {
    this.source = o.source ?? createDockerSource(o.watch.docker);
    // A bad policy file stops the agent at start, with the file and the problem named.
    this.policy = loadExecPolicy(o.watch.execPolicy);
    this.runner = new ExecRunner({
      source: this.source,
      policy: this.policy,
      labelPrefix: o.watch.labelPrefix,
      logger: o.logger.child({ component: 'exec' }),
      send: (e) => o.output.execEvent(e),
    });
  }

  /** Starts watching Docker with this host IP, or moves to a new one. */
  setHostIp(hostIp: string, chosen: string): void {
    if (this.watcher) {
      this.watcher.setHostIp(hostIp);
      return;
    }
    this.o.logger.info({ hostIp, chosen }, 'host IP for published and host-network ports');
    const { watch } = this.o;
    this.watcher = new DockerWatcher({
      agentId: 'self', // the link (or the server) puts the agent's own id in every snapshot
      source: this.source,
      ctx: {
        hostIp,
        labelPrefix: watch.labelPrefix,
        network: watch.network,
        dialects: watch.dialects,
        caddyLabelPrefix: watch.caddyLabelPrefix,
        ...(watch.traefikDefaultRule ? { traefikDefaultRule: watch.traefikDefaultRule } : {}),
        ...(watch.traefikOutsideMiddlewares
          ? { traefikOutsideMiddlewares: watch.traefikOutsideMiddlewares }
          : {}),
      },
      logger: this.o.logger.child({ component: 'watcher' }),
      resyncIntervalMs: watch.resyncIntervalMs,
      swarmUpstream: watch.swarmUpstream,
      swarmPollMs: watch.swarmPollMs,
      execRules: (c) => rulesFor(c, this.policy, watch.labelPrefix),
      onSnapshot: (s) => this.o.output.publish(s),
    });
    this.watcher.start();
  }

  handleExec(req: ExecRequest): Promise<void> {
    return this.runner.handle(req);
  }

  /** The latest snapshot again (the server asked for a resync). */
  resend(): void {
    const s = this.watcher?.current;
    if (s) this.o.output.publish(s);
  }

  get dockerConnected(): boolean {
    return this.watcher?.isConnected ?? false;
  }

  heartbeat(): HeartbeatFields {
    const s = this.watcher?.current;
    return {
      dockerVersion: this.watcher?.dockerVersion,
      dockerConnected: this.dockerConnected,
      containers: s?.containers.length ?? 0,
      routes: s?.routes.length ?? 0,
      generation: s?.generation ?? 0,
      hostIp: s?.hostIp,
    };
  }

  /** The agent's own figures, for its /metrics (the link adds its own). */
  metrics(): MetricFamily[] {
    const s = this.watcher?.current;
    return [
      simple('berth_agent_docker_connected', 'Whether Docker answers', 'gauge', this.dockerConnected ? 1 : 0),
      simple('berth_agent_containers', 'Containers on this host', 'gauge', s?.containers.length ?? 0),
      simple(
        'berth_agent_routes',
        'Routes from this host (HTTP and TCP)',
        'gauge',
        (s?.routes.length ?? 0) + (s?.tcp?.length ?? 0),
      ),
      simple('berth_agent_exec_requests_total', 'Exec requests by outcome', 'counter', [
        [{ outcome: 'allowed' }, this.runner.counters.allowed],
        [{ outcome: 'denied' }, this.runner.counters.denied],
        [{ outcome: 'busy' }, this.runner.counters.busy],
      ]),
    ];
  }

  stop(): void {
    this.watcher?.stop();
  }
}

/** Docker on this machine → loopback reaches its ports; a remote engine → that engine's address. */
export function defaultHostIp(endpoint: string): string {
  if (endpoint.startsWith('unix://') || endpoint.startsWith('/') || existsSync(endpoint)) return '127.0.0.1';
  try {
    return new URL(endpoint.replace(/^tcp:/, 'http:')).hostname || '127.0.0.1';
  } catch {
    return '127.0.0.1';
  }
}
