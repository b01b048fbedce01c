// Berth's two Caddy layouts side by side, on Debian's Caddy, at several route counts:
//   static  — every host written into Caddy's config (what caddy-docker-proxy generates);
//   dynamic — simple hosts served through Berth's DNS responder (SRV dynamic upstreams).
// For each: the first full apply, the time until one added route answers (time to live),
// request latency p50/p99 for the first and the last host, Caddy's RSS, and whether a proxied
// WebSocket survives the change. Everything on 127.0.0.0/8; every process stopped at the end.
//
//   npm run build && npx tsx bench/caddy-layouts.ts [--sizes 1000,10000,50000] [--requests 300]
//     [--layouts static,dynamic] [--refresh 1s] [--client probe|inline|wrk] [--turn-seconds 2] [--delay-ms 0] [--pin] [--no-baseline] [--json]
// The DNS responder is the one of the build in BERTH_BIN (default dist), run as its own process.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request, type Server } from 'node:http';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import type { CaddyBuildOptions } from '../src/ingress/caddy/config.js';
import { CaddySupervisor } from '../src/ingress/caddy/supervisor.js';
import { CaddyTarget } from '../src/ingress/caddy/target.js';
import type { Site } from '../src/model/desired.js';
import { siteTo } from './lib.js';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : dflt;
};
const SIZES = arg('sizes', '1000,10000,50000').split(',').map(Number);
const REQUESTS = Number(arg('requests', '300'));
const JSON_OUT = process.argv.includes('--json');
/** Caddy's SRV refresh (Berth uses 1s): a longer one shows what the lookups themselves cost. */
const REFRESH = arg('refresh', '1s');
const LAYOUTS = arg('layouts', 'static,dynamic').split(',') as ('static' | 'dynamic')[];
/** The build whose DNS responder (`berth dns-server`, its own process, as in production) serves. */
const DIST = resolve(process.env.BERTH_BIN ?? 'dist');
interface Sidecar {
  start(): Promise<void>;
  stop(): Promise<void>;
  publish(sites: readonly Site[]): Promise<void>;
  readonly addresses: { resolver: string; notFound: string };
}
const { DnsSidecar } = (await import(pathToFileURL(join(DIST, 'ingress/dns/sidecar.js')).href)) as {
  DnsSidecar: new (o: unknown) => Sidecar;
};
const logger = pino({ level: 'silent' });

function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, host, () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

const agent = new Agent({ keepAlive: true, maxSockets: 1 });
function fetchBody(
  port: number,
  host: string,
  address = '127.0.0.1',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request({ host: address, port, path: '/', headers: { host }, agent }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.end();
  });
}
const get = async (port: number, host: string) => (await fetchBody(port, host)).status;

/** Polls until `ok` holds; the time it took in ms (0 if never, within 30 s). */
async function until(ok: () => Promise<boolean>): Promise<number> {
  const t = performance.now();
  while (performance.now() - t < 30_000) {
    if (await ok()) return performance.now() - t;
    await new Promise((r) => setTimeout(r, 5));
  }
  return 0;
}

/**
 * The client of the latency figures and the upstream they reach: bench/http/probe.mjs, a process
 * of its own (`--client probe`, the default), or this one (`--client inline`, as before), whose
 * collections of the run's 50k sites land in the figures' tail.
 */
const CLIENT = arg('client', 'probe') as 'probe' | 'inline' | 'wrk';
/**
 * --client wrk: no JavaScript on the measured path. wrk (one thread, one keep-alive connection,
 * requests back to back for --turn-seconds per turn) is the client, and HAProxy answering 200
 * itself is the upstream, so the figures are Caddy's and the DNS responder's, not the collections
 * of a Node client or upstream. Latencies come from wrk's own histogram (microseconds).
 */
const TURN_SECONDS = Number(arg('turn-seconds', '2'));
/**
 * --delay-ms D (with --client wrk): a pause of D ms before each request, so that Caddy is not
 * busy back to back (the default, 0) but sees one client at about 1000/D requests a second.
 * The pause is not part of a request's time.
 */
