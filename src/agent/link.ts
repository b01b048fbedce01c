// The agent's one outbound connection to the server. It reconnects with exponential backoff and
// jitter, sends the whole current snapshot on every (re)connect and change, and heartbeats.
// No inbound port is opened on the agent's host.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
// Before ws, which reads the masking functions when it loads.
import '../net/ws-mask.js';
import WebSocket from 'ws';
import { isLoopbackHost } from '../config.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { LogGate } from '../log-gate.js';
import { clip, DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE } from '../model/limits.js';
import type { ExecEvent, ExecRequest, Heartbeat } from '../model/protocol.js';
import {
  AGENT_PATH,
  isAgentId,
  MAX_SERVER_MESSAGE_BYTES,
  parseServerMessage,
} from '../model/server-protocol.js';
import { TUNNEL_SESSIONS_HEADER } from '../model/tunnel.js';
import type { Snapshot } from '../model/types.js';
import { DialError, type ServerTrust, secureDial } from './dial.js';
import { fitSnapshot } from './fit.js';
import type { TunnelClient } from './tunnel.js';

export interface LinkOptions {
  /** One URL, or several replicas' URLs: each (re)connect after a failure tries the next. */
  serverUrls: string[];
  key: string;
  /** How https:// (wss://) servers are checked: the key's pin, --ca-file or the system's CAs. */
  trust?: ServerTrust;
  /** --insecure-transport: http:// to a non-loopback server, with a warning at every connect. */
  insecureTransport?: boolean;
  name: string;
  version: string;
  dataDir: string;
  logger: Logger;
  reportIntervalMs: number;
  /** Called with the local address of each new connection (the auto-detected host IP). */
  onLocalAddress?: (ip: string) => void;
  heartbeat: () => Omit<Heartbeat, 'type' | 'version' | 'intervalMs'>;
  /** Runs one checked exec request; a throw or rejection is logged, never fatal. */
  onExec?: (req: ExecRequest) => void | Promise<void>;
  /**
   * --tunnel: the front door reaches this agent's routes through streams it opens to the server.
   * The client class comes with it, so that an agent without --tunnel never loads its code.
   */
  tunnel?: { maxStreams: number; Client: typeof TunnelClient; onStream?: () => void };
}

/** Bytes of a refusing server's HTTP answer that are read for the log line. */
const MAX_REFUSAL_BODY = 64 * 1024;
/** A server whose certificate does not match the pin is asked again at most this often. */
export const PIN_MISMATCH_RETRY_MS = 30_000;
/** Reconnects back off up to this (with jitter, ±50 %). */
const MAX_BACKOFF_MS = 30_000;
/**
 * A --tunnel agent's routes are down while it is disconnected (the front door has no other way
 * to its host), so it retries at most about a second apart: after a server restart it is back
 * within about 1.5 s of the server.
 */
const TUNNEL_MAX_BACKOFF_MS = 1_000;

