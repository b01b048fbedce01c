// `berth agent --tunnel`: the agent's side of tunneled streams. The server asks (tunnel.open on
// the agent's WebSocket) for a stream to an upstream; the agent dials it only when one of its own
// current routes names it, takes one data connection of its own to the server for the stream
// (TLS checked as the agent link is, authenticated with the agent's key; one of a few pre-opened,
// or a new one) and joins the two. Nothing listens on the agent's host. Whatever the server asks
// beyond that is refused and logged.
import { type Socket, connect as tcpConnect } from 'node:net';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { LogGate } from '../log-gate.js';
import { type MetricFamily, simple } from '../metrics.js';
import type { TunnelFailed, TunnelOpen } from '../model/protocol.js';
import { parseServerMessage } from '../model/server-protocol.js';
import {
  MAX_OPEN_LINE,
  POOL_STREAM,
  TUNNEL_OPEN_TIMEOUT_MS,
  TUNNEL_PATH,
  TUNNEL_POOL,
  TUNNEL_UPGRADE,
  tunnelRefusal,
  tunnelTargets,
} from '../model/tunnel.js';
import type { Snapshot } from '../model/types.js';
import { type Handover, handover, relay } from '../net/relay.js';
import { resetSocket, splice } from '../net/splice.js';
import { type ServerTrust, secureDial } from './dial.js';

export interface DataTarget {
  /** The server URL the agent link uses now (http(s)://host:port). */
  server: string;
  trust: ServerTrust;
  key: string;
  agentId: string;
  /** The token of the link's current connection (servers that give one). */
  session?: string;
}

export interface TunnelClientOptions {
  maxStreams: number;
  logger: Logger;
  /** Where data connections go now; undefined while the link is down. */
  target: () => DataTarget | undefined;
  send: (m: TunnelFailed) => void;
  /** A stream is about to be carried (the agent turns V8's compilers on at the first). */
  onStream?: () => void;
}

interface Stream {
  id: number;
  upstream?: Socket;
  data?: Socket;
  done: boolean;
}

/**
 * A data connection after the server's 101. It reads into reused buffers from the start (plain or
 * TLS): `reads` has any bytes that came after the answer, and hands the reads to the stream.
 */
export interface DataConnection {
  socket: Socket;
  reads: Handover;
  tls: boolean;
}

/** The largest answer head the server may send to a data connection's upgrade. */
const MAX_HEAD = 8 * 1024;
const POOL_RETRY_MS = 1_000;
/**
 * Data connections being opened at once, at most; the rest wait their turn. A burst of streams
 * (100 clients at once) would otherwise run as many TLS handshakes side by side: they take the
 * same CPU one after another, but together their transient memory (key exchange, the server's
 * chain, records) is a peak that the allocator keeps as RSS after they are done.
 */
export const MAX_DIALS = 4;
const MAX_POOL_RETRY_MS = 30_000;

/**
 * At most `max` tasks run at once; the others wait, first come first served, except that an
 * urgent task (a stream's data connection, with a client waiting on it) goes ahead of every
 * task that is not (pool refills, which nobody waits on). A task holds its turn for `maxMs` at
 * most: one that has not settled by then (a connection hanging) goes on without it, so no task
 * can keep the others waiting for longer than that.
 */
export class Turns {
  private running = 0;
  private readonly urgent: (() => void)[] = [];
  private readonly waiting: (() => void)[] = [];

  constructor(
    readonly max: number,
    readonly maxMs = TUNNEL_OPEN_TIMEOUT_MS,
  ) {}

  async run<T>(task: () => Promise<T>, urgent = false): Promise<T> {
    if (this.running >= this.max)
      await new Promise<void>((turn) => (urgent ? this.urgent : this.waiting).push(turn));
    else this.running++;
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      // The turn passes straight to the next in line, or is given back.
      const next = this.urgent.shift() ?? this.waiting.shift();
      if (next) next();
      else this.running--;
    };
    const timer = setTimeout(release, this.maxMs);
    try {
      return await task();
    } finally {
      clearTimeout(timer);
      release();
    }
  }

  /** Tasks running, and waiting for a turn. */
  get load(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.urgent.length + this.waiting.length };
  }
}

