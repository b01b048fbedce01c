// Caddy's request lines, as Berth reads them: Caddy's servers log every request to a `net` writer
// (see TrafficLog in config.ts) whose address is a socket this module listens on. Each line
// becomes an HttpAccess; what it means (owner, metrics, the access log) is the server's business.
import { chmodSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { addressFromLabel } from '../dns/responder.js';

/** One request as Caddy saw it. */
export interface HttpAccess {
  /** When the request started (ms since the epoch). */
  start: number;
  client: string;
  /** The request's host, lower case, without a port. */
  host: string;
  method: string;
  /** The URI as Caddy logged it (its query string already removed unless asked for). */
  path: string;
  proto: string;
  /** 0 when no response was written (the client left first). */
  status: number;
  /** Request body bytes as declared by Content-Length (0 when not declared). */
  bytesIn: number;
  /** Response body bytes written. */
  bytesOut: number;
  durationMs: number;
  /** host:port of the upstream that served it; null when none did (a 404 of Berth's own). */
  upstream: string | null;
}

export interface ParseOptions {
  /** The dynamic layout's zone: SRV target names in it are turned back into addresses. */
  zone?: string;
  /** The not-found responder: a request it answered had no upstream. */
  notFound?: string;
}

/** Longest line read; a longer one (a huge URI) is skipped and counted as unreadable. */
export const MAX_LINE_BYTES = 64 * 1024;

// biome-ignore lint/suspicious/noExplicitAny: one JSON line from Caddy, checked field by field.
type Raw = any;

/**
 * The fields of a line Berth reads. (A scanner that picked only these out of the line, instead of
 * JSON.parse, was slower: 2.3-3.8 against 1.9-2.4 µs a line.)
 */
interface Fields {
  ts: unknown;
  status: unknown;
  duration: unknown;
  size: unknown;
  user_id: unknown;
  request?: {
    remote_ip: unknown;
    remote_port: unknown;
    host: unknown;
    method: unknown;
    uri: unknown;
    proto: unknown;
  };
}

/**
 * The request lines of one Caddy: what their fields turn into is looked up once per distinct
 * value (a host's bare name, an SRV target's address), not for every line. Bounded: at
 * CACHE_LIMIT entries a cache starts again, so random hosts cannot grow it.
 */
export class AccessParser {
  private readonly hosts = new Map<string, string>();
  private readonly upstreams = new Map<string, string | null>();

  constructor(private readonly o: ParseOptions = {}) {}

  parse(line: string): HttpAccess | undefined {
    return fromFields(jsonFields(line), this);
  }

  bareHost(h: string): string {
    let v = this.hosts.get(h);
    if (v === undefined) {
      v = bareHost(h);
      if (this.hosts.size >= CACHE_LIMIT) this.hosts.clear();
      this.hosts.set(h, v);
    }
    return v;
  }

  upstream(hostport: string): string | null {
    let v = this.upstreams.get(hostport);
    if (v === undefined) {
      v = upstreamOf(hostport, this.o);
      if (this.upstreams.size >= CACHE_LIMIT) this.upstreams.clear();
      this.upstreams.set(hostport, v);
    }
    return v;
  }
}

const CACHE_LIMIT = 4096;

export function parseCaddyAccess(line: string, o: ParseOptions = {}): HttpAccess | undefined {
  return new AccessParser(o).parse(line);
}

function jsonFields(line: string): Fields | undefined {
  try {
    const v: Raw = JSON.parse(line);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function fromFields(v: Fields | undefined, p: AccessParser): HttpAccess | undefined {
  const r = v?.request;
  if (!v || !r || typeof r !== 'object' || typeof v.ts !== 'number' || typeof v.status !== 'number')
    return undefined;
  const durationMs = typeof v.duration === 'number' ? v.duration * 1000 : 0;
  // "<upstream> <Content-Length> <Upgrade>" (see TRAFFIC_MAP): the first two never hold spaces.
  const u = typeof v.user_id === 'string' ? v.user_id : '';
  const sp1 = u.indexOf(' ');
  const sp2 = sp1 < 0 ? -1 : u.indexOf(' ', sp1 + 1);
  const hostport = sp1 < 0 ? u : u.slice(0, sp1);
  const length = sp1 < 0 ? '' : sp2 < 0 ? u.slice(sp1 + 1) : u.slice(sp1 + 1, sp2);
  const upgrade = sp2 < 0 ? '' : u.slice(sp2 + 1);
  // Caddy 2.6 logs status 0 for a connection it handed over to an upgraded protocol.
  const status = v.status === 0 && upgrade.trim() !== '' && hostport ? 101 : v.status;
  return {
    start: Math.round(v.ts * 1000 - durationMs),
    client: hostPort(String(r.remote_ip ?? ''), String(r.remote_port ?? '')),
    host: p.bareHost(String(r.host ?? '')),
    method: String(r.method ?? ''),
    path: String(r.uri ?? ''),
    proto: String(r.proto ?? ''),
    status,
    bytesIn: length !== '' && isDigits(length) ? Number(length) : 0,
    bytesOut: typeof v.size === 'number' ? v.size : 0,
    durationMs: Math.round(durationMs * 1000) / 1000,
    upstream: p.upstream(hostport),
  };
}

function isDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

function upstreamOf(hostport: string, o: ParseOptions): string | null {
  if (!hostport || hostport === o.notFound) return null;
  if (o.zone) {
    const colon = hostport.lastIndexOf(':');
    // SRV targets are fully qualified: "ip-10-0-0-5.berth.internal.:8080".
    const name = (colon < 0 ? hostport : hostport.slice(0, colon)).replace(/\.$/, '');
    const suffix = `.${o.zone}`;
    if (name.endsWith(suffix)) {
      const ip = addressFromLabel(name.slice(0, -suffix.length));
      if (ip) {
        const addr = hostPort(ip, colon < 0 ? '' : hostport.slice(colon + 1));
        return addr === o.notFound ? null : addr;
      }
    }
  }
  return hostport;
}

/** "Example.COM:8080" → "example.com"; "[::1]:80" → "::1". */
export function bareHost(h: string): string {
  const s = h.toLowerCase();
  if (s.startsWith('[')) return s.slice(1, s.indexOf(']') >>> 0);
  const colon = s.indexOf(':');
  return colon >= 0 && colon === s.lastIndexOf(':') ? s.slice(0, colon) : s;
}

function hostPort(host: string, port: string): string {
  if (!port) return host;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export interface TrafficListenerOptions {
  /** Unix socket path (mode 0600: only Berth's user, and the Caddy it runs as that user, can write). */
  socketPath: string;
  parse?: ParseOptions;
  /** The requests of one read, in order. */
  onRequests: (requests: HttpAccess[]) => void;
}

/**
 * While a read brings less than this, the socket is left unread for READ_PAUSE_MS before the next:
 * read as soon as it is readable, each read took two or three lines, and the reads (system calls,
 * wake-ups of this thread, stream events) cost Berth more than the lines themselves. A paused
 * socket buffers in the kernel (about 200 KiB, some 150 lines), so Caddy never waits for it at
 * the rates where pausing happens; at higher rates reads are big, and come back to back.
 */
const BATCH_BYTES = 16 * 1024;
const READ_PAUSE_MS = 5;

/** Reads Caddy's request lines from a unix socket; any number of Caddy connections at once. */
export class TrafficListener {
  private server?: Server;
  private readonly conns = new Set<Socket>();
  private readonly parser: AccessParser;
  readonly counters = { lines: 0, unreadable: 0 };

  constructor(private readonly o: TrafficListenerOptions) {
    this.parser = new AccessParser(o.parse);
  }

  /** The address as Caddy's `net` writer names it. */
  get address(): string {
    return `unix/${this.o.socketPath}`;
  }

  async start(): Promise<void> {
    rmSync(this.o.socketPath, { force: true });
    // A high-water mark of one byte: a paused socket stops reading from the kernel after one chunk.
    const server = createServer({ highWaterMark: 1 }, (c) => this.read(c));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(this.o.socketPath, 0o600);
    this.server = server;
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    rmSync(this.o.socketPath, { force: true });
  }

  private read(c: Socket): void {
    this.conns.add(c);
    let timer: NodeJS.Timeout | undefined;
    c.on('close', () => {
      clearTimeout(timer);
      this.conns.delete(c);
    });
    c.on('error', () => c.destroy());
    let rest = '';
    /** Inside a line that was too long: drop everything up to its newline. */
    let skipping = false;
    c.setEncoding('utf8');
    c.on('data', (chunk: string) => {
      if (chunk.length < BATCH_BYTES && !timer) {
        c.pause();
        timer = setTimeout(() => {
          timer = undefined;
          c.resume();
        }, READ_PAUSE_MS);
      }
      let text = rest + chunk;
      rest = '';
      if (skipping) {
        const nl = text.indexOf('\n');
        if (nl < 0) return;
        text = text.slice(nl + 1);
        skipping = false;
      }
      const out: HttpAccess[] = [];
      let from = 0;
      for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', from)) {
        if (nl > from) {
          this.counters.lines++;
          const a = nl - from <= MAX_LINE_BYTES ? this.parser.parse(text.slice(from, nl)) : undefined;
          if (a) out.push(a);
          else this.counters.unreadable++;
        }
        from = nl + 1;
      }
      if (text.length - from > MAX_LINE_BYTES) {
        this.counters.lines++;
        this.counters.unreadable++;
        skipping = true;
      } else rest = from === 0 ? text : text.slice(from);
      if (out.length > 0) this.o.onRequests(out);
    });
  }
}
