// Small helpers shared by bench/burst.ts and bench/soak.ts: flags, percentiles, /proc readings,
// Prometheus text, and a cleanup that also runs on SIGINT/SIGTERM.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Site } from '../src/model/desired.js';
import { registerCleanup, runCleanups } from '../test/e2e/support/cleanup.js';
import { freePort } from '../test/e2e/support/ports.js';
import { httpGet, waitUntil } from '../test/e2e/support/proc.js';

/** `--name value` from argv, else the default. */
export function flag(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(process.argv[i + 1]);
  if (!Number.isFinite(v) || v <= 0) {
    console.error(`--${name} needs a positive number`);
    process.exit(2);
  }
  return v;
}

/** Nearest-rank percentile (p in 0..100) of unsorted values; NaN when empty. */
export function pct(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const CLK_TCK = 100; // USER_HZ on Linux

export interface ProcSample {
  /** Resident set size now, MiB. */
  rssMb: number;
  /** Peak RSS (VmHWM), MiB. */
  hwmMb: number;
  /** user + system CPU seconds since the process started. */
  cpuSeconds: number;
}

/** RSS and CPU time of one process from /proc; undefined when it is gone. */
export function procSample(pid: number | undefined): ProcSample | undefined {
  if (!pid || pid <= 0) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
    return { rssMb: kb('VmRSS') / 1024, hwmMb: kb('VmHWM') / 1024, cpuSeconds };
  } catch {
    return undefined;
  }
}

/** MemAvailable from /proc/meminfo, MiB. */
export function memAvailableMb(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return Number(m?.[1] ?? 0) / 1024;
}

/** A PID from a pidfile, if readable. */
export function pidFrom(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function loadavg(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

/** Every sample of one metric family in Prometheus text: labels string → value. */
export function metricValues(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) out.set(m[2] ?? '', Number(m[3]));
  }
  return out;
}

export async function fetchMetrics(apiUrl: string): Promise<string> {
  const res = await fetch(`${apiUrl}/metrics`, { signal: AbortSignal.timeout(120_000) });
  return res.text();
}

/**
 * A quantile from a cumulative Prometheus histogram (le → count), linearly interpolated inside
 * the bucket as Prometheus' histogram_quantile does; Infinity when it falls in the +Inf bucket.
 */
export function histogramQuantile(buckets: [number, number][], q: number): number {
  const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (!Number.isFinite(le)) return Number.POSITIVE_INFINITY;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1, count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return Number.POSITIVE_INFINITY;
}

/** A histogram's buckets from /metrics text (cumulative), optionally minus an earlier reading. */
export function histogramBuckets(text: string, name: string, before?: string): [number, number][] {
  const read = (t: string) =>
    [...metricValues(t, `${name}_bucket`)].map(([labels, v]) => {
      const le = /le="([^"]+)"/.exec(labels)?.[1] ?? '+Inf';
      return [le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le), v] as [number, number];
    });
  const now = read(text);
  if (!before) return now;
  const then = new Map(read(before));
  return now.map(([le, v]) => [le, v - (then.get(le) ?? 0)]);
}

/**
 * Runs the harness's cleanups (reverse order of registration) once, also on SIGINT/SIGTERM and on
 * an uncaught error, so no dockerd, Caddy, agent or server outlives the benchmark.
 */
export function cleanupOnExit(extra?: () => Promise<void> | void): () => Promise<void> {
  let done: Promise<void> | undefined;
  const run = () => {
    done ??= (async () => {
      try {
        await extra?.();
      } catch (err) {
        console.error('cleanup failed:', err);
      }
      await runCleanups();
    })();
    return done;
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      console.error(`\n${sig}: stopping everything this benchmark started…`);
      void run().then(() => process.exit(130));
    });
  }
  return run;
}

export const fmtS = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : 'n/a');

/** A Caddy static response (200, `body`) on a free loopback port: a bench's upstream. Stopped at cleanup. */
export async function staticUpstream(body: string): Promise<{ port: number; pid: number }> {
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
              routes: [{ handle: [{ handler: 'static_response', status_code: 200, body }] }],
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
  return { port, pid: p.pid ?? 0 };
}

/** A plain site: `host`, every path, to an HTTP upstream on 127.0.0.2:port (the Caddy benches'). */
export const siteTo = (host: string, port: number): Site => ({
  host,
  path: '/',
  stripPath: false,
  upstreams: [{ host: '127.0.0.2', port, scheme: 'http' }],
  routeKeys: [host],
});
