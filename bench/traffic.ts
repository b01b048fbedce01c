// What the access log and per-route metrics cost the front door: wrk against one route through
// two Berth servers in the same run, one with Caddy streaming request lines to Berth (the
// default: access log to a file, metrics, charts) and one with --traffic off. Rounds alternate
// on/off so that both see the same machine; medians are reported. The upstream is a Caddy
// static response, so the front door is what is measured.
//
//   npm run build && npx tsx bench/traffic.ts [--rounds 3] [--seconds 10] [--connections 50] [--json]
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type BerthProcess, startBerth } from '../test/e2e/support/berth.js';
import { registerCleanup } from '../test/e2e/support/cleanup.js';
import { connectFakeAgent } from '../test/e2e/support/fake-agent.js';
import { freePort } from '../test/e2e/support/ports.js';
import { httpGet, waitUntil } from '../test/e2e/support/proc.js';
import { cleanupOnExit, fetchMetrics, flag, metricValues, procSample } from './lib.js';

const run = promisify(execFile);
const rounds = flag('rounds', 3);
const seconds = flag('seconds', 10);
const connections = flag('connections', 50);
const asJson = process.argv.includes('--json');
const HOST = 'bench.traffic.test';
const done = cleanupOnExit();

interface WrkResult {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  errors: number;
}

/** wrk's "Requests/sec" and its --latency percentiles. */
function parseWrk(out: string): WrkResult {
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
  const { stdout } = await run(
    'wrk',
    [
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
  return parseWrk(stdout);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function upstream(): Promise<number> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bupstream-'));
  const cfg = join(dir, 'caddy.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      admin: { disabled: true },
      apps: {
        http: {
          servers: {
            up: {
              listen: [`127.0.0.1:${port}`],
              routes: [{ handle: [{ handler: 'static_response', status_code: 200, body: 'x'.repeat(128) }] }],
            },
          },
        },
      },
    }),
  );
  const p = spawn('caddy', ['run', '--config', cfg], { stdio: 'ignore', env: { ...process.env, HOME: dir } });
  registerCleanup(() => {
    p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  await waitUntil(async () => (await httpGet(`http://127.0.0.1:${port}/`)).status === 200, {
    message: 'the upstream Caddy did not start',
  });
  return port;
}

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

try {
  const up = await upstream();
  const logDir = mkdtempSync(join(tmpdir(), 'btraffic-bench-'));
  registerCleanup(() => rmSync(logDir, { recursive: true, force: true }));
  const accessLog = join(logDir, 'access.log');
  const on = await berthWith(['--access-log', accessLog], up);
  const off = await berthWith(['--traffic', 'off'], up);
  // The "off" server must really have no request lines: no berth_http families at all.
  if ((await fetchMetrics(off.apiUrl)).includes('berth_http_requests_total'))
    throw new Error('the --traffic off server counts requests');
  const cpu = (b: BerthProcess) => procSample(b.pid)?.cpuSeconds ?? Number.NaN;
  const results = { on: [] as WrkResult[], off: [] as WrkResult[] };
  let serverCpuOn = 0;
  // Warm both (Caddy's connection pools, JIT) before measuring.
  await wrk(on.httpPort);
  await wrk(off.httpPort);
  for (let r = 0; r < rounds; r++) {
    for (const [name, b] of [
      ['on', on],
      ['off', off],
    ] as const) {
      const before = cpu(on);
      const res = await wrk(b.httpPort);
      if (name === 'on') serverCpuOn += cpu(on) - before;
      results[name].push(res);
      if (!asJson)
        console.log(
          `round ${r + 1} ${name.padEnd(3)}: ${res.rps.toFixed(0)} req/s, p50 ${res.p50Ms.toFixed(2)} ms, p99 ${res.p99Ms.toFixed(2)} ms, errors ${res.errors}`,
        );
    }
  }
  // Every request of the "on" server was counted and logged.
  await new Promise((r) => setTimeout(r, 1_000));
  const counted = [
    ...metricValues(await fetchMetrics(on.apiUrl), 'berth_http_requests_total').entries(),
  ].reduce((n, [, v]) => n + v, 0);
  const logLines = readFileSync(accessLog, 'utf8').split('\n').filter(Boolean).length;
  const sent = results.on.reduce((n, x) => n + x.requests, 0);

  const m = (k: 'on' | 'off', f: keyof WrkResult) => median(results[k].map((x) => x[f]));
  const summary = {
    rounds,
    seconds,
    connections,
    on: { rps: m('on', 'rps'), p50Ms: m('on', 'p50Ms'), p99Ms: m('on', 'p99Ms') },
    off: { rps: m('off', 'rps'), p50Ms: m('off', 'p50Ms'), p99Ms: m('off', 'p99Ms') },
    rpsLossPct: (1 - m('on', 'rps') / m('off', 'rps')) * 100,
    p99Ratio: m('on', 'p99Ms') / m('off', 'p99Ms'),
    serverCpuPerKiloRequestMs: (serverCpuOn * 1000) / (sent / 1000),
    accessLogBytesPerRequest: statSync(accessLog).size / Math.max(1, logLines),
    // wrk's warm-up round counts too: every request it made through "on" is in both.
    countedRequests: counted,
    accessLogLines: logLines,
  };
  if (!asJson) {
    console.log(
      `\nmedians of ${rounds} rounds of ${seconds} s, ${connections} connections, one route, upstream a Caddy static response:`,
    );
    console.log(
      `  traffic on : ${summary.on.rps.toFixed(0)} req/s, p50 ${summary.on.p50Ms.toFixed(2)} ms, p99 ${summary.on.p99Ms.toFixed(2)} ms`,
    );
    console.log(
      `  traffic off: ${summary.off.rps.toFixed(0)} req/s, p50 ${summary.off.p50Ms.toFixed(2)} ms, p99 ${summary.off.p99Ms.toFixed(2)} ms`,
    );
    console.log(
      `  on vs off  : ${summary.rpsLossPct.toFixed(1)}% fewer req/s, p99 ×${summary.p99Ratio.toFixed(2)} (goal: ≤ 10%, ≤ ×1.2)`,
    );
    console.log(
      `  Berth server CPU with traffic on: ${summary.serverCpuPerKiloRequestMs.toFixed(1)} ms per 1,000 requests; access log ${summary.accessLogBytesPerRequest.toFixed(0)} bytes a line`,
    );
    console.log(`  counted in /metrics: ${counted}, access-log lines: ${logLines}`);
  } else console.log(JSON.stringify(summary));
} finally {
  await done();
}