const DELAY_MS = Number(arg('delay-ms', '0'));
if (DELAY_MS > 0 && CLIENT !== 'wrk') throw new Error('--delay-ms needs --client wrk');
/**
 * --pin: the probe on CPU 0 and Caddy on CPU 1 (taskset), so that the client and the server being
 * measured never wait for each other's core; everything else stays unpinned.
 */
const PIN = process.argv.includes('--pin');
if (PIN && CLIENT === 'inline') throw new Error('--pin needs a client of its own (--client probe or wrk)');
/** A command and its arguments, run on CPU 0 with --pin. */
const onClientCpu = (argv: string[]): [string, string[]] =>
  PIN ? ['taskset', ['-c', '0', ...argv]] : [argv[0]!, argv.slice(1)];
const probe =
  CLIENT === 'probe'
    ? spawn(...onClientCpu([process.execPath, join(import.meta.dirname, 'http/probe.mjs'), '127.0.0.2']), {
        stdio: ['pipe', 'pipe', 'inherit'],
      })
    : undefined;
const probeLines = probe ? createInterface({ input: probe.stdout! })[Symbol.asyncIterator]() : undefined;
async function probeAnswer<T>(): Promise<T> {
  const next = await probeLines!.next();
  if (next.done) throw new Error('bench/http/probe.mjs exited');
  return JSON.parse(next.value) as T;
}

/** Times of `requests` requests to `host`, one after another, after `warmup` more. */
async function times(port: number, host: string, requests: number, warmup: number): Promise<number[]> {
  if (CLIENT === 'wrk') return wrkTimes(port, host, requests > 0 ? TURN_SECONDS : 1);
  if (probe) {
    probe.stdin!.write(`${JSON.stringify({ port, host, requests, warmup })}\n`);
    const r = await probeAnswer<{ ms: number[]; failed: number }>();
    if (r.failed > 0) throw new Error(`${r.failed} of ${requests} requests to ${host} failed`);
    return r.ms;
  }
  for (let i = 0; i < warmup; i++) await get(port, host);
  const ms: number[] = [];
  for (let i = 0; i < requests; i++) {
    const t = performance.now();
    await get(port, host);
    ms.push(performance.now() - t);
  }
  return ms;
}

const WRK_SCRIPT = join(mkdtempSync(join(tmpdir(), 'bench-wrk-')), 'histogram.lua');
// wrk's done() hook: its latency histogram, one "microseconds:count" per distinct value.
writeFileSync(
  WRK_SCRIPT,
  'done = function(summary, latency, requests)\n' +
    '  local out = { "berth-histogram", summary.errors.status + summary.errors.read + summary.errors.connect }\n' +
    '  for i = 1, #latency do local v, c = latency(i); out[#out + 1] = v .. ":" .. c end\n' +
    '  io.write(table.concat(out, " ") .. "\\n")\n' +
    'end\n' +
    (DELAY_MS > 0 ? `delay = function() return ${DELAY_MS} end\n` : ''),
);

/** Latencies in ms of wrk's requests to `host` for `seconds` (from its histogram). */
function wrkTimes(port: number, host: string, seconds: number): Promise<number[]> {
  const argv = [
    '-t1',
    '-c1',
    `-d${seconds}s`,
    '-H',
    `Host: ${host}`,
    '-s',
    WRK_SCRIPT,
    `http://127.0.0.1:${port}/`,
  ];
  const w = spawn(...onClientCpu(['wrk', ...argv]), {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  w.stdout!.on('data', (d) => (out += d));
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.once('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('berth-histogram '));
      if (code !== 0 || !line) return reject(new Error(`wrk exited ${code}: ${out.slice(-500)}`));
      const [, errors, ...points] = line.trim().split(' ');
      if (Number(errors) > 0) return reject(new Error(`${errors} of wrk's requests to ${host} failed`));
      const ms: number[] = [];
      for (const p of points) {
        const [us, count] = p.split(':').map(Number) as [number, number];
        for (let i = 0; i < count; i++) ms.push(us / 1000);
      }
      resolve(ms);
    });
  });
}

