// Child processes with their output kept (for failure messages), stopped by PID.
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { request } from 'node:http';

export interface Logged {
  pid: number;
  proc: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
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
  const log = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : undefined;
  const keep = (chunk: Buffer) => {
    log?.write(chunk);
    lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    if (lines.length > 400) lines.splice(0, lines.length - 200);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
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
      resolve(-1);
    });
  });
  return {
    pid: proc.pid ?? -1,
    proc,
    output: () => lines.slice(-200).join('\n'),
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000) {
      if (exitCode !== undefined) return exitCode;
      try {
        process.kill(proc.pid!, signal);
      } catch {
        return exitCode ?? null;
      }
      const timer = setTimeout(() => {
        try {
          process.kill(proc.pid!, 'SIGKILL');
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
  const deadline = Date.now() + (o.timeoutMs ?? 10_000);
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) {
      const msg = typeof o.message === 'string' ? o.message : await o.message();
      throw new Error(`timed out after ${o.timeoutMs ?? 10_000} ms: ${msg}`);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 100));
  }
}

export interface HttpResult {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/** GET with any Host header; a connection error is status 0 with the error as body. */
export function httpGet(url: string, o: { host?: string; timeoutMs?: number } = {}): Promise<HttpResult> {
  return new Promise((resolve) => {
    const req = request(
      url,
      { headers: o.host ? { host: o.host } : {}, timeout: o.timeoutMs ?? 5_000, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
        res.on('error', (e) => resolve({ status: 0, body: e.message, headers: {} }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, body: e.message, headers: {} }));
    req.end();
  });
}
