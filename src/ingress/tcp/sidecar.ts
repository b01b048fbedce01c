// The TCP forwarder runs as its own small process (`berth tcp-server`), like Caddy and the DNS
// responder, for three reasons:
//   - if the Berth server dies, listeners and open connections carry on; a restarted server
//     adopts the running forwarder, and a forwarder that dies is restarted with its last listeners;
//   - a reconcile pass (about a second at 50k routes) never stalls a byte of TCP traffic;
//   - it runs with V8's background threads off (--single-threaded): on a small heap they buy
//     nothing, and on a busy 2-core host they were what pushed its tail latency up.
// The server drives it over a unix socket in the data dir: PUT /listeners (resolves once new
// listeners are bound) and GET /state (listeners, bind address, counters).
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { errorMessage, UserError } from '../../errors.js';
import type { ListenerStatus } from '../../model/data-plane.js';
import type { TcpListenerSite } from '../../model/desired.js';
import { AccessLogWriter } from '../access-log.js';
import { alive, readPid, stopPid } from '../pid.js';
import { type ListenerCounters, TcpForwarder } from './forwarder.js';

/** What `berth server` passes on from its flags. */
export interface TcpSidecarConfig {
  bind: string;
  idleTimeoutMs: number;
  maxConnections: number;
  /** --tcp-access-log; without it, lines go to the stdout of the server that started the forwarder. */
  accessLog?: string;
  /**
   * --access-log-max-size and --access-log-keep, only when set: an unchanged config lets an
   * upgraded server adopt a running forwarder instead of replacing it.
   */
  rotate?: { maxBytes: number; keep: number };
}

export interface TcpState {
  bind: { bind: string; address?: string; error?: string };
  listeners: ListenerStatus[];
  counters: [number, ListenerCounters][];
  /** The forwarder reopens its access log on SIGHUP (one from before this existed dies of it). */
  logReopen?: boolean;
}

/** V8 flags for the forwarder process (see the top of this file). */
export const TCP_NODE_FLAGS = ['--single-threaded'];

/**
 * Writes what `berth tcp-server --data-dir D` starts from: its settings and, optionally, the
 * listeners it serves before anyone speaks to it.
 */
export function writeTcpServerFiles(
  dataDir: string,
  config: TcpSidecarConfig,
  listeners?: TcpListenerSite[],
): void {
  const p = paths(dataDir);
  mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  writeFileSync(p.config, JSON.stringify(config));
  if (listeners) writeAtomically(p.listeners, JSON.stringify(listeners));
}

const paths = (dataDir: string) => {
  const dir = join(dataDir, 'tcp');
  return {
    dir,
    config: join(dir, 'config.json'),
    listeners: join(dir, 'listeners.json'),
    pid: join(dir, 'tcp.pid'),
    socket: join(dir, 'control.sock'),
  };
};

/** `berth tcp-server --data-dir D`: forward until SIGTERM. */
export async function runTcpServer(dataDir: string, logger: Logger): Promise<{ stop(): Promise<void> }> {
  const p = paths(dataDir);
  let cfg: TcpSidecarConfig;
  try {
    cfg = JSON.parse(readFileSync(p.config, 'utf8')) as TcpSidecarConfig;
  } catch (err) {
    throw new UserError(
      'CONFIG_INVALID',
      `tcp-server cannot read its settings in ${p.config}: ${errorMessage(err)}`,
    );
  }
  // The server's stdout and stderr may be gone (it crashed): lose those lines, not the forwarder.
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
  const log = new AccessLogWriter({ to: cfg.accessLog ?? 'stdout', ...(cfg.rotate ?? {}) }, (err) =>
    logger.warn({ err }, 'tcp access log not written'),
  );
  // logrotate moved the file: start a new one (the server passes its SIGHUP on).
  const reopen = () => log.reopen();
  process.on('SIGHUP', reopen);
  const fw = new TcpForwarder({
    bind: cfg.bind,
    logger,
    accessLog: (line) => log.write(line),
    idleTimeoutMs: cfg.idleTimeoutMs,
    maxConnections: cfg.maxConnections,
  });
  // A restarted forwarder serves its last listeners before the server speaks to it again.
  await fw.sync(readListeners(p.listeners));
  const state = (): TcpState => ({
    bind: fw.bindStatus(),
    listeners: fw.status(),
    counters: [...fw.counters()],
    logReopen: true,
  });
  let queue = Promise.resolve();
  const control: Server = createServer((req, res) => {
    const reply = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/state') return reply(200, state());
    if (req.method !== 'PUT' || req.url !== '/listeners') return reply(404, { error: 'no such endpoint' });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let specs: TcpListenerSite[];
      try {
        specs = parseSpecs(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        return reply(400, { error: errorMessage(err) });
      }
      // One sync at a time, in the order they came.
      queue = queue.then(async () => {
        try {
          await fw.sync(specs);
          writeAtomically(p.listeners, JSON.stringify(specs));
          reply(200, state());
        } catch (err) {
          reply(500, { error: errorMessage(err) });
        }
      });
    });
  });
  rmSync(p.socket, { force: true });
  await new Promise<void>((resolve) => control.listen(p.socket, resolve));
  chmodSync(p.socket, 0o600);
  writeFileSync(p.pid, String(process.pid));
  logger.info({ bind: cfg.bind, listeners: fw.status().length }, 'tcp forwarder up');
  return {
    async stop() {
      await new Promise<void>((resolve) => control.close(() => resolve()));
      await fw.close();
      // A clean stop: a later start begins from what the server asks for, not from these.
      for (const file of [p.listeners, p.socket, p.pid]) rmSync(file, { force: true });
      process.off('SIGHUP', reopen);
      log.close();
    },
  };
}

