// What the access log and per-route metrics cost the front door: wrk against one route through
// Berth servers in the same run, one with Caddy streaming request lines to Berth (the default:
// access log to a file, metrics, charts) and one with --traffic off, and on request the variants
// that split the cost (Caddy's logging alone, Berth without its access log). Rounds alternate so
// that all see the same machine; medians are reported, with the CPU that Berth, its Caddy, the
// upstream and wrk spent per 1,000 requests. The upstream is a Caddy static response, so the
// front door is what is measured.
//
//   npm run build && npx tsx bench/traffic.ts [--rounds 3] [--seconds 10] [--connections 50]
//     [--variants on,off,on-nolog,devnull,discard] [--berth-nice N] [--json]
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CaddyAdmin } from '../src/ingress/caddy/admin.js';
import { ACCESS_LOG } from '../src/ingress/caddy/config.js';
import { type BerthProcess, startBerth } from '../test/e2e/support/berth.js';
import { registerCleanup } from '../test/e2e/support/cleanup.js';
import { connectFakeAgent } from '../test/e2e/support/fake-agent.js';
import { httpGet, waitUntil } from '../test/e2e/support/proc.js';
import {
  cleanupOnExit,
  fetchMetrics,
  flag,
  loadavg,
  metricValues,
  procSample,
  staticUpstream,
} from './lib.js';

const run = promisify(execFile);
const rounds = flag('rounds', 3);
const seconds = flag('seconds', 10);
const connections = flag('connections', 50);
const asJson = process.argv.includes('--json');
const HOST = 'bench.traffic.test';
const done = cleanupOnExit();

const DESCRIBE = {
  off: '--traffic off: no request logging in Caddy',
  on: '--traffic on (the default), access log to a file',
  'on-nolog': '--traffic on, --access-log off: lines read and counted, no access log',
  devnull: "--traffic on, Caddy's request log written to /dev/null: Caddy's logging alone",
  discard: "--traffic on, Caddy's request log writer `discard` (a no-op core): the map handler and the rest",
} as const;
type VariantName = keyof typeof DESCRIBE;

function stringFlag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? undefined : process.argv[i + 1];
}
const variantNames = (stringFlag('variants') ?? 'on,off').split(',') as VariantName[];
for (const n of variantNames)
  if (!(n in DESCRIBE)) {
    console.error(`--variants: unknown ${n} (one of ${Object.keys(DESCRIBE).join(', ')})`);
    process.exit(2);
  }
const niceText = stringFlag('berth-nice');
const berthNice = niceText === undefined ? undefined : Number(niceText);
if (berthNice !== undefined && !Number.isInteger(berthNice)) {
  console.error('--berth-nice needs an integer');
  process.exit(2);
}
const round1 = (n: number) => Math.round(n * 10) / 10;

interface WrkResult {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  errors: number;
  /** wrk's own CPU (user + system). */
  cpuSeconds: number;
}

/** wrk's "Requests/sec" and its --latency percentiles. */
function parseWrk(out: string): Omit<WrkResult, 'cpuSeconds'> {
  const toMs = (v: string, unit: string) => Number(v) * ({ us: 0.001, ms: 1, s: 1000 }[unit] ?? Number.NaN);
  const lat = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s)`, 'm').exec(out);
    return m ? toMs(m[1]!, m[2]!) : Number.NaN;
  };
  const errors = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? Number.NaN),
    p50Ms: lat('50'),
    p99Ms: lat('99'),
    requests: Number(/(\d+) requests in/.exec(out)?.[1] ?? 0),
    errors: Number(errors?.[1] ?? 0) + (socket ? socket.slice(1).reduce((n, x) => n + Number(x), 0) : 0),
  };
}

async function wrk(port: number): Promise<WrkResult> {
  // The shell waits for wrk, then prints its own /proc stat: cutime + cstime are wrk's CPU.
  const { stdout } = await run(
    'sh',
    [
      '-c',
      'wrk "$@" && echo && cat /proc/$$/stat',
      'sh',
      '-t2',
      `-c${connections}`,
      `-d${seconds}s`,
      '--latency',
      '-H',
      `Host: ${HOST}`,
      `http://127.0.0.1:${port}/`,
    ],
    { maxBuffer: 1 << 20 },
  );
  const stat = stdout.trimEnd().split('\n').at(-1) ?? '';
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // After the state (field 3): cutime is field 16, cstime 17, in clock ticks (USER_HZ 100).
  return { ...parseWrk(stdout), cpuSeconds: (Number(f[13]) + Number(f[14])) / 100 };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function berthWith(args: string[], upstreamPort: number): Promise<BerthProcess> {
  // --log-level debug (the test harness's) would log every Caddy apply; the bench wants quiet.
  const b = await startBerth({ command: 'server', args: [...args, '--log-level', 'warn'] });
  const k = await b.cli(['keys', 'create', '--name', 'bench', '--auto-approve', '--json']);
  const agent = await connectFakeAgent(b.apiUrl, JSON.parse(k.stdout).secret, 'bench');
  agent.snapshot([
    {
      id: 'web/default',
      hosts: [HOST],
      containerId: 'web',
      containerName: 'web',
      upstream: { host: '127.0.0.1', port: upstreamPort, scheme: 'http' },
    },
  ]);
  await waitUntil(
    async () => (await httpGet(`http://127.0.0.1:${b.httpPort}/`, { host: HOST })).status === 200,
    {
      timeoutMs: 20_000,
      message: () => `route never served\n${b.output().slice(-2000)}`,
    },
  );
  return b;
}

