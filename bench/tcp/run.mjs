// TCP forwarding on loopback: Berth's own forwarder (src/ingress/tcp/forwarder.ts, in a Node
// process of its own) side by side with socat and HAProxy, and with no proxy at all, all in front
// of the same upstream process (upstream.mjs). Per target and run, in this order:
//   download / upload  one stream of --size-mb MiB upstream → client, then client → upstream (MiB/s)
//   1 conn             --round-trips echo round trips of --msg-bytes on one connection (µs, rt/s)
//   N conns            the same spread over --concurrency connections at once
//   fresh conns        --connections × (connect, one round trip, close), one after another
// then each proxy's resident memory. Every figure is the median over --runs runs; targets are
// interleaved within each run. Prints figures; asserts nothing.
// Usage: npm run build && node bench/tcp/run.mjs [--runs 3] [--size-mb 1024] [--round-trips 20000]
//        [--warmup 2000] [--concurrency 8] [--connections 2000] [--msg-bytes 64] [--timeout-s 60]
//        [--targets direct,berth,socat,haproxy] [--json] [--help]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connectionSetup, download, latency, quantile, upload } from './clients.mjs';
import {
  killAllSync,
  memoryMiB,
  startBerth,
  startHaproxy,
  startSocat,
  startUpstream,
  stopProcess,
} from './procs.mjs';

const ALL_TARGETS = ['direct', 'berth', 'socat', 'haproxy'];

const OPTIONS = {
  runs: { type: 'string', default: '3' },
  'size-mb': { type: 'string', default: '1024' },
  'round-trips': { type: 'string', default: '20000' },
  warmup: { type: 'string', default: '2000' },
  concurrency: { type: 'string', default: '8' },
  connections: { type: 'string', default: '2000' },
  'msg-bytes': { type: 'string', default: '64' },
  'timeout-s': { type: 'string', default: '60' },
  targets: { type: 'string', default: ALL_TARGETS.join(',') },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', default: false },
};

/** A bad command line: reported as its message and a pointer to --help, without a stack. */
class UsageError extends Error {}

function options() {
  let parsed;
  try {
    parsed = parseArgs({ options: OPTIONS });
  } catch (err) {
    throw new UsageError(err.message);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    process.exit(0);
  }
  const int = (name, min) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}`);
    return n;
  };
  const targets = values.targets.split(',').filter(Boolean);
  for (const t of targets) if (!ALL_TARGETS.includes(t)) throw new UsageError(`unknown target ${t}`);
  if (targets.length === 0) throw new UsageError('--targets names no target');
  return {
    runs: Math.min(int('runs', 1), 20),
    bytes: int('size-mb', 1) * 1024 * 1024,
    roundTrips: int('round-trips', 1),
    warmup: int('warmup', 0),
    concurrency: int('concurrency', 1),
    connections: int('connections', 0),
    msgBytes: int('msg-bytes', 1),
    timeoutMs: int('timeout-s', 1) * 1000,
    targets,
    json: values.json,
  };
}

const HELP = `Usage: npm run build && node bench/tcp/run.mjs [options]