export interface TcpSidecarOptions {
  dataDir: string;
  config: TcpSidecarConfig;
  /** argv that runs the Berth CLI (node + this CLI); `tcp-server` and its flags are added. */
  command: string[];
  logger: Logger;
  /** A listener changed state on its own (its address moved, say): worth a reconcile pass. */
  onChange?: () => void;
}

/**
 * The server's side: keeps the forwarder running, hands it listeners, reports its state. It is the
 * reconciler's `TcpListenerSync` (reconcile/data-plane.ts).
 */
export class TcpSidecar {
  private child?: ChildProcess;
  private adopted?: number;
  private watchdog?: NodeJS.Timeout;
  private stopping = false;
  private cache: TcpState;
  /** The specs the forwarder last confirmed, as JSON: an unchanged set is not sent again. */
  private confirmed?: string;
  private failing = false;
  private answering = false;
  private spawnedAt = 0;
  private backoffMs = 0;
  private respawning?: NodeJS.Timeout;
  restarts = 0;

  constructor(private readonly o: TcpSidecarOptions) {
    this.cache = { bind: { bind: o.config.bind }, listeners: [], counters: [] };
  }

  async start(): Promise<void> {
    const p = paths(this.o.dataDir);
    mkdirSync(p.dir, { recursive: true, mode: 0o700 });
    const wanted = JSON.stringify(this.o.config);
    const pid = readPid(p.pid);
    const same = existsSync(p.config) && readFileSync(p.config, 'utf8') === wanted;
    if (pid && alive(pid) && same && (await this.refresh())) {
      this.adopted = pid;
      this.o.logger.info({ pid }, 'adopted the TCP forwarder left running by a previous Berth');
    } else {
      // Only a process that is this data dir's forwarder: after a reboot the PID may be another's.
      if (pid && alive(pid) && isForwarderOf(pid, this.o.dataDir)) {
        this.o.logger.warn(
          { pid },
          'the running TCP forwarder has other settings or does not answer; replacing it',
        );
        await stopPid(pid);
      }
      writeTcpServerFiles(this.o.dataDir, this.o.config);
      await this.spawn();
    }
    let ticks = 0;
    this.watchdog = setInterval(() => {
      if (this.stopping) return;
      const live = this.child?.pid ?? this.adopted;
      if (!live || !alive(live)) return this.replace();
      // Every second: pick up changes the forwarder made on its own (an interface moved).
      if (++ticks % 2 === 0) void this.refresh();
    }, 500);
    this.watchdog.unref();
  }

  /** Makes the forwarder's listeners match `specs`; resolves once new ones are bound or failed. */
  async sync(specs: TcpListenerSite[]): Promise<void> {
    const body = JSON.stringify(specs);
    const retry = this.cache.listeners.some((l) => l.state !== 'listening');
    if (body === this.confirmed && !retry) return;
    try {
      this.accept(await call<TcpState>(this.socket, 'PUT', '/listeners', body));
      this.confirmed = body;
      if (this.failing) this.o.logger.info('TCP forwarder answering again');
      this.failing = false;
    } catch (err) {
      this.confirmed = undefined;
      if (!this.failing) this.o.logger.warn({ err: errorMessage(err) }, 'TCP forwarder not answering');
      this.failing = true;
    }
  }

  /** Reads the forwarder's state now; false when it does not answer within `timeoutMs`. */
  async refresh(timeoutMs = 1_000): Promise<boolean> {
    try {
      this.accept(await call<TcpState>(this.socket, 'GET', '/state', undefined, timeoutMs));
      this.answering = true;
    } catch {
      this.answering = false;
    }
    return this.answering;
  }

  /** For /healthz: whether the forwarder process answered last time, and how often it was replaced. */
  health(): { answering: boolean; restarts: number } {
    return { answering: this.answering, restarts: this.restarts };
  }

