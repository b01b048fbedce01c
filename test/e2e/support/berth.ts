// Runs the built `berth` CLI as a real process, the way an operator would.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { RouteView } from '../../../src/model/types.js';
import { registerCleanup } from './cleanup.js';
import { freePort } from './ports.js';
import { spawnLogged, waitUntil } from './proc.js';

const run = promisify(execFile);
/** The built CLI; BERTH_BIN points tests and benches at another build (an older commit, say). */
export const BERTH_BIN = process.env.BERTH_BIN ?? resolve(import.meta.dirname, '../../../dist/cli/main.js');

export interface BerthProcess {
  dataDir: string;
  apiUrl: string;
  /** The agent TLS listener (`https://127.0.0.1:<port>`), unless the test's args move or disable it. */
  agentUrl: string;
  httpPort: number;
  token: string;
  pid: number;
  output(): string;
  cli(args: string[]): Promise<{ stdout: string; stderr: string; code: number }>;
  routes(): Promise<RouteView[]>;
  // biome-ignore lint/suspicious/noExplicitAny: tests read whichever status fields they check.
  status(): Promise<Record<string, any>>;
  /** SIGTERM and wait (Berth stops its own Caddy). */
  stop(): Promise<void>;
  /** SIGKILL: a crash. */
  kill(): Promise<void>;
  /** Start again on the same data dir and ports. */
  restart(): Promise<void>;
}

export interface BerthOptions {
  command?: 'standalone' | 'server';
  /** Another installed CLI (e.g. the npm package's) instead of BERTH_BIN. */
  bin?: string;
  docker?: string;
  dataDir?: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Run Berth (and its CLI calls) inside this network namespace; its API is reached from there too. */
  netns?: string;
  /** The front door's HTTP port (replicas sharing one Caddy share it); default a free one. */
  httpPort?: number;
  /**
   * Where the API and the agent listener listen (default 127.0.0.1), e.g. a bridge address agents
   * in namespaces reach.
   */
  apiHost?: string;
}

/** argv that runs `cmd args` in a network namespace (only the network one: see startDockerd). */
export function inNetns(netns: string | undefined, cmd: string, args: string[]): [string, string[]] {
  return netns ? ['nsenter', [`--net=/var/run/netns/${netns}`, cmd, ...args]] : [cmd, args];
}

