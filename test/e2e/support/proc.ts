// Child processes with their output kept (for failure messages), stopped by PID.
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';

const KEEP_LINES = 200;

export interface Logged {
  pid: number;
  proc: ChildProcess;
  /** The last 200 lines of combined stdout and stderr. */
  output(): string;
  /** Resolves with the exit code (null when killed by a signal, -1 when it could not start). */
  exited: Promise<number | null>;
  /** Resolves once the output matches (regex) or the predicate holds; throws on timeout or exit. */
  waitFor(match: RegExp | ((output: string) => boolean), timeoutMs?: number): Promise<void>;
  /** Signals the process by PID, SIGKILLs it after timeoutMs, resolves with the exit code. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export function spawnLogged(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; logFile?: string } = {},
): Logged {
  const proc = spawn(cmd, args, {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const partial = { stdout: '', stderr: '' };
  const log = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : undefined;
  const listeners = new Set<() => void>();
  // Lines are split per stream so a chunk boundary never cuts a line in two.
  const keep = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
    log?.write(chunk);
    const parts = (partial[stream] + chunk.toString('utf8')).split('\n');
    partial[stream] = parts.pop() ?? '';
    lines.push(...parts);
    if (lines.length > 2 * KEEP_LINES) lines.splice(0, lines.length - KEEP_LINES);
    for (const l of listeners) l();
  };
  proc.stdout?.on('data', keep('stdout'));
  proc.stderr?.on('data', keep('stderr'));
  const output = () =>
    [...lines, partial.stdout, partial.stderr].filter(Boolean).slice(-KEEP_LINES).join('\n');

  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => {
    proc.on('exit', (code, signal) => {
      exitCode = code ?? (signal ? null : 0);
      log?.end();
      resolve(exitCode);
    });
    proc.on('error', (err) => {
      lines.push(`spawn error: ${err.message}`);
      exitCode = -1;
      log?.end();
      resolve(-1);
    });
  });

  return {
    pid: proc.pid ?? -1,
    proc,
    output,
    exited,
    waitFor(match, timeoutMs = 10_000) {
      const test = typeof match === 'function' ? match : (o: string) => match.test(o);
      return new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          listeners.delete(check);
          clearTimeout(timer);
          err ? reject(err) : resolve();
        };
        const check = () => {
          if (test(output())) done();
        };
        const timer = setTimeout(
          () => done(new Error(`${cmd}: no match for ${match} after ${timeoutMs} ms:\n${output()}`)),
          timeoutMs,
        );
        listeners.add(check);
        exited.then((code) => {
          if (listeners.has(check) && !test(output())) {
            done(new Error(`${cmd} exited (${code}) before matching ${match}:\n${output()}`));
          }
        });
        check();
      });
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000) {
      if (exitCode !== undefined || proc.pid === undefined) return exitCode ?? null;
      const pid = proc.pid;
      try {
        process.kill(pid, signal);
      } catch {
        return exitCode ?? null;
      }
      const timer = setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }, timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export async function waitUntil(
  fn: () => Promise<boolean> | boolean,
  o: { timeoutMs?: number; intervalMs?: number; message: string | (() => string | Promise<string>) },
): Promise<void> {
  const timeoutMs = o.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) {
      const msg = typeof o.message === 'string' ? o.message : await o.message();
      throw new Error(`timed out after ${timeoutMs} ms: ${msg}`);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 100));
  }
}

export interface HttpResult {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/**
 * GET through node:http rather than fetch, which forbids setting Host. A connection error or
 * timeout is status 0 with the error message as body, so callers can poll without try/catch.
 */
export function httpGet(
  url: string,
  o: { host?: string; headers?: Record<string, string>; timeoutMs?: number; localAddress?: string } = {},
): Promise<HttpResult> {
  return new Promise((resolve) => {
    const headers = { ...o.headers, ...(o.host ? { host: o.host } : {}) };
    const opts = { headers, timeout: o.timeoutMs ?? 5_000, agent: false, localAddress: o.localAddress };
    const req = request(url, opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      res.on('error', (e) => resolve({ status: 0, body: e.message, headers: {} }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, body: e.message, headers: {} }));
    req.end();
  });
}

/** GET over TLS to 127.0.0.1:port with SNI and Host set to `host`; any certificate accepted. */
export function httpsGet(port: number, host: string, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        servername: host,
        headers: { host },
        rejectUnauthorized: false,
        agent: false,
        timeout: 5000,
      },
      (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', (e) => resolve({ status: 0, body: e.message }));
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}
