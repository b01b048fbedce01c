// `berth agent --tunnel`: the agent's side of tunneled streams. The server asks (tunnel.open on
// the agent's WebSocket) for a stream to an upstream; the agent dials it only when one of its own
// current routes names it, opens one data connection of its own to the server for the stream
// (TLS checked as the agent link is, authenticated with the agent's key) and joins the two.
// Nothing listens on the agent's host. Whatever the server asks beyond that is refused and logged.
import { type Socket, connect as tcpConnect } from 'node:net';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import { LogGate } from '../log-gate.js';
import { type MetricFamily, simple } from '../metrics.js';
import type { TunnelFailed, TunnelOpen } from '../model/protocol.js';
import {
  TUNNEL_OPEN_TIMEOUT_MS,
  TUNNEL_PATH,
  TUNNEL_UPGRADE,
  tunnelRefusal,
  tunnelTargets,
} from '../model/tunnel.js';
import type { Snapshot } from '../model/types.js';
import { resetSocket, splice } from '../net/splice.js';
import { type ServerTrust, secureDial } from './dial.js';

export interface DataTarget {
  /** The server URL the agent link uses now (http(s)://host:port). */
  server: string;
  trust: ServerTrust;
  key: string;
  agentId: string;
}

export interface TunnelClientOptions {
  maxStreams: number;
  logger: Logger;
  /** Where data connections go now; undefined while the link is down. */
  target: () => DataTarget | undefined;
  send: (m: TunnelFailed) => void;
}

interface Stream {
  id: number;
  upstream?: Socket;
  data?: Socket;
  done: boolean;
}

/** The largest answer head the server may send to a data connection's upgrade. */
const MAX_HEAD = 8 * 1024;

export class TunnelClient {
  private targets = new Set<string>();
  private readonly streams = new Map<number, Stream>();
  private readonly gate: LogGate;
  readonly counters = {
    streams: 0,
    refused: 0,
    errors: 0,
    /** Bytes written to upstreams (the clients' requests) and read from them (the answers). */
    bytesToUpstream: 0,
    bytesFromUpstream: 0,
  };

  constructor(private readonly o: TunnelClientOptions) {
    this.gate = new LogGate(o.logger, 60_000, 256);
  }

  /** The routes of the latest snapshot: the only upstreams the agent dials. */
  setRoutes(s: Pick<Snapshot, 'routes' | 'tcp'>): void {
    this.targets = tunnelTargets(s);
  }

  get open(): number {
    return this.streams.size;
  }

  /** A checked tunnel.open from the server. */
  handleOpen(req: TunnelOpen): void {
    const refusal = tunnelRefusal(this.targets, req.host, req.port);
    if (refusal) {
      this.counters.refused++;
      this.gate.warn(
        `refused:${req.host}:${req.port}`,
        { stream: req.id, upstream: `${req.host}:${req.port}` },
        `refused a tunnel request from the server: ${refusal}`,
      );
      this.o.send({ type: 'tunnel.failed', id: req.id, code: 'REFUSED', message: refusal });
      return;
    }
    if (this.streams.has(req.id)) return;
    if (this.streams.size >= this.o.maxStreams) {
      this.counters.errors++;
      this.gate.warn(
        'busy',
        { max: this.o.maxStreams },
        `a tunnel request is over --tunnel-max-streams (${this.o.maxStreams}); refused`,
      );
      this.o.send({
        type: 'tunnel.failed',
        id: req.id,
        code: 'BUSY',
        message: `the agent has ${this.streams.size} open streams, its --tunnel-max-streams`,
      });
      return;
    }
    const target = this.o.target();
    if (!target) {
      this.o.send({
        type: 'tunnel.failed',
        id: req.id,
        code: 'FAILED',
        message: 'the agent is not connected',
      });
      return;
    }
    const s: Stream = { id: req.id, done: false };
    this.streams.set(req.id, s);
    this.counters.streams++;
    const fail = (code: TunnelFailed['code'], message: string) => {
      if (s.done) return;
      this.counters.errors++;
      this.finish(s, true);
      this.gate.warn(
        `fail:${code}:${req.host}:${req.port}`,
        { stream: req.id, code },
        `tunnel stream failed: ${message}`,
      );
      this.o.send({ type: 'tunnel.failed', id: req.id, code, message });
    };
    const upstream = tcpConnect({ host: req.host, port: req.port, allowHalfOpen: true, noDelay: true });
    s.upstream = upstream;
    upstream.pause();
    const timer = setTimeout(
      () => fail('UNREACHABLE', `no answer from ${req.host}:${req.port} within ${TUNNEL_OPEN_TIMEOUT_MS} ms`),
      TUNNEL_OPEN_TIMEOUT_MS,
    );
    let upstreamReady = false;
    const joinIfReady = () => {
      if (s.done || !upstreamReady || !s.data) return;
      clearTimeout(timer);
      const data = s.data;
      splice(upstream, data, (failed) => {
        if (failed) this.counters.errors++;
        this.finish(s, false);
      });
    };
    upstream.once('connect', () => {
      upstreamReady = true;
      joinIfReady();
    });
    upstream.once('error', (err) => {
      if (!upstreamReady) {
        clearTimeout(timer);
        fail('UNREACHABLE', `cannot reach ${req.host}:${req.port}: ${errorMessage(err)}`);
      }
    });
    openDataConnection(target, req.id).then(
      (data) => {
        if (s.done) return resetSocket(data);
        s.data = data;
        joinIfReady();
      },
      (err: unknown) => {
        clearTimeout(timer);
        fail('FAILED', `cannot open a data connection to the server: ${errorMessage(err)}`);
      },
    );
  }

