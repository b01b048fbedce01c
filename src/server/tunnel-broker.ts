// The server's side of tunnels (`berth agent --tunnel`). Each tunneled upstream has a local
// endpoint (an address of 127.77.0.0/16, all on one port) that Caddy and the TCP forwarder dial
// like any upstream, so the front door and its no-reload route changes stay as they are. A
// connection there becomes stream N: the agent is asked on its WebSocket to open it, and answers
// with a data connection of its own (on the agent listener, authenticated with its key) that is
// joined to the front connection. One TCP connection per stream: a slow reader on one stalls
// only its own. While the agent is away a connection to its endpoint is reset at once (the front
// door answers 502); when the agent goes, is revoked or removed, its streams are reset.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { LogGate } from '../log-gate.js';
import { type MetricFamily, simple } from '../metrics.js';
import type { ServerMessage, TunnelFailed } from '../model/protocol.js';
import {
  DEFAULT_TUNNEL_MAX_STREAMS,
  type Endpoint,
  EndpointTable,
  MAX_TUNNEL_POOL,
  MAX_TUNNEL_STREAMS,
  POOL_STREAM,
  parseStreamId,
  TUNNEL_OPEN_TIMEOUT_MS,
  TUNNEL_SESSION_HEADER,
  TUNNEL_UPGRADE,
  type TunnelEndpoints,
} from '../model/tunnel.js';
import { readIntoBuffers, relay, withOnread } from '../net/relay.js';
import { resetSocket, splice } from '../net/splice.js';
import type { KeyRecord } from '../store/store.js';
import { refuseUpgrade as refuse } from './refuse-upgrade.js';

export interface TunnelBrokerOptions {
  logger: Logger;
  /** Sends a control message on the agent's WebSocket; false when it is not connected here. */
  send: (agentId: string, msg: ServerMessage) => boolean;
  /** The key an agent enrolled with (a data connection must present that key). */
  keyOf: (agentId: string) => string | undefined;
  /** The agent's name, for metrics and logs. */
  nameOf: (agentId: string) => string | undefined;
  /** Whether the agent's WebSocket is connected to this server. */
  connected: (agentId: string) => boolean;
  /** The most streams per agent this server allows, whatever the agent asks. */
  maxStreams?: number;
}

interface Stream {
  id: number;
  agentId: string;
  endpoint: number;
  front: Socket;
  data?: Socket;
  timer?: NodeJS.Timeout;
  done: boolean;
}

interface AgentCounters {
  streams: number;
  bytesIn: number;
  bytesOut: number;
  errors: Record<string, number>;
}

export class TunnelBroker implements TunnelEndpoints {
  private table?: EndpointTable;
  private readonly listeners = new Map<number, Server>();
  private readonly streams = new Map<number, Stream>();
  private readonly byAgent = new Map<string, Set<Stream>>();
  /** Each agent's pre-opened data connections, waiting for a stream. */
  private readonly pools = new Map<string, Map<Socket, () => void>>();
  private readonly limits = new Map<string, number>();
  /**
   * Each connected agent's current WebSocket session: the SHA-256 of the token its data
   * connections must name, or undefined for an agent older than tokens (its key alone is checked).
   */
  private readonly sessions = new Map<string, { digest: Buffer | undefined }>();
  private readonly perAgent = new Map<string, AgentCounters>();
  private readonly gate: LogGate;
  private nextId = 0;
  readonly maxStreams: number;
  private closed = false;

  constructor(private readonly o: TunnelBrokerOptions) {
    this.gate = new LogGate(o.logger);
    this.maxStreams = Math.min(o.maxStreams ?? MAX_TUNNEL_STREAMS, MAX_TUNNEL_STREAMS);
  }

  /** The one port every endpoint listens on (after start). */
  get port(): number | undefined {
    return this.table?.port;
  }

  /** Finds the endpoints' port: the first endpoint's listener takes a free one. */
  async start(): Promise<void> {
    const first = this.listener(0);
    await new Promise<void>((resolve, reject) => {
      first.once('error', reject);
      first.listen({ host: EndpointTable.address(0), port: 0 }, () => {
        first.off('error', reject);
        resolve();
      });
    });
    this.listeners.set(0, first);
    const port = (first.address() as { port: number }).port;
    this.table = new EndpointTable(port);
    this.o.logger.info({ endpoints: `127.77.0.0/16 port ${port}` }, 'tunnel endpoints ready');
  }