/** Upstream for --client wrk: HAProxy answering 200 itself, on 127.0.0.2: its port, and how to stop it. */
async function haproxyUpstream(): Promise<{ port: number; stop: () => void }> {
  const port = await freePort('127.0.0.2');
  const dir = mkdtempSync(join(tmpdir(), 'bench-haproxy-'));
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(
    cfg,
    [
      'global',
      '  maxconn 1024',
      'defaults',
      '  mode http',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      'frontend ok',
      `  bind 127.0.0.2:${port}`,
      '  http-request return status 200 content-type text/plain string ok',
      '',
    ].join('\n'),
  );
  const h = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'inherit', 'inherit'] });
  const stop = () => {
    h.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 100; i++) {
    if ((await fetchBody(port, 'upstream', '127.0.0.2')).status === 200) return { port, stop };
    await new Promise((r) => setTimeout(r, 50));
  }
  stop();
  throw new Error('HAProxy did not answer');
}

/** Rounds in which the hosts' latencies are taken in turn: what the machine does meanwhile falls on each alike. */
const LATENCY_ROUNDS = 4;

/**
 * p50/p99 for each host, measured once the setup has settled (a second without requests) and in
 * turns, `REQUESTS` requests each in all: measured one host after the other, the first took the
 * tail of the collections that loading 50k sites leaves behind in every process.
 */
async function latencies(targets: { port: number; host: string }[]): Promise<{ p50: number; p99: number }[]> {
  for (const t of targets) await times(t.port, t.host, 0, 200);
  await new Promise((r) => setTimeout(r, 1000));
  const ms = targets.map((): number[] => []);
  const per = Math.ceil(REQUESTS / LATENCY_ROUNDS);
  for (let round = 0; round < LATENCY_ROUNDS; round++)
    for (const [i, t] of targets.entries()) ms[i]!.push(...(await times(t.port, t.host, per, 0)));
  return ms.map((m) => ({ p50: pct(m, 50), p99: pct(m, 99) }));
}

function rssMb(pid: number | undefined): number {
  if (!pid) return 0;
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Math.round(Number(m?.[1] ?? 0) / 1024);
}

interface Row {
  layout: string;
  routes: number;
  firstApplyMs: number;
  changeToLiveMs: number;
  moveToLiveMs: number;
  firstP50Ms: number;
  firstP99Ms: number;
  lastP50Ms: number;
  lastP99Ms: number;
  /** The baseline in the same turns: another Caddy with one route to the same upstream. */
  oneRouteP50Ms?: number;
  oneRouteP99Ms?: number;
  caddyRssMiB: number;
  wsClosedByChange: number;
}

