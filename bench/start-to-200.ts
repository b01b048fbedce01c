// Time from `docker start` to the first 200 through Caddy, p50/p99 over N containers
// (default 60), with berth standalone on a private dockerd and its own Caddy, all on loopback.
// Containers are created first, then started one at a time; each start is timed until the
// route answers with that container's own body. --poll-early (the default) asks from the moment
// `docker start` returns, as health checkers and people pressing reload do; --poll-late waits
// 200 ms first. Prints figures (a JSON summary last with --json); asserts nothing.
// Usage: npm run build && npx tsx bench/start-to-200.ts [N] [--poll-late] [--json]
import { startBerth } from '../test/e2e/support/berth.js';
import { runCleanups } from '../test/e2e/support/cleanup.js';
import { importBusybox, startDockerd } from '../test/e2e/support/dockerd.js';
import { freePort } from '../test/e2e/support/ports.js';
import { httpGet } from '../test/e2e/support/proc.js';
import { pct } from './lib.js';

const N = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 60);
const late = process.argv.includes('--poll-late');
const json = process.argv.includes('--json');
const DEADLINE_MS = 20_000; // per container: a bound, not an expectation

try {
  const d = await startDockerd({ name: 'bench200' });
  await importBusybox(d);
  const berth = await startBerth({ docker: d.dockerHost, args: ['--log-level', 'warn'] });
  const times: number[] = [];
  const cli: number[] = [];
  for (let i = 0; i < N; i++) {
    const p = await freePort();
    const name = `s${i}`;
    await d.run([
      'create',
      '--network',
      'host',
      '--name',
      name,
      '-l',
      `berth.host=${name}.bench.test`,
      '-l',
      `berth.port=${p}`,
      'berth-test/busybox:latest',
      'sh',
      '-c',
      `mkdir -p /w && echo ${name} > /w/index.html && exec httpd -f -p 127.0.0.1:${p} -h /w`,
    ]);
    const t0 = performance.now();
    await d.run(['start', name]);
    cli.push(performance.now() - t0);
    if (late) await new Promise((r) => setTimeout(r, 200));
    for (;;) {
      const r = await httpGet(`http://127.0.0.1:${berth.httpPort}/`, { host: `${name}.bench.test` });
      if (r.status === 200 && r.body.trim() === name) break;
      if (performance.now() - t0 > DEADLINE_MS)
        throw new Error(`${name} not serving after ${DEADLINE_MS} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
    times.push(performance.now() - t0);
  }
  const status = await berth.status();
  const summary = {
    bench: 'start-to-200',
    containers: N,
    poll: late ? 'late' : 'early',
    p50Ms: Math.round(pct(times, 50)),
    p99Ms: Math.round(pct(times, 99)),
    minMs: Math.round(Math.min(...times)),
    maxMs: Math.round(Math.max(...times)),
    dockerStartP50Ms: Math.round(pct(cli, 50)),
    caddyApplies: status.reconcile.applies as number,
    passes: status.reconcile.passes as number,
  };
  console.log(
    `docker start → first 200 through Caddy, ${N} containers one at a time, polling ${late ? '200 ms after' : 'from the moment'} docker start returns (${status.routes.total} routes at the end)`,
  );
  console.log(
    `  p50 ${summary.p50Ms} ms   p99 ${summary.p99Ms} ms   min ${summary.minMs} ms   max ${summary.maxMs} ms`,
  );
  console.log(
    `  of which the docker start command itself: p50 ${summary.dockerStartP50Ms} ms (the route cannot exist before it returns)`,
  );
  console.log(`  Caddy applies: ${summary.caddyApplies}, reconcile passes: ${summary.passes}`);
  if (json) console.log(JSON.stringify(summary));
  await berth.stop();
} finally {
  await runCleanups();
}
