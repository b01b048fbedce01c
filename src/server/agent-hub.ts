// Remote agents connect here: one WebSocket each, authenticated by the agent key at upgrade.
// Bad keys get 401 before any WebSocket exists and leave no trace; repeated failures from one
// address are refused for a while. Revoking a key or removing an agent closes its socket at once.
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { type WebSocket, WebSocketServer } from 'ws';
import { errorMessage } from '../errors.js';
import { Histogram } from '../metrics.js';
import {
  AGENT_PATH,
  type ExecEvent,
  type Heartbeat,
  parseAgentMessage,
  type ServerMessage,
} from '../model/protocol.js';
import type { Registry } from './registry.js';

export interface HubOptions {
  registry: Registry;
  logger: Logger;
  heartbeatMs: number;
  /** Failed attempts per address per window before refusing with 429. */
  maxFailures?: number;
  failureWindowMs?: number;
}

export class AgentHub {
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: 64 << 20 });
  private readonly sockets = new Map<string, WebSocket>();
  private readonly failures = new Map<string, { count: number; since: number }>();
  private closing = false;
  counters = { connects: 0, rejected: 0, rateLimited: 0, messages: 0, invalidMessages: 0 };
  /**
   * Receive time minus the `sentAt` an agent puts in its heartbeat: how late this server's event
   * loop reads agents' messages (plus the network). Clamped at 0; across machines it also carries
   * their clock offset.
   */
  readonly heartbeatDelay = new Histogram(
    'berth_heartbeat_delay_seconds',
    "Heartbeat receive time minus the agent's sentAt (clamped at 0; includes clock offset between machines)",
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  );
  /** Where exec events and lost connections go (the exec broker). */
  exec?: { onAgentEvent(agentId: string, e: ExecEvent): void; onAgentGone(agentId: string): void };

  constructor(private readonly o: HubOptions) {
    o.registry.onDrop((ids, reason) => {
      for (const id of ids) this.sockets.get(id)?.close(4003, reason.slice(0, 120));
    });
  }

  attach(server: Server): void {
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.upgrade(req, socket, head).catch((err) => {
        // The store is away (a shared store lost): the agent retries with backoff.
        this.o.logger.warn({ err: errorMessage(err) }, 'cannot accept an agent now');
        refuse(socket, 503, 'UNAVAILABLE', 'the server cannot reach its store; try again later');
      });
    });
  }

  connected(agentId: string): boolean {
    return this.sockets.has(agentId);
  }

  send(agentId: string, msg: ServerMessage): boolean {
    const ws = this.sockets.get(agentId);
    if (!ws) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  close(): void {
    // Agents reconnect at once: to another replica, never back to this one while it stops.
    this.closing = true;
    for (const ws of this.sockets.values()) ws.close(1001, 'server shutting down');
    this.wss.close();
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== AGENT_PATH)
      return refuse(socket, 404, 'NOT_FOUND', `no WebSocket endpoint at ${url.pathname}`);
    if (this.closing) return refuse(socket, 503, 'UNAVAILABLE', 'the server is shutting down');
    const ip = req.socket.remoteAddress ?? '?';
    const now = Date.now();
    const window = this.o.failureWindowMs ?? 60_000;
    const f = this.failures.get(ip);
    if (f && now - f.since > window) this.failures.delete(ip);
    const fails = this.failures.get(ip);
    if (fails && fails.count >= (this.o.maxFailures ?? 10)) {
      this.counters.rateLimited++;
      return refuse(
        socket,
        429,
        'RATE_LIMITED',
        'too many failed attempts from this address; try again later',
      );
    }
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    const key = m ? await this.o.registry.authenticate(m[1]!.trim()) : undefined;
    if (!key) {
      this.counters.rejected++;
      this.failures.set(ip, { count: (fails?.count ?? 0) + 1, since: fails?.since ?? now });
      this.o.logger.warn({ ip, reason: m ? 'unknown, revoked or expired key' : 'no key' }, 'agent refused');
      return refuse(
        socket,
        401,
        'UNAUTHORIZED',
        m ? 'unknown, revoked or expired agent key' : 'missing agent key',
      );
    }
    const name = String(req.headers['x-berth-agent-name'] ?? '').slice(0, 128) || ip;
    const agentId = String(req.headers['x-berth-agent-id'] ?? '') || undefined;
    const version = String(req.headers['x-berth-agent-version'] ?? '') || undefined;
    const agent = await this.o.registry.register(key, { agentId, name, version });
    this.wss.handleUpgrade(req, socket, head, (ws) => this.connection(ws, agent.id, ip));
  }

  private connection(ws: WebSocket, agentId: string, ip: string): void {
    const log = this.o.logger.child({ agentId, ip });
    this.counters.connects++;
    const previous = this.sockets.get(agentId);
    this.sockets.set(agentId, ws);
    previous?.close(4000, 'replaced by a newer connection of the same agent');
    const summary = this.o.registry.statusOf(agentId);
    log.info({ name: summary?.name, status: summary?.status }, 'agent connected');
    ws.send(
      JSON.stringify({
        type: 'welcome',
        agentId,
        status: summary?.status ?? 'pending',
        heartbeatMs: this.o.heartbeatMs,
      } satisfies ServerMessage),
    );
    ws.on('message', (data) => {
      this.counters.messages++;
      let msg: ReturnType<typeof parseAgentMessage>;
      try {
        msg = parseAgentMessage(data.toString());
      } catch (err) {
        this.counters.invalidMessages++;
        log.warn({ err: errorMessage(err) }, 'invalid message from agent');
        ws.send(JSON.stringify({ type: 'error', message: errorMessage(err) } satisfies ServerMessage));
        return;
      }
      if (msg.type === 'snapshot') {
        // An agent speaks only for itself, whatever id it puts in the snapshot.
        const snapshot = { ...msg.snapshot, agentId };
        this.o.registry
          .replaceAgentState(snapshot)
          .catch((err) => log.error({ err: errorMessage(err) }, 'cannot store snapshot'));
      } else if (msg.type.startsWith('exec.')) {
        this.exec?.onAgentEvent(agentId, msg as ExecEvent);
      } else if (msg.type === 'heartbeat') {
        // sentAt (ms since epoch) is optional: older agents do not send it.
        const { type: _t, sentAt, ...info } = msg as Heartbeat & { sentAt?: unknown };
        if (typeof sentAt === 'number' && Number.isFinite(sentAt))
          this.heartbeatDelay.observe(Math.max(0, Date.now() - sentAt) / 1000);
        this.o.registry
          .heartbeat(agentId, info)
          .catch((err) => log.error({ err: errorMessage(err) }, 'cannot store heartbeat'));
      }
    });
    ws.on('close', (code, reason) => {
      if (this.sockets.get(agentId) !== ws) return;
      this.sockets.delete(agentId);
      this.o.registry.disconnected(agentId);
      this.exec?.onAgentGone(agentId);
      log.info({ code, reason: reason.toString() }, 'agent disconnected');
    });
    ws.on('error', (err) => log.warn({ err: err.message }, 'agent socket error'));
  }
}

function refuse(socket: Duplex, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  const text =
    { 401: 'Unauthorized', 404: 'Not Found', 429: 'Too Many Requests', 503: 'Service Unavailable' }[status] ??
    'Error';
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
