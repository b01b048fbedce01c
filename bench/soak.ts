// A soak: many simulated agents, each with many containers, against one `berth server` (own Caddy,
// default dynamic layout, SQLite in a temp dir, --tls off) for a while. The simulated agents are
// WebSocket clients in a few child processes speaking the real agent protocol: the key at the
// upgrade, welcome, a snapshot with a generation, a heartbeat every report interval (15 s, the
// default). During the soak each agent changes now and then (~every 2 min one container stops, or a
// stopped one is re-created with a new id), so snapshots keep flowing.
//
// Prints: server RSS (min/median/max of 10 s samples) and mean CPU %, heartbeat round trips
// (WebSocket ping → pong, sent with every heartbeat: the server's event loop answers the pong) and
// the server-side berth_heartbeat_delay_seconds histogram, snapshots sent vs what the server holds
// at the end (every agent's route set encodes its last generation: any lost snapshot shows as a
// mismatch), agents online at the end, Caddy applies during the soak, and a few hosts sampled
// through Caddy (their upstreams are tiny HTTP servers on 127.0.0.1). The first agent also has
// one TCP route, to an echo server; during the soak a probe sends a 64-byte round trip through it
// every 10 ms, so the figures show whether reconcile passes at this size reach TCP traffic (the
// forwarder runs as its own process). Asserts nothing.
//
//   npm run build && npx tsx bench/soak.ts [--agents 1000] [--containers 50] [--minutes 10]
//     [--workers 2] [--change-every 120] [--report 15]
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { AGENT_PATH } from '../src/model/protocol.js';
import type { Snapshot } from '../src/model/types.js';
import { startBerth } from '../test/e2e/support/berth.js';
import { registerCleanup } from '../test/e2e/support/cleanup.js';
import { freePort } from '../test/e2e/support/ports.js';
import {
  cleanupOnExit,
  fetchMetrics,
  flag,
  fmtS,
  histogramBuckets,
  histogramQuantile,
  loadavg,
  metricValues,
  type ProcSample,
  pct,
  pidFrom,
  procSample,
  sleep,
} from './lib.js';

/**
 * Agents per key: a key enrols at most ENROLMENTS_PER_MINUTE (60) agents a minute, so a fleet
 * that connects at once uses one key per this many agents, as an operator enrolling many hosts would.
 */
const AGENTS_PER_KEY = 50;

interface WorkerConfig {
  apiUrl: string;
  /** One per AGENTS_PER_KEY agents, in agent order. */
  keys: string[];
  from: number;
  to: number;
  containers: number;
  changeEveryMs: number;
  reportMs: number;
  upstreams: number[];
  connectConcurrency: number;
  /** The first agent's TCP route: front-door port → echo server port. */
  probe: { listen: number; port: number };
}

interface AgentReport {
  name: string;
  agentId?: string;
  generation: number;
  routeIds: string[];
  /** The j of every running container (host c<j>.a<index>.soak.test). */
  running: number[];
}

type ToWorker =
  | { type: 'config'; config: WorkerConfig }
  | { type: 'window'; on: boolean }
  | { type: 'quiesce' }
  | { type: 'report' }
  | { type: 'stop' };

interface Progress {
  type: 'progress';
  welcomed: number;
  connected: number;
  snapshots: number;
  disconnects: number;
  serverErrors: number;
}

type FromWorker =
  | Progress
  | {
      type: 'report';
      agents: AgentReport[];
      rtts: number[];
      pingsLost: number;
      snapshots: number;
      windowSnapshots: number;
      heartbeats: number;
      disconnects: number;
      serverErrors: number;
      errorSamples: string[];
    }
  | { type: 'stopped' };

const PROBE_ID = 'f'.repeat(64);

if (process.argv.includes('--worker')) worker();
else await main();

// ---------------------------------------------------------------- the simulated agents (child)

