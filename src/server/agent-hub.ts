// Remote agents connect here: one WebSocket each, authenticated by the agent key at upgrade.
// Bad keys get 401 before any WebSocket exists and leave no trace; repeated failures from one
// client are refused for a while. Revoking a key or removing an agent closes its socket at once.
// An agent is not trusted: a message over --agent-max-message closes the connection before it
// is read; snapshots are checked item by item, a few thousand at a time, and each agent's are
// paced (the latest one wins), so one agent sending its worst cannot stall the server.
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
// Before ws, which reads the masking functions when it loads.
import '../net/ws-mask.js';
import { type RawData, type WebSocket, WebSocketServer } from 'ws';
import { isLoopbackHost } from '../config.js';
import { errorMessage, UserError } from '../errors.js';
import { LogGate } from '../log-gate.js';
import { Histogram } from '../metrics.js';
import { DEFAULT_MAX_MESSAGE_BYTES } from '../model/limits.js';
import {
  AGENT_PATH,
  type AgentMessage,
  checkAgentMessage,
  compileAgentChecks,
  type ExecEvent,
  type Heartbeat,
  parseAgentMessageAsync,
  type ServerMessage,
  type SnapshotMessage,
  type TunnelFailed,
} from '../model/protocol.js';
import { TUNNEL_PATH, TUNNEL_SESSIONS_HEADER } from '../model/tunnel.js';
import type { KeyRecord } from '../store/store.js';
import {
  clientAddress,
  DEFAULT_TRUSTED_PROXIES,
  normaliseAddress,
  type TrustedProxies,
  trustedProxies,
} from './client-address.js';
import { refuseUpgrade as refuse } from './refuse-upgrade.js';
import type { Registry } from './registry.js';

/** A connected agent's way back, whatever carries it. */
export interface Channel {
  send(msg: ServerMessage): void;
  close(code: number, reason: string): void;
}

/** What the in-process agent uses to talk to the hub. */
export interface LocalConnection {
  receive(msg: unknown): void;
  /** The local agent stopped. */
  gone(): void;
}

export interface ExecListener {
  onAgentEvent(agentId: string, e: ExecEvent): void;
  onAgentGone(agentId: string): void;
}

export interface HubOptions {
  registry: Registry;
  logger: Logger;
  heartbeatMs: number;
  /** Failed attempts per client per window before refusing with 429. */
  maxFailures?: number;
  failureWindowMs?: number;
  /** The largest agent message read; a bigger one closes the connection unread. */
  maxMessageBytes?: number;
  /** Whose X-Forwarded-For is believed for the client address. */
  trustedProxies?: TrustedProxies;
  /** Where agents' exec events go, and who hears that an agent is gone (the exec broker). */
  exec?: ExecListener;
  /** Tunnels (`berth agent --tunnel`): data connections, stream failures, agents gone. */
  tunnel?: TunnelListener;
}

export interface TunnelListener {
  /** The most streams per agent this server allows; said in the welcome. */
  readonly maxStreams: number;
  attachData(
    key: KeyRecord,
    headers: Record<string, string | string[] | undefined>,
    socket: Duplex,
    head: Buffer,
  ): void;
  failed(agentId: string, m: TunnelFailed): void;
  /** The agent's WebSocket connected: the token its data connections must name (see TunnelBroker). */
  openSession(agentId: string, tokens: boolean): string | undefined;
  agentGone(agentId: string): void;
}

/** Clients whose failures are remembered at once; beyond it the oldest are forgotten. */
const MAX_TRACKED_CLIENTS = 10_000;
/** After a snapshot took T ms to check and store, that agent's next waits at least this × T. */
const SNAPSHOT_PACING = 4;

export class AgentHub {
  private readonly wss: WebSocketServer;
  /** Each connected agent's way back: its WebSocket, or the in-process link. */
  private readonly channels = new Map<string, Channel>();
  private readonly failures = new Map<string, { count: number; since: number }>();
  private readonly gate: LogGate;
  private readonly trusted: TrustedProxies;
  readonly maxMessageBytes: number;
  private closing = false;
  counters = {
    connects: 0,
    rejected: 0,
    rateLimited: 0,
    messages: 0,
    invalidMessages: 0,
    oversizeMessages: 0,
    snapshotsSuperseded: 0,
  };
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
  private readonly exec?: ExecListener;

