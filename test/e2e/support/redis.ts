// A private redis-server per test file: loopback only, a free port, its own dir, no persistence.
// Stopped by PID (redis renames its process title, so nothing could find it by name anyway).
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { registerCleanup } from './cleanup.js';
import { freePort } from './ports.js';
import { type Logged, spawnLogged } from './proc.js';

export interface TestRedis {
  port: number;
  /** redis://[:password@]127.0.0.1:port */
  url: string;
  readonly pid: number;
  dir: string;
  /** redis-cli against this server; resolves with stdout. */
  cli(args: string[]): Promise<string>;
  /** SIGSTOP / SIGCONT: Redis away without losing what it holds. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

export async function startRedis(o: { password?: string } = {}): Promise<TestRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'bredis-'));
  const port = await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  args.push('--dir', dir, '--daemonize', 'no', '--protected-mode', 'yes');
  if (o.password) args.push('--requirepass', o.password);
  const proc: Logged = spawnLogged('redis-server', args, { logFile: join(dir, 'redis.log') });
  let stopped = false;
  const r: TestRedis = {
    port,
    url: `redis://${o.password ? `:${encodeURIComponent(o.password)}@` : ''}127.0.0.1:${port}`,
    pid: proc.pid,
    dir,
    cli: (cliArgs) =>
      new Promise((resolve, reject) =>
        execFile(
          'redis-cli',
          ['-h', '127.0.0.1', '-p', String(port), ...cliArgs],
          { env: { ...process.env, ...(o.password ? { REDISCLI_AUTH: o.password } : {}) } },
          (err, stdout, stderr) =>
            err ? reject(new Error(`redis-cli: ${stderr || err.message}`)) : resolve(stdout),
        ),
      ),
    pause: () => process.kill(proc.pid, 'SIGSTOP'),
    resume: () => process.kill(proc.pid, 'SIGCONT'),
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        process.kill(proc.pid, 'SIGCONT'); // a paused server cannot act on SIGTERM
      } catch {
        // already gone
      }
      await proc.stop('SIGTERM', 5_000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  registerCleanup(() => r.stop());
  await proc.waitFor(/Ready to accept connections/, 10_000);
  return r;
}
