// Berth's TCP front door: one listener per TCP route, bound to one address (an IP, or an
// interface's current address). Each connection is checked against the route's allow-list,
// then piped to an upstream with backpressure and half-close, an idle timeout, a per-listener
// connection limit, and one access-log line when it ends. A sync touches only the listeners
// whose port appears or disappears: every other listener, and its connections, carries on.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import { errorMessage } from '../../errors.js';
import { type Cidr, cidrsContain, parseCidr } from '../../model/cidr.js';
import type { ListenerStatus } from '../../model/data-plane.js';
import type { TcpListenerSite } from '../../model/desired.js';
import { relay, withOnread } from '../../net/relay.js';

export interface TcpForwarderOptions {
  /** An IP address, or an interface name (resolved to its address, and re-resolved). */
  bind: string;
  logger: Logger;
  /** One JSON line per connection. */
  accessLog: (line: string) => void;
  idleTimeoutMs: number;
  maxConnections: number;
  connectTimeoutMs?: number;
  /** How often an interface name is re-resolved. */
  resolveIntervalMs?: number;
}

export type CloseReason =
  | 'done'
  | 'denied'
  | 'limit'
  | 'upstream-refused'
  | 'upstream-error'
  | 'client-error'
  | 'idle'
  | 'listener-removed'
  | 'shutdown';

export interface ListenerCounters {
  accepted: number;
  denied: number;
  refused: number;
  bytesIn: number;
  bytesOut: number;
  closed: Partial<Record<CloseReason, number>>;
}

interface Listener {
  spec: TcpListenerSite;
  allow: Cidr[];
  server?: Server;
  address?: string;
  state: ListenerStatus['state'];
  error?: string;
  conns: Set<Conn>;
  next: number;
  counters: ListenerCounters;
}

/** An open connection, as the idle sweep and listener removal see it. */
interface Conn {
  end(reason: CloseReason): void;
  /** Bytes read so far from either side: unchanged means no traffic either way. */
  moved(): number;
  seen: number;
  quietSince: number;
}