TCP forwarding on 127.0.0.1 through Berth's forwarder, socat and HAProxy (and straight to the
upstream, "direct"), all in front of the same upstream. Prints the median of each figure over
the runs; asserts nothing. Needs socat and haproxy on PATH for those targets.

  --runs N            runs; targets take turns within each run (default 3, at most 20)
  --size-mb MiB       size of each download and upload stream (default 1024)
  --round-trips N     timed echo round trips per latency figure (default 20000)
  --warmup N          untimed round trips before them (default 2000)
  --concurrency N     connections at once for the "N conns" figure (default 8)
  --connections N     fresh connections, one after another; 0 skips (default 2000)
  --msg-bytes N       size of each round-trip message (default 64)
  --timeout-s S       gives up on a measurement after S seconds (default 60)
  --targets LIST      comma-separated subset of direct,berth,socat,haproxy (default all)
  --json              JSON instead of the table
  --help              this text`;

function versionOf(command, args, pattern) {
  try {
    const out = execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return out.match(pattern)?.[1] ?? out.split('\n')[0];
  } catch {
    return 'not installed';
  }
}

function machineFacts() {
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    kernel: release(),
    node: process.version,
    socat: versionOf('socat', ['-V'], /socat version (\S+)/),
    haproxy: versionOf('haproxy', ['-v'], /HAProxy version (\S+)/),
    berth: '`berth tcp-server` (dist/), as `berth server` starts it',
    bareNodeRss: bareNodeRssMiB(),
    skipped: [],
  };
}

/** RSS in MiB of a Node process that does nothing: the floor under the berth process's figure. */
function bareNodeRssMiB() {
  const script =
    "setTimeout(() => process.stdout.write(require('fs').readFileSync('/proc/self/status', 'utf8')), 200)";
  try {
    const status = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
    return Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? Number.NaN) / 1024;
  } catch {
    return Number.NaN;
  }
}

/**
 * Starts the upstream and the requested proxies; returns [{ name, port, proc? }]. A proxy that
 * cannot start (not installed, say) is reported on stderr and left out, in facts.skipped.
 */
async function startTargets(o, facts, registry, dir) {
  const upstream = await startUpstream(registry);
  const up = upstream.port;
  const starters = {
    direct: async () => ({ port: up }),
    berth: () => startBerth(registry, up, dir),
    socat: () => startSocat(registry, up),
    haproxy: () => startHaproxy(registry, up, dir),
  };
  const targets = [];
  for (const name of o.targets) {
    try {
      const proc = await starters[name]();
      targets.push({ name, port: proc.port, proc: proc.pid === undefined ? undefined : proc });
    } catch (err) {
      process.stderr.write(`${name}: not measured: ${err.message}\n`);
      facts.skipped.push(name);
    }
  }
  return targets;
}

/** One run's figures for one target; a failed measurement is logged and left out. */
async function measure(o, target) {
  const out = {};
  const attempt = async (key, fn) => {
    try {
      Object.assign(out, await fn());
    } catch (err) {
      process.stderr.write(`${target.name}: ${key}: ${err.message}\n`);
    }
  };
  const pingFigures = (prefix, r) => ({
    [`${prefix}P50`]: quantile(r.samples, 0.5),
    [`${prefix}P99`]: quantile(r.samples, 0.99),
    [`${prefix}Max`]: r.samples[r.samples.length - 1],
    [`${prefix}PerSec`]: r.perSecond,
  });
  const ping = { roundTrips: o.roundTrips, warmup: o.warmup, msgBytes: o.msgBytes, timeoutMs: o.timeoutMs };
  await attempt('download', async () => ({ down: await download(target.port, o.bytes, o.timeoutMs) }));
  await attempt('upload', async () => ({ up: await upload(target.port, o.bytes, o.timeoutMs) }));
  await attempt('latency', async () =>
    pingFigures('one', await latency(target.port, { ...ping, connections: 1 })),
  );
  await attempt('concurrent latency', async () =>
    pingFigures('many', await latency(target.port, { ...ping, connections: o.concurrency })),
  );
  if (o.connections > 0) {
    await attempt('connection setup', async () => {
      const r = await connectionSetup(target.port, { count: o.connections, ...ping });
      return {
        connP50: quantile(r.samples, 0.5),
        connP99: quantile(r.samples, 0.99),
        connPerSec: r.perSecond,
      };
    });
  }
  return out;
}

function median(xs) {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** { figure: { median, runs: [...] } } from one target's per-run figure objects. */
function summarise(runs) {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r)))];
  return Object.fromEntries(
    keys.map((k) => [k, { median: median(runs.map((r) => r[k])), runs: runs.map((r) => r[k]) }]),
  );
}

const COLUMNS = (o) => [
  { group: 'throughput MiB/s', label: 'down', key: 'down' },
  { group: 'throughput MiB/s', label: 'up', key: 'up' },
  { group: '1 conn round trips', label: 'p50 µs', key: 'oneP50', digits: 1 },
  { group: '1 conn round trips', label: 'p99 µs', key: 'oneP99', digits: 1 },
  { group: '1 conn round trips', label: 'max µs', key: 'oneMax' },
  { group: '1 conn round trips', label: 'rt/s', key: 'onePerSec' },
  { group: `${o.concurrency} conns round trips`, label: 'p50 µs', key: 'manyP50', digits: 1 },
  { group: `${o.concurrency} conns round trips`, label: 'p99 µs', key: 'manyP99', digits: 1 },
  { group: `${o.concurrency} conns round trips`, label: 'max µs', key: 'manyMax' },
  { group: `${o.concurrency} conns round trips`, label: 'rt/s', key: 'manyPerSec' },
  { group: 'fresh conns', label: 'p50 µs', key: 'connP50' },
  { group: 'fresh conns', label: 'p99 µs', key: 'connP99' },
  { group: 'fresh conns', label: 'conn/s', key: 'connPerSec' },
  { group: 'memory MiB', label: 'RSS', key: 'rss', digits: 1 },
  { group: 'memory MiB', label: 'peak', key: 'peak', digits: 1 },
];

function cell(v, digits = 0) {
  return Number.isFinite(v) ? v.toFixed(digits) : '-';
}

/** A plain table: a row of column groups, a row of labels, one row per target. */
function table(o, results) {
  const cols = COLUMNS(o);
  const rows = results.map((r) => [r.name, ...cols.map((c) => cell(r.figures[c.key]?.median, c.digits))]);
  const labels = ['target', ...cols.map((c) => c.label)];
  const widths = labels.map((l, i) => Math.max(l.length, ...rows.map((r) => r[i].length)));
  // Widen each group's last column until the group title fits over its columns.
  for (const g of new Set(cols.map((c) => c.group))) {
    const idx = cols.flatMap((c, i) => (c.group === g ? [i + 1] : []));
    const span = idx.reduce((n, i) => n + widths[i], 0) + 2 * (idx.length - 1);
    if (g.length > span) widths[idx[idx.length - 1]] += g.length - span;
  }
  let groupLine = ''.padEnd(widths[0]);
  for (const g of new Set(cols.map((c) => c.group))) {
    const idx = cols.flatMap((c, i) => (c.group === g ? [i + 1] : []));
    const span = idx.reduce((n, i) => n + widths[i], 0) + 2 * (idx.length - 1);
    groupLine += ` | ${g.padEnd(span)}`;
  }
  const line = (cells) =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[0]) : c.padStart(widths[i])))
      .reduce((acc, c, i) =>
        i === 0 ? c : acc + (cols[i - 1].group !== cols[i - 2]?.group ? ' | ' : '  ') + c,
      );
  return [groupLine.trimEnd(), line(labels), ...rows.map(line)].join('\n');
}

function report(o, facts, results) {
  if (o.json) {
    const out = {
      machine: facts,
      options: o,
      results: Object.fromEntries(results.map((r) => [r.name, r.figures])),
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return;
  }
  const f = facts;
  process.stdout.write(
    [
      `machine: ${f.cpus} CPUs (${f.cpuModel}), Linux ${f.kernel}, Node ${f.node}, socat ${f.socat}, ` +
        `HAProxy ${f.haproxy}`,
      `berth forwarder: ${f.berth}; client, proxy and upstream are separate processes sharing the ` +
        `${f.cpus} CPUs`,
      `medians of ${o.runs} runs; ${o.bytes / 1024 / 1024} MiB streams; ${o.roundTrips} round trips of ` +
        `${o.msgBytes} B after ${o.warmup} warm-up; ${o.connections} fresh connections`,
      ...(f.skipped.length > 0 ? [`not measured (did not start): ${f.skipped.join(', ')}`] : []),
      '',
      table(o, results),
      '',
      `memory: RSS at the end of the last run; berth is a Node process, and a bare \`node -e\` ` +
        `takes ${cell(f.bareNodeRss, 1)} MiB here`,
      '',
    ].join('\n'),
  );
}

