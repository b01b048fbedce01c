// Tunnels side by side, on loopback, to the same upstream (bench/tcp/upstream.mjs):
//   direct       the client dials the upstream itself
//   berth        `berth agent --tunnel` (plain, as on loopback): the client dials the server's local
//                endpoint for the route, the agent carries the stream to the upstream
//   berth-tls    the same with the agent's connections over TLS to --agent-listen
//   ssh -R       OpenSSH's reverse tunnel: a private sshd (throwaway keys in a temp dir) and an
//                `ssh -N -R` client in front of the same upstream, the classic way to serve from
//                behind NAT
// Per target: one 1 GiB stream each way (MiB/s), round trips of 64 bytes on 1 and 8 connections
// (p50/p99 µs), fresh connections per second (connect, one round trip, close), the agent-side and
// server-side processes' CPU seconds per GiB moved and RSS, every process's CPU per GiB (the
// client, the upstream and both sides) and the MiB/s that much CPU allows with every core busy;
// then the agent's RSS with 100 open tunneled streams. Berth's server and agent are real
// processes (`berth server`, `berth agent` with a private dockerd for its routes); the client
// dials the endpoint the TCP forwarder would.
// Then, for Berth: kill -9 of the agent with a stream open (how soon the stream ends, how soon a
// new connection is answered), the agent started again and the server restarted (until the route
// serves). Prints figures; asserts nothing.
//
// --bin [LABEL=]DIR (repeatable) runs Berth's targets once per build (DIR a checkout, its
// dist/cli/main.js, or a main.js), one after the other in the same run, so a before/after
// comparison shares the machine's noise; results are then named `berth@LABEL` (LABEL defaults to
// DIR's base name). Without it, BERTH_BIN or this checkout's build. BERTH_NODE_ARGS passes node
// flags to the server and the agent (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`).
//
//   npm run build && npx tsx bench/tunnel.ts [--size-mb 1024] [--round-trips 20000] [--connections 1000]
//                                            [--targets direct,berth,berth-tls,ssh] [--bin [LABEL=]DIR]… [--no-recovery] [--json]
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from '../test/e2e/support/berth.js';
import { registerCleanup } from '../test/e2e/support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd } from '../test/e2e/support/dockerd.js';
import { freePort } from '../test/e2e/support/ports.js';
import { spawnLogged, waitUntil } from '../test/e2e/support/proc.js';
import { cleanupOnExit, flag, loadavg, metricValues, procSample, sleep } from './lib.js';
// @ts-expect-error plain JS helpers shared with bench/tcp/run.mjs
import { connectionSetup, download, latency, quantile, upload } from './tcp/clients.mjs';
// @ts-expect-error plain JS helpers shared with bench/tcp/run.mjs
import { startUpstream, stopProcess } from './tcp/procs.mjs';

const SIZE_MB = flag('size-mb', 1024);
const ROUND_TRIPS = flag('round-trips', 20_000);
const CONNECTIONS = flag('connections', 1000);
const STREAMS = 100;
/** Leaves out the kill -9 and restarts (their processes would write no --cpu-prof). */
const NO_RECOVERY = process.argv.includes('--no-recovery');
const asJson = process.argv.includes('--json');
const ti = process.argv.indexOf('--targets');
const TARGETS = (ti > 0 ? process.argv[ti + 1]! : 'direct,berth,berth-tls,ssh').split(',');
const BERTH_TARGETS = ['berth', 'berth-tls'];

/** The builds to run Berth's targets with (--bin, repeatable), each with a label for its results. */
function bins(): { label: string; bin: string }[] {
  const out: { label: string; bin: string }[] = [];
  for (let i = 0; i < process.argv.length; i++) {
    if (process.argv[i] !== '--bin') continue;
    const v = process.argv[i + 1] ?? '';
    const eq = v.indexOf('=');
    const dir = resolve(eq > 0 ? v.slice(eq + 1) : v);
    const bin = dir.endsWith('.js') ? dir : join(dir, 'dist', 'cli', 'main.js');
    if (!existsSync(bin)) throw new Error(`--bin ${v}: no ${bin} (run npm run build there)`);
    const label = eq > 0 ? v.slice(0, eq) : basename(dir.endsWith('.js') ? join(dir, '..', '..', '..') : dir);
    out.push({ label, bin });
  }
  return out;
}
const BINS = bins();
const say = (s: string) => !asJson && console.log(s);
const done = cleanupOnExit();
const MiB = 1 << 20;
const TIMEOUT = 300_000;

