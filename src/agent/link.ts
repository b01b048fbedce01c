// The agent's one outbound connection to the server. It reconnects with exponential backoff and
// jitter, sends the whole current snapshot on every (re)connect and change, and heartbeats.
// No inbound port is opened on the agent's host.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import {
  AGENT_PATH,
  type ExecEvent,
  type ExecRequest,
  type Heartbeat,
  type ServerMessage,
} from '../model/protocol.js';
import type { Snapshot } from '../model/types.js';

export interface LinkOptions {
  /** One URL, or several replicas' URLs: each (re)connect after a failure tries the next. */
  serverUrls: string[];
  key: string;
  name: string;
  version: string;
  dataDir: string;
  logger: Logger;
  reportIntervalMs: number;
  /** Called with the local address of each new connection (the auto-detected host IP). */
  onLocalAddress?: (ip: string) => void;
  heartbeat: () => Omit<Heartbeat, 'type' | 'version' | 'intervalMs'>;
  onExec?: (req: ExecRequest) => void;
}

export class ServerLink {
  private ws?: WebSocket;
  private snapshot?: Snapshot;
  private backoffMs = 500;
  /** Index into serverUrls of the replica this link uses now. */
  private current = 0;
  private stopped = false;
  private beat?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  agentId?: string;
  status = 'disconnected';
  connects = 0;
  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }
  snapshotsSent = 0;

  constructor(private readonly o: LinkOptions) {
    mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    this.agentId = readIdentity(o.dataDir);
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
  }

  /** The server URL this link connects to now. */
  get server(): string {
    return this.o.serverUrls[this.current] ?? '';
  }

  /** The latest snapshot; sent now if connected, else on the next connect. */
  publish(s: Snapshot): void {
    this.snapshot = s;
    this.sendSnapshot();
  }

  private connect(): void {
    if (this.stopped) return;
    const server = this.server;
    const url = `${server.replace(/^http/, 'ws').replace(/\/$/, '')}${AGENT_PATH}`;
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.o.key}`,
      'x-berth-agent-name': this.o.name,
      'x-berth-agent-version': this.o.version,
    };
    if (this.agentId) headers['x-berth-agent-id'] = this.agentId;
    const ws = new WebSocket(url, { headers, handshakeTimeout: 10_000 });
    this.ws = ws;
    ws.on('upgrade', (res) => {
      const ip = res.socket.localAddress?.replace(/^::ffff:/, '');
      if (ip) this.o.onLocalAddress?.(ip);
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        let message = body;
        try {
          message = JSON.parse(body).error.message;
        } catch {
          // not JSON: keep the text
        }
        this.o.logger.error({ status: res.statusCode, server }, `server refused the agent: ${message}`);
      });
      ws.terminate();
    });
    ws.on('open', () => {
      this.connects++;
      this.backoffMs = 500;
    });
    ws.on('message', (data) => this.onMessage(data.toString()));
    ws.on('close', (code, reason) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.status = 'disconnected';
      if (this.stopped) return;
      // Another replica may be up where this one is not (or is shutting down).
      this.current = (this.current + 1) % this.o.serverUrls.length;
      const delay = Math.round(this.backoffMs * (0.5 + Math.random()));
      this.backoffMs = Math.min(this.backoffMs * 2, 30_000);
      this.o.logger.warn(
        { code, reason: reason.toString(), retryInMs: delay, next: this.server },
        'disconnected from server; reconnecting',
      );
      this.retry = setTimeout(() => this.connect(), delay);
    });
    ws.on('error', (err) => this.o.logger.debug({ err: err.message }, 'connection error'));
  }

  private onMessage(raw: string): void {
    let msg: ServerMessage;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg.type === 'welcome') {
      if (msg.agentId !== this.agentId) {
        this.agentId = msg.agentId;
        writeFileSync(
          join(this.o.dataDir, 'agent.json'),
          `${JSON.stringify({ agentId: msg.agentId }, null, 2)}\n`,
          {
            mode: 0o600,
          },
        );
      }
      this.status = msg.status;
      this.o.logger.info({ agentId: msg.agentId, status: msg.status }, 'registered with server');
      this.sendSnapshot();
      this.sendHeartbeat();
    } else if (msg.type === 'exec') {
      this.o.onExec?.(msg);
    } else if (msg.type === 'resync') {
      this.sendSnapshot();
    } else if (msg.type === 'error') {
      this.o.logger.warn({ message: msg.message }, 'server reported an error');
    }
  }

  /** Exec events: dropped when the connection is gone (the server then reports the loss). */
  sendExecEvent(e: ExecEvent): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(e));
  }

  private sendSnapshot(): void {
    if (!this.snapshot || !this.agentId || this.ws?.readyState !== WebSocket.OPEN) return;
    this.ws.send(JSON.stringify({ type: 'snapshot', snapshot: { ...this.snapshot, agentId: this.agentId } }));
    this.snapshotsSent++;
  }

  private sendHeartbeat(): void {
    if (!this.agentId || this.ws?.readyState !== WebSocket.OPEN) return;
    // sentAt lets the server measure how late it reads heartbeats (berth_heartbeat_delay_seconds).
    const hb: Heartbeat & { sentAt: number } = {
      type: 'heartbeat',
      version: this.o.version,
      intervalMs: this.o.reportIntervalMs,
      ...this.o.heartbeat(),
      sentAt: Date.now(),
    };
    this.ws.send(JSON.stringify(hb));
  }
}

function readIdentity(dataDir: string): string | undefined {
  try {
    return JSON.parse(readFileSync(join(dataDir, 'agent.json'), 'utf8')).agentId;
  } catch {
    return undefined;
  }
}
