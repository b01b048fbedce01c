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

export function parseCaddyAccess(line: string, o: ParseOptions = {}): HttpAccess | undefined {
  let v: Raw;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  const r = v?.request;
  if (!r || typeof v.ts !== 'number' || typeof v.status !== 'number') return undefined;
  const durationMs = typeof v.duration === 'number' ? v.duration * 1000 : 0;
  // "<upstream> <Content-Length> <Upgrade>" (see TRAFFIC_MAP): the first two never hold spaces.
  const [hostport = '', length = '', ...upgrade] = typeof v.user_id === 'string' ? v.user_id.split(' ') : [];
  // Caddy 2.6 logs status 0 for a connection it handed over to an upgraded protocol.
  const status = v.status === 0 && upgrade.join(' ').trim() !== '' && hostport ? 101 : v.status;
  return {
    start: Math.round(v.ts * 1000 - durationMs),
    client: hostPort(String(r.remote_ip ?? ''), String(r.remote_port ?? '')),
    host: bareHost(String(r.host ?? '')),
    method: String(r.method ?? ''),
    path: String(r.uri ?? ''),
    proto: String(r.proto ?? ''),
    status,
    bytesIn: /^\d+$/.test(length) ? Number(length) : 0,
    bytesOut: typeof v.size === 'number' ? v.size : 0,
    durationMs: Math.round(durationMs * 1000) / 1000,
    upstream: upstreamOf(hostport, o),
  };
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

/** Reads Caddy's request lines from a unix socket; any number of Caddy connections at once. */
export class TrafficListener {
  private server?: Server;
  private readonly conns = new Set<Socket>();
  readonly counters = { lines: 0, unreadable: 0 };

  constructor(private readonly o: TrafficListenerOptions) {}

  /** The address as Caddy's `net` writer names it. */
  get address(): string {
    return `unix/${this.o.socketPath}`;
  }

  async start(): Promise<void> {
    rmSync(this.o.socketPath, { force: true });
    const server = createServer((c) => this.read(c));
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
    c.on('close', () => this.conns.delete(c));
    c.on('error', () => c.destroy());
    let rest = '';
    /** Inside a line that was too long: drop everything up to its newline. */
    let skipping = false;
    c.setEncoding('utf8');
    c.on('data', (chunk: string) => {
      let text = rest + chunk;
      rest = '';
      if (skipping) {
        const nl = text.indexOf('\n');
        if (nl < 0) return;
        text = text.slice(nl + 1);
        skipping = false;
      }
      const lines = text.split('\n');
      const last = lines.pop() ?? '';
      if (last.length > MAX_LINE_BYTES) {
        this.counters.unreadable++;
        skipping = true;
      } else rest = last;
      const out: HttpAccess[] = [];
      for (const line of lines) {
        if (line === '') continue;
        this.counters.lines++;
        const a = line.length <= MAX_LINE_BYTES ? parseCaddyAccess(line, this.o.parse) : undefined;
        if (a) out.push(a);
        else this.counters.unreadable++;
      }
      if (out.length > 0) this.o.onRequests(out);
    });
  }
}
