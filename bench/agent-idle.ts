// An idle `berth agent`: its RSS and CPU while nothing changes. One `berth server` (own Caddy), and
// per build under test a private dockerd with N labelled containers (busybox, `sleep`, host
// network) and one `berth agent` on it, enrolled over TLS to the agent listener with the printed
// key, production defaults otherwise (15 s heartbeats, 30 s re-list, log level info). Once the
// server holds every agent's routes and a settle time has passed, each agent's RSS (VmRSS) and
// CPU time (utime + stime) are read from /proc every second for --seconds. Several builds
// (--bin, repeatable) run side by side in the same run, so a before/after comparison shares the
// machine's noise. Asserts nothing.
//
//   npm run build && npx tsx bench/agent-idle.ts [--containers 50] [--seconds 300] [--settle 30]
//     [--bin DIR]… [--json]
//
// --bin names a checkout (its dist/cli/main.js is run) or a main.js itself; without it, BERTH_BIN
// or this checkout's build. With --json the last line is a summary: the first build's figures at
// the top level and every build's in `runs`.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { type AgentProcess, BERTH_BIN, startAgent, startBerth } from '../test/e2e/support/berth.js';
import { importBusybox, runHostContainer, startDockerd } from '../test/e2e/support/dockerd.js';
import { waitUntil } from '../test/e2e/support/proc.js';
import { cleanupOnExit, flag, loadavg, pct, procSample, sleep } from './lib.js';

const CONTAINERS = flag('containers', 50);
const SECONDS = flag('seconds', 300);
const SETTLE_S = flag('settle', 30);
const asJson = process.argv.includes('--json');

function bins(): string[] {
  const out: string[] = [];
  for (let i = 0; i < process.argv.length; i++) {
    if (process.argv[i] !== '--bin') continue;
    const v = process.argv[i + 1];
    if (!v) {
      console.error('--bin needs a checkout directory or a main.js');
      process.exit(2);
    }
    const p = resolve(v);
    const main = p.endsWith('.js') ? p : join(p, 'dist', 'cli', 'main.js');
    if (!existsSync(main)) {
      console.error(`--bin ${v}: no ${main} (run npm run build there)`);
      process.exit(2);
    }
    out.push(main);
  }
  return out.length > 0 ? out : [BERTH_BIN];
}

interface Run {
  bin: string;
  agent: AgentProcess;
  name: string;
  rss: number[];
  cpu0: number;
  cpu1: number;
  hwm: number;
}

export interface RunFigures {
  bin: string;
  rssMedianMiB: number;
  rssMinMiB: number;
  rssMaxMiB: number;
  /** VmHWM: the peak since the agent started, start-up included. */
  rssPeakMiB: number;
  /** Mean CPU over the sampling window, % of one core. */
  cpuPct: number;
  cpuSeconds: number;
}

const round1 = (x: number) => Math.round(x * 10) / 10;

const done = cleanupOnExit();
try {
  const builds = bins();
  const say = (s: string) => console.log(s);
  say(
    `agent idle: ${builds.length} build(s) side by side, ${CONTAINERS} labelled containers each, settle ${SETTLE_S} s, sample ${SECONDS} s; load ${loadavg()}`,
  );
  const server = await startBerth({ command: 'server', args: ['--log-level', 'warn'] });
  const created = JSON.parse(
    (await server.cli(['keys', 'create', '--name', 'idle', '--auto-approve', '--json'])).stdout,
  ) as { secret: string };
  const runs: Run[] = [];
  for (const [i, bin] of builds.entries()) {
    const d = await startDockerd({ name: `idle${i}` });
    await importBusybox(d);
    const name = `idle-${i}`;
    for (let c = 0; c < CONTAINERS; c++)
      await runHostContainer(
        d,
        `c${c}`,
        { 'berth.host': `c${c}.${name}.idle.test`, 'berth.port': String(20_000 + c) },
        ['sleep', '86400'],
      );
    const agent = await startAgent({
      server: server.agentUrl,
      key: created.secret,
      docker: d.dockerHost,
      hostIp: '127.0.0.1',
      name,
      bin,
      // Production defaults, not the tests' 1 s heartbeat and debug logs.
      args: ['--report-interval', '15s', '--log-level', 'info'],
    });
    runs.push({ bin, agent, name, rss: [], cpu0: 0, cpu1: 0, hwm: 0 });
  }
  await waitUntil(
    async () => {
      const routes = await server.routes();
      return runs.every(
        (r) => routes.filter((x) => x.hosts[0]?.endsWith(`.${r.name}.idle.test`)).length === CONTAINERS,
      );
    },
    {
      timeoutMs: 120_000,
      intervalMs: 500,
      message: () =>
        `not every agent's routes arrived:\n${runs.map((r) => r.agent.output()).join('\n----\n')}`,
    },
  );
  say(`every agent's ${CONTAINERS} routes are on the server; settling ${SETTLE_S} s`);
  await sleep(SETTLE_S * 1000);
  for (const r of runs) r.cpu0 = procSample(r.agent.pid)?.cpuSeconds ?? Number.NaN;
  const t0 = performance.now();
  for (let s = 0; s < SECONDS; s++) {
    await sleep(Math.max(0, t0 + (s + 1) * 1000 - performance.now()));
    for (const r of runs) {
      const p = procSample(r.agent.pid);
      if (!p) throw new Error(`agent ${r.name} exited:\n${r.agent.output()}`);
      r.rss.push(p.rssMb);
      r.cpu1 = p.cpuSeconds;
      r.hwm = p.hwmMb;
    }
  }
  const elapsed = (performance.now() - t0) / 1000;
  const figures: RunFigures[] = runs.map((r) => ({
    bin: r.bin,
    rssMedianMiB: round1(pct(r.rss, 50)),
    rssMinMiB: round1(Math.min(...r.rss)),
    rssMaxMiB: round1(Math.max(...r.rss)),
    rssPeakMiB: round1(r.hwm),
    cpuSeconds: Math.round((r.cpu1 - r.cpu0) * 100) / 100,
    cpuPct: Math.round(((r.cpu1 - r.cpu0) / elapsed) * 10_000) / 100,
  }));
  say(`over ${Math.round(elapsed)} s (load ${loadavg()}):`);
  for (const f of figures)
    say(
      `  ${f.bin}\n    RSS median ${f.rssMedianMiB} MiB (min ${f.rssMinMiB}, max ${f.rssMaxMiB}, peak since start ${f.rssPeakMiB})   CPU ${f.cpuPct}% of a core (${f.cpuSeconds} s)`,
    );
  if (asJson)
    console.log(
      JSON.stringify({
        bench: 'agent-idle',
        containers: CONTAINERS,
        seconds: Math.round(elapsed),
        settleSeconds: SETTLE_S,
        ...figures[0],
        runs: figures,
      }),
    );
} finally {
  await done();
}
