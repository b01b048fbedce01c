// Time from `docker start` to the first 200 through Caddy, p50/p99 over N containers
// (default 60), with berth standalone on a private dockerd and its own Caddy, all on loopback.
// Containers are created first, then started one at a time; each start is timed until the
// route answers with that container's own body. Prints figures; asserts nothing.
// Usage: npm run build && npx tsx bench/start-to-200.ts [N]
import { startBerth } from '../test/e2e/support/berth.js';
import { runCleanups } from '../test/e2e/support/cleanup.js';
import { importBusybox, startDockerd } from '../test/e2e/support/dockerd.js';
import { freePort } from '../test/e2e/support/ports.js';
import { httpGet } from '../test/e2e/support/proc.js';

const N = Number(process.argv[2] ?? 60);
const DEADLINE_MS = 20_000; // per container: a bound, not an expectation

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

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
  console.log(
    `docker start → first 200 through Caddy, ${N} containers (one at a time, ${status.routes.total} routes at the end)`,
  );
  console.log(
    `  p50 ${pct(times, 50).toFixed(0)} ms   p99 ${pct(times, 99).toFixed(0)} ms   min ${Math.min(...times).toFixed(0)} ms   max ${Math.max(...times).toFixed(0)} ms`,
  );
  console.log(
    `  of which the docker start command itself: p50 ${pct(cli, 50).toFixed(0)} ms (the route cannot exist before it returns)`,
  );
  console.log(`  Caddy applies: ${status.reconcile.applies}, loads: ${status.reconcile.loads}`);
  await berth.stop();
} finally {
  await runCleanups();
}