export class TunnelClient {
  private targets = new Set<string>();
  private readonly streams = new Map<number, Stream>();
  /** Pre-opened data connections waiting for the server's open request. */
  private readonly idle = new Set<Socket>();
  private opening = 0;
  private readonly dials = new Turns(MAX_DIALS);
  private up = false;
  private retryMs = POOL_RETRY_MS;
  private retry?: NodeJS.Timeout;
  private readonly gate: LogGate;
  readonly counters = {
    streams: 0,
    refused: 0,
    errors: 0,
    /** Streams that started on a pre-opened connection. */
    pooled: 0,
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

  /** The link is up with a server that carries tunnels: keep a few data connections ready. */
  linkUp(): void {
    this.up = true;
    this.retryMs = POOL_RETRY_MS;
    this.fill();
  }

  /** The link went: the server closed its side of the idle connections too. */
  linkDown(): void {
    this.up = false;
    clearTimeout(this.retry);
    for (const sock of this.idle) sock.destroy();
    this.idle.clear();
  }

  /** A checked tunnel.open from the server's WebSocket. */
  handleOpen(req: TunnelOpen): void {
    this.start(req);
  }

  /**
   * One stream: refused unless its upstream is one of this agent's routes' and the limit allows;
   * then the upstream is dialed, and the data connection given (pre-opened) or opened for it.
   */
  private start(req: TunnelOpen, given?: DataConnection): void {
    const refuse = (code: TunnelFailed['code'], message: string) => {
      if (given) resetSocket(given.socket);
      this.o.send({ type: 'tunnel.failed', id: req.id, code, message });
    };
    const refusal = tunnelRefusal(this.targets, req.host, req.port);
    if (refusal) {
      this.counters.refused++;
      this.gate.warn(
        `refused:${req.host}:${req.port}`,
        { stream: req.id, upstream: `${req.host}:${req.port}` },
        `refused a tunnel request from the server: ${refusal}`,
      );
      refuse('REFUSED', refusal);
      return;
    }
    if (this.streams.has(req.id)) {
      refuse('FAILED', `stream ${req.id} is already open`);
      return;
    }
    if (this.streams.size >= this.o.maxStreams) {
      this.counters.errors++;
      this.gate.warn(
        'busy',
        { max: this.o.maxStreams },
        `a tunnel request is over --tunnel-max-streams (${this.o.maxStreams}); refused`,
      );
      refuse('BUSY', `the agent has ${this.streams.size} open streams, its --tunnel-max-streams`);
      return;
    }
    const target = this.o.target();
    if (!target && !given) {
      refuse('FAILED', 'the agent is not connected');
      return;
    }
    this.o.onStream?.();
    const s: Stream = { id: req.id, done: false };
    this.streams.set(req.id, s);
    this.counters.streams++;
    if (given) this.counters.pooled++;
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
    // Reads from the upstream go straight to the data connection, from a reused buffer.
    const upstream = tcpConnect({
      host: req.host,
      port: req.port,
      allowHalfOpen: true,
      noDelay: true,
      onread: relay(() => s.data!),
    });
    s.upstream = upstream;
    upstream.pause();
    const timer = setTimeout(
      () => fail('UNREACHABLE', `no answer from ${req.host}:${req.port} within ${TUNNEL_OPEN_TIMEOUT_MS} ms`),
      TUNNEL_OPEN_TIMEOUT_MS,
    );
    let upstreamReady = false;
    let conn: DataConnection | undefined;
    const joinIfReady = () => {
      if (s.done || !upstreamReady || !conn) return;
      clearTimeout(timer);
      // The data connection reads into a reused buffer too; TLS records are gathered into writes.
      const before = conn.reads.relayTo(() => upstream, { tls: conn.tls });
      if (before.length > 0) upstream.write(before);
      splice(upstream, conn.socket, (failed) => {
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
    const got = (c: DataConnection) => {
      if (s.done) return resetSocket(c.socket);
      conn = c;
      s.data = c.socket;
      joinIfReady();
    };
    if (given) got(given);
    else
      this.dial(() => (s.done ? undefined : target), req.id).then(
        (c) => c && got(c),
        (err: unknown) => {
          clearTimeout(timer);
          fail('FAILED', `cannot open a data connection to the server: ${errorMessage(err)}`);
        },
      );
  }

  /**
   * Opens a data connection when one of MAX_DIALS turns is free; `target()` is asked when the
   * turn comes, undefined when the connection is no longer wanted (its stream ended while waiting,
   * the link went): then nothing is opened and the promise resolves undefined.
   */
  private dial(
    target: () => DataTarget | undefined,
    id: number | typeof POOL_STREAM,
  ): Promise<DataConnection | undefined> {
    // A stream's connection has a client waiting on it; a pool refill has nobody.
    return this.dials.run(async () => {
      const t = target();
      return t ? await openDataConnection(t, id) : undefined;
    }, id !== POOL_STREAM);
  }

  /** Opens pre-opened connections up to TUNNEL_POOL (never past the stream limit). */
  private fill(): void {
    while (
      this.up &&
      this.idle.size + this.opening < TUNNEL_POOL &&
      this.streams.size + this.idle.size + this.opening < this.o.maxStreams
    ) {
      if (!this.o.target()) return;
      this.opening++;
      const opened = Date.now();
      this.dial(() => (this.up ? this.o.target() : undefined), POOL_STREAM).then(
        (c) => {
          this.opening--;
          if (!c) return;
          if (!this.up) return c.socket.destroy();
          this.waitForOpen(c, opened);
        },
        (err: unknown) => {
          this.opening--;
          this.gate.warn(
            'pool',
            { err: errorMessage(err), retryInMs: this.retryMs },
            'cannot pre-open a tunnel data connection; streams open one when asked',
          );
          this.later();
        },
      );
    }
  }

  private later(): void {
    if (this.retry || !this.up) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.fill();
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, MAX_POOL_RETRY_MS);
  }

  /** An idle pre-opened connection: the server's first line is an open request, checked as any. */
  private waitForOpen(c: DataConnection, opened: number): void {
    const sock = c.socket;
    this.idle.add(sock);
    let line: Buffer = Buffer.alloc(0);
    const stop = () => {
      c.reads.take(undefined);
      sock.off('close', onClose);
      this.idle.delete(sock);
    };
    const onClose = () => {
      stop();
      // Closed while idle: the server went, or let it go. Refill, but never in a tight loop.
      if (Date.now() - opened < 1_000) this.later();
      else this.fill();
    };
    const onData = (chunk: Buffer) => {
      line = line.length === 0 ? chunk : Buffer.concat([line, chunk]);
      const end = line.indexOf(0x0a);
      if (end < 0) {
        if (line.length > MAX_OPEN_LINE) {
          stop();
          this.counters.errors++;
          resetSocket(sock);
          this.fill();
        }
        return;
      }
      stop();
      sock.pause();
      this.retryMs = POOL_RETRY_MS;
      const r = parseServerMessage(line.subarray(0, end));
      c.reads.unread(line.subarray(end + 1));
      if (r.kind === 'message' && r.message.type === 'tunnel.open') this.start(r.message, c);
      else {
        this.counters.refused++;
        const why = r.kind === 'invalid' ? r.error : 'not a tunnel request';
        this.gate.warn(
          'pool-invalid',
          { error: why },
          `refused an invalid open request on a data connection: ${why}`,
        );
        resetSocket(sock);
        if (r.kind === 'invalid' && r.tunnelId)
          this.o.send({ type: 'tunnel.failed', id: r.tunnelId, code: 'REFUSED', message: why });
      }
      this.fill();
    };
    sock.on('close', onClose);
    sock.on('error', () => {});
    c.reads.take(onData);
    if (this.idle.has(sock)) sock.resume();
  }

  /** The server gave the stream up. */
  cancel(id: number): void {
    const s = this.streams.get(id);
    if (s) this.finish(s, true);
  }

  /** Every stream ends (the agent stops). */
  closeAll(): void {
    this.linkDown();
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
    if (this.up) this.fill();
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
      simple('berth_agent_tunnel_streams_total', 'Tunneled streams opened', 'counter', [
        [{ via: 'preopened' }, this.counters.pooled],
        [{ via: 'asked' }, this.counters.streams - this.counters.pooled],
      ]),
      simple(
        'berth_agent_tunnel_dials',
        `Data connections being opened (at most ${MAX_DIALS} at once) and waiting for a turn`,
        'gauge',
        [
          [{ state: 'opening' }, this.dials.load.running],
          [{ state: 'waiting' }, this.dials.load.waiting],
        ],
      ),
      simple(
        'berth_agent_tunnel_idle_connections',
        'Pre-opened data connections waiting',
        'gauge',
        this.idle.size,
      ),
      simple('berth_agent_tunnel_bytes_total', 'Bytes carried by tunneled streams', 'counter', [
        [{ direction: 'to_upstream' }, to],
        [{ direction: 'from_upstream' }, from],
      ]),
      simple(
        'berth_agent_tunnel_refused_total',
        "Tunnel requests refused: the upstream is not one of this agent's routes, or the request was invalid",
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
  id: number | typeof POOL_STREAM,
  timeoutMs = TUNNEL_OPEN_TIMEOUT_MS,
): Promise<DataConnection> {
  const url = new URL(t.server);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const tls = url.protocol === 'https:' || url.protocol === 'wss:';
  const port = Number(url.port || (tls ? 443 : 80));
  // Read into reused buffers from the start: the answer's head first, then the stream's bytes.
  const reads = handover();
  const dialed: Promise<Socket> = tls
    ? secureDial(url, t.trust, timeoutMs, reads, true)
    : new Promise((resolve, reject) => {
        const s = tcpConnect({ host, port, allowHalfOpen: true, noDelay: true, onread: reads });
        const timer = setTimeout(() => {
          s.destroy();
          reject(new Error(`connecting to ${host}:${port} timed out`));
        }, timeoutMs);
        s.once('connect', () => {
          clearTimeout(timer);
          s.removeAllListeners('error');
          resolve(s);
        });
        s.once('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
  return dialed.then(
    (socket) =>
      new Promise<DataConnection>((resolve, reject) => {
        socket.allowHalfOpen = true;
        socket.setNoDelay(true);
        const timer = setTimeout(() => fail(new Error('the server did not answer the upgrade')), timeoutMs);
        let head = Buffer.alloc(0);
        const fail = (err: Error) => {
          clearTimeout(timer);
          reads.take(undefined);
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
          reads.take(undefined);
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
          reads.unread(head.subarray(end + 4));
          resolve({ socket, reads, tls });
        };
        const ended = () => fail(new Error('the server closed the data connection before answering'));
        reads.take(onData);
        socket.once('error', fail);
        socket.once('end', ended);
        socket.write(
          `GET ${TUNNEL_PATH} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: Upgrade\r\nUpgrade: ${TUNNEL_UPGRADE}\r\n` +
            `Authorization: Bearer ${t.key}\r\nX-Berth-Agent-Id: ${t.agentId}\r\nX-Berth-Stream: ${id}\r\n` +
            (t.session ? `X-Berth-Tunnel-Session: ${t.session}\r\n` : '') +
            '\r\n',
        );
      }),
  );
}
