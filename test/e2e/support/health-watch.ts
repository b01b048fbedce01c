// A prober in a process of its own: what a client sees of a server while something else happens.
import { spawn } from 'node:child_process';
import { registerCleanup } from './cleanup.js';

export interface HealthStats {
  ok: number;
  failed: number;
  maxMs: number;
  latenciesMs: number[];
}

/**
 * Polls a URL (say /healthz) every `everyMs` from a process of its own, so that this one can be
 * busy (being a hostile agent, say) without skewing the figures; until stopped: how many answered,
 * how many failed, and each answer's latency.
 */
export function watchHealth(url: string, everyMs = 50) {
  const script = `
    const stats = { ok: 0, failed: 0, maxMs: 0, latenciesMs: [] };
    let stop = false;
    process.on('SIGTERM', () => { stop = true; });
    (async () => {
      // A first fetch loads and sets up the HTTP client (tens of ms): not the server's latency.
      try { await (await fetch(process.argv[1], { signal: AbortSignal.timeout(10000) })).text(); } catch {}
      process.stdout.write('ready\\n');
      while (!stop) {
        const t = performance.now();
        try {
          const r = await fetch(process.argv[1], { signal: AbortSignal.timeout(10000) });
          await r.text();
          if (r.ok) stats.ok++; else stats.failed++;
        } catch { stats.failed++; }
        const ms = performance.now() - t;
        stats.maxMs = Math.max(stats.maxMs, ms);
        if (stats.latenciesMs.length < 200000) stats.latenciesMs.push(Math.round(ms * 100) / 100);
        await new Promise((r) => setTimeout(r, Number(process.argv[2])));
      }
      process.stdout.write(JSON.stringify(stats) + '\\n');
    })();`;
  const child = spawn(process.execPath, ['-e', script, url, String(everyMs)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  registerCleanup(() => child.kill('SIGKILL'));
  let out = '';
  let onReady: () => void = () => {};
  const ready = new Promise<void>((r) => {
    onReady = r;
  });
  child.stdout.on('data', (c) => {
    out += c;
    if (out.startsWith('ready\n')) onReady();
  });
  const exited = new Promise<void>((r) =>
    child.on('exit', () => {
      onReady();
      r();
    }),
  );
  return {
    /** Resolves once the prober has made its first (uncounted) request. */
    ready,
    async stop(): Promise<HealthStats> {
      child.kill('SIGTERM');
      await exited;
      return JSON.parse(out.replace(/^ready\n/, ''));
    },
  };
}
