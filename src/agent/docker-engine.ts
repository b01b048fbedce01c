// A minimal Docker Engine API client on node:http: the few calls the agent makes (JSON requests,
// the newline-delimited event stream, exec's hijacked multiplexed stream), nothing else. It
// replaces dockerode, whose dependency tree (ssh2 with a 16 MiB asm.js heap, protobufjs, grpc)
// was half of an idle agent's memory. The framing parsers are pure classes, tested on their own.
import { Agent as HttpAgent, type IncomingMessage, type RequestOptions, request } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Duplex } from 'node:stream';

/** Where the engine listens, from `--docker` / DOCKER_HOST. */
export type EngineTarget =
  | { kind: 'unix'; socketPath: string }
  | { kind: 'tcp'; host: string; port: number; tls: boolean };

/**
 * `unix:///path`, `/path`, `tcp://host[:port]` (plain HTTP, 2375), `http://host[:port]` (2375) and
 * `https://host[:port]` (TLS checked against the system CAs, 2376): the forms the agent has always
 * taken.
 */
export function engineTarget(endpoint: string): EngineTarget {
  if (endpoint.startsWith('unix://')) return { kind: 'unix', socketPath: endpoint.slice('unix://'.length) };
  if (endpoint.startsWith('/')) return { kind: 'unix', socketPath: endpoint };
  let u: URL;
  try {
    u = new URL(endpoint.replace(/^tcp:/, 'http:'));
  } catch {
    throw new Error(`docker endpoint ${JSON.stringify(endpoint)}: expected unix:///path or tcp://host:port`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new Error(`docker endpoint ${JSON.stringify(endpoint)}: expected unix:///path or tcp://host:port`);
  const tls = u.protocol === 'https:';
  return {
    kind: 'tcp',
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: Number(u.port || (tls ? 2376 : 2375)),
    tls,
  };
}

/** A refusal from the engine: what was asked, the HTTP status and Docker's own message. */
export class EngineError extends Error {
  constructor(
    readonly what: string,
    readonly statusCode: number,
    readonly dockerMessage: string,
  ) {
    super(`docker ${what}: HTTP ${statusCode}${dockerMessage ? `: ${dockerMessage}` : ''}`);
  }
}

/** The error for a non-2xx answer: Docker's `{"message": …}` when it sent one, else the body's start. */
export function engineError(what: string, statusCode: number, body: string): EngineError {
  let message = '';
  try {
    const parsed = JSON.parse(body) as { message?: unknown };
    if (typeof parsed?.message === 'string') message = parsed.message;
  } catch {
    // not JSON: a proxy's page, say
  }
  if (!message) message = body.replace(/\s+/g, ' ').trim();
  return new EngineError(what, statusCode, clip(message, 300));
}

const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n)}…` : s);

/** Splits newline-delimited JSON (the event stream) into parsed values, across chunk boundaries. */
export class JsonLineSplitter {
  private parts: Buffer[] = [];
  private size = 0;

  constructor(
    private readonly onValue: (v: unknown) => void,
    private readonly maxLineBytes = 4 << 20,
  ) {}

  /** Feeds a chunk; throws (naming the problem) on a line that is too long or not JSON. */
  push(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      this.take(chunk.subarray(start, nl));
      const line = Buffer.concat(this.parts, this.size).toString('utf8').trim();
      this.parts = [];
      this.size = 0;
      start = nl + 1;
      if (!line) continue;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        throw new Error(`invalid JSON in the event stream: ${JSON.stringify(clip(line, 80))}`);
      }
      this.onValue(value);
    }
    this.take(chunk.subarray(start));
  }

  private take(piece: Buffer): void {
    if (piece.length === 0) return;
    this.size += piece.length;
    if (this.size > this.maxLineBytes)
      throw new Error(`an event stream line longer than ${this.maxLineBytes} bytes`);
    this.parts.push(piece);
  }
}

export type OutputStream = 'stdout' | 'stderr';

/**
 * Docker's multiplexed stream (a container attached without a TTY): frames of an 8-byte header
 * (stream type 0 stdin, 1 stdout, 2 stderr, 3 the daemon's own error; three zero bytes; payload
 * length, big-endian uint32) and the payload. Payloads are passed on as they arrive, never held
 * whole, so memory stays bounded by the chunk size whatever a header claims.
 */
export class FrameDemuxer {
  private header = Buffer.alloc(8);
  private headerHave = 0;
  private stream: OutputStream = 'stdout';
  private left = 0;
  private failed?: Error;

  constructor(
    private readonly onOutput: (stream: OutputStream, chunk: Buffer) => void,
    private readonly maxFrameBytes = 16 << 20,
  ) {}

  /** Feeds a chunk; throws (naming the problem) at the first malformed header, and after it. */
  push(chunk: Buffer): void {
    if (this.failed) throw this.failed;
    let at = 0;
    while (at < chunk.length) {
      if (this.left > 0) {
        const n = Math.min(this.left, chunk.length - at);
        this.left -= n;
        this.onOutput(this.stream, chunk.subarray(at, at + n));
        at += n;
        continue;
      }
      const n = Math.min(8 - this.headerHave, chunk.length - at);
      chunk.copy(this.header, this.headerHave, at, at + n);
      this.headerHave += n;
      at += n;
      if (this.headerHave < 8) break;
      this.headerHave = 0;
      const type = this.header[0]!;
      const size = this.header.readUInt32BE(4);
      if (type > 3 || this.header[1] !== 0 || this.header[2] !== 0 || this.header[3] !== 0)
        this.fail(`not a Docker multiplexed stream (frame header ${this.header.toString('hex')})`);
      if (size > this.maxFrameBytes)
        this.fail(
          `an output frame of ${size} bytes, more than ${this.maxFrameBytes}: not a Docker multiplexed stream`,
        );
      this.stream = type === 1 ? 'stdout' : 'stderr';
      this.left = size;
    }
  }

  /** The stream ended: throws if it ended inside a frame. */
  end(): void {
    if (this.failed) return;
    if (this.headerHave > 0)
      this.fail(`the output stream ended inside a frame header (${this.headerHave} of 8 bytes)`);
    if (this.left > 0) this.fail(`the output stream ended ${this.left} bytes short of its last frame`);
  }

  private fail(message: string): never {
    this.failed = new Error(message);
    throw this.failed;
  }
}

/** How much of a JSON answer is read before it is refused (a list of many containers fits). */
const MAX_BODY_BYTES = 256 << 20;

export interface CallOptions {
  method?: 'GET' | 'POST';
  body?: unknown;
  /** Until the whole answer (or, for streams, the headers) arrived. */
  timeoutMs: number;
}

export class EngineClient {
  private readonly agent: HttpAgent;

  constructor(private readonly target: EngineTarget) {
    // Keep-alive: a re-list is several calls in a row; idle sockets close on their own.
    this.agent =
      target.kind === 'tcp' && target.tls
        ? new HttpsAgent({ keepAlive: true, timeout: 10_000 })
        : new HttpAgent({ keepAlive: true, timeout: 10_000 });
  }

  /** A JSON call; `what` names it in every error ("list containers"). */
  async json<T>(path: string, what: string, o: CallOptions): Promise<T> {
    const deadline = Date.now() + o.timeoutMs;
    const res = await this.send(path, what, o);
    const body = await readBody(res, what, Math.max(1, deadline - Date.now()), o.timeoutMs);
    if (res.statusCode! < 200 || res.statusCode! > 299) throw engineError(what, res.statusCode!, body);
    if (res.statusCode === 204 || body === '') return undefined as T;
    try {
      return JSON.parse(body) as T;
    } catch {
      throw new Error(`docker ${what}: the answer is not JSON: ${JSON.stringify(clip(body, 80))}`);
    }
  }

  /** A streamed answer (the event stream): resolves with the response once its headers are in. */
  async stream(path: string, what: string, o: CallOptions): Promise<IncomingMessage> {
    const res = await this.send(path, what, o);
    if (res.statusCode! < 200 || res.statusCode! > 299)
      throw engineError(what, res.statusCode!, await readBody(res, what, o.timeoutMs));
    return res;
  }

  /**
   * A call whose connection becomes the stream (exec start): the engine answers 101 and the socket
   * is handed over, or (older engines, some proxies) 200 with the stream as the body.
   */
  hijack(
    path: string,
    what: string,
    o: CallOptions,
  ): Promise<{ stream: Duplex | IncomingMessage; head?: Buffer }> {
    return new Promise((resolve, reject) => {
      const { req, payload } = this.request(path, o, { connection: 'Upgrade', upgrade: 'tcp' });
      const timer = setTimeout(
        () => req.destroy(new Error(`docker ${what} timed out after ${o.timeoutMs} ms`)),
        o.timeoutMs,
      );
      req.on('upgrade', (_res, socket, head) => {
        clearTimeout(timer);
        resolve({ stream: socket, head });
      });
      req.on('response', (res) => {
        clearTimeout(timer);
        if (res.statusCode! >= 200 && res.statusCode! <= 299) return resolve({ stream: res });
        readBody(res, what, o.timeoutMs).then(
          (body) => reject(engineError(what, res.statusCode!, body)),
          reject,
        );
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(wrap(what, err));
      });
      req.end(payload);
    });
  }

  private send(path: string, what: string, o: CallOptions): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const { req, payload } = this.request(path, o);
      const timer = setTimeout(
        () => req.destroy(new Error(`docker ${what} timed out after ${o.timeoutMs} ms`)),
        o.timeoutMs,
      );
      req.on('response', (res) => {
        clearTimeout(timer);
        resolve(res);
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(wrap(what, err));
      });
      req.end(payload);
    });
  }

  private request(path: string, o: CallOptions, extra: Record<string, string> = {}) {
    const t = this.target;
    const headers: Record<string, string> = { ...extra };
    const payload = o.body === undefined ? undefined : JSON.stringify(o.body);
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const opts: RequestOptions = {
      method: o.method ?? 'GET',
      path,
      headers,
      agent: this.agent,
      ...(t.kind === 'unix' ? { socketPath: t.socketPath } : { host: t.host, port: t.port }),
    };
    // The Host header a unix socket gets; Docker ignores it, but HTTP/1.1 wants one.
    if (t.kind === 'unix') headers.host = 'docker';
    const req = t.kind === 'tcp' && t.tls ? httpsRequest(opts) : request(opts);
    return { req, payload };
  }
}

function wrap(what: string, err: Error): Error {
  if (err.message.startsWith(`docker ${what}`)) return err;
  const e = new Error(`docker ${what}: ${err.message}`);
  (e as { code?: unknown }).code = (err as { code?: unknown }).code;
  return e;
}

function readBody(
  res: IncomingMessage,
  what: string,
  timeoutMs: number,
  totalMs = timeoutMs,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(
      () => res.destroy(new Error(`docker ${what} timed out after ${totalMs} ms`)),
      timeoutMs,
    );
    res.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES)
        res.destroy(new Error(`docker ${what}: an answer larger than ${MAX_BODY_BYTES} bytes`));
      else parts.push(c);
    });
    res.on('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(parts).toString('utf8'));
    });
    res.on('error', (err) => {
      clearTimeout(timer);
      reject(wrap(what, err));
    });
    res.on('close', () => {
      clearTimeout(timer);
      if (!res.complete) reject(new Error(`docker ${what}: the connection closed before the answer ended`));
    });
  });
}