  endpoints(
    agentId: string,
    upstreams: readonly { host: string; port: number }[],
    maxStreams: number,
  ): (host: string, port: number) => Endpoint | undefined {
    const table = this.table;
    this.limits.set(agentId, Math.min(maxStreams, this.maxStreams));
    if (!table) return () => undefined;
    const keep = new Set(upstreams.map((u) => EndpointTable.key(agentId, u.host, u.port)));
    for (const index of table.release(agentId, keep)) this.retire(index);
    const out = new Map<string, Endpoint>();
    for (const u of upstreams) {
      const e = table.get(agentId, u.host, u.port);
      if (!e) continue;
      if (e.fresh && !this.listeners.has(e.index)) this.bind(e.index);
      out.set(EndpointTable.key(agentId, u.host, u.port), { host: e.host, port: e.port });
    }
    return (host, port) => out.get(EndpointTable.key(agentId, host, port));
  }

  /**
   * The agent's WebSocket connected here (a first connection, or one that replaces another): from
   * now on only data connections naming the returned token are its. An agent that did not say it
   * sends one (`tokens` false, older than tokens) gets none, and its key alone is checked. The
   * pre-opened connections of a connection it replaces go: they were opened for that one.
   */
  openSession(agentId: string, tokens: boolean): string | undefined {
    const token = tokens ? randomBytes(24).toString('base64url') : undefined;
    const replaced = this.sessions.has(agentId);
    this.sessions.set(agentId, { digest: token === undefined ? undefined : digest(token) });
    if (replaced) this.dropPool(agentId);
    return token;
  }

  /** The agent is gone from this server (disconnected, replaced for good, revoked): its streams end. */
  agentGone(agentId: string): void {
    for (const s of [...(this.byAgent.get(agentId) ?? [])]) this.end(s, 'agent-gone');
    this.dropPool(agentId);
    this.sessions.delete(agentId);
  }

  private dropPool(agentId: string): void {
    for (const sock of this.pools.get(agentId)?.keys() ?? []) sock.destroy();
    this.pools.delete(agentId);
  }

  /** Whether a data connection comes from the agent's current WebSocket session (see openSession). */
  private ofCurrentSession(agentId: string, given: unknown): boolean {
    const session = this.sessions.get(agentId);
    if (!session) return false;
    if (session.digest === undefined) {
      this.gate.warn(
        `untokened:${agentId}`,
        { agentId, agent: this.o.nameOf(agentId) },
        `agent ${this.o.nameOf(agentId) ?? agentId} is older than tunnel session tokens: its data connections are checked by its key alone, so another agent enrolled with the same key could answer for its streams; upgrade it`,
      );
      return true;
    }
    return typeof given === 'string' && timingSafeEqual(digest(given), session.digest);
  }

  /** The agent's record is removed (or its key revoked): its streams and endpoints go. */
  dropAgent(agentId: string): void {
    this.agentGone(agentId);
    for (const index of this.table?.release(agentId) ?? []) this.retire(index);
    this.limits.delete(agentId);
  }

  /** The agent could not open a stream. */
  failed(agentId: string, m: TunnelFailed): void {
    const s = this.streams.get(m.id);
    if (!s || s.agentId !== agentId) return;
    this.gate.warn(
      `failed:${agentId}:${m.code}`,
      { agentId, agent: this.o.nameOf(agentId), code: m.code, message: m.message },
      'the agent could not open a tunneled stream',
    );
    this.end(s, m.code.toLowerCase());
  }