/** Every thread of a process at this nice value (renice alone moves only the main thread). */
function reniceAll(pid: number, nice: number): void {
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      setPriority(Number(tid), nice);
    } catch {
      // a thread that ended meanwhile
    }
  }
}

/** Requests a server counted in /metrics, and the lines in its access log. */
async function countedAndLogged(v: Variant): Promise<{ counted: number; logged: number }> {
  const counted = [
    ...metricValues(await fetchMetrics(v.berth.apiUrl), 'berth_http_requests_total').values(),
  ].reduce((n, x) => n + x, 0);
  const logged = v.accessLog ? readFileSync(v.accessLog, 'utf8').split('\n').filter(Boolean).length : 0;
  return { counted, logged };
}

const cpuOf = (pid: number | undefined) => procSample(pid)?.cpuSeconds ?? Number.NaN;
const caddyPid = (b: BerthProcess) => Number(readFileSync(join(b.dataDir, 'caddy.pid'), 'utf8').trim());

interface Variant {
  name: VariantName;
  berth: BerthProcess;
  caddy: number;
  accessLog?: string;
  results: WrkResult[];
  /** CPU seconds over the measured rounds. */
  cpu: { berth: number; caddy: number; upstream: number; wrk: number };
}

try {
  const up = await staticUpstream('x'.repeat(128));
  const logDir = mkdtempSync(join(tmpdir(), 'btraffic-bench-'));
  registerCleanup(() => rmSync(logDir, { recursive: true, force: true }));
  const variants: Variant[] = [];
  const rewiredCheck = new Map<string, () => Promise<void>>();
  for (const name of variantNames) {
    const accessLog = name === 'on' ? join(logDir, 'access.log') : undefined;
    const rewired = name === 'devnull' || name === 'discard';
    const args =
      name === 'off'
        ? ['--traffic', 'off']
        : [
            '--access-log',
            accessLog ?? (name === 'on-nolog' ? 'off' : join(logDir, `${name}.log`)),
            // The rewired writer is drift to Berth, which would put its own back within 30 s.
            ...(rewired ? ['--drift-interval', '1h'] : []),
          ];
    const berth = await berthWith(args, up.port);
    if (rewired) {
      // Caddy still logs every request, but Berth reads none: what Caddy's side costs alone.
      const writer =
        name === 'devnull' ? { output: 'file', filename: '/dev/null', roll: false } : { output: 'discard' };
      const admin = new CaddyAdmin(`unix://${join(berth.dataDir, 'caddy-admin.sock')}`);
      const path = `/config/logging/logs/${ACCESS_LOG}/writer`;
      const { status, body } = await admin.request('PATCH', path, writer);
      if (status !== 200) throw new Error(`Caddy refused the ${name} writer: ${status} ${body}`);
      rewiredCheck.set(name, async () => {
        const now = await admin.getConfig(path);
        if (now?.output !== writer.output)
          throw new Error(`the ${name} writer was replaced: ${JSON.stringify(now)}`);
      });
    }
    if (berthNice !== undefined && name !== 'off') reniceAll(berth.pid, berthNice);
    variants.push({
      name,
      berth,
      caddy: caddyPid(berth),
      accessLog,
      results: [],
      cpu: { berth: 0, caddy: 0, upstream: 0, wrk: 0 },
    });
  }
  const offServer = variants.find((v) => v.name === 'off');
  // The "off" server must really have no request lines: no berth_http families at all.
  if (offServer && (await fetchMetrics(offServer.berth.apiUrl)).includes('berth_http_requests_total'))
    throw new Error('the --traffic off server counts requests');
  // What the servers counted before the bench's own requests (the probes that waited for the route).
  await new Promise((r) => setTimeout(r, 1_000));
  const baseline = new Map<string, { counted: number; logged: number }>();
  for (const v of variants) baseline.set(v.name, await countedAndLogged(v));
  // Warm each (Caddy's connection pools, JIT) before measuring.
  const warm: Record<string, number> = {};
  for (const v of variants) warm[v.name] = (await wrk(v.berth.httpPort)).requests;
  const load = [loadavg()];
  for (let r = 0; r < rounds; r++) {
    for (const v of variants) {
      await rewiredCheck.get(v.name)?.();
      const before = { berth: cpuOf(v.berth.pid), caddy: cpuOf(v.caddy), upstream: cpuOf(up.pid) };
      const res = await wrk(v.berth.httpPort);
      v.cpu.berth += cpuOf(v.berth.pid) - before.berth;
      v.cpu.caddy += cpuOf(v.caddy) - before.caddy;
      v.cpu.upstream += cpuOf(up.pid) - before.upstream;
      v.cpu.wrk += res.cpuSeconds;
      v.results.push(res);
      if (!asJson)
        console.log(
          `round ${r + 1} ${v.name.padEnd(8)}: ${res.rps.toFixed(0)} req/s, p50 ${res.p50Ms.toFixed(2)} ms, p99 ${res.p99Ms.toFixed(2)} ms, errors ${res.errors}`,
        );
    }
    load.push(loadavg());
  }
  // Every request of the servers that read lines was counted (and, for "on", logged).
  await new Promise((r) => setTimeout(r, 1_000));
  const checks: Record<string, { sent: number; counted: number; accessLogLines?: number }> = {};
  for (const v of variants) {
    if (v.name !== 'on' && v.name !== 'on-nolog') continue;
    const now = await countedAndLogged(v);
    const base = baseline.get(v.name)!;
    // wrk's warm-up round counts too.
    const sent = warm[v.name]! + v.results.reduce((n, x) => n + x.requests, 0);
    const counted = now.counted - base.counted;
    checks[v.name] = { sent, counted, ...(v.accessLog ? { accessLogLines: now.logged - base.logged } : {}) };
  }

  const perKilo = (cpuSeconds: number, v: Variant) =>
    round1((cpuSeconds * 1000) / (v.results.reduce((n, x) => n + x.requests, 0) / 1000));
  const stats = Object.fromEntries(
    variants.map((v) => {
      const m = (f: 'rps' | 'p50Ms' | 'p99Ms') => median(v.results.map((x) => x[f]));
      const cpu = {
        berth: perKilo(v.cpu.berth, v),
        caddy: perKilo(v.cpu.caddy, v),
        upstream: perKilo(v.cpu.upstream, v),
        wrk: perKilo(v.cpu.wrk, v),
      };
      return [
        v.name,
        {
          rps: Math.round(m('rps')),
          p50Ms: m('p50Ms'),
          p99Ms: m('p99Ms'),
          errors: v.results.reduce((n, x) => n + x.errors, 0),
          cpuMsPerKiloRequest: { ...cpu, total: round1(cpu.berth + cpu.caddy + cpu.upstream + cpu.wrk) },
        },
      ];
    }),
  );
  const off = stats.off;
  const against = (name: string) => {
    const s = stats[name];
    return off && s && name !== 'off'
      ? {
          rpsLossPct: round1((1 - s.rps / off.rps) * 100),
          p99Ratio: Math.round((s.p99Ms / off.p99Ms) * 100) / 100,
        }
      : undefined;
  };
  const summary = {
    rounds,
    seconds,
    connections,
    loadavg: { before: load[0], after: load.at(-1) },
    berthNice: berthNice ?? 0,
    ...stats,
    vsOff: Object.fromEntries(variantNames.filter((n) => n !== 'off').map((n) => [n, against(n)])),
    accessLogBytesPerLine: checks.on?.accessLogLines
      ? Math.round(
          statSync(variants.find((v) => v.name === 'on')!.accessLog!).size / checks.on.accessLogLines,
        )
      : undefined,
    checks,
  };
  // wrk counts the responses it read before its time was up; the requests still in flight then
  // (at most one a connection, each run) reach Caddy too, and are counted and logged.
  const inFlight = connections * (rounds + 1);
  const failed = Object.entries(checks).filter(
    ([, c]) =>
      c.counted < c.sent ||
      c.counted > c.sent + inFlight ||
      (c.accessLogLines !== undefined && c.accessLogLines !== c.counted),
  );
  if (!asJson) {
    console.log(
      `\nmedians of ${rounds} rounds of ${seconds} s, ${connections} connections, one route, upstream a Caddy static response; load average ${load[0]} before, ${load.at(-1)} after:`,
    );
    for (const v of variants) {
      const s = stats[v.name]!;
      const c = s.cpuMsPerKiloRequest;
      const vs = against(v.name);
      console.log(
        `  ${v.name.padEnd(8)}: ${String(s.rps).padStart(5)} req/s, p50 ${s.p50Ms.toFixed(2)} ms, p99 ${s.p99Ms.toFixed(2)} ms${vs ? ` (${vs.rpsLossPct}% fewer req/s, p99 ×${vs.p99Ratio})` : ''}`,
      );
      console.log(
        `            CPU ms per 1,000 requests: Berth ${c.berth}, its Caddy ${c.caddy}, upstream ${c.upstream}, wrk ${c.wrk}, all ${c.total}  — ${DESCRIBE[v.name]}`,
      );
    }
    console.log('  (goal for on: ≤ 10% fewer req/s, p99 ≤ ×1.2)');
    for (const [name, c] of Object.entries(checks))
      console.log(
        `  ${name}: requests answered to wrk ${c.sent} (+ at most ${inFlight} in flight at the ends), counted in /metrics ${c.counted}${c.accessLogLines === undefined ? '' : `, access-log lines ${c.accessLogLines} (${summary.accessLogBytesPerLine} bytes a line)`}`,
      );
  } else console.log(JSON.stringify(summary));
  if (failed.length > 0) {
    console.error(`counts do not match the requests: ${JSON.stringify(Object.fromEntries(failed))}`);
    process.exitCode = 1;
  }
} finally {
  await done();
}