  /** The server gave the stream up. */
  cancel(id: number): void {
    const s = this.streams.get(id);
    if (s) this.finish(s, true);
  }

  /** Every stream ends (the agent stops). */
  closeAll(): void {
    for (const s of [...this.streams.values()]) this.finish(s, true);
    this.gate.close();
  }

  private finish(s: Stream, reset: boolean): void {
    if (s.done) return;
    s.done = true;
    this.streams.delete(s.id);
    if (s.upstream) {
      this.counters.bytesToUpstream += s.upstream.bytesWritten ?? 0;
      this.counters.bytesFromUpstream += s.upstream.bytesRead;
    }
    if (reset) {
      if (s.upstream) resetSocket(s.upstream);
      if (s.data) resetSocket(s.data);
    }
  }

  metrics(): MetricFamily[] {
    let to = this.counters.bytesToUpstream;
    let from = this.counters.bytesFromUpstream;
    for (const s of this.streams.values()) {
      to += s.upstream?.bytesWritten ?? 0;
      from += s.upstream?.bytesRead ?? 0;
    }
    return [
      simple('berth_agent_tunnel_streams', 'Tunneled streams open now', 'gauge', this.streams.size),
      simple('berth_agent_tunnel_streams_total', 'Tunneled streams opened', 'counter', this.counters.streams),
      simple('berth_agent_tunnel_bytes_total', 'Bytes carried by tunneled streams', 'counter', [
        [{ direction: 'to_upstream' }, to],
        [{ direction: 'from_upstream' }, from],
      ]),
      simple(
        'berth_agent_tunnel_refused_total',
        "Tunnel requests refused: the upstream is not one of this agent's routes",
        'counter',
        this.counters.refused,
      ),
      simple(
        'berth_agent_tunnel_errors_total',
        'Tunneled streams that failed (upstream unreachable, data connection failed, reset, over the limit)',
        'counter',
        this.counters.errors,
      ),
    ];
  }
}

/**
 * One data connection for stream `id`: TLS checked as the agent link (https), or plain where the
 * link is plain; the upgrade request carries the agent's key; resolves with the socket once the
 * server answered 101, any bytes after its answer put back to be read first.
 */
export function openDataConnection(
  t: DataTarget,
  id: number,
  timeoutMs = TUNNEL_OPEN_TIMEOUT_MS,
): Promise<Socket> {
  const url = new URL(t.server);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const tls = url.protocol === 'https:' || url.protocol === 'wss:';
  const port = Number(url.port || (tls ? 443 : 80));
  const dialed: Promise<Socket> = tls
    ? secureDial(url, t.trust, timeoutMs)
    : new Promise((resolve, reject) => {
        const s = tcpConnect({ host, port, allowHalfOpen: true, noDelay: true });
        s.once('connect', () => {
          s.removeAllListeners('error');
          resolve(s);
        });
        s.once('error', reject);
      });
  return dialed.then(
    (socket) =>
      new Promise<Socket>((resolve, reject) => {
        socket.allowHalfOpen = true;
        socket.setNoDelay(true);
        const timer = setTimeout(() => fail(new Error('the server did not answer the upgrade')), timeoutMs);
        let head = Buffer.alloc(0);
        const fail = (err: Error) => {
          clearTimeout(timer);
          socket.off('data', onData);
          socket.destroy();
          reject(err);
        };
        const onData = (chunk: Buffer) => {
          head = Buffer.concat([head, chunk]);
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) {
            if (head.length > MAX_HEAD) fail(new Error('the server answered with an oversize head'));
            return;
          }
          clearTimeout(timer);
          socket.off('data', onData);
          socket.off('error', fail);
          socket.off('end', ended);
          const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
          if (!/^HTTP\/1\.1 101 /.test(status)) {
            const body = head.subarray(end + 4).toString('utf8');
            let message = status;
            try {
              message = `${status}: ${JSON.parse(body).error.message}`;
            } catch {
              // keep the status line
            }
            socket.destroy();
            return reject(new Error(message.slice(0, 300)));
          }
          socket.pause();
          const rest = head.subarray(end + 4);
          if (rest.length > 0) socket.unshift(rest);
          resolve(socket);
        };
        const ended = () => fail(new Error('the server closed the data connection before answering'));
        socket.on('data', onData);
        socket.once('error', fail);
        socket.once('end', ended);
        socket.write(
          `GET ${TUNNEL_PATH} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: Upgrade\r\nUpgrade: ${TUNNEL_UPGRADE}\r\n` +
            `Authorization: Bearer ${t.key}\r\nX-Berth-Agent-Id: ${t.agentId}\r\nX-Berth-Stream: ${id}\r\n\r\n`,
        );
      }),
  );
}