export class TcpForwarder {
  private readonly listeners = new Map<number, Listener>();
  private address?: string;
  private bindError?: string;
  private timer?: NodeJS.Timeout;
  private sweeper?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly o: TcpForwarderOptions) {
    this.address = this.resolve();
    if (!isAddress(o.bind)) {
      this.timer = setInterval(() => this.rebindIfMoved(), o.resolveIntervalMs ?? 2_000);
      this.timer.unref();
    }
    // Idle connections are found by a sweep rather than a timer per socket: a socket timer is
    // re-armed on every read and write, which cost a tenth of the forwarder's round-trip time.
    // A connection closes between the timeout and the timeout plus one sweep interval.
    if (o.idleTimeoutMs > 0) {
      const every = Math.min(1_000, Math.max(50, Math.floor(o.idleTimeoutMs / 8)));
      this.sweeper = setInterval(() => this.sweepIdle(), every);
      this.sweeper.unref();
    }
  }

  /** Makes the listener set match `specs`. Resolves once new listeners are bound (or failed). */
  async sync(specs: TcpListenerSite[]): Promise<void> {
    if (this.stopped) return;
    const wanted = new Map(specs.map((s) => [s.listen, s]));
    for (const [port, l] of this.listeners) {
      if (!wanted.has(port)) this.remove(port, l, 'listener-removed');
    }
    const starting: Promise<void>[] = [];
    for (const spec of specs) {
      const l = this.listeners.get(spec.listen);
      if (l) {
        // Same port: new upstreams and allow-list apply to new connections; open ones carry on.
        l.spec = spec;
        l.allow = spec.allow.map((a) => parseCidr(a)).filter((c): c is Cidr => c !== undefined);
        if (l.state === 'error') starting.push(this.start(l));
        continue;
      }
      const fresh: Listener = {
        spec,
        allow: spec.allow.map((a) => parseCidr(a)).filter((c): c is Cidr => c !== undefined),
        state: 'starting',
        conns: new Set(),
        next: 0,
        counters: { accepted: 0, denied: 0, refused: 0, bytesIn: 0, bytesOut: 0, closed: {} },
      };
      this.listeners.set(spec.listen, fresh);
      starting.push(this.start(fresh));
    }
    await Promise.all(starting);
  }

  status(): ListenerStatus[] {
    return [...this.listeners.values()]
      .map((l) => {
        const s: ListenerStatus = {
          listen: l.spec.listen,
          state: l.state,
          upstreams: l.spec.upstreams.map((u) => `${u.host}:${u.port}`),
          allow: l.spec.allow,
          active: l.conns.size,
          routeKeys: l.spec.routeKeys,
        };
        if (l.address) s.address = l.address;
        if (l.error) s.error = l.error;
        return s;
      })
      .sort((a, b) => a.listen - b.listen);
  }

  counters(): Map<number, ListenerCounters> {
    return new Map([...this.listeners].map(([port, l]) => [port, l.counters]));
  }

  /** The address listeners bind to now, or why there is none. */
  bindStatus(): { bind: string; address?: string; error?: string } {
    const out: { bind: string; address?: string; error?: string } = { bind: this.o.bind };
    if (this.address) out.address = this.address;
    if (this.bindError) out.error = this.bindError;
    return out;
  }

  async close(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.sweeper);
    await Promise.all([...this.listeners].map(([port, l]) => this.remove(port, l, 'shutdown')));
  }

  private sweepIdle(): void {
    const now = Date.now();
    for (const l of this.listeners.values()) {
      for (const c of l.conns) {
        const moved = c.moved();
        if (moved !== c.seen) {
          c.seen = moved;
          c.quietSince = now;
        } else if (now - c.quietSince >= this.o.idleTimeoutMs) {
          c.end('idle');
        }
      }
    }
  }

  private resolve(): string | undefined {
    if (isAddress(this.o.bind)) return this.o.bind;
    const addrs = networkInterfaces()[this.o.bind];
    if (!addrs) {
      this.bindError = `no network interface named ${this.o.bind}`;
      return undefined;
    }
    const pick =
      addrs.find((a) => a.family === 'IPv4') ?? addrs.find((a) => a.family === 'IPv6' && !a.internal);
    if (!pick) {
      this.bindError = `interface ${this.o.bind} has no address`;
      return undefined;
    }
    this.bindError = undefined;
    return pick.address;
  }

  private rebindIfMoved(): void {
    const now = this.resolve();
    if (now === this.address) return;
    this.o.logger.warn(
      { bind: this.o.bind, from: this.address ?? null, to: now ?? null },
      'tcp bind address changed; re-binding listeners',
    );
    this.address = now;
    for (const l of this.listeners.values()) {
      const server = l.server;
      l.server = undefined;
      server?.close();
      void this.start(l);
    }
  }

  private start(l: Listener): Promise<void> {
    const address = this.address;
    if (!address) {
      l.state = 'error';
      l.error = this.bindError ?? 'no bind address';
      l.address = undefined;
      return Promise.resolve();
    }
    l.state = 'starting';
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.accept(l, c));
    l.server = server;
    return new Promise<void>((resolve) => {
      const fail = (err: Error) => {
        if (l.server !== server) return resolve();
        l.state = 'error';
        l.error = `cannot listen on ${hostPort(address, l.spec.listen)}: ${errorMessage(err)}`;
        l.address = undefined;
        l.server = undefined;
        this.o.logger.error({ listen: l.spec.listen, err: l.error }, 'tcp listener failed');
        resolve();
      };
      server.once('error', fail);
      server.listen({ host: address, port: l.spec.listen, exclusive: true }, () => {
        server.off('error', fail);
        server.on('error', (err) => this.o.logger.warn({ listen: l.spec.listen, err: errorMessage(err) }));
        if (l.server !== server || this.stopped) {
          server.close();
          return resolve();
        }
        l.state = 'listening';
        l.error = undefined;
        l.address = hostPort(address, l.spec.listen);
        this.o.logger.info({ listen: l.address, upstreams: l.spec.upstreams.length }, 'tcp listener up');
        resolve();
      });
    });
  }

  private remove(port: number, l: Listener, reason: CloseReason): Promise<void> {
    this.listeners.delete(port);
    const server = l.server;
    l.server = undefined;
    for (const c of [...l.conns]) c.end('listener-removed');
    l.conns.clear();
    if (reason !== 'shutdown') this.o.logger.info({ listen: port, reason }, 'tcp listener removed');
    // Also closes connections that are still being accepted.
    return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }

  /** Each connection goes through four steps: admit, dial, relay both ways, finish (see Forwarded). */
  private accept(l: Listener, socket: Socket): void {
    const conn = new Forwarded(l, socket, this.o);
    const upstream = conn.admit();
    if (upstream) conn.dial(upstream);
  }
}

/** One client's connection through a listener, from accept to its access-log line. */
class Forwarded implements Conn {
  seen = 0;
  quietSince: number;
  private readonly started: number;
  private readonly clientAddr: string;
  private readonly clientText: string;
  /** The accepted socket, until relayBothWays() hands its connection to one that reads with onread. */
  private client: Socket;
  private upstream?: Socket;
  private upstreamText = '';
  private connectTimer?: NodeJS.Timeout;
  private connected = false;
  /** Sockets closed once connected: the connection is done when both are. */
  private closes = 0;
  private finished = false;

  constructor(
    private readonly l: Listener,
    private readonly accepted: Socket,
    private readonly o: TcpForwarderOptions,
  ) {
    this.started = Date.now();
    this.quietSince = this.started;
    this.clientAddr = accepted.remoteAddress ?? '';
    this.clientText = hostPort(this.clientAddr, accepted.remotePort ?? 0);
    this.client = accepted;
  }

  moved(): number {
    return this.client.bytesRead + (this.upstream?.bytesRead ?? 0);
  }

