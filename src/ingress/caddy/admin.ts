// A small client for Caddy's admin API, over TCP or a unix socket.
import { connect } from 'node:net';
import { UserError } from '../../errors.js';
import type { Json } from './config.js';

export interface AdminResponse {
  status: number;
  body: string;
}

/** Caddy refused a config; `message` is Caddy's own explanation. */
export class CaddyRejectedError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'CaddyRejectedError';
  }
}

/** What CaddyTarget and the lease holder use of the admin API (a fake in unit tests). */
export interface CaddyAdminClient {
  /** The admin address, for logs and status. */
  readonly display: string;
  request(method: string, path: string, body?: unknown): Promise<AdminResponse>;
  /** The config at `path`; undefined when Caddy has none there. */
  getConfig(path?: string): Promise<Json>;
  /** Replaces Caddy's whole config; a CaddyRejectedError carries Caddy's reason. */
  load(config: Json): Promise<void>;
}

export class CaddyAdmin implements CaddyAdminClient {
  readonly display: string;
  private readonly socketPath?: string;
  private readonly base?: string;

  constructor(url: string, opts: { timeoutMs?: number } = {}) {
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    if (url.startsWith('unix:')) {
      this.socketPath = url.replace(/^unix:(\/\/)?/, '');
      this.display = `unix:${this.socketPath}`;
    } else {
      const u = new URL(url);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') {
        throw new UserError(
          'CONFIG_INVALID',
          `--caddy-admin ${url}: expected http://host:port or unix:///path`,
        );
      }
      this.base = u.origin;
      this.display = u.origin;
    }
  }
  private readonly timeoutMs: number;

  async request(method: string, path: string, body?: unknown): Promise<AdminResponse> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    // Caddy restarts its admin listener on every config load, so a request that lands in that
    // moment is refused or cut off. Admin requests are idempotent: retry a few times, briefly,
    // before calling Caddy unreachable (which would look like drift and cause yet another load).
    let last: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, 50 * attempt));
      try {
        return this.socketPath
          ? await this.unixRequest(method, path, payload)
          : await this.tcpRequest(method, path, payload);
      } catch (err) {
        last = err;
      }
    }
    const cause = (last as Error & { cause?: Error }).cause?.message ?? (last as Error).message;
    throw new UserError('CADDY_UNREACHABLE', `Caddy admin ${this.display} unreachable: ${cause}`);
  }

  async getConfig(path = '/config/'): Promise<Json> {
    const r = await this.request('GET', path);
    if (r.status === 404) return undefined;
    if (r.status !== 200) throw new CaddyRejectedError(r.status, caddyError(r.body));
    return r.body.trim() === '' ? null : JSON.parse(r.body);
  }

  async load(config: Json): Promise<void> {
    const r = await this.request('POST', '/load', config);
    if (r.status !== 200) throw new CaddyRejectedError(r.status, caddyError(r.body));
  }

  private async tcpRequest(method: string, path: string, payload?: string): Promise<AdminResponse> {
    const res = await fetch(`${this.base}${path}`, {
      method,
      headers: payload === undefined ? {} : { 'Content-Type': 'application/json' },
      body: payload,
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    return { status: res.status, body: await res.text() };
  }

  // Caddy checks the Host header of admin requests against its allowed origins, and a unix
  // socket has no host to name; an HTTP/1.0 request without Host is accepted by every version.
  private unixRequest(method: string, path: string, payload?: string): Promise<AdminResponse> {
    return new Promise((resolve, reject) => {
      const sock = connect({ path: this.socketPath! });
      const chunks: Buffer[] = [];
      sock.setTimeout(this.timeoutMs, () => sock.destroy(new Error(`timed out after ${this.timeoutMs} ms`)));
      sock.on('connect', () => {
        const body = payload === undefined ? '' : payload;
        const head = [`${method} ${path} HTTP/1.0`, 'Connection: close'];
        if (payload !== undefined) head.push('Content-Type: application/json');
        head.push(`Content-Length: ${Buffer.byteLength(body)}`);
        sock.end(`${head.join('\r\n')}\r\n\r\n${body}`);
      });
      sock.on('data', (c) => chunks.push(c));
      sock.on('error', reject);
      sock.on('close', () => {
        const raw = Buffer.concat(chunks).toString('utf8');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
        if (!m) return reject(new Error('no HTTP response'));
        const split = raw.indexOf('\r\n\r\n');
        resolve({ status: Number(m[1]), body: split >= 0 ? raw.slice(split + 4) : '' });
      });
    });
  }
}

function caddyError(body: string): string {
  try {
    const j = JSON.parse(body);
    if (typeof j?.error === 'string') return j.error;
  } catch {
    // not JSON: use the text as it is
  }
  return body.trim() || 'no error text';
}