async function main() {
  const o = options();
  const facts = machineFacts();
  const registry = [];
  const dir = mkdtempSync(join(tmpdir(), 'berth-bench-tcp-'));
  const onSignal = (sig) => {
    process.stderr.write(`\n${sig}: stopping\n`);
    void Promise.all(registry.map(stopProcess)).finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => killAllSync(registry));
  try {
    const targets = await startTargets(o, facts, registry, dir);
    const perRun = new Map(targets.map((t) => [t.name, []]));
    for (let run = 1; run <= o.runs; run++) {
      for (const t of targets) {
        if (!o.json) process.stderr.write(`run ${run}/${o.runs}: ${t.name}\n`);
        perRun.get(t.name).push(await measure(o, t));
      }
    }
    const results = targets.map((t) => {
      const figures = summarise(perRun.get(t.name));
      if (t.proc) {
        const mem = memoryMiB(t.proc.pid);
        figures.rss = { median: mem.rss, runs: [mem.rss] };
        figures.peak = { median: mem.peak, runs: [mem.peak] };
      }
      return { name: t.name, figures };
    });
    report(o, facts, results);
  } finally {
    await Promise.all(registry.map(stopProcess));
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  if (err instanceof UsageError) {
    process.stderr.write(`${err.message} (see --help)\n`);
    process.exitCode = 2;
    return;
  }
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exitCode = 1;
});