function worker(): void {
  const send = (m: FromWorker) => process.send?.(m);
  let cfg: WorkerConfig;
  let windowOn = false;
  let quiesced = false;
  const rtts: number[] = [];
  let pingsLost = 0;
  let snapshots = 0;
  let windowSnapshots = 0;
  let heartbeats = 0;
  let disconnects = 0;
  let serverErrors = 0;
  const errorSamples: string[] = [];
  const agents: SimAgent[] = [];

  class SimAgent {
    ws?: WebSocket;
    agentId?: string;
    welcomed = false;
    generation = 1;
    stopped = false;
    private readonly containers: { id: string; name: string; created: number; running: boolean }[] = [];
    private nextChange = 0;
    private pings: number[] = [];
    private timers: NodeJS.Timeout[] = [];
    private backoffMs = 500;
    private onWelcome?: () => void;

    constructor(readonly index: number) {
      for (let j = 0; j < cfg.containers; j++) {
        this.containers.push({
          id: randomBytes(32).toString('hex'),
          name: `a${index}-c${j}`,
          created: Math.floor(Date.now() / 1000) - 3600,
          running: true,
        });
      }
    }

    get name(): string {
      return `soak-a${this.index}`;
    }

    host(j: number): string {
      return `c${j}.a${this.index}.soak.test`;
    }

    snapshot(): Snapshot {
      const routes = this.containers.flatMap((c, j) =>
        c.running
          ? [
              {
                id: `${c.id}/default`,
                group: 'default',
                hosts: [this.host(j)],
                path: '/',
                stripPath: false,
                upstream: {
                  host: '127.0.0.1',
                  port: cfg.upstreams[(this.index + j) % cfg.upstreams.length]!,
                  scheme: 'http' as const,
                },
                containerId: c.id,
                containerName: c.name,
                containerCreated: c.created,
              },
            ]
          : [],
      );
      const probe = this.index === 0 ? cfg.probe : undefined;
      return {
        agentId: this.agentId ?? '',
        generation: this.generation,
        hostIp: '127.0.0.1',
        takenAt: Date.now(),
        containers: [
          ...this.containers.map((c) => ({
            id: c.id,
            name: c.name,
            state: c.running ? 'running' : 'exited',
            health: 'none' as const,
            labelled: true,
          })),
          ...(probe
            ? [
                {
                  id: PROBE_ID,
                  name: 'soak-probe',
                  state: 'running',
                  health: 'none' as const,
                  labelled: true,
                },
              ]
            : []),
        ],
        routes,
        tcp: probe
          ? [
              {
                id: `${PROBE_ID}/tcp/probe`,
                name: 'probe',
                listen: probe.listen,
                upstream: { host: '127.0.0.1', port: probe.port },
                allow: [],
                containerId: PROBE_ID,
                containerName: 'soak-probe',
                containerCreated: Math.floor(Date.now() / 1000) - 3600,
              },
            ]
          : [],
        diagnostics: [],
      };
    }

    running(): number[] {
      return this.containers.flatMap((c, j) => (c.running ? [j] : []));
    }

    routeIds(): string[] {
      return this.containers.filter((c) => c.running).map((c) => `${c.id}/default`);
    }

    /** Resolves at the first welcome; reconnects (with backoff) whenever the socket closes. */
    connect(): Promise<void> {
      return new Promise((resolve) => {
        this.onWelcome = resolve;
        this.open();
      });
    }

    private open(): void {
      if (this.stopped) return;
      const headers: Record<string, string> = {
        authorization: `Bearer ${cfg.keys[Math.floor(this.index / AGENTS_PER_KEY)]}`,
        'x-berth-agent-name': this.name,
        'x-berth-agent-version': 'soak-sim',
      };
      if (this.agentId) headers['x-berth-agent-id'] = this.agentId;
      const ws = new WebSocket(`${cfg.apiUrl.replace(/^http/, 'ws')}${AGENT_PATH}`, {
        headers,
        handshakeTimeout: 120_000,
      });
      this.ws = ws;
      ws.on('message', (data) => this.onMessage(data.toString()));
      ws.on('pong', () => {
        const t = this.pings.shift();
        if (t !== undefined && windowOn) rtts.push(performance.now() - t);
      });
      ws.on('unexpected-response', (_req, res) => {
        serverErrors++;
        if (errorSamples.length < 5) errorSamples.push(`upgrade refused: HTTP ${res.statusCode}`);
        ws.terminate();
      });
      ws.on('error', () => {});
      ws.on('close', () => {
        if (this.ws !== ws) return;
        this.ws = undefined;
        // Pings in flight on a closed socket never come back.
        pingsLost += this.pings.length;
        this.pings = [];
        if (this.stopped) return;
        disconnects++;
        const delay = Math.round(this.backoffMs * (0.5 + Math.random()));
        this.backoffMs = Math.min(this.backoffMs * 2, 30_000);
        setTimeout(() => this.open(), delay);
      });
    }

    private onMessage(raw: string): void {
      let msg: { type: string; agentId?: string; message?: string };
      try {
        msg = JSON.parse(raw);
      } catch {
        return;
      }
      if (msg.type === 'welcome') {
        this.agentId = msg.agentId;
        this.backoffMs = 500;
        this.sendSnapshot();
        this.heartbeat();
        if (!this.welcomed) {
          this.welcomed = true;
          this.onWelcome?.();
          // Heartbeats spread evenly over the interval across agents, as real agents' would be.
          const first = setTimeout(() => {
            this.heartbeat();
            this.timers.push(setInterval(() => this.heartbeat(), cfg.reportMs));
          }, Math.random() * cfg.reportMs);
          this.timers.push(first);
        }
      } else if (msg.type === 'resync') {
        this.sendSnapshot();
      } else if (msg.type === 'error') {
        serverErrors++;
        if (errorSamples.length < 5) errorSamples.push(`${this.name}: ${msg.message}`);
      }
    }

    private isOpen(): boolean {
      return this.ws?.readyState === WebSocket.OPEN;
    }

    private sendSnapshot(): void {
      if (!this.agentId || !this.isOpen()) return;
      this.ws!.send(JSON.stringify({ type: 'snapshot', snapshot: this.snapshot() }));
      snapshots++;
      if (windowOn) windowSnapshots++;
    }

    private heartbeat(): void {
      if (!this.agentId || !this.isOpen()) return;
      const routes = this.containers.filter((c) => c.running).length;
      this.ws!.send(
        JSON.stringify({
          type: 'heartbeat',
          version: 'soak-sim',
          dockerVersion: 'sim',
          dockerConnected: true,
          containers: this.containers.length,
          routes,
          generation: this.generation,
          hostIp: '127.0.0.1',
          intervalMs: cfg.reportMs,
          sentAt: Date.now(),
        }),
      );
      heartbeats++;
      this.pings.push(performance.now());
      this.ws!.ping();
    }

    /** One container stops, or a stopped one is re-created with a new id: a new generation. */
    change(): void {
      if (quiesced || this.stopped) return;
      const c = this.containers[this.nextChange]!;
      if (c.running) {
        c.running = false;
      } else {
        c.id = randomBytes(32).toString('hex');
        c.created = Math.floor(Date.now() / 1000);
        c.running = true;
        this.nextChange = (this.nextChange + 1) % this.containers.length;
      }
      this.generation++;
      this.sendSnapshot();
    }

    startChanges(): void {
      const every = cfg.changeEveryMs * (0.8 + 0.4 * Math.random());
      const first = setTimeout(() => {
        this.change();
        this.timers.push(setInterval(() => this.change(), every));
      }, Math.random() * every);
      this.timers.push(first);
    }

    stop(): void {
      this.stopped = true;
      for (const t of this.timers) clearTimeout(t);
      this.ws?.close(1000, 'soak over');
    }
  }

  const progress = () =>
    send({
      type: 'progress',
      welcomed: agents.filter((a) => a.welcomed).length,
      connected: agents.filter((a) => a.ws?.readyState === WebSocket.OPEN).length,
      snapshots,
      disconnects,
      serverErrors,
    });

  process.on('message', async (m: ToWorker) => {
    if (m.type === 'config') {
      cfg = m.config;
      for (let i = cfg.from; i < cfg.to; i++) agents.push(new SimAgent(i));
      const ticker = setInterval(progress, 1_000);
      // A bounded number of connects in flight, like a fleet coming up.
      let next = 0;
      await Promise.all(
        Array.from({ length: cfg.connectConcurrency }, async () => {
          while (next < agents.length) await agents[next++]!.connect();
        }),
      );
      progress();
      clearInterval(ticker);
      setInterval(progress, 5_000).unref();
    } else if (m.type === 'window') {
      windowOn = m.on;
      if (m.on) for (const a of agents) a.startChanges();
    } else if (m.type === 'quiesce') {
      quiesced = true;
    } else if (m.type === 'report') {
      send({
        type: 'report',
        agents: agents.map((a) => ({
          name: a.name,
          agentId: a.agentId,
          generation: a.generation,
          routeIds: a.routeIds(),
          running: a.running(),
        })),
        rtts,
        pingsLost,
        snapshots,
        windowSnapshots,
        heartbeats,
        disconnects,
        serverErrors,
        errorSamples,
      });
    } else if (m.type === 'stop') {
      for (const a of agents) a.stop();
      setTimeout(() => {
        send({ type: 'stopped' });
        process.exit(0);
      }, 500);
    }
  });
  process.on('disconnect', () => process.exit(0)); // the parent is gone
}