  constructor(private readonly o: HubOptions) {
    this.maxMessageBytes = o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    compileAgentChecks();
    // perMessageDeflate stays off: a compressed message could expand past every limit.
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: this.maxMessageBytes,
      perMessageDeflate: false,
    });
    this.gate = new LogGate(o.logger);
    this.trusted = o.trustedProxies ?? trustedProxies(DEFAULT_TRUSTED_PROXIES);
    this.exec = o.exec;
    o.registry.onDrop((ids, reason) => {
      for (const id of ids) this.channels.get(id)?.close(4003, reason.slice(0, 120));
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
    return this.channels.has(agentId);
  }

  send(agentId: string, msg: ServerMessage): boolean {
    const c = this.channels.get(agentId);
    if (!c) return false;
    c.send(msg);
    return true;
  }

  /**
   * The agent of `berth standalone`, in this process: the one place it is connected. Its messages
   * are values, checked with the same rules as a remote agent's text, and take the same path.
   */
  attachLocal(agentId: string, channel: Channel): LocalConnection {
    const log = this.o.logger.child({ agentId, local: true });
    this.channels.set(agentId, channel);
    this.counters.connects++;
    return {
      receive: (value) => {
        let msg: AgentMessage;
        try {
          msg = checkAgentMessage(value);
        } catch (err) {
          this.counters.invalidMessages++;
          const message = errorMessage(err);
          this.gate.warn(
            `invalid:${agentId}:${message.slice(0, 200)}`,
            { agentId, err: message },
            'invalid message from agent',
          );
          return;
        }
        void this.apply(agentId, log, msg);
      },
      gone: () => {
        if (this.channels.get(agentId) !== channel) return;
        this.channels.delete(agentId);
        this.o.registry.disconnected(agentId);
        this.exec?.onAgentGone(agentId);
      },
    };
  }

  close(): void {
    // Agents reconnect at once: to another replica, never back to this one while it stops.
    this.closing = true;
    for (const c of this.channels.values()) c.close(1001, 'server shutting down');
    this.wss.close();
    this.gate.close();
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const data = url.pathname === TUNNEL_PATH && this.o.tunnel !== undefined;
    if (url.pathname !== AGENT_PATH && !data)
      return refuse(socket, 404, 'NOT_FOUND', `no WebSocket endpoint at ${url.pathname}`);
    if (this.closing) return refuse(socket, 503, 'UNAVAILABLE', 'the server is shutting down');
    const ip = clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], this.trusted);
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
      if (!fails && this.failures.size >= MAX_TRACKED_CLIENTS) {
        const oldest = this.failures.keys().next().value;
        if (oldest !== undefined) this.failures.delete(oldest);
      }
      this.failures.set(ip, { count: (fails?.count ?? 0) + 1, since: fails?.since ?? now });
      const reason = m ? 'unknown, revoked or expired key' : 'no key';
      this.gate.warn(`refused:${ip}:${reason}`, { ip, reason }, 'agent refused');
      return refuse(
        socket,
        401,
        'UNAUTHORIZED',
        m ? 'unknown, revoked or expired agent key' : 'missing agent key',
      );
    }
    // In clear across a network: not TLS here, not TLS at a trusted proxy in front, not loopback.
    const encrypted = (req.socket as Partial<TLSSocket>).encrypted === true;
    const proxiedTls =
      req.headers['x-forwarded-proto'] === 'https' &&
      this.trusted(normaliseAddress(req.socket.remoteAddress ?? ''));
    const cleartext = !encrypted && !proxiedTls && !isLoopbackHost(ip);
    // A tunnel's data connection: the key is checked as the WebSocket's, and the stream must be
    // one this key's agent was asked for.
    if (data) {
      if (cleartext)
        this.gate.warn(
          `cleartext-data:${key.id}`,
          { key: key.name, ip },
          `a tunnel data connection of key ${key.name} came without TLS from ${ip}: the tunneled traffic crosses the network in clear; point the agent at this server's --agent-listen (https://…:7443)`,
        );
      return this.o.tunnel!.attachData(key, req.headers, socket, head);
    }
    const name = cleanHeader(req.headers['x-berth-agent-name'], 128) || ip;
    const agentId = cleanHeader(req.headers['x-berth-agent-id'], 64) || undefined;
    const version = cleanHeader(req.headers['x-berth-agent-version'], 64) || undefined;
    let agent: Awaited<ReturnType<Registry['register']>>;
    try {
      agent = await this.o.registry.register(key, { agentId, name, version, seenFrom: ip, cleartext });
    } catch (err) {
      if (!(err instanceof UserError)) throw err;
      this.counters.rateLimited++;
      this.gate.warn(`enrol:${key.id}:${err.code}`, { ip, key: key.name }, `agent refused: ${err.message}`);
      return refuse(socket, err.status, err.code, err.message);
    }
    if (cleartext)
      this.gate.warn(
        `cleartext:${agent.id}`,
        { agentId: agent.id, name, ip },
        `agent ${name} connected without TLS from ${ip}: its key, snapshots and exec output cross the network in clear; point it at this server's --agent-listen (https://…:7443)`,
      );
    const tokens = req.headers[TUNNEL_SESSIONS_HEADER] === '1';
    this.wss.handleUpgrade(req, socket, head, (ws) => this.connection(ws, agent.id, ip, tokens));
  }

  /** `tokens`: the agent names its connection on its tunnels' data connections (TUNNEL_SESSIONS_HEADER). */
  private connection(ws: WebSocket, agentId: string, ip: string, tokens: boolean): void {
    const log = this.o.logger.child({ agentId, ip });
    this.counters.connects++;
    const previous = this.channels.get(agentId);
    const channel: Channel = {
      send: (msg) => {
        if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg));
      },
      close: (code, reason) => ws.close(code, reason),
    };
    this.channels.set(agentId, channel);
    previous?.close(4000, 'replaced by a newer connection of the same agent');
    const session = this.o.tunnel?.openSession(agentId, tokens);
    const summary = this.o.registry.statusOf(agentId);
    log.info({ name: summary?.name, status: summary?.status }, 'agent connected');
    ws.send(
      JSON.stringify({
        type: 'welcome',
        agentId,
        status: summary?.status ?? 'pending',
        heartbeatMs: this.o.heartbeatMs,
        maxMessageBytes: this.maxMessageBytes,
        ...(this.o.tunnel
          ? { tunnel: { maxStreams: this.o.tunnel.maxStreams, ...(session ? { session } : {}) } }
          : {}),
      } satisfies ServerMessage),
    );
    const pace = new SnapshotPacer((raw) => this.handle(channel, agentId, log, raw));
    ws.on('message', (data, isBinary) => {
      this.counters.messages++;
      const raw = rawText(data);
      // Snapshots replace each other: when one waits for its turn, a newer one takes its place.
      if (!isBinary && raw.startsWith('{"type":"snapshot"')) {
        if (pace.offer(raw)) this.counters.snapshotsSuperseded++;
        return;
      }
      void this.handle(channel, agentId, log, isBinary ? '\u0000binary' : raw);
    });
    ws.on('close', (code, reason) => {
      pace.stop();
      if (this.channels.get(agentId) !== channel) return;
      this.channels.delete(agentId);
      this.o.registry.disconnected(agentId);
      this.exec?.onAgentGone(agentId);
      this.o.tunnel?.agentGone(agentId);
      log.info({ code, reason: reason.toString() }, 'agent disconnected');
    });
    ws.on('error', (err: Error & { code?: string }) => {
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        this.counters.oversizeMessages++;
        this.gate.warn(
          `oversize:${agentId}`,
          { agentId, limit: this.maxMessageBytes },
          `agent sent a message over --agent-max-message (${this.maxMessageBytes} bytes); connection closed`,
        );
        return;
      }
      this.gate.warn(
        `socket-error:${agentId}:${err.message}`,
        { agentId, err: err.message },
        'agent socket error',
      );
    });
  }

  /** One message: checked, then applied. Errors are answered and logged once per kind. */
  private async handle(channel: Channel, agentId: string, log: Logger, raw: string): Promise<void> {
    let msg: AgentMessage;
    try {
      if (raw === '\u0000binary')
        throw new Error('invalid message: binary frames are not part of the protocol');
      msg = await parseAgentMessageAsync(raw, this.maxMessageBytes);
    } catch (err) {
      this.counters.invalidMessages++;
      const message = errorMessage(err);
      this.gate.warn(
        `invalid:${agentId}:${message.slice(0, 200)}`,
        { agentId, err: message },
        'invalid message from agent',
      );
      channel.send({ type: 'error', message });
      return;
    }
    if (this.channels.get(agentId) !== channel) return; // replaced or closed meanwhile
    await this.apply(agentId, log, msg);
  }

  /** A checked message from a connected agent. */
  private async apply(agentId: string, log: Logger, msg: AgentMessage): Promise<void> {
    if (msg.type === 'snapshot') {
      // An agent speaks only for itself, whatever id it puts in the snapshot.
      const { snapshot, refused } = msg as SnapshotMessage;
      const s = { ...snapshot, agentId };
      if (refused) {
        s.diagnostics = [...s.diagnostics, ...refused];
        this.gate.warn(
          `refused-items:${agentId}`,
          { agentId, containers: refused.length, first: refused[0]?.message },
          'refused part of an agent snapshot',
        );
      }
      await this.o.registry
        .replaceAgentState(s)
        .catch((err) => log.error({ err: errorMessage(err) }, 'cannot store snapshot'));
    } else if (msg.type.startsWith('exec.')) {
      this.exec?.onAgentEvent(agentId, msg as ExecEvent);
    } else if (msg.type === 'heartbeat') {
      // sentAt (ms since epoch) is optional: older agents do not send it.
      const { type: _t, sentAt, ...info } = msg as Heartbeat & { sentAt?: unknown };
      if (typeof sentAt === 'number' && Number.isFinite(sentAt))
        this.heartbeatDelay.observe(Math.max(0, Date.now() - sentAt) / 1000);
      await this.o.registry
        .heartbeat(agentId, info)
        .catch((err) => log.error({ err: errorMessage(err) }, 'cannot store heartbeat'));
    } else if (msg.type === 'tunnel.failed') {
      this.o.tunnel?.failed(agentId, msg);
    } else if (msg.type === 'protocol.error') {
      this.gate.warn(
        `agent-error:${agentId}`,
        { agentId, message: msg.message },
        'agent could not use a server message',
      );
    }
  }
}