/** Whether GET url answers 2xx, asked from inside a namespace by a one-off node process. */
async function okFrom(netns: string, url: string): Promise<boolean> {
  const [cmd, args] = inNetns(netns, process.execPath, [
    '-e',
    `fetch(${JSON.stringify(url)}).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))`,
  ]);
  try {
    await run(cmd, args, { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a build has the TLS agent listener: BERTH_BIN may name a build from before it (a bench
 * comparing commits), which refuses the flag.
 */
function hasAgentListener(bin: string): boolean {
  try {
    return readFileSync(join(dirname(bin), '..', 'config.js'), 'utf8').includes("'agent-listen'");
  } catch {
    return true;
  }
}

export async function startBerth(o: BerthOptions = {}): Promise<BerthProcess> {
  const dataDir = o.dataDir ?? mkdtempSync(join(tmpdir(), 'bd-'));
  const apiHost = o.apiHost ?? '127.0.0.1';
  const apiPort = await freePort(apiHost);
  const httpPort = o.httpPort ?? (await freePort());
  // Never the default 0.0.0.0:7443: many servers run at once, and nothing listens beyond loopback
  // (or the address of a network of the test's own, with apiHost).
  const agentPort = await freePort(apiHost);
  const args = [
    o.bin ?? BERTH_BIN,
    o.command ?? 'standalone',
    '--data-dir',
    dataDir,
    '--api-listen',
    `${apiHost}:${apiPort}`,
    '--http-listen',
    `127.0.0.1:${httpPort}`,
    '--tls',
    'off',
    ...(hasAgentListener(o.bin ?? BERTH_BIN) ? ['--agent-listen', `${apiHost}:${agentPort}`] : []),
    '--log-level',
    'debug',
    ...(o.docker ? ['--docker', o.docker, '--host-ip', '127.0.0.1'] : []),
    ...(o.args ?? []),
  ];
  const apiUrl = `http://${apiHost}:${apiPort}`;
  let proc: Awaited<ReturnType<typeof spawnLogged>>;
  let logIndex = 0;

  const launch = async () => {
    // BERTH_NODE_ARGS: extra node flags for the server, e.g. --cpu-prof when profiling a bench.
    const nodeArgs = (process.env.BERTH_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const [cmd, argv] = inNetns(o.netns, process.execPath, [...nodeArgs, ...args]);
    proc = spawnLogged(cmd, argv, {
      env: { ...process.env, ...o.env },
      logFile: join(dataDir, `berth-${logIndex++}.log`),
    });
    await waitUntil(
      async () => {
        if (o.netns) return okFrom(o.netns, `${apiUrl}/healthz`);
        try {
          return (await fetch(`${apiUrl}/healthz`)).ok;
        } catch {
          return false;
        }
      },
      { timeoutMs: 30_000, intervalMs: 100, message: () => `berth did not start:\n${proc.output()}` },
    );
  };
  await launch();
  const token = o.env?.BERTH_ADMIN_TOKEN ?? readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();

  const cli = async (cliArgs: string[]) => {
    try {
      const r = await run(
        // Server and data dir right after the command: anything after `--` belongs to the command run.
        ...inNetns(o.netns, process.execPath, [
          o.bin ?? BERTH_BIN,
          cliArgs[0]!,
          '--server',
          apiUrl,
          '--data-dir',
          dataDir,
          ...cliArgs.slice(1),
        ]),
        {
          env: { ...process.env, ...o.env },
        },
      );
      return { stdout: r.stdout, stderr: r.stderr, code: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number };
      return { stdout: e.stdout, stderr: e.stderr, code: e.code };
    }
  };

  const b: BerthProcess = {
    dataDir,
    apiUrl,
    agentUrl: `https://${apiHost}:${agentPort}`,
    httpPort,
    token,
    get pid() {
      return proc.pid;
    },
    output: () => proc.output(),
    cli,
    async routes() {
      const r = await cli(['routes', '--json']);
      if (r.code !== 0) throw new Error(`berth routes failed: ${r.stderr}`);
      return JSON.parse(r.stdout);
    },
    async status() {
      const res = await fetch(`${apiUrl}/api/status`, { headers: { authorization: `Bearer ${token}` } });
      return res.json();
    },
    async stop() {
      await proc.stop('SIGTERM', 15_000);
    },
    async kill() {
      await proc.stop('SIGKILL', 5_000);
    },
    async restart() {
      await launch();
    },
  };
  registerCleanup(async () => {
    await proc.stop('SIGTERM', 10_000);
    // A crashed Berth leaves its Caddy, DNS responder and TCP forwarder running on purpose; tests must not.
    for (const file of ['caddy.pid', join('dns', 'dns.pid'), join('tcp', 'tcp.pid')]) {
      try {
        const pid = Number(readFileSync(join(dataDir, file), 'utf8'));
        if (pid > 0) process.kill(pid, 'SIGKILL');
      } catch {
        // nothing left
      }
    }
    if (!o.dataDir) rmSync(dataDir, { recursive: true, force: true });
  });
  return b;
}

export interface AgentProcess {
  dataDir: string;
  readonly pid: number;
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
}

/** `berth agent` for one simulated host: its own dockerd, its own loopback address. */
export async function startAgent(o: {
  server: string;
  key: string;
  docker: string;
  hostIp: string;
  name: string;
  dataDir?: string;
  args?: string[];
  bin?: string;
  /** Run the agent in this network namespace (a node of its own), as it would run on that host. */
  netns?: string;
}): Promise<AgentProcess> {
  const dataDir = o.dataDir ?? mkdtempSync(join(tmpdir(), 'ba-'));
  let proc: Awaited<ReturnType<typeof spawnLogged>> | undefined;
  let n = 0;
  const a: AgentProcess = {
    dataDir,
    get pid() {
      return proc?.pid ?? -1;
    },
    output: () => proc?.output() ?? '',
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      await proc?.stop(signal, 10_000);
    },
    async start() {
      // BERTH_NODE_ARGS: as for the server (e.g. --cpu-prof for both ends of a tunnel bench);
      // BERTH_AGENT_NODE_ARGS, when set, for agents instead.
      const nodeArgs = (process.env.BERTH_AGENT_NODE_ARGS ?? process.env.BERTH_NODE_ARGS ?? '')
        .split(' ')
        .filter(Boolean);
      const [cmd, argv] = inNetns(o.netns, process.execPath, [
        ...nodeArgs,
        o.bin ?? BERTH_BIN,
        'agent',
        '--server',
        o.server,
        '--docker',
        o.docker,
        '--host-ip',
        o.hostIp,
        '--name',
        o.name,
        '--data-dir',
        dataDir,
        '--report-interval',
        '1s',
        '--log-level',
        'debug',
        ...(o.args ?? []),
      ]);
      proc = spawnLogged(cmd, argv, {
        env: { ...process.env, BERTH_AGENT_KEY: o.key },
        logFile: join(dataDir, `agent-${n++}.log`),
      });
    },
  };
  registerCleanup(async () => {
    await a.stop();
    if (!o.dataDir) rmSync(dataDir, { recursive: true, force: true });
  });
  await a.start();
  return a;
}