// ---------------------------------------------------------------- the benchmark (parent)

async function main(): Promise<void> {
  const AGENTS = flag('agents', 1000);
  const CONTAINERS = flag('containers', 50);
  const MINUTES = flag('minutes', 10);
  const WORKERS = Math.min(flag('workers', 2), AGENTS);
  const CHANGE_EVERY_MS = flag('change-every', 120) * 1000;
  const REPORT_MS = flag('report', 15) * 1000;
  const RAMP_DEADLINE_MS = flag('ramp-deadline-min', 30) * 60_000;
  const SAMPLE_MS = 10_000;

  const root = mkdtempSync(join(tmpdir(), 'berth-soak-'));
  registerCleanup(() => rmSync(root, { recursive: true, force: true }));
  const workers: ChildProcess[] = [];
  const upstreamServers: Server[] = [];
  const cleanup = cleanupOnExit(async () => {
    await Promise.all(
      workers.map(async (w) => {
        if (w.exitCode !== null || w.signalCode !== null) return;
        const gone = new Promise((r) => w.once('exit', r));
        if (w.connected) w.send({ type: 'stop' } satisfies ToWorker);
        const timer = setTimeout(() => w.pid && process.kill(w.pid, 'SIGKILL'), 15_000);
        await gone;
        clearTimeout(timer);
      }),
    );
    for (const s of upstreamServers) s.close();
  });

  try {
    console.log(
      `soak: ${AGENTS} simulated agents × ${CONTAINERS} containers (${AGENTS * CONTAINERS} routes), ${MINUTES} min, ${WORKERS} agent processes, heartbeat every ${REPORT_MS / 1000} s, a change per agent every ~${CHANGE_EVERY_MS / 1000} s; load ${loadavg()}`,
    );
    const dataDir = join(root, 'server');
    mkdirSync(dataDir);
    const berth = await startBerth({ command: 'server', dataDir, args: ['--log-level', 'warn'] });
    const admin = async (path: string) => {
      const res = await fetch(`${berth.apiUrl}${path}`, {
        headers: { authorization: `Bearer ${berth.token}` },
        signal: AbortSignal.timeout(300_000),
      });
      if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
      return res.json();
    };
    const keys: string[] = [];
    for (let i = 0; i < Math.ceil(AGENTS / AGENTS_PER_KEY); i++) {
      const res = await fetch(`${berth.apiUrl}/api/keys`, {
        method: 'POST',
        headers: { authorization: `Bearer ${berth.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `soak-${i}`, autoApprove: true }),
      });
      if (!res.ok) throw new Error(`POST /api/keys: ${res.status} ${await res.text()}`);
      keys.push(((await res.json()) as { secret: string }).secret);
    }

    // Upstreams for every route: a few tiny HTTP servers on 127.0.0.1 that name the host asked for.
    const upstreams: number[] = [];
    for (let i = 0; i < 4; i++) {
      const p = await freePort();
      const s = createServer((req, res) => res.end(`soak upstream ${p} for ${req.headers.host}\n`));
      await new Promise<void>((r) => s.listen(p, '127.0.0.1', r));
      upstreamServers.push(s);
      upstreams.push(p);
    }

    // The TCP probe's upstream: an echo server.
    const echo = createNetServer((sock) => sock.pipe(sock));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    registerCleanup(() => echo.close());
    const probe = { listen: await freePort(), port: (echo.address() as { port: number }).port };

    const serverPid = berth.pid;
    const caddyPid = pidFrom(join(dataDir, 'caddy.pid'));
    const dnsPid = pidFrom(join(dataDir, 'dns', 'dns.pid'));

    // ---- ramp: the fleet connects and reports
    const progress = new Map<number, Progress>();
    const reports = new Map<number, Extract<FromWorker, { type: 'report' }>>();
    const per = Math.ceil(AGENTS / WORKERS);
    const tRamp = performance.now();
    const rampBefore = procSample(serverPid);
    for (let w = 0; w < WORKERS; w++) {
      const child = fork(process.argv[1]!, ['--worker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      workers.push(child);
      child.on('message', (m: FromWorker) => {
        if (m.type === 'progress') progress.set(w, m);
        else if (m.type === 'report') reports.set(w, m);
      });
      child.send({
        type: 'config',
        config: {
          apiUrl: berth.apiUrl,
          keys,
          from: w * per,
          to: Math.min(AGENTS, (w + 1) * per),
          containers: CONTAINERS,
          changeEveryMs: CHANGE_EVERY_MS,
          reportMs: REPORT_MS,
          upstreams,
          connectConcurrency: 4,
          probe,
        },
      } satisfies ToWorker);
    }
    const sum = (f: (p: Progress) => number) => [...progress.values()].reduce((n, p) => n + f(p), 0);
    let lastLog = performance.now();
    while (sum((p) => p.welcomed) < AGENTS) {
      if (performance.now() - tRamp > RAMP_DEADLINE_MS)
        throw new Error(
          `only ${sum((p) => p.welcomed)} of ${AGENTS} agents welcomed after the ramp deadline`,
        );
      if (workers.some((w) => w.exitCode !== null)) throw new Error('an agent process exited');
      if (performance.now() - lastLog > 30_000) {
        lastLog = performance.now();
        console.log(
          `  ramp: ${sum((p) => p.welcomed)}/${AGENTS} agents welcomed after ${fmtS(performance.now() - tRamp)}; server RSS ${procSample(serverPid)?.rssMb.toFixed(0)} MiB`,
        );
      }
      await sleep(250);
    }
    const rampMs = performance.now() - tRamp;
    const rampAfter = procSample(serverPid);
    // Let the initial snapshots settle into the store and the front door before measuring.
    await sleep(Math.min(REPORT_MS, 15_000));
    console.log(
      `  ramp: ${AGENTS} agents connected, welcomed and sent their snapshot in ${fmtS(rampMs)} (server CPU ${((rampAfter?.cpuSeconds ?? 0) - (rampBefore?.cpuSeconds ?? 0)).toFixed(1)} s, RSS ${rampAfter?.rssMb.toFixed(0)} MiB)`,
    );

    const probeConn = await openProbe(probe.listen, 60_000);
    const tcpPid = pidFrom(join(dataDir, 'tcp', 'tcp.pid'));

    // ---- the soak window
    let t = performance.now();
    const metricsBefore = await fetchMetrics(berth.apiUrl);
    const metricsMs = performance.now() - t;
    const loadBefore = loadavg();
    const procs = () => ({
      server: procSample(serverPid),
      caddy: procSample(caddyPid),
      dns: procSample(dnsPid),
      tcp: procSample(tcpPid),
      workers: workers.map((w) => procSample(w.pid)),
    });
    const start = procs();
    const tWindow = performance.now();
    for (const w of workers) w.send({ type: 'window', on: true } satisfies ToWorker);
    const probing = probeConn.run(MINUTES * 60_000, 10);
    const rss: number[] = [];
    const cpuPct: number[] = [];
    let prev: ProcSample | undefined = start.server;
    let prevT = tWindow;
    let minConnected = AGENTS;
    const windowMs = MINUTES * 60_000;
    while (performance.now() - tWindow < windowMs) {
      await sleep(Math.min(SAMPLE_MS, windowMs - (performance.now() - tWindow)));
      const s = procSample(serverPid);
      const now = performance.now();
      if (!s) throw new Error('the server exited during the soak');
      rss.push(s.rssMb);
      if (prev) cpuPct.push(((s.cpuSeconds - prev.cpuSeconds) / ((now - prevT) / 1000)) * 100);
      prev = s;
      prevT = now;
      minConnected = Math.min(
        minConnected,
        sum((p) => p.connected),
      );
      if (rss.length % 6 === 0)
        console.log(
          `  ${((now - tWindow) / 60_000).toFixed(1)} min: server RSS ${s.rssMb.toFixed(0)} MiB, CPU ${cpuPct.at(-1)?.toFixed(0)} % over the last 10 s; ${sum((p) => p.connected)} agents connected; load ${loadavg()}`,
        );
    }
    const end = procs();
    const soakSeconds = (performance.now() - tWindow) / 1000;
    const probed = await probing;
    for (const w of workers) w.send({ type: 'window', on: false } satisfies ToWorker);
    t = performance.now();
    const metricsAfter = await fetchMetrics(berth.apiUrl);
    const metricsMs2 = performance.now() - t;
    const loadAfter = loadavg();

    // ---- the end: does the server hold every agent's last snapshot?
    for (const w of workers) w.send({ type: 'quiesce' } satisfies ToWorker);
    await sleep(3_000); // changes already on the wire land
    for (const w of workers) w.send({ type: 'report' } satisfies ToWorker);
    const tRep = performance.now();
    while (reports.size < WORKERS && performance.now() - tRep < 30_000) await sleep(100);
    const all = [...reports.values()];
    const expected = all.flatMap((r) => r.agents);
    const compare = async () => {
      const t0 = performance.now();
      const { routes } = (await admin('/api/routes')) as {
        routes: { id: string; agentId: string; kind: string }[];
      };
      const ms = performance.now() - t0;
      const held = new Map<string, string[]>();
      for (const r of routes)
        if (r.kind === 'http') held.set(r.agentId, [...(held.get(r.agentId) ?? []), r.id]);
      const bad = expected.filter((a) => {
        const got = (held.get(a.agentId ?? '') ?? []).sort().join(',');
        return got !== [...a.routeIds].sort().join(',');
      });
      return { bad, ms, total: routes.length };
    };
    let cmp = await compare();
    const tCmp = performance.now();
    while (cmp.bad.length > 0 && performance.now() - tCmp < 60_000) {
      await sleep(5_000);
      cmp = await compare();
    }
    t = performance.now();
    const { agents: summaries } = (await admin('/api/agents')) as {
      agents: { name: string; status: string }[];
    };
    const agentsMs = performance.now() - t;
    const statuses = new Map<string, number>();
    for (const a of summaries.filter((x) => x.name.startsWith('soak-a')))
      statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);

    // A few hosts through Caddy: each must reach its upstream (200 naming the host), not 404.
    const live = expected.filter((a) => a.running.length > 0);
    let sampled = 0;
    let ok = 0;
    const wrong: string[] = [];
    for (let i = 0; i < 20 && live.length > 0; i++) {
      const a = live[Math.floor(Math.random() * live.length)]!;
      const j = a.running[Math.floor(Math.random() * a.running.length)]!;
      const host = `c${j}.a${a.name.slice('soak-a'.length)}.soak.test`;
      sampled++;
      const r = await get(berth.httpPort, host);
      if (r.status === 200 && r.body.includes(host)) ok++;
      else if (wrong.length < 3) wrong.push(`${host}: ${r.status} ${r.body.trim().slice(0, 80)}`);
    }
    const unknown = await get(berth.httpPort, 'nobody.soak.test');

    // ---- figures
    const delta = (k: 'server' | 'caddy' | 'dns' | 'tcp') =>
      (end[k]?.cpuSeconds ?? 0) - (start[k]?.cpuSeconds ?? 0);
    const rtts = all.flatMap((r) => r.rtts);
    const hb = histogramBuckets(metricsAfter, 'berth_heartbeat_delay_seconds', metricsBefore);
    const hbCount = hb.find(([le]) => !Number.isFinite(le))?.[1] ?? 0;
    const applies = (m: string) => metricValues(m, 'berth_caddy_applies_total').get('') ?? 0;
    const passes = (m: string) => metricValues(m, 'berth_reconcile_passes_total').get('') ?? 0;
    const convergence = histogramBuckets(metricsAfter, 'berth_convergence_seconds', metricsBefore);
    const sentTotal = all.reduce((n, r) => n + r.snapshots, 0);
    const sentWindow = all.reduce((n, r) => n + r.windowSnapshots, 0);
    const workerCpu = end.workers.map((e, i) => (e?.cpuSeconds ?? 0) - (start.workers[i]?.cpuSeconds ?? 0));
    const ms = (s: number) => `${(s * 1000).toFixed(1)} ms`;

    console.log(
      `\nsoak of ${AGENTS} simulated agents × ${CONTAINERS} containers, ${(soakSeconds / 60).toFixed(1)} min (dynamic layout; load ${loadBefore} before, ${loadAfter} after)`,
    );
    console.log(
      `  berth server RSS: min ${Math.min(...rss).toFixed(0)} / median ${pct(rss, 50).toFixed(0)} / max ${Math.max(...rss).toFixed(0)} MiB (${rss.length} samples every 10 s; VmHWM ${end.server?.hwmMb.toFixed(0)} MiB)`,
    );
    console.log(
      `  berth server CPU: mean ${((delta('server') / soakSeconds) * 100).toFixed(1)} % of one core over the soak (${delta('server').toFixed(1)} s), highest 10 s interval ${Math.max(...cpuPct).toFixed(0)} %`,
    );
    console.log(
      `  caddy: RSS ${end.caddy?.rssMb.toFixed(0)} MiB, CPU ${((delta('caddy') / soakSeconds) * 100).toFixed(1)} %; dns responder: RSS ${end.dns?.rssMb.toFixed(0)} MiB, CPU ${((delta('dns') / soakSeconds) * 100).toFixed(1)} %; agent processes: CPU ${workerCpu.map((c) => `${((c / soakSeconds) * 100).toFixed(1)} %`).join(', ')}`,
    );
    const tcpProc = end.tcp
      ? `TCP forwarder process: RSS ${end.tcp.rssMb.toFixed(0)} MiB, CPU ${((delta('tcp') / soakSeconds) * 100).toFixed(1)} %`
      : 'TCP forwarder inside the server process';
    console.log(
      `  TCP probe (64 B round trip every 10 ms through the forwarder; ${tcpProc}): ${probed.samples.length} round trips, p50 ${pct(probed.samples, 50).toFixed(2)} ms, p99 ${pct(probed.samples, 99).toFixed(2)} ms, p99.9 ${pct(probed.samples, 99.9).toFixed(1)} ms, max ${Math.max(...probed.samples).toFixed(1)} ms; ${probed.samples.filter((x) => x > 50).length} over 50 ms${probed.error ? `; stopped early: ${probed.error}` : ''}`,
    );
    console.log(
      `  heartbeat round trip (WebSocket ping → pong with each heartbeat, ${rtts.length} samples): p50 ${pct(rtts, 50).toFixed(1)} ms, p99 ${pct(rtts, 99).toFixed(1)} ms, max ${Math.max(...rtts).toFixed(1)} ms; pings lost to closed sockets: ${all.reduce((n, r) => n + r.pingsLost, 0)}`,
    );
    console.log(
      `  heartbeat delay at the server (berth_heartbeat_delay_seconds, ${hbCount} heartbeats in the soak): p50 ≈ ${ms(histogramQuantile(hb, 0.5))}, p99 ≈ ${ms(histogramQuantile(hb, 0.99))} (interpolated in buckets), ${hb.filter(([le]) => le <= 0.01).at(-1)?.[1] ?? 0} ≤ 10 ms, ${hbCount - (hb.filter(([le]) => le <= 0.1).at(-1)?.[1] ?? 0)} > 100 ms`,
    );
    console.log(
      `  snapshots sent: ${sentTotal} (${sentWindow} during the soak, ${(sentWindow / soakSeconds).toFixed(1)}/s); the server holds each agent's last one for ${expected.length - cmp.bad.length}/${expected.length} agents: lost ${cmp.bad.length}` +
        (cmp.bad.length > 0
          ? ` (e.g. ${cmp.bad
              .slice(0, 3)
              .map((a) => a.name)
              .join(', ')})`
          : ''),
    );
    console.log(
      `  agents at the end: ${[...statuses].map(([s, n]) => `${n} ${s}`).join(', ')}; fewest connected during the soak ${minConnected}; disconnects ${all.reduce((n, r) => n + r.disconnects, 0)}; server errors ${all.reduce((n, r) => n + r.serverErrors, 0)}${
        all.flatMap((r) => r.errorSamples).length > 0
          ? ` (${all
              .flatMap((r) => r.errorSamples)
              .slice(0, 2)
              .join('; ')})`
          : ''
      }`,
    );
    console.log(
      `  Caddy applies during the soak: ${applies(metricsAfter) - applies(metricsBefore)}; reconcile passes: ${passes(metricsAfter) - passes(metricsBefore)}; convergence p50 ≈ ${ms(histogramQuantile(convergence, 0.5))}, p99 ≈ ${ms(histogramQuantile(convergence, 0.99))}`,
    );
    console.log(
      `  through Caddy: ${ok}/${sampled} sampled hosts answered 200 from their upstream${wrong.length > 0 ? ` (${wrong.join('; ')})` : ''}; an unknown host: ${unknown.status}`,
    );
    console.log(
      `  API at this size: GET /metrics ${fmtS(metricsMs)} before, ${fmtS(metricsMs2)} after; GET /api/routes ${fmtS(cmp.ms)} (${cmp.total} routes); GET /api/agents ${fmtS(agentsMs)}`,
    );
    if (process.argv.includes('--json'))
      console.log(
        JSON.stringify({
          bench: 'soak',
          bin: process.env.BERTH_BIN ?? 'dist',
          agents: AGENTS,
          containers: CONTAINERS,
          minutes: soakSeconds / 60,
          rampS: rampMs / 1000,
          serverRssMinMiB: Math.min(...rss),
          serverRssMedianMiB: pct(rss, 50),
          serverRssMaxMiB: Math.max(...rss),
          serverCpuPct: (delta('server') / soakSeconds) * 100,
          serverCpuPeakPct: Math.max(...cpuPct),
          heartbeatRttP50Ms: pct(rtts, 50),
          heartbeatRttP99Ms: pct(rtts, 99),
          heartbeatP50Ms: histogramQuantile(hb, 0.5) * 1000,
          heartbeatP99Ms: histogramQuantile(hb, 0.99) * 1000,
          convergenceP50Ms: histogramQuantile(convergence, 0.5) * 1000,
          convergenceP99Ms: histogramQuantile(convergence, 0.99) * 1000,
          tcpProbeP50Ms: pct(probed.samples, 50),
          tcpProbeP99Ms: pct(probed.samples, 99),
          lostSnapshots: cmp.bad.length,
          disconnects: all.reduce((n, r) => n + r.disconnects, 0),
          sampledOk: ok,
          sampled,
          metricsMs: metricsMs2,
          routesMs: cmp.ms,
          agentsMs,
        }),
      );
  } catch (err) {
    console.error(err);
    process.exitCode = 1;
  } finally {
    await cleanup();
  }
}

/** A connection through the TCP route, once the route is up (tried until `waitMs`). */
async function openProbe(port: number, waitMs: number) {
  const deadline = performance.now() + waitMs;
  let sock: Socket | undefined;
  while (!sock) {
    sock = await new Promise<Socket | undefined>((resolve) => {
      const s = connect({ host: '127.0.0.1', port, noDelay: true });
      s.once('connect', () => resolve(s));
      s.once('error', () => resolve(undefined));
    });
    if (!sock) {
      if (performance.now() > deadline) throw new Error(`the TCP probe route :${port} never came up`);
      await sleep(250);
    }
  }
  const conn = sock;
  const msg = Buffer.alloc(64, 0x70);
  return {
    /** One round trip every `everyMs` for `forMs`; latencies in ms. Ends early on an error. */
    async run(forMs: number, everyMs: number): Promise<{ samples: number[]; error?: string }> {
      const samples: number[] = [];
      const end = performance.now() + forMs;
      try {
        while (performance.now() < end && samples.length < 1_000_000) {
          const t0 = performance.now();
          await new Promise<void>((resolve, reject) => {
            let got = 0;
            const onData = (d: Buffer) => {
              got += d.length;
              if (got >= msg.length) finish();
            };
            const onClose = () => finish(new Error('the probe connection closed'));
            const timer = setTimeout(() => finish(new Error('no echo within 10 s')), 10_000);
            const finish = (err?: Error) => {
              clearTimeout(timer);
              conn.off('data', onData);
              conn.off('close', onClose);
              err ? reject(err) : resolve();
            };
            conn.on('data', onData);
            conn.once('close', onClose);
            conn.write(msg);
          });
          samples.push(performance.now() - t0);
          await sleep(Math.max(0, everyMs - (performance.now() - t0)));
        }
        return { samples };
      } catch (err) {
        return { samples, error: (err as Error).message };
      } finally {
        conn.destroy();
      }
    },
  };
}

function get(port: number, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/', headers: { host }, agent: false, timeout: 10_000 },
      (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, body: e.message }));
    req.end();
  });
}