  end(reason: CloseReason): void {
    this.finish(reason);
  }

  /**
   * Step 1: the allow-list, the listener's connection limit, and an upstream to send it to (the
   * listener's upstreams take connections in turn). Returns that upstream, or refuses and finishes.
   */
  admit(): { host: string; port: number } | undefined {
    const { l } = this;
    const max = this.o.maxConnections;
    const c = l.counters;
    if (l.allow.length > 0 && !cidrsContain(l.allow, this.clientAddr)) {
      c.denied++;
      this.finish(
        'denied',
        `client ${this.clientAddr} is not in the allow-list (${l.spec.allow.join(', ')})`,
      );
      return undefined;
    }
    if (l.conns.size >= max) {
      c.denied++;
      this.finish('limit', `listener has ${l.conns.size} connections (limit ${max})`);
      return undefined;
    }
    const ups = l.spec.upstreams;
    if (ups.length === 0) {
      c.refused++;
      this.finish('upstream-refused', 'no upstream');
      return undefined;
    }
    c.accepted++;
    l.conns.add(this);
    return ups[l.next++ % ups.length]!;
  }

  /**
   * Step 2: connect to the upstream. One that refuses, fails or does not answer within the connect
   * timeout gets the client closed at once; the client stays paused (pauseOnConnect) until then.
   */
  dial(u: { host: string; port: number }): void {
    this.upstreamText = hostPort(u.host, u.port);
    // Both directions read straight into a reused buffer and write each chunk on (see relay()).
    const up = connect({
      host: u.host,
      port: u.port,
      allowHalfOpen: true,
      noDelay: true,
      onread: relay(() => this.client),
    });
    this.upstream = up;
    this.connectTimer = setTimeout(
      () => this.finish('upstream-refused', `no answer from ${this.upstreamText} within the connect timeout`),
      this.o.connectTimeoutMs ?? 5_000,
    );
    up.once('connect', () => this.relayBothWays(up));
    up.once('close', () => this.closed());
    this.watchClient(this.accepted);
    up.once('error', (err) => {
      clearTimeout(this.connectTimer);
      if (!this.connected) {
        this.l.counters.refused++;
        this.o.logger.warn(
          { listen: this.l.spec.listen, upstream: this.upstreamText, err: errorMessage(err) },
          'tcp upstream refused',
        );
        this.finish('upstream-refused', errorMessage(err));
        return;
      }
      this.finish('upstream-error', errorMessage(err));
    });
  }

  /**
   * Step 3, once the upstream answers: the client starts reading only now. A full upstream stops
   * the client's reads until it drains, and the other way round. An end from one side becomes a
   * half-close towards the other, and each socket closes once both of its directions are done, so
   * the connection is finished when both sockets have closed.
   */
  private relayBothWays(up: Socket): void {
    this.connected = true;
    clearTimeout(this.connectTimer);
    const adopted = withOnread(
      this.accepted,
      relay(() => up),
    );
    let client = this.client;
    if (adopted) {
      this.client = client = adopted;
      this.watchClient(adopted);
    } else {
      client.on('data', (chunk: Buffer) => {
        if (!up.write(chunk)) client.pause();
      });
    }
    client.setNoDelay(true);
    up.on('drain', () => client.resume());
    client.on('drain', () => up.resume());
    client.once('end', () => up.end());
    up.once('end', () => client.end());
    client.resume();
  }

  private watchClient(sock: Socket): void {
    sock.once('close', () => {
      if (sock !== this.client) return; // emptied by withOnread()
      if (this.connected) this.closed();
      else this.finish('client-error', 'the client left before the upstream answered');
    });
    sock.once('error', (err) => this.finish('client-error', errorMessage(err)));
  }

  private closed(): void {
    if (++this.closes === 2) this.finish('done');
  }

  /** Step 4, once: both sockets closed, bytes and the reason counted, one access-log line. */
  private finish(reason: CloseReason, detail?: string): void {
    if (this.finished) return;
    this.finished = true;
    const { l, client, upstream } = this;
    l.conns.delete(this);
    const c = l.counters;
    const bytesIn = client.bytesRead;
    const bytesOut = upstream?.bytesRead ?? 0;
    c.bytesIn += bytesIn;
    c.bytesOut += bytesOut;
    c.closed[reason] = (c.closed[reason] ?? 0) + 1;
    client.destroy();
    upstream?.destroy();
    const line: Record<string, unknown> = {
      time: new Date(this.started).toISOString(),
      client: this.clientText,
      listener: l.address ?? `:${l.spec.listen}`,
      upstream: this.upstreamText || null,
      bytesIn,
      bytesOut,
      durationMs: Date.now() - this.started,
      reason,
    };
    if (detail) line.detail = detail;
    this.o.accessLog(JSON.stringify(line));
  }
}

function isAddress(s: string): boolean {
  return parseCidr(s) !== undefined && !s.includes('/');
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