interface Addr {
  host: string;
  port: number;
}

interface Target {
  name: string;
  port: Addr;
  /** The processes on the agent's side and on the server's side of the tunnel. */
  agentPids: () => number[];
  serverPids: () => number[];
  /** The agent's /metrics, where it has one. */
  metrics?: () => Promise<string>;
  /** Kill -9 and restart of the agent, restart of the server: how long each takes to settle. */
  recovery?: () => Promise<Record<string, number | boolean>>;
  stop(): Promise<void>;
}

interface Result {
  downloadMiBps: number;
  uploadMiBps: number;
  rtt1P50Us: number;
  rtt1P99Us: number;
  rtt8P50Us: number;
  rtt8P99Us: number;
  freshPerSecond: number;
  /** 1-connection round trips while another stream's reader takes 1 KiB/s of a 1 GiB download. */
  rtt1P99UsBesideSlowReader: number;
  agentCpuSecondsPerGiB?: number;
  serverCpuSecondsPerGiB?: number;
  /** Every process's CPU per GiB moved: the client (this process), the upstream, and both sides. */
  allCpuSecondsPerGiB: number;
  /**
   * The most MiB/s that this much CPU per GiB allows with every core of the machine busy moving
   * it: a bound that no tuning of the path's scheduling can pass.
   */
  cpuBoundMiBps: number;
  agentRssMiBIdle?: number;
  agentRssMiBWith100Streams?: number;
  /** After the transfers (heaps grown by them). */
  agentRssMiBAfter?: number;
  serverRssMiBAfter?: number;
}

const cpu = (pids: number[]) => pids.reduce((s, p) => s + (procSample(p)?.cpuSeconds ?? 0), 0);
const rss = (pids: number[]) => pids.reduce((s, p) => s + (procSample(p)?.rssMb ?? 0), 0);
const children = (pid: number): number[] => {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
};

/** One berth server (and dockerd with the route's container) for both Berth targets. */
interface Side {
  berth: BerthProcess;
  docker: string;
  agentDir: string;
  bin?: string;
}

let docker: Promise<string> | undefined;

/** The private dockerd with the route's container, shared by every build's server. */
function dockerWithUpstream(upstreamPort: number): Promise<string> {
  docker ??= (async () => {
    const d = await startDockerd({ name: 'tunnelbench' });
    await importBusybox(d);
    const listen = await freePort();
    await runHostContainer(
      d,
      'bench-upstream',
      { 'berth.tcp.bench.listen': String(listen), 'berth.tcp.bench.port': String(upstreamPort) },
      ['sleep', '1000000'],
    );
    return d.dockerHost;
  })();
  return docker;
}

/** One berth server of one build for both Berth targets. */
async function berthSide(upstreamPort: number, bin?: string): Promise<Side> {
  const dockerHost = await dockerWithUpstream(upstreamPort);
  const berth = await startBerth({
    command: 'server',
    ...(bin ? { bin } : {}),
    args: ['--tcp-bind', '127.0.0.1', '--log-level', 'warn'],
  });
  const agentDir = mkdtempSync(join(tmpdir(), 'btun-agent-'));
  registerCleanup(() => rmSync(agentDir, { recursive: true, force: true }));
  return { berth, docker: dockerHost, agentDir, ...(bin ? { bin } : {}) };
}

/** The local endpoint the TCP forwarder dials for the tunneled route (from its listener file). */
async function endpointOf(berth: BerthProcess): Promise<Addr> {
  let port = 0;
  await waitUntil(
    () => {
      try {
        const text = readFileSync(join(berth.dataDir, 'tcp', 'listeners.json'), 'utf8');
        const m = /"host":"(127\.77\.\d+\.\d+)","port":(\d+)/.exec(text);
        if (m) port = Number(m[2]);
        return m !== null && m[1] === '127.77.0.1';
      } catch {
        return false;
      }
    },
    { timeoutMs: 30_000, message: 'the tunneled route never reached the TCP forwarder' },
  );
  return { host: '127.77.0.1', port };
}