  /**
   * A data connection (an upgrade on TUNNEL_PATH) whose key has been checked: it must be the key
   * of the agent that owns the stream it names. Anything else is refused.
   */
  attachData(
    key: KeyRecord,
    headers: Record<string, string | string[] | undefined>,
    socket: Duplex,
    head: Buffer,
  ): void {
    const pooled = headers['x-berth-stream'] === POOL_STREAM;
    const id = parseStreamId(headers['x-berth-stream']);
    const agentId = typeof headers['x-berth-agent-id'] === 'string' ? headers['x-berth-agent-id'] : '';
    const s = id === undefined ? undefined : this.streams.get(id);
    const malformed =
      String(headers.upgrade ?? '').toLowerCase() !== TUNNEL_UPGRADE
        ? `a data connection upgrades to ${TUNNEL_UPGRADE}`
        : !pooled && id === undefined
          ? `X-Berth-Stream must be "${POOL_STREAM}" or a stream number`
          : agentId === ''
            ? 'X-Berth-Agent-Id is missing'
            : undefined;
    if (malformed) {
      refuse(socket, 400, 'BAD_REQUEST', malformed);
      return;
    }
    // Only the agent's own key, from its current connection, for its own stream (or pool, while
    // it is connected here).
    const mine = this.o.keyOf(agentId) === key.id;
    const ok = pooled
      ? mine && this.o.connected(agentId)
      : mine && s !== undefined && !s.done && !s.data && s.agentId === agentId;
    const current = ok && this.ofCurrentSession(agentId, headers[TUNNEL_SESSION_HEADER]);
    if (!current) {
      // Another agent's stream, or none, or not this connection's: the same answer, so nothing is
      // learnt from it.
      this.gate.warn(
        `data-refused:${key.id}:${ok ? 'session' : 'stream'}`,
        { key: key.name, stream: id ?? (pooled ? POOL_STREAM : null) },
        ok
          ? "refused a tunnel data connection: it does not name the agent's current connection (another agent enrolled with the same key, or a connection already replaced)"
          : "refused a tunnel data connection: no such stream of this key's agent",
      );
      refuse(socket, 404, 'NOT_FOUND', 'no such stream waits for this agent');
      return;
    }
    const pool = this.pools.get(agentId) ?? new Map<Socket, () => void>();
    if (pooled && pool.size >= MAX_TUNNEL_POOL) {
      refuse(socket, 429, 'RATE_LIMITED', `at most ${MAX_TUNNEL_POOL} pre-opened data connections per agent`);
      return;
    }
    const data = socket as Socket;
    data.allowHalfOpen = true;
    data.setNoDelay?.(true);
    data.write(
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${TUNNEL_UPGRADE}\r\n\r\n`,
    );
    if (head.length > 0) data.unshift(head);
    if (!pooled) {
      clearTimeout(s!.timer);
      this.join(s!, data);
      return;
    }
    // Idle until a stream takes it: the agent sends nothing on it before that.
    const drop = () => {
      pool.delete(data);
      data.destroy();
    };
    const taken = () => {
      data.off('close', drop);
      data.off('data', drop);
    };
    pool.set(data, taken);
    this.pools.set(agentId, pool);
    data.once('close', drop);
    data.once('data', drop);
    data.on('error', () => {});
  }

  /** Pairs a stream's front connection with its data connection, both ways. */
  private join(s: Stream, data: Socket): void {
    s.data = data;
    // Both read into reused buffers (a TLS one's records gathered into bigger writes); one with
    // bytes already read emits chunks.
    const front =
      withOnread(
        s.front,
        relay(() => s.data!),
      ) ?? s.front;
    if (front !== s.front) {
      front.on('error', () => {});
      s.front = front;
    }
    if (!(data as Partial<TLSSocket>).encrypted) {
      const adopted =
        data.readableLength === 0
          ? withOnread(
              data,
              relay(() => s.front),
            )
          : undefined;
      if (adopted) s.data = adopted;
    } else
      readIntoBuffers(
        data,
        relay(() => s.front, { tls: true }),
      );
    splice(s.front, s.data, (failed) => this.end(s, failed ? 'reset' : undefined));
  }

  private listener(index: number): Server {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.accept(index, c));
    server.on('error', (err) =>
      this.o.logger.error(
        { endpoint: EndpointTable.address(index), err: err.message },
        'a tunnel endpoint failed; its route answers nothing',
      ),
    );
    return server;
  }

  private bind(index: number): void {
    const server = this.listener(index);
    this.listeners.set(index, server);
    server.listen({ host: EndpointTable.address(index), port: this.table!.port });
  }

  /** An endpoint no route uses: its listener closes and the streams through it are reset. */
  private retire(index: number): void {
    for (const s of [...this.streams.values()]) if (s.endpoint === index) this.end(s, 'route-gone');
    if (index === 0) return; // it holds the port
    this.listeners.get(index)?.close();
    this.listeners.delete(index);
  }

  private accept(index: number, front: Socket): void {
    front.on('error', () => {}); // the splice, or end(), reports
    const owner = this.table?.owner(index);
    if (!owner || this.closed) {
      resetSocket(front);
      return;
    }
    const { agentId } = owner;
    const mine = this.byAgent.get(agentId) ?? new Set<Stream>();
    const limit = this.limits.get(agentId) ?? DEFAULT_TUNNEL_MAX_STREAMS;
    if (mine.size >= limit) {
      this.count(agentId).errors.limit = (this.count(agentId).errors.limit ?? 0) + 1;
      this.gate.warn(
        `limit:${agentId}`,
        { agentId, agent: this.o.nameOf(agentId), limit },
        `agent ${this.o.nameOf(agentId) ?? agentId} has ${limit} tunneled streams open, its limit; a new connection was reset`,
      );
      resetSocket(front);
      return;
    }
    const id = ++this.nextId;
    const s: Stream = { id, agentId, endpoint: index, front, done: false };
    const open = { type: 'tunnel.open' as const, id, host: owner.upstream.host, port: owner.upstream.port };
    const pool = this.pools.get(agentId);
    const next = pool?.entries().next().value;
    if (pool && next) {
      // A pre-opened connection: the open request goes first on it, and the bytes follow.
      const [ready, taken] = next;
      pool.delete(ready);
      taken();
      this.track(s);
      ready.write(`${JSON.stringify(open)}\n`);
      this.join(s, ready);
      return;
    }
    const sent = this.o.send(agentId, open);
    if (!sent) {
      // The agent is away: answer at once (the front door says 502), never hang.
      const c = this.count(agentId);
      c.errors.offline = (c.errors.offline ?? 0) + 1;
      resetSocket(front);
      return;
    }
    this.track(s);
    s.timer = setTimeout(() => this.end(s, 'timeout'), TUNNEL_OPEN_TIMEOUT_MS);
    front.once('close', () => {
      if (!s.data) this.end(s, 'client-gone');
    });
  }

  private track(s: Stream): void {
    this.streams.set(s.id, s);
    const mine = this.byAgent.get(s.agentId) ?? new Set<Stream>();
    mine.add(s);
    this.byAgent.set(s.agentId, mine);
    this.count(s.agentId).streams++;
  }

  /** A stream's end: `reason` undefined when it finished normally; else both sockets are reset. */
  private end(s: Stream, reason: string | undefined): void {
    if (s.done) return;
    s.done = true;
    clearTimeout(s.timer);
    this.streams.delete(s.id);
    const mine = this.byAgent.get(s.agentId);
    mine?.delete(s);
    if (mine?.size === 0) this.byAgent.delete(s.agentId);
    const c = this.count(s.agentId);
    c.bytesIn += s.front.bytesRead;
    c.bytesOut += s.front.bytesWritten ?? 0;
    if (reason !== undefined) {
      if (reason !== 'client-gone') c.errors[reason] = (c.errors[reason] ?? 0) + 1;
      if (!s.data) this.o.send(s.agentId, { type: 'tunnel.cancel', id: s.id });
      resetSocket(s.front);
      if (s.data) resetSocket(s.data);
    }
  }

  private count(agentId: string): AgentCounters {
    let c = this.perAgent.get(agentId);
    if (!c) {
      c = { streams: 0, bytesIn: 0, bytesOut: 0, errors: {} };
      this.perAgent.set(agentId, c);
    }
    return c;
  }

  /** Open streams of an agent, for its listing. */
  openStreams(agentId: string): number {
    return this.byAgent.get(agentId)?.size ?? 0;
  }

  metrics(): MetricFamily[] {
    const open: [Record<string, string>, number][] = [];
    const total: [Record<string, string>, number][] = [];
    const bytes: [Record<string, string>, number][] = [];
    const errors: [Record<string, string>, number][] = [];
    for (const [agentId, c] of this.perAgent) {
      const labels = { agent: this.o.nameOf(agentId) ?? agentId, agent_id: agentId };
      let bytesIn = c.bytesIn;
      let bytesOut = c.bytesOut;
      for (const s of this.byAgent.get(agentId) ?? []) {
        bytesIn += s.front.bytesRead;
        bytesOut += s.front.bytesWritten ?? 0;
      }
      open.push([labels, this.openStreams(agentId)]);
      total.push([labels, c.streams]);
      bytes.push(
        [{ ...labels, direction: 'to_agent' }, bytesIn],
        [{ ...labels, direction: 'from_agent' }, bytesOut],
      );
      for (const [reason, n] of Object.entries(c.errors)) errors.push([{ ...labels, reason }, n]);
    }
    return [
      simple('berth_tunnel_streams', 'Tunneled streams open now, per agent', 'gauge', open),
      simple('berth_tunnel_streams_total', 'Tunneled streams opened, per agent', 'counter', total),
      simple('berth_tunnel_bytes_total', 'Bytes carried by tunneled streams, per agent', 'counter', bytes),
      simple(
        'berth_tunnel_errors_total',
        'Tunneled connections that failed, per agent and reason (offline: reset while the agent was away)',
        'counter',
        errors,
      ),
      simple(
        'berth_tunnel_endpoints',
        'Local endpoints of tunneled upstreams',
        'gauge',
        this.table?.size ?? 0,
      ),
    ];
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of [...this.streams.values()]) this.end(s, 'server-stopping');
    await Promise.all(
      [...this.listeners.values()].map((l) => new Promise<void>((resolve) => l.close(() => resolve()))),
    );
    this.listeners.clear();
    this.gate.close();
  }
}

const digest = (token: string) => createHash('sha256').update(token).digest();