export class ServerLink {
  /** The largest message the server reads (it says so in its welcome). */
  private maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;
  private ws?: WebSocket;
  private snapshot?: Snapshot;
  /** Docker's version and state as the last heartbeat told the server. */
  private beatDocker = '';
  private backoffMs = 500;
  /** Index into serverUrls of the replica this link uses now. */
  private current = 0;
  private stopped = false;
  private beat?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  agentId?: string;
  status = 'disconnected';
  connects = 0;
  /** --tunnel: the server's token for this connection's data connections (from its welcome). */
  private tunnelSession?: string;
  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }
  snapshotsSent = 0;
  /** Server messages refused as invalid (counted, logged a few times per minute at most). */
  invalidMessages = 0;
  /** What a misbehaving server can make the agent log is counted and summarised, not repeated. */
  private readonly gate: LogGate;
  /** --tunnel: the streams this agent carries for the front door. */
  readonly tunnel?: TunnelClient;

  constructor(private readonly o: LinkOptions) {
    mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    this.agentId = readIdentity(o.dataDir);
    this.gate = new LogGate(o.logger, 60_000, 64);
    if (o.tunnel)
      this.tunnel = new o.tunnel.Client({
        maxStreams: o.tunnel.maxStreams,
        logger: o.logger.child({ component: 'tunnel' }),
        ...(o.tunnel.onStream ? { onStream: o.tunnel.onStream } : {}),
        target: () =>
          this.agentId && this.connected
            ? {
                server: this.server,
                trust: o.trust ?? {},
                key: o.key,
                agentId: this.agentId,
                ...(this.tunnelSession ? { session: this.tunnelSession } : {}),
              }
            : undefined,
        send: (m) => {
          if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
        },
      });
  }

  start(): void {
    this.connect();
    this.beat = setInterval(() => this.sendHeartbeat(), this.o.reportIntervalMs);
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.beat);
    clearTimeout(this.retry);
    this.ws?.close(1000, 'agent stopping');
    this.tunnel?.closeAll();
    this.gate.close();
  }

  /** The server URL this link connects to now. */
  get server(): string {
    return this.o.serverUrls[this.current] ?? '';
  }

  /** The latest snapshot; sent now if connected, else on the next connect. */
  publish(s: Snapshot): void {
    this.snapshot = s;
    this.tunnel?.setRoutes(s);
    this.sendSnapshot();
    // Docker's version and state are known only once the agent reaches Docker, which may be
    // after the first heartbeat: say so now, not one report interval later.
    if (dockerState(this.o.heartbeat()) !== this.beatDocker) this.sendHeartbeat();
  }

  private connect(): void {
    if (this.stopped) return;
    const server = this.server;
    const url = `${server.replace(/^http/, 'ws').replace(/\/$/, '')}${AGENT_PATH}`;
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch (err) {
      this.o.logger.error({ server, err: errorMessage(err) }, 'cannot connect to the server: not a URL');
      this.current = (this.current + 1) % this.o.serverUrls.length;
      this.retry = setTimeout(() => this.connect(), this.nextDelay());
      return;
    }
    if (parsed.protocol === 'ws:') {
      if (!isLoopbackHost(parsed.hostname))
        this.o.logger.warn(
          { server, insecureTransport: this.o.insecureTransport === true },
          `connecting to ${parsed.host} without TLS (--insecure-transport): the agent key, snapshots and exec output cross the network in clear`,
        );
      this.open(server, url);
      return;
    }
    secureDial(parsed, this.o.trust ?? {}).then(
      (socket) => {
        if (this.stopped) socket.destroy();
        else this.open(server, url, socket);
      },
      (err: unknown) => {
        if (this.stopped) return;
        const e = err instanceof DialError ? err : new DialError('network', errorMessage(err));
        // Another server (or someone in between) will not start matching soon: no fast retries.
        const delay = Math.max(this.nextDelay(), e.problem === 'pin-mismatch' ? PIN_MISMATCH_RETRY_MS : 0);
        const log = e.problem === 'network' ? 'warn' : 'error';
        this.o.logger[log]({ server, problem: e.problem, retryInMs: delay }, e.message);
        this.current = (this.current + 1) % this.o.serverUrls.length;
        this.retry = setTimeout(() => this.connect(), delay);
      },
    );
  }

  /** The WebSocket, over a TLS socket already checked (wss) or a plain connection (ws). */
  private open(server: string, url: string, socket?: TLSSocket): void {
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.o.key}`,
      'x-berth-agent-name': this.o.name,
      'x-berth-agent-version': this.o.version,
    };
    if (this.agentId) headers['x-berth-agent-id'] = this.agentId;
    // Data connections will name this connection (the welcome's token), so that only this agent's
    // current connection can answer for its streams. Servers older than that ignore the header.
    if (this.o.tunnel) headers[TUNNEL_SESSIONS_HEADER] = '1';
    let ws: WebSocket;
    try {
      // maxPayload: a larger frame is refused from its header, before it is buffered.
      ws = new WebSocket(url, {
        headers,
        handshakeTimeout: 10_000,
        maxPayload: MAX_SERVER_MESSAGE_BYTES,
        ...(socket ? { createConnection: () => socket } : {}),
      });
    } catch (err) {
      socket?.destroy();
      this.o.logger.error({ server, err: errorMessage(err) }, 'cannot connect to the server');
      this.retry = setTimeout(() => this.connect(), this.nextDelay());
      return;
    }
    this.ws = ws;
    ws.on('upgrade', (res) => {
      const ip = res.socket.localAddress?.replace(/^::ffff:/, '');
      try {
        if (ip) this.o.onLocalAddress?.(ip);
      } catch (err) {
        this.o.logger.error({ ip, err: errorMessage(err) }, 'cannot use the local address');
      }
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        if (body.length < MAX_REFUSAL_BODY)
          body += c.toString('utf8').slice(0, MAX_REFUSAL_BODY - body.length);
      });
      // The answer is read before the connection goes: over TLS its body can arrive after the headers.
      const giveUp = setTimeout(() => ws.terminate(), 5_000);
      const finish = () => {
        clearTimeout(giveUp);
        ws.terminate();
      };
      res.on('error', finish);
      res.on('end', () => {
        finish();
        let message = body;
        try {
          const m = JSON.parse(body).error.message;
          if (typeof m === 'string') message = m;
        } catch {
          // not JSON: keep the text
        }
        this.gate.log(
          'error',
          `refused:${res.statusCode}`,
          { status: res.statusCode, server },
          `server refused the agent: ${clip(message, MAX_MESSAGE)}`,
        );
      });
    });
    ws.on('open', () => {
      this.connects++;
      this.backoffMs = 500;
    });
    ws.on('message', (data, isBinary) => {
      // One message's handling, whatever it throws, never ends the agent or the connection.
      try {
        const raw = Buffer.isBuffer(data)
          ? data
          : Array.isArray(data)
            ? Buffer.concat(data)
            : Buffer.from(data);
        this.onMessage(raw, isBinary);
      } catch (err) {
        this.gate.log('error', 'handler', { err: errorMessage(err) }, 'error handling a server message');
      }
    });
    ws.on('close', (code, reason) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.status = 'disconnected';
      this.tunnelSession = undefined;
      this.tunnel?.linkDown();
      if (this.stopped) return;
      // Another replica may be up where this one is not (or is shutting down).
      this.current = (this.current + 1) % this.o.serverUrls.length;
      const delay = this.nextDelay();
      this.o.logger.warn(
        { code, reason: reason.toString(), retryInMs: delay, next: this.server },
        'disconnected from server; reconnecting',
      );
      this.retry = setTimeout(() => this.connect(), delay);
    });
    ws.on('error', (err: Error & { code?: string }) => {
      // WS_ERR_*: the server broke the protocol (a frame over maxPayload, invalid UTF-8, …); ws
      // closes the connection and the agent reconnects. Anything else is the network.
      if (err.code?.startsWith('WS_ERR_')) {
        this.gate.warn(
          `protocol:${err.code}`,
          { server, code: err.code, err: err.message },
          'the server broke the WebSocket protocol; reconnecting',
        );
      } else this.o.logger.debug({ err: err.message }, 'connection error');
    });
  }

  /** Backoff with jitter before the next connection attempt. */
  private nextDelay(): number {
    const delay = Math.round(this.backoffMs * (0.5 + Math.random()));
    this.backoffMs = Math.min(this.backoffMs * 2, this.o.tunnel ? TUNNEL_MAX_BACKOFF_MS : MAX_BACKOFF_MS);
    return delay;
  }

  private onMessage(raw: Buffer, binary: boolean): void {
    const r = parseServerMessage(raw, binary);
    if (r.kind === 'unknown') {
      // A newer server may send types this agent does not know: ignore them, say so once.
      this.gate.info(`unknown:${r.type}`, { type: r.type }, 'ignoring a server message of an unknown type');
      return;
    }
    if (r.kind === 'invalid') {
      this.invalidMessages++;
      this.gate.warn(
        `invalid:${r.type ?? ''}:${r.about}`,
        { error: r.error, ...(r.execId ? { execId: r.execId } : {}) },
        'refused an invalid message from the server',
      );
      // The server waits for an answer to each exec request: give it one that says why.
      if (r.execId)
        this.sendExecEvent({ type: 'exec.error', id: r.execId, code: 'FAILED', message: r.error });
      // A tunnel request is answered too, so that its front connection ends at once.
      if (r.tunnelId) this.refuseTunnel(r.tunnelId, r.error);
      return;
    }
    const msg = r.message;
    if (msg.type === 'welcome') {
      if (msg.agentId !== this.agentId) {
        this.agentId = msg.agentId;
        try {
          writeFileSync(
            join(this.o.dataDir, 'agent.json'),
            `${JSON.stringify({ agentId: msg.agentId }, null, 2)}\n`,
            { mode: 0o600 },
          );
        } catch (err) {
          this.o.logger.error(
            { dataDir: this.o.dataDir, err: errorMessage(err) },
            'cannot save the agent id; the next start registers as a new agent',
          );
        }
      }
      this.status = msg.status;
      // Older servers do not say; theirs was 64 MiB, so the default is the safe side.
      this.maxMessageBytes = msg.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
      this.o.logger.info({ agentId: msg.agentId, status: msg.status }, 'registered with server');
      this.tunnelSession = msg.tunnel?.session;
      if (this.tunnel && msg.tunnel) this.tunnel.linkUp();
      else if (this.tunnel)
        this.gate.log(
          'error',
          'no-tunnels',
          { server: this.server },
          "the server does not carry tunnels (it is older than berth agent --tunnel): this agent's routes are not reachable through it; upgrade the server, or run the agent without --tunnel",
        );
      this.sendSnapshot();
      this.sendHeartbeat();
    } else if (msg.type === 'exec') {
      this.runExec(msg);
    } else if (msg.type === 'resync') {
      this.sendSnapshot();
    } else if (msg.type === 'tunnel.open') {
      if (this.tunnel) this.tunnel.handleOpen(msg);
      else
        this.refuseTunnel(
          msg.id,
          'this agent runs without --tunnel: the front door reaches its routes directly',
        );
    } else if (msg.type === 'tunnel.cancel') {
      this.tunnel?.cancel(msg.id);
    } else if (msg.type === 'error') {
      this.gate.warn(
        `server-error:${msg.message.slice(0, 120)}`,
        { message: clip(msg.message, MAX_MESSAGE) },
        'server reported an error',
      );
    }
  }

  private refuseTunnel(id: number, message: string): void {
    if (this.tunnel) this.tunnel.counters.refused++;
    if (this.ws?.readyState === WebSocket.OPEN)
      this.ws.send(JSON.stringify({ type: 'tunnel.failed', id, code: 'REFUSED', message }));
  }

  private runExec(req: ExecRequest): void {
    const failed = (err: unknown) =>
      this.gate.log(
        'error',
        'exec-handler',
        { execId: req.id, err: errorMessage(err) },
        'exec handler failed',
      );
    try {
      const p = this.o.onExec?.(req);
      if (p) p.catch(failed);
    } catch (err) {
      failed(err);
    }
  }

  /** Exec events: dropped when the connection is gone (the server then reports the loss). */
  sendExecEvent(e: ExecEvent): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(e));
  }

  private sendSnapshot(): void {
    if (!this.snapshot || !this.agentId || this.ws?.readyState !== WebSocket.OPEN) return;
    const fitted = fitSnapshot(
      {
        ...this.snapshot,
        agentId: this.agentId,
        ...(this.o.tunnel ? { tunnel: { maxStreams: this.o.tunnel.maxStreams } } : {}),
      },
      this.maxMessageBytes,
    );
    if (fitted.left.length > 0) {
      this.gate.warn(
        `snapshot-over-limit:${fitted.left.join(',')}`,
        { limit: this.maxMessageBytes, bytes: fitted.bytes, left: fitted.left },
        `the snapshot is over the server's message limit; sent without: ${fitted.left.join(', ')}`,
      );
    }
    this.ws.send(JSON.stringify({ type: 'snapshot', snapshot: fitted.snapshot }));
    this.snapshotsSent++;
  }

  private sendHeartbeat(): void {
    if (!this.agentId || this.ws?.readyState !== WebSocket.OPEN) return;
    // sentAt lets the server measure how late it reads heartbeats (berth_heartbeat_delay_seconds).
    const fields = this.o.heartbeat();
    const hb: Heartbeat & { sentAt: number } = {
      type: 'heartbeat',
      version: this.o.version,
      intervalMs: this.o.reportIntervalMs,
      ...fields,
      sentAt: Date.now(),
    };
    this.ws.send(JSON.stringify(hb));
    this.beatDocker = dockerState(fields);
  }
}

function dockerState(h: Omit<Heartbeat, 'type' | 'version' | 'intervalMs'>): string {
  return `${h.dockerVersion ?? ''} ${h.dockerConnected ?? ''}`;
}

function readIdentity(dataDir: string): string | undefined {
  try {
    const id = JSON.parse(readFileSync(join(dataDir, 'agent.json'), 'utf8')).agentId;
    // It goes into a header: anything else would make every connection attempt throw.
    return isAgentId(id) ? id : undefined;
  } catch {
    return undefined;
  }
}
