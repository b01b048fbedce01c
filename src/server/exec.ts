// Exec requests on the server side: find the container (or a Swarm service's task) and its
// agent, pass the request over that agent's connection, stream the events back, and audit every
// request whatever its outcome. A command that has started is never retried: if the agent's
// connection drops, the caller is told the command may have run.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { UserError } from '../errors.js';
import type { ExecEvent, ExecRequest, ExecResult } from '../model/protocol.js';
import type { AuditEntry, Store } from '../store/store.js';
import type { Registry } from './registry.js';

export interface ExecTarget {
  agentId: string;
  agentName: string;
  containerId: string;
  containerName: string;
}

export interface ExecCall {
  target: string;
  agent?: string;
  argv: string[];
  timeoutMs: number;
  requester: string;
}

/** How a request reaches an agent: the hub for remote agents, a direct call for the local one. */
export type ExecChannel = (agentId: string, req: ExecRequest) => boolean;

interface Pending {
  agentId: string;
  started: boolean;
  onEvent: (e: ExecEvent) => void;
}

export class ExecBroker {
  private readonly pending = new Map<string, Pending>();
  counters = { requests: 0, allowed: 0, denied: 0, errors: 0 };

  constructor(
    private readonly o: {
      registry: Registry;
      store: Store;
      logger: Logger;
      channel: ExecChannel;
      isConnected: (agentId: string) => boolean;
      /** Told of every finished request (the audit entry as stored). */
      onAudit?: (entry: AuditEntry) => void;
    },
  ) {}

  /** Container id (or prefix), name, or service name → the one container and its agent. */
  resolve(target: string, agentRef?: string): ExecTarget {
    const matches: ExecTarget[] = [];
    const services: ExecTarget[] = [];
    for (const a of this.o.registry.listAgents()) {
      if (agentRef && a.id !== agentRef && a.name !== agentRef) continue;
      for (const c of this.o.registry.snapshotOf(a.id)?.containers ?? []) {
        const t = { agentId: a.id, agentName: a.name, containerId: c.id, containerName: c.name };
        if (c.name === target || c.id === target || (target.length >= 12 && c.id.startsWith(target)))
          matches.push(t);
        else if (c.service === target && c.state === 'running') services.push(t);
      }
    }
    const found = matches.length > 0 ? matches : services.slice(0, 1);
    if (found.length === 0) {
      throw new UserError(
        'NOT_FOUND',
        `no container or service "${target}"${agentRef ? ` on agent ${agentRef}` : ''}`,
      );
    }
    if (matches.length > 1) {
      throw new UserError(
        'CONFLICT',
        `"${target}" names containers on several agents (${matches.map((m) => m.agentName).join(', ')}); pick one with --agent`,
      );
    }
    return found[0]!;
  }

  /**
   * Runs one request. `onEvent` sees every event; the returned promise settles when the
   * request is over. Failures before the command starts are thrown as UserErrors.
   */
  async run(call: ExecCall, onEvent: (e: ExecEvent) => void, serverRules?: string[]): Promise<void> {
    this.counters.requests++;
    const started = Date.now();
    const audit: AuditEntry = {
      id: `ex_${randomBytes(6).toString('hex')}`,
      at: started,
      requester: call.requester,
      agentId: '',
      agentName: call.agent ?? '',
      container: call.target,
      argv: call.argv,
      decision: 'error',
    };
    const finish = async (patch: Partial<AuditEntry>) => {
      Object.assign(audit, patch);
      if (audit.decision === 'allowed') this.counters.allowed++;
      else if (audit.decision === 'denied') this.counters.denied++;
      else this.counters.errors++;
      await this.o.store.addAudit(audit);
      this.o.onAudit?.(audit);
    };
    let target: ExecTarget;
    try {
      target = this.resolve(call.target, call.agent);
    } catch (err) {
      await finish({ reason: (err as Error).message });
      throw err;
    }
    Object.assign(audit, {
      agentId: target.agentId,
      agentName: target.agentName,
      container: target.containerName,
    });
    if (!(await this.waitConnected(target.agentId, 5_000))) {
      const err = new UserError('AGENT_OFFLINE', `agent ${target.agentName} is offline; nothing was run`);
      await finish({ reason: err.message });
      throw err;
    }

    const id = audit.id;
    await new Promise<void>((resolve, reject) => {
      const p: Pending = {
        agentId: target.agentId,
        started: false,
        onEvent: (e) => {
          switch (e.type) {
            case 'exec.started':
              p.started = true;
              onEvent(e);
              return;
            case 'exec.output':
              onEvent(e);
              return;
            case 'exec.exit': {
              this.pending.delete(id);
              const { type: _t, id: _i, ...result } = e;
              onEvent(e);
              void finish({ decision: 'allowed', ...(result as ExecResult) }).then(resolve, reject);
              return;
            }
            case 'exec.denied':
              this.pending.delete(id);
              void finish({ decision: 'denied', reason: e.reason }).then(
                () =>
                  reject(
                    new UserError('EXEC_DENIED', `denied by agent ${target.agentName}: ${e.reason}`, {
                      considered: e.considered,
                    }),
                  ),
                reject,
              );
              return;
            case 'exec.error': {
              this.pending.delete(id);
              const code = e.code === 'NOT_FOUND' ? 'NOT_FOUND' : e.code === 'BUSY' ? 'BUSY' : 'EXEC_FAILED';
              const err = new UserError(code, `agent ${target.agentName}: ${e.message}`);
              void finish({ decision: 'error', reason: err.message }).then(() => {
                if (p.started) {
                  onEvent(e);
                  resolve();
                } else reject(err);
              }, reject);
              return;
            }
          }
        },
      };
      this.pending.set(id, p);
      const req: ExecRequest = {
        type: 'exec',
        id,
        container: target.containerId,
        argv: call.argv,
        timeoutMs: call.timeoutMs,
      };
      if (serverRules) req.serverRules = serverRules;
      if (!this.o.channel(target.agentId, req)) {
        this.pending.delete(id);
        const err = new UserError('AGENT_OFFLINE', `agent ${target.agentName} went offline; nothing was run`);
        void finish({ reason: err.message }).then(() => reject(err), reject);
      }
    });
  }

  /** An agent's events arrive here; anything for an unknown id is ignored. */
  onAgentEvent(agentId: string, e: ExecEvent): void {
    const p = this.pending.get(e.id);
    if (p && p.agentId === agentId) p.onEvent(e);
  }

  /** The agent's connection is gone: every request on it ends, and none is retried. */
  onAgentGone(agentId: string): void {
    for (const [id, p] of this.pending) {
      if (p.agentId !== agentId) continue;
      p.onEvent({
        type: 'exec.error',
        id,
        code: 'FAILED',
        message: p.started
          ? 'the connection to the agent was lost while the command ran; it may have completed and is not retried'
          : 'the connection to the agent was lost before the command started; nothing was run',
      });
    }
  }

  private async waitConnected(agentId: string, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.o.isConnected(agentId)) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 100));
    }
    return true;
  }
}