async function berthTarget(name: string, side: Side, key: string, tls: boolean): Promise<Target> {
  // One agent identity (its data dir) for both: the same route, the same endpoint, over plain or TLS.
  const metricsPort = await freePort();
  const agent: AgentProcess = await startAgent({
    dataDir: side.agentDir,
    server: tls ? side.berth.agentUrl : side.berth.apiUrl,
    key,
    docker: side.docker,
    hostIp: '127.0.0.1',
    name: 'bench-agent',
    ...(side.bin ? { bin: side.bin } : {}),
    args: ['--tunnel', '--log-level', 'warn', '--metrics-listen', `127.0.0.1:${metricsPort}`],
  });
  const port = await endpointOf(side.berth);
  // The endpoint answers once the agent's route is admitted: wait for one full echo.
  await waitUntil(() => echoOnce(port), {
    timeoutMs: 30_000,
    message: () => `no echo: ${agent.output()}\n${side.berth.output()}`,
  });
  return {
    name,
    port,
    agentPids: () => [agent.pid],
    serverPids: () => [side.berth.pid],
    metrics: () => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text()),
    async recovery() {
      // kill -9 with a stream open: how soon it ends, and how soon a new connection is answered.
      const open = connect(port);
      const h = Buffer.alloc(9);
      h.write('E', 0, 'latin1');
      await new Promise((r) => {
        open.once('connect', () => open.write(Buffer.concat([h, Buffer.from('x')])));
        open.once('data', r);
      });
      open.on('error', () => {});
      const ended = new Promise<number>((r) => open.once('close', () => r(performance.now())));
      const k0 = performance.now();
      await agent.stop('SIGKILL');
      const openStreamEndsMs = (await ended) - k0;
      const a0 = performance.now();
      const answeredWhileAway = !(await echoOnce(port));
      const awayAnswerMs = performance.now() - a0;
      // Started again: from the process start to the route serving.
      const s0 = performance.now();
      await agent.start();
      await waitUntil(() => echoOnce(port), {
        timeoutMs: 30_000,
        intervalMs: 20,
        message: 'never served again',
      });
      const agentStartToServingMs = performance.now() - s0;
      // The server restarts: from its API answering to the route serving (the endpoint moves).
      const q0 = performance.now();
      await side.berth.stop();
      await side.berth.restart();
      const r0 = performance.now();
      await waitUntil(async () => echoOnce(await endpointOf(side.berth)), {
        timeoutMs: 30_000,
        intervalMs: 20,
        message: () => `never served after the restart: ${agent.output()}`,
      });
      const serverUpToServingMs = performance.now() - r0;
      const serverStopToServingMs = performance.now() - q0;
      port.port = (await endpointOf(side.berth)).port;
      return {
        openStreamEndsMs: Math.round(openStreamEndsMs),
        resetWhileAway: answeredWhileAway,
        awayAnswerMs: Math.round(awayAnswerMs),
        agentStartToServingMs: Math.round(agentStartToServingMs),
        serverUpToServingMs: Math.round(serverUpToServingMs),
        serverStopToServingMs: Math.round(serverStopToServingMs),
      };
    },
    async stop() {
      await agent.stop();
      // The next agent's route takes the endpoint only once this one's is gone.
      await waitUntil(async () => !(await echoOnce(port)), { timeoutMs: 30_000, message: 'endpoint stayed' });
    },
  };
}

function echoOnce(to: Addr): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(to);
    const h = Buffer.alloc(9);
    h.write('E', 0, 'latin1');
    s.once('connect', () => s.write(Buffer.concat([h, Buffer.from('x')])));
    s.once('data', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.once('close', () => resolve(false));
    setTimeout(() => {
      s.destroy();
      resolve(false);
    }, 2_000);
  });
}

