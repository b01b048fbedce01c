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
  /** The Swarm node (hostname) the container runs on, when the agent is in a swarm. */
  node?: string;
}

/** Which task of a Swarm service: on this node (hostname or id), with this slot. */
export interface TaskPick {
  node?: string;
  slot?: number;
}

export interface ExecCall extends TaskPick {
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

/** Past a request's timeout, how long an agent has to report its end (it kills at the timeout). */
const EXEC_END_GRACE_MS = 45_000;
/** The most output relayed for one request: well over any agent policy's usual maxOutputBytes (1 MiB). */
const MAX_EXEC_OUTPUT_BYTES = 64 << 20;

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
      /** Past the request's timeout, how long the agent has to report the end (tests shorten it). */
      graceMs?: number;
      /** The most output the server relays for one request (decoded bytes). */
      maxOutputBytes?: number;
    },
  ) {}

  /**
   * Container id (or prefix), name, or service name → the one container and its agent. A Swarm
   * service's task may run on any node: the one picked runs through the agent on its node.
   */
  resolve(target: string, agentRef?: string, pick: TaskPick = {}): ExecTarget {
    const matches: ExecTarget[] = [];
    const services: (ExecTarget & { nodeId?: string; slot?: number; connected: boolean })[] = [];
    for (const a of this.o.registry.listAgents()) {
      if (agentRef && a.id !== agentRef && a.name !== agentRef) continue;
      const snap = this.o.registry.snapshotOf(a.id);
      const sw = snap?.swarm;
      for (const c of snap?.containers ?? []) {
        const t: ExecTarget = { agentId: a.id, agentName: a.name, containerId: c.id, containerName: c.name };
        if (sw) t.node = sw.nodeName;
        if (c.name === target || c.id === target || (target.length >= 12 && c.id.startsWith(target)))
          matches.push(t);
        else if (c.service === target && c.state === 'running')
          services.push({
            ...t,
            ...(sw ? { nodeId: sw.nodeId } : {}),
            ...(slotOf(c.name, target) !== undefined ? { slot: slotOf(c.name, target) } : {}),
            connected: this.o.isConnected(a.id),
          });
      }
    }
    if (matches.length > 1) {
      throw new UserError(
        'CONFLICT',
        `"${target}" names containers on several agents (${matches.map((m) => m.agentName).join(', ')}); pick one with --agent`,
      );
    }
    if (matches.length === 1 && pick.node === undefined && pick.slot === undefined) return matches[0]!;
    const picked = services
      .filter((s) => pick.node === undefined || s.node === pick.node || s.nodeId === pick.node)
      .filter((s) => pick.slot === undefined || s.slot === pick.slot)
      // An agent that is connected first, then the lowest slot, so the same task is picked each time.
      .sort(
        (a, b) =>
          Number(b.connected) - Number(a.connected) ||
          (a.slot ?? 0) - (b.slot ?? 0) ||
          a.containerId.localeCompare(b.containerId),
      );
    if (picked[0]) {
      const { nodeId: _n, slot: _s, connected: _c, ...t } = picked[0];
      return t;
    }
    // The leader knows tasks on nodes whose agent is missing: say which node lacks one.
    const missing = this.taskWithoutAgent(target, pick);
    if (missing) throw new UserError('AGENT_OFFLINE', missing);
    const where = [
      agentRef ? `on agent ${agentRef}` : '',
      pick.node !== undefined ? `on node ${pick.node}` : '',
      pick.slot !== undefined ? `with task slot ${pick.slot}` : '',
    ]
      .filter(Boolean)
      .join(' ');
    throw new UserError('NOT_FOUND', `no container or service "${target}"${where ? ` ${where}` : ''}`);
  }

  /** A running task of the service that the swarm's leader reports, on a node where no agent reports it. */
  private taskWithoutAgent(service: string, pick: TaskPick): string | undefined {
    for (const { snapshot } of this.o.registry.reporting()) {
      const sw = snapshot.swarm;
      if (!sw?.services || !(sw.leader || sw.heldSince !== undefined)) continue;
      const svc = sw.services.find((s) => s.name === service);
      if (!svc) continue;
      for (const t of svc.tasks) {
        const node = sw.nodes?.find((n) => n.id === t.node);
        const name = node?.hostname ?? t.node;
        if (pick.node !== undefined && pick.node !== name && pick.node !== t.node) continue;
        if (pick.slot !== undefined && pick.slot !== t.slot) continue;
        return `task ${service}.${t.slot ?? t.node} runs on node ${name}${node?.addr ? ` (${node.addr})` : ''}, where no agent reports it; run berth agent on that node (nothing was run)`;
      }
    }
    return undefined;
  }

  /**
   * Runs one request. `onEvent` sees every event; the returned promise settles when the
   * request is over. Failures before the command starts are thrown as UserErrors.
   */
  /**
   * `rules`: the server's narrowing for the request's agent (its key's --exec-allow), or how to
   * find it once the target is known, so that a target that resolves to nothing is audited too.
   */
  async run(
    call: ExecCall,
    onEvent: (e: ExecEvent) => void,
    rules?: string[] | ((agentId: string) => string[] | undefined),
  ): Promise<void> {
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
      target = this.resolve(call.target, call.agent, { node: call.node, slot: call.slot });
    } catch (err) {
      await finish({ reason: (err as Error).message });
      throw err;
    }
    Object.assign(audit, {
      agentId: target.agentId,
      agentName: target.agentName,
      container: target.containerName,
      ...(target.node ? { node: target.node } : {}),
    });
    if (!(await this.waitConnected(target.agentId, 5_000))) {
      const err = new UserError(
        'AGENT_OFFLINE',
        `agent ${target.agentName}${target.node ? ` (on Swarm node ${target.node})` : ''} is offline; nothing was run`,
      );
      await finish({ reason: err.message });
      throw err;
    }

    const id = audit.id;
    const graceMs = this.o.graceMs ?? EXEC_END_GRACE_MS;
    const maxOutput = this.o.maxOutputBytes ?? MAX_EXEC_OUTPUT_BYTES;
    let output = 0;
    let deadline: NodeJS.Timeout | undefined;
    // A hostile or stuck agent cannot hold a request open, or stream into it, without end.
    const giveUp = (p: Pending, message: string) =>
      p.onEvent({ type: 'exec.error', id, code: 'FAILED', message });
    await new Promise<void>((resolve, reject) => {
      const p: Pending = {
        agentId: target.agentId,
        started: false,
        onEvent: (e) => {
          if (e.type !== 'exec.started' && e.type !== 'exec.output') clearTimeout(deadline);
          switch (e.type) {
            case 'exec.started':
              p.started = true;
              onEvent(e);
              return;
            case 'exec.output':
              // base64: three bytes for every four characters.
              output += Math.floor((e.data.length * 3) / 4);
              if (output > maxOutput) {
                giveUp(
                  p,
                  `the command's output passed ${maxOutput} bytes, the most the server relays for one request; the request ends here (the agent's own cap is its policy's maxOutputBytes)`,
                );
                return;
              }
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
      const serverRules = typeof rules === 'function' ? rules(target.agentId) : rules;
      if (serverRules) req.serverRules = serverRules;
      if (!this.o.channel(target.agentId, req)) {
        this.pending.delete(id);
        const err = new UserError('AGENT_OFFLINE', `agent ${target.agentName} went offline; nothing was run`);
        void finish({ reason: err.message }).then(() => reject(err), reject);
        return;
      }
      // setTimeout fires at once past 2^31 - 1 ms (about 24.8 days): a longer --timeout waits that long.
      const waitMs = Math.min(call.timeoutMs + graceMs, 2 ** 31 - 1);
      deadline = setTimeout(
        () =>
          giveUp(
            p,
            `agent ${target.agentName} reported no end within ${waitMs} ms (the timeout and ${graceMs} ms to stop the command); the request ends here, and the command may still be running`,
          ),
        waitMs,
      );
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

/** The slot of a Swarm task container (`<service>.<slot>.<task id>`), if the name has one. */
function slotOf(name: string, service: string): number | undefined {
  if (!name.startsWith(`${service}.`)) return undefined;
  const part = name.slice(service.length + 1).split('.')[0] ?? '';
  return /^\d+$/.test(part) ? Number(part) : undefined;
}
