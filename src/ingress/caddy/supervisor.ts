// Runs Berth's own Caddy when no --caddy-admin is given: admin API on a unix socket in the data
// dir, restarted with backoff when it dies, stopped on exit. A Caddy left running by a Berth that
// crashed is adopted rather than fought over, so a Berth restart never interrupts the front door.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CaddyAdmin } from './admin.js';

export interface SupervisorOptions {
  bin: string;
  dataDir: string;
  socketPath: string;
  logger: Logger;
  /** Called after Caddy (re)starts empty, so Berth's config is applied again at once. */
  onRestart: () => void;
}

const PROXY_LOGGER = 'http.handlers.reverse_proxy';

export class CaddySupervisor {
  private child?: ChildProcess;
  private adoptedPid?: number;
  private adoptTimer?: NodeJS.Timeout;
  private stopping = false;
  private backoffMs = 200;
  restarts = 0;
  readonly admin: CaddyAdmin;
  private readonly pidFile: string;
  private readonly configFile: string;

  constructor(private readonly o: SupervisorOptions) {
    this.admin = new CaddyAdmin(`unix://${o.socketPath}`, { timeoutMs: 120_000 });
    this.pidFile = join(o.dataDir, 'caddy.pid');
    this.configFile = join(o.dataDir, 'caddy-base.json');
  }

  get pid(): number | undefined {
    return this.child?.pid ?? this.adoptedPid;
  }

  async start(): Promise<void> {
    mkdirSync(join(this.o.dataDir, 'caddy'), { recursive: true, mode: 0o700 });
    const old = this.readPid();
    if (old && alive(old) && (await this.answers())) {
      this.adoptedPid = old;
      this.o.logger.info({ pid: old }, 'adopted the Caddy left running by a previous Berth');
      this.adoptTimer = setInterval(() => {
        if (this.adoptedPid && !alive(this.adoptedPid)) {
          clearInterval(this.adoptTimer);
          this.adoptedPid = undefined;
          this.o.logger.warn('adopted Caddy died; starting a new one');
          void this.spawnAndWait().then(() => this.o.onRestart());
        }
      }, 500);
      return;
    }
    await this.spawnAndWait();
  }

  private async answers(): Promise<boolean> {
    try {
      const r = await this.admin.request('GET', '/config/');
      return r.status === 200;
    } catch {
      return false;
    }
  }

  private baseConfig() {
    return {
      admin: { listen: `unix/${this.o.socketPath}`, config: { persist: false } },
      // Berth's own Caddy must not try to edit the system trust store.
      apps: { pki: { certificate_authorities: { local: { install_trust: false } } } },
      // The dynamic layout asks DNS per request for hosts it does not know yet, and Caddy logs an
      // error for each (then serves the not-found listener, as it should): anyone sending
      // random Host headers would fill the log. The proxy's lines are sampled: the first 10 of
      // a kind each second, then one in a thousand. (Not named berth_*: those are the entries the
      // config builder replaces on every apply.)
      logging: {
        logs: {
          default: { exclude: [PROXY_LOGGER] },
          proxy_sampled: {
            include: [PROXY_LOGGER],
            sampling: { interval: 1_000_000_000, first: 10, thereafter: 1_000 },
          },
        },
      },
    };
  }

  private async spawnAndWait(): Promise<void> {
    writeFileSync(this.configFile, JSON.stringify(this.baseConfig(), null, 2));
    // Caddy writes to a file, not a pipe: a Go program dies on a broken stdout/stderr pipe, and
    // Caddy must outlive a Berth that crashed.
    const logFd = openSync(join(this.o.dataDir, 'caddy.log'), 'a');
    const child = spawn(this.o.bin, ['run', '--config', this.configFile], {
      env: {
        ...process.env,
        XDG_DATA_HOME: join(this.o.dataDir, 'caddy', 'data'),
        XDG_CONFIG_HOME: join(this.o.dataDir, 'caddy', 'config'),
        HOME: join(this.o.dataDir, 'caddy'),
      },
      stdio: ['ignore', logFd, logFd],
    });
    closeSync(logFd);
    this.child = child;
    child.on('error', (err) =>
      this.o.logger.error({ bin: this.o.bin, err: err.message }, 'cannot start caddy'),
    );
    child.on('exit', (code, signal) => {
      if (this.child === child) this.child = undefined;
      if (this.stopping) return;
      this.restarts++;
      const delay = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, 5_000);
      this.o.logger.warn({ code, signal, restartInMs: delay }, 'caddy exited; restarting');
      setTimeout(() => {
        if (this.stopping) return;
        void this.spawnAndWait()
          .then(() => {
            this.backoffMs = 200;
            this.o.onRestart();
          })
          .catch((err) => this.o.logger.error({ err: err.message }, 'caddy restart failed'));
      }, delay);
    });
    if (child.pid) writeFileSync(this.pidFile, String(child.pid));
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (this.child !== child)
        throw new Error(`caddy exited during start-up; see ${join(this.o.dataDir, 'caddy.log')}`);
      if (await this.answers()) {
        this.o.logger.info({ pid: child.pid, admin: this.admin.display }, 'caddy started');
        return;
      }
      await sleep(100);
    }
    throw new Error(
      `caddy did not answer on ${this.o.socketPath} within 15 s; see ${join(this.o.dataDir, 'caddy.log')}`,
    );
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.adoptTimer);
    const pid = this.pid;
    if (!pid) return;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return;
    }
    const deadline = Date.now() + 5_000;
    while (alive(pid) && Date.now() < deadline) await sleep(50);
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    writeFileSync(this.pidFile, '');
  }

  private readPid(): number | undefined {
    try {
      const n = Number(readFileSync(this.pidFile, 'utf8').trim());
      return Number.isInteger(n) && n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie child still answers signal 0; /proc tells the truth on Linux.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \([^)]*\) Z/.test(stat);
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