/**
 * Runs one agent's snapshots one at a time, and after each waits SNAPSHOT_PACING times as long as
 * it took: an agent can take a fifth of the server's time at most. Only the newest waiting
 * snapshot is kept, since each replaces the last.
 */
class SnapshotPacer {
  private waiting?: string;
  private busy = false;
  private timer?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly run: (raw: string) => Promise<void>) {}

  /** True when a waiting snapshot was replaced by this one. */
  offer(raw: string): boolean {
    const superseded = this.waiting !== undefined;
    this.waiting = raw;
    if (!this.busy) {
      // Parsing starts in a task of its own, not in the one that received the (maybe 8 MiB) frame.
      this.busy = true;
      setImmediate(() => void this.next());
    }
    return superseded;
  }

  stop(): void {
    this.stopped = true;
    this.waiting = undefined;
    clearTimeout(this.timer);
  }

  private async next(): Promise<void> {
    const raw = this.waiting;
    if (raw === undefined || this.stopped) return;
    this.waiting = undefined;
    this.busy = true;
    const started = performance.now();
    try {
      await this.run(raw);
    } finally {
      const took = performance.now() - started;
      // Small snapshots (most of them) go straight through; big ones wait their share.
      const wait = took < 5 ? 0 : took * SNAPSHOT_PACING;
      this.timer = setTimeout(() => {
        this.busy = false;
        void this.next();
      }, wait);
    }
  }
}

function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

/** A header an agent sends, as one bounded line of printable text. */
function cleanHeader(v: string | string[] | undefined, max: number): string {
  const s = Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is removed.
  const printable = s.replace(/[\u0000-\u001f\u007f-\u009f]/g, '');
  return printable.trim().slice(0, max);
}