async function sshTarget(upstreamPort: number): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'bssh-'));
  registerCleanup(() => rmSync(dir, { recursive: true, force: true }));
  for (const k of ['host', 'client'])
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, k)]);
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client.pub')));
  const sshPort = await freePort();
  const remote = await freePort();
  writeFileSync(
    join(dir, 'sshd_config'),
    [
      `Port ${sshPort}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      'PermitRootLogin prohibit-password',
      'StrictModes no',
      'UsePAM no',
      'AllowTcpForwarding yes',
      'GatewayPorts no',
      '',
    ].join('\n'),
  );
  execFileSync('mkdir', ['-p', '/run/sshd']);
  const sshd = spawnLogged('/usr/sbin/sshd', ['-D', '-e', '-f', join(dir, 'sshd_config')]);
  registerCleanup(() => sshd.stop('SIGTERM', 5_000));
  await sshd.waitFor(/Server listening/, 10_000);
  const client = spawnLogged('ssh', [
    '-N',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
    '-o',
    'BatchMode=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-i',
    join(dir, 'client'),
    '-p',
    String(sshPort),
    '-R',
    `127.0.0.1:${remote}:127.0.0.1:${upstreamPort}`,
    `${process.env.USER ?? 'root'}@127.0.0.1`,
  ]);
  registerCleanup(() => client.stop('SIGTERM', 5_000));
  await waitUntil(() => echoOnce({ host: '127.0.0.1', port: remote }), {
    timeoutMs: 20_000,
    message: () => `ssh -R: ${client.output()}\n${sshd.output()}`,
  });
  return {
    name: 'ssh -R',
    port: { host: '127.0.0.1', port: remote },
    agentPids: () => [client.pid],
    // The session's sshd processes (the listener forks one per connection, which forks its own).
    serverPids: () => children(sshd.pid).flatMap((p) => [p, ...children(p)]),
    async stop() {
      await client.stop('SIGTERM', 5_000);
      await sshd.stop('SIGTERM', 5_000);
    },
  };
}

function directTarget(upstreamPort: number): Target {
  return {
    name: 'direct',
    port: upstreamPort,
    agentPids: () => [],
    serverPids: () => [],
    stop: async () => {},
  };
}

/** 100 open streams through the tunnel, each having echoed once; the agent's RSS with them open. */
async function rssWithStreams(t: Target): Promise<number> {
  const socks = await Promise.all(
    Array.from(
      { length: STREAMS },
      () =>
        new Promise<ReturnType<typeof connect>>((resolve, reject) => {
          const s = connect(t.port);
          const h = Buffer.alloc(9);
          h.write('E', 0, 'latin1');
          s.once('connect', () => s.write(Buffer.concat([h, Buffer.from('hello')])));
          s.once('data', () => resolve(s));
          s.once('error', reject);
        }),
    ),
  );
  await sleep(500);
  const r = rss(t.agentPids());
  for (const s of socks) s.destroy();
  return r;
}

/** Runs `fn` while one stream downloads 1 GiB to a reader taking 1 KiB a second (its buffers full). */
async function withSlowReader<T>(t: Target, fn: () => Promise<T>): Promise<T> {
  const s = connect(t.port);
  const h = Buffer.alloc(9);
  h.write('S', 0, 'latin1');
  h.writeBigUInt64BE(BigInt(1024 * MiB), 1);
  await new Promise((r) => s.once('connect', r));
  s.on('error', () => {});
  s.write(h);
  s.pause();
  const tick = setInterval(() => s.read(1024), 1_000);
  await sleep(1_000); // the buffers along the way fill
  try {
    return await fn();
  } finally {
    clearInterval(tick);
    s.destroy();
  }
}

async function measure(t: Target): Promise<Result> {
  const pids = () => [...t.agentPids(), ...t.serverPids()];
  // Memory first, before bulk transfers grow the heaps: idle, then with 100 streams open.
  const idleRss = pids().length > 0 ? rss(t.agentPids()) : 0;
  const streamsRss = pids().length > 0 ? await rssWithStreams(t) : 0;
  const a0 = cpu(t.agentPids());
  const s0 = cpu(t.serverPids());
  const u0 = cpu([upstreamPid]);
  const c0 = process.cpuUsage();
  const bytes = SIZE_MB * MiB;
  const downloadMiBps = await download(t.port, bytes, TIMEOUT);
  const uploadMiBps = await upload(t.port, bytes, TIMEOUT);
  // sshd forks per connection: read its session processes' CPU before they go.
  const a1 = cpu(t.agentPids());
  const s1 = cpu(t.serverPids());
  const c1 = process.cpuUsage(c0);
  const u1 = cpu([upstreamPid]);
  const gib = (2 * bytes) / (1024 * MiB);
  const allCpu = (a1 - a0 + s1 - s0 + u1 - u0 + (c1.user + c1.system) / 1e6) / gib;
  const l1 = await latency(t.port, {
    connections: 1,
    roundTrips: ROUND_TRIPS,
    warmup: 2000,
    msgBytes: 64,
    timeoutMs: TIMEOUT,
  });
  const l8 = await latency(t.port, {
    connections: 8,
    roundTrips: ROUND_TRIPS,
    warmup: 2000,
    msgBytes: 64,
    timeoutMs: TIMEOUT,
  });
  const fresh = await connectionSetup(t.port, { count: CONNECTIONS, msgBytes: 64, timeoutMs: TIMEOUT });
  const slow = await withSlowReader(t, () =>
    latency(t.port, {
      connections: 1,
      roundTrips: ROUND_TRIPS,
      warmup: 500,
      msgBytes: 64,
      timeoutMs: TIMEOUT,
    }),
  );
  const r: Result = {
    downloadMiBps: Math.round(downloadMiBps),
    uploadMiBps: Math.round(uploadMiBps),
    rtt1P50Us: Math.round(quantile(l1.samples, 0.5)),
    rtt1P99Us: Math.round(quantile(l1.samples, 0.99)),
    rtt8P50Us: Math.round(quantile(l8.samples, 0.5)),
    rtt8P99Us: Math.round(quantile(l8.samples, 0.99)),
    freshPerSecond: Math.round(fresh.perSecond),
    rtt1P99UsBesideSlowReader: Math.round(quantile(slow.samples, 0.99)),
    allCpuSecondsPerGiB: Number(allCpu.toFixed(2)),
    cpuBoundMiBps: Math.round((availableParallelism() * 1024) / allCpu),
  };
  if (pids().length > 0) {
    r.agentCpuSecondsPerGiB = Number(((a1 - a0) / gib).toFixed(2));
    r.serverCpuSecondsPerGiB = Number(((s1 - s0) / gib).toFixed(2));
    r.agentRssMiBAfter = Math.round(rss(t.agentPids()));
    r.serverRssMiBAfter = Math.round(rss(t.serverPids()));
    r.agentRssMiBIdle = Math.round(idleRss * 10) / 10;
    r.agentRssMiBWith100Streams = Math.round(streamsRss * 10) / 10;
  }
  return r;
}

/** The upstream's process, whose CPU counts in every target's. */
let upstreamPid = 0;

async function main(): Promise<void> {
  const registry: unknown[] = [];
  const up = await startUpstream(registry);
  registerCleanup(() => stopProcess(up));
  const upstreamPort = up.port as number;
  upstreamPid = up.pid as number;
  say(`tunnels on loopback to one upstream (127.0.0.1:${upstreamPort}); load ${loadavg()}`);
  const results: Record<string, Result> = {};
  const recovery: Record<string, Record<string, number | boolean>> = {};
  let side: Side | undefined;
  let key = '';
  // Berth's targets run together, once per build, where the first of them is named.
  const jobs: { name: string; build?: { label: string; bin: string } }[] = [];
  for (const name of TARGETS) {
    if (!BERTH_TARGETS.includes(name)) jobs.push({ name });
    else if (!jobs.some((j) => BERTH_TARGETS.includes(j.name)))
      for (const build of BINS.length > 0 ? BINS : [undefined])
        for (const n of TARGETS.filter((x) => BERTH_TARGETS.includes(x)))
          jobs.push({ name: n, ...(build ? { build } : {}) });
  }
  const labelled = (name: string, build?: { label: string }) =>
    BINS.length > 1 && build ? `${name}@${build.label}` : name;
  for (const { name, build } of jobs) {
    let t: Target;
    if (name === 'direct') t = directTarget(upstreamPort);
    else if (name === 'ssh') t = await sshTarget(upstreamPort);
    else if (BERTH_TARGETS.includes(name)) {
      if (side && side.bin !== build?.bin) {
        await side.berth.stop();
        side = undefined;
      }
      if (!side) {
        side = await berthSide(upstreamPort, build?.bin);
        const created = await side.berth.cli([
          'keys',
          'create',
          '--name',
          'bench',
          '--auto-approve',
          '--json',
        ]);
        key = JSON.parse(created.stdout).secret;
      }
      t = await berthTarget(labelled(name, build), side, key, name === 'berth-tls');
    } else throw new Error(`unknown target ${name} (direct, berth, berth-tls, ssh)`);
    say(`  measuring ${t.name} …${build ? ` (${build.bin})` : ''}`);
    results[t.name] = await measure(t);
    say(`    ${JSON.stringify(results[t.name])}`);
    if (t.metrics) {
      const streams = metricValues(await t.metrics(), 'berth_agent_tunnel_streams_total');
      say(`    agent streams: ${JSON.stringify(Object.fromEntries(streams))}`);
    }
    if (t.recovery && !NO_RECOVERY) {
      recovery[t.name] = await t.recovery();
      say(`    recovery: ${JSON.stringify(recovery[t.name])}`);
    }
    await t.stop();
  }
  const d = results.direct;
  const s = results['ssh -R'];
  // Against the goals (issue 16), for each Berth target (plain and TLS) of each build.
  const goals: Record<string, Record<string, unknown>> = {};
  for (const [name, b] of Object.entries(results)) {
    if (!BERTH_TARGETS.includes(name.split('@')[0]!)) continue;
    const g: Record<string, unknown> = {};
    if (s)
      g.throughputVsSsh = Number(
        Math.min(b.downloadMiBps / s.downloadMiBps, b.uploadMiBps / s.uploadMiBps).toFixed(2),
      );
    if (d) {
      g.throughputVsDirect = Number(
        Math.min(b.downloadMiBps / d.downloadMiBps, b.uploadMiBps / d.uploadMiBps).toFixed(2),
      );
      g.rtt1P99LimitUs = Math.round(1.5 * d.rtt1P99Us + 100);
      g.rtt1P99Us = b.rtt1P99Us;
    }
    if (b.agentRssMiBWith100Streams !== undefined) g.agentRssMiBWith100Streams = b.agentRssMiBWith100Streams;
    goals[name] = g;
  }
  const summary = {
    sizeMiB: SIZE_MB,
    roundTrips: ROUND_TRIPS,
    connections: CONNECTIONS,
    results,
    goals,
    load: loadavg(),
  };
  if (asJson) console.log(JSON.stringify(summary));
  else {
    const names = Object.keys(results);
    const w = Math.max(12, ...names.map((n) => n.length + 2));
    const row = (label: string, f: (r: Result) => number | undefined) =>
      console.log(
        `  ${label.padEnd(44)}${names.map((n) => String(f(results[n]!) ?? '-').padStart(w)).join('')}`,
      );
    console.log(`\n  ${''.padEnd(44)}${names.map((n) => n.padStart(w)).join('')}`);
    row(`download, 1 stream of ${SIZE_MB} MiB, MiB/s`, (r) => r.downloadMiBps);
    row(`upload, 1 stream of ${SIZE_MB} MiB, MiB/s`, (r) => r.uploadMiBps);
    row('round trip, 1 conn, p50 µs', (r) => r.rtt1P50Us);
    row('round trip, 1 conn, p99 µs', (r) => r.rtt1P99Us);
    row('round trip, 8 conns, p50 µs', (r) => r.rtt8P50Us);
    row('round trip, 8 conns, p99 µs', (r) => r.rtt8P99Us);
    row('fresh connections/s', (r) => r.freshPerSecond);
    row('round trip p99 µs beside a 1 KiB/s reader', (r) => r.rtt1P99UsBesideSlowReader);
    row('agent side CPU s per GiB', (r) => r.agentCpuSecondsPerGiB);
    row('server side CPU s per GiB', (r) => r.serverCpuSecondsPerGiB);
    row('all processes CPU s per GiB', (r) => r.allCpuSecondsPerGiB);
    row(`CPU bound MiB/s (${availableParallelism()} cores busy)`, (r) => r.cpuBoundMiBps);
    row('agent side RSS MiB, idle', (r) => r.agentRssMiBIdle);
    row(`agent side RSS MiB, ${STREAMS} open streams`, (r) => r.agentRssMiBWith100Streams);
    row('agent side RSS MiB, after the transfers', (r) => r.agentRssMiBAfter);
    row('server side RSS MiB, after the transfers', (r) => r.serverRssMiBAfter);
    for (const [n, r] of Object.entries(recovery)) console.log(`  recovery, ${n}: ${JSON.stringify(r)}`);
    for (const [n, g] of Object.entries(goals)) console.log(`  goals, ${n}: ${JSON.stringify(g)}`);
    console.log(`  load ${summary.load}`);
  }
  await side?.berth.stop();
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(done);