/** A Caddy of its own (on CPU 1 with --pin), listening for HTTP on a free loopback port. */
async function startCaddy() {
  const dir = mkdtempSync(join(tmpdir(), 'bench-layout-'));
  const httpPort = await freePort();
  let bin = 'caddy';
  if (PIN) {
    bin = join(dir, 'caddy-on-cpu1');
    writeFileSync(bin, '#!/bin/sh\nexec taskset -c 1 caddy "$@"\n', { mode: 0o755 });
  }
  const sup = new CaddySupervisor({
    bin,
    dataDir: dir,
    socketPath: join(dir, 'admin.sock'),
    logger,
    onRestart: () => undefined,
  });
  active.set(sup, dir);
  try {
    await sup.start();
  } catch (err) {
    active.delete(sup);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const opts: CaddyBuildOptions = { tls: 'off', httpListen: `127.0.0.1:${httpPort}`, httpsListen: ':443' };
  return { dir, sup, httpPort, opts };
}

async function stopCaddy(c: { dir: string; sup: CaddySupervisor }): Promise<void> {
  active.delete(c.sup);
  await c.sup.stop();
  rmSync(c.dir, { recursive: true, force: true });
}

/**
 * The baseline of the latency figures (unless --no-baseline): a second Caddy with one static
 * route to the same upstream, measured in the same turns as each layout's first and last host,
 * so that what the machine itself adds to the tail is in the same table.
 */
const BASELINE = !process.argv.includes('--no-baseline');
const ONE_ROUTE_HOST = 'one.bench.test';

let oneRoute: { port: number; stop: () => Promise<void> } | undefined;

async function measure(
  layout: 'static' | 'dynamic',
  n: number,
  upstreamPort: number,
  wsPort: number,
  movedPort: number,
): Promise<Row> {
  const { dir, sup, httpPort, opts } = await startCaddy();
  let dns: Sidecar | undefined;
  try {
    if (layout === 'dynamic') {
      dns = new DnsSidecar({
        dataDir: dir,
        listen: '127.0.0.1:0',
        command: [process.execPath, join(DIST, 'cli/main.js')],
        logger,
      });
      sidecars.add(dns);
      await dns.start();
      opts.dynamic = { ...dns.addresses, zone: 'berth.internal', refresh: REFRESH };
    }
    const site = (host: string, port = upstreamPort) => siteTo(host, port);
    const sites = Array.from({ length: n }, (_, i) => site(`h${i}.bench.test`));
    sites.push(site('ws.bench.test', wsPort));
    const target = new CaddyTarget(sup.admin, opts, logger);

    const t = performance.now();
    await dns?.publish(sites);
    await target.apply(sites);
    const firstApplyMs = performance.now() - t;
    for (let i = 0; i < 200 && (await get(httpPort, `h${n - 1}.bench.test`)) !== 200; i++)
      await new Promise((r) => setTimeout(r, 50));

    const hosts = [
      { port: httpPort, host: 'h0.bench.test' },
      { port: httpPort, host: `h${n - 1}.bench.test` },
    ];
    if (oneRoute) hosts.push({ port: oneRoute.port, host: ONE_ROUTE_HOST });
    const [first, last, one] = (await latencies(hosts)) as [
      { p50: number; p99: number },
      { p50: number; p99: number },
      { p50: number; p99: number } | undefined,
    ];

    const ws = new WebSocket(`ws://127.0.0.1:${httpPort}/`, { headers: { host: 'ws.bench.test' } });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    let wsClosed = 0;
    ws.on('close', () => wsClosed++);

    // One route change: a new host. Time until it answers through Caddy.
    const changed = [...sites, site('new.bench.test')];
    await dns?.publish(changed);
    let applying = target.apply(changed);
    const live = await until(async () => (await get(httpPort, 'new.bench.test')) === 200);
    await applying;
    // Another change: an existing host moves to another upstream (a container restarted elsewhere).
    const moved = changed.map((s) => (s.host === 'h0.bench.test' ? site(s.host, movedPort) : s));
    await dns?.publish(moved);
    applying = target.apply(moved);
    const move = await until(async () => (await fetchBody(httpPort, 'h0.bench.test')).body === 'moved\n');
    await applying;
    await new Promise((r) => setTimeout(r, 500));
    ws.close();
    return {
      layout,
      routes: n,
      firstApplyMs: Math.round(firstApplyMs),
      changeToLiveMs: Math.round(live),
      moveToLiveMs: Math.round(move),
      firstP50Ms: round(first.p50),
      firstP99Ms: round(first.p99),
      lastP50Ms: round(last.p50),
      lastP99Ms: round(last.p99),
      ...(one ? { oneRouteP50Ms: round(one.p50), oneRouteP99Ms: round(one.p99) } : {}),
      caddyRssMiB: rssMb(sup.pid),
      wsClosedByChange: wsClosed,
    };
  } finally {
    await stopCaddy({ dir, sup });
    if (dns) {
      sidecars.delete(dns);
      await dns.stop();
    }
  }
}

const round = (x: number) => Math.round(x * 100) / 100;

// Interrupted: stop the Caddies and the HAProxy in flight before leaving.
/** Caddies running now, and their data dirs; DNS responders running now. */
const active = new Map<CaddySupervisor, string>();
const sidecars = new Set<Sidecar>();
let haproxy: { port: number; stop: () => void } | undefined;
const stopAll = (code: number) => {
  haproxy?.stop();
  rmSync(dirname(WRK_SCRIPT), { recursive: true, force: true });
  void Promise.all([
    ...[...sidecars].map((d) => d.stop()),
    ...[...active].map(([sup, dir]) =>
      sup.stop().finally(() => rmSync(dir, { recursive: true, force: true })),
    ),
  ]).then(() => process.exit(code));
};
process.on('uncaughtException', (err) => {
  console.error(err);
  stopAll(1);
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => stopAll(130));

let upstreamPort: number;
let upstream: Server | undefined;
if (probe) upstreamPort = (await probeAnswer<{ port: number }>()).port;
else if (CLIENT === 'wrk') {
  haproxy = await haproxyUpstream();
  upstreamPort = haproxy.port;
} else {
  upstreamPort = await freePort('127.0.0.2');
  const u = createServer((_q, s) => s.end('ok\n'));
  upstream = u;
  await new Promise<void>((r) => u.listen(upstreamPort, '127.0.0.2', r));
}
const movedPort = await freePort('127.0.0.2');
const movedUpstream = createServer((_q, s) => s.end('moved\n'));
await new Promise<void>((r) => movedUpstream.listen(movedPort, '127.0.0.2', r));
const wsPort = await freePort('127.0.0.2');
const wss = new WebSocketServer({ host: '127.0.0.2', port: wsPort });
// Caddy 2.6.2, closing proxied WebSockets on a reload, sends the upstream an unmasked close frame.
wss.on('connection', (sock) => sock.on('error', () => undefined));
const rows: Row[] = [];
try {
  if (BASELINE) {
    const c = await startCaddy();
    await new CaddyTarget(c.sup.admin, c.opts, logger).apply([siteTo(ONE_ROUTE_HOST, upstreamPort)]);
    oneRoute = { port: c.httpPort, stop: () => stopCaddy(c) };
  }
  for (const n of SIZES)
    for (const layout of LAYOUTS) rows.push(await measure(layout, n, upstreamPort, wsPort, movedPort));
} finally {
  await oneRoute?.stop();
  upstream?.close();
  probe?.stdin?.end();
  haproxy?.stop();
  rmSync(dirname(WRK_SCRIPT), { recursive: true, force: true });
  movedUpstream.close();
  wss.close();
  agent.destroy();
}
console.log(
  `caddy layouts — ${DIST}, ${cpus().length} CPUs, ${CLIENT === 'wrk' ? `${LATENCY_ROUNDS} turns of ${TURN_SECONDS} s` : `${REQUESTS} requests`} per latency figure (client: ${CLIENT === 'wrk' ? `wrk${DELAY_MS > 0 ? `, ${DELAY_MS} ms between requests` : ''}, upstream HAProxy` : CLIENT === 'probe' ? 'its own process' : 'the bench process'}${PIN ? ', on CPU 0, Caddy on CPU 1' : ''}), loadavg ${readFileSync('/proc/loadavg', 'utf8').trim()}`,
);
console.table(rows);
// The summary, one line and last, for scripts comparing runs.
if (JSON_OUT)
  console.log(
    JSON.stringify({
      bench: 'caddy-layouts',
      cpus: cpus().length,
      client: CLIENT,
      ...(CLIENT === 'wrk' ? { turnSeconds: TURN_SECONDS, delayMs: DELAY_MS } : { requests: REQUESTS }),
      pin: PIN,
      baseline: BASELINE ? 'one-route Caddy, same turns' : 'none',
      rows,
    }),
  );