  status(): ListenerStatus[] {
    return this.cache.listeners;
  }

  counters(): Map<number, ListenerCounters> {
    return new Map(this.cache.counters);
  }

  bindStatus(): TcpState['bind'] {
    return this.cache.bind;
  }

  /** Asks the forwarder to reopen its access-log file (after logrotate moved it). */
  reopenLog(): void {
    const pid = this.child?.pid ?? this.adopted;
    if (!pid || !this.o.config.accessLog || !this.cache.logReopen) return;
    try {
      process.kill(pid, 'SIGHUP');
    } catch {
      // gone: its replacement opens the file afresh
    }
  }

  /** Stops the forwarder: listeners close and open connections end ('shutdown' in the log). */
  async close(): Promise<void> {
    this.stopping = true;
    clearInterval(this.watchdog);
    clearTimeout(this.respawning);
    const pid = this.child?.pid ?? this.adopted;
    if (pid) await stopPid(pid);
  }

  private get socket(): string {
    return paths(this.o.dataDir).socket;
  }

  private accept(next: TcpState): void {
    const before = stateKey(this.cache);
    this.cache = next;
    if (stateKey(next) !== before) this.o.onChange?.();
  }

  /**
   * The forwarder died (noticed by its exit event, or by the watchdog for an adopted one): a new
   * one starts at once, unless the last one died within 2 s of starting, when the wait doubles
   * (up to 5 s), so that a forwarder that cannot start does not become a spawn loop.
   */
  private replace(): void {
    if (this.stopping || this.respawning) return;
    this.adopted = undefined;
    this.child = undefined;
    this.restarts++;
    const diedYoung = Date.now() - this.spawnedAt < 2_000;
    this.backoffMs = diedYoung ? Math.min(5_000, Math.max(100, this.backoffMs * 2)) : 0;
    this.o.logger.warn({ inMs: this.backoffMs }, 'TCP forwarder died; starting a new one');
    this.respawning = setTimeout(() => {
      this.respawning = undefined;
      if (!this.stopping) void this.spawn();
    }, this.backoffMs);
  }

  private async spawn(): Promise<void> {
    const [cmd, ...args] = this.o.command;
    const p = paths(this.o.dataDir);
    rmSync(p.pid, { force: true });
    this.spawnedAt = Date.now();
    // Detached, so that it outlives a Berth that crashed; its log and access-log lines go where
    // the server's go.
    const child = spawn(cmd!, [...TCP_NODE_FLAGS, ...args, 'tcp-server', '--data-dir', this.o.dataDir], {
      detached: true,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.unref();
    child.once('exit', () => {
      if (this.child === child) this.replace();
    });
    this.child = child;
    this.confirmed = undefined;
    for (let i = 0; i < 200; i++) {
      if (existsSync(p.pid) && (await this.refresh())) return;
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    this.o.logger.error({ exitCode: child.exitCode }, 'the TCP forwarder did not start');
  }
}

/** Whether `pid` is `berth tcp-server --data-dir <dataDir>` (from /proc; false where unknown). */
function isForwarderOf(pid: number, dataDir: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.includes('tcp-server') && argv.includes(dataDir);
  } catch {
    return false;
  }
}

/** What routes and /healthz show of a state: a change here is worth telling the reconciler. */
function stateKey(s: TcpState): string {
  return JSON.stringify([s.bind, s.listeners.map((l) => [l.listen, l.state, l.address, l.error])]);
}

function parseSpecs(v: unknown): TcpListenerSite[] {
  if (!Array.isArray(v)) throw new Error('listeners must be a JSON array');
  return v.map((s, i) => {
    const ok =
      s &&
      typeof s === 'object' &&
      Number.isInteger(s.listen) &&
      Array.isArray(s.upstreams) &&
      s.upstreams.every((u: unknown) => {
        const x = u as { host?: unknown; port?: unknown };
        return typeof x?.host === 'string' && Number.isInteger(x.port);
      }) &&
      Array.isArray(s.allow) &&
      s.allow.every((a: unknown) => typeof a === 'string') &&
      Array.isArray(s.routeKeys);
    if (!ok) throw new Error(`listener ${i} needs listen, upstreams [{host, port}], allow and routeKeys`);
    return s as TcpListenerSite;
  });
}

function readListeners(file: string): TcpListenerSite[] {
  try {
    return parseSpecs(JSON.parse(readFileSync(file, 'utf8')));
  } catch {
    return [];
  }
}

function writeAtomically(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

function call<T>(
  socketPath: string,
  method: string,
  path: string,
  body?: string,
  timeoutMs = 10_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) return reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`));
        try {
          resolve(JSON.parse(text) as T);
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}
