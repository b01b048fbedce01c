// A burst of container starts across several hosts: the time until every one serves through Caddy.
//
// One `berth server` (own Caddy, default dynamic layout, SQLite in a temp dir, --tls off), H private
// dockerds (own data-root, exec-root, socket; no bridge, no iptables) each with a `berth agent`
// whose host IP is 127.0.0.2, 127.0.0.3, …, and one auto-approving key. Per host, N busybox httpd
// containers are created first (not timed; --network host, each on its own port on its host's
// address, labelled berth.host=c<i>.bench.test). Then, timed from one instant: `docker start` of
// all of them (one CLI call per host, the hosts in parallel), while a poller asks Caddy for each
// host not yet serving until it answers 200. Prints figures; asserts nothing.
//
//   npm run build && npx tsx bench/burst.ts [--hosts 10] [--per-host 100] [--deadline-min 10]
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BERTH_BIN, startBerth } from '../test/e2e/support/berth.js';
import { registerCleanup } from '../test/e2e/support/cleanup.js';
import {
  dockerdPrefix,
  importBusybox,
  reapDockerds,
  startDockerd,
  type TestDockerd,
} from '../test/e2e/support/dockerd.js';
import { freePort } from '../test/e2e/support/ports.js';
import { spawnLogged, waitUntil } from '../test/e2e/support/proc.js';
import {
  cleanupOnExit,
  fetchMetrics,
  flag,
  fmtS,
  loadavg,
  memAvailableMb,
  metricValues,
  pct,
  pidFrom,
  procSample,
  sleep,
} from './lib.js';

const HOSTS = flag('hosts', 10);
const PER_HOST = flag('per-host', 100);
const DEADLINE_MS = flag('deadline-min', 10) * 60_000;
const CONCURRENCY = flag('concurrency', 32);
const IMAGE = 'berth-test/busybox:latest';
if (HOSTS > 200) throw new Error('--hosts: at most 200 (host IPs 127.0.0.2 … 127.0.0.201)');

// Private daemons go under a prefix of this run's own, so a last-resort sweep touches nothing else.
process.env.BERTH_TEST_RUN = `burst${randomBytes(3).toString('hex')}`;
const prefix = dockerdPrefix();
const root = mkdtempSync(join(tmpdir(), 'berth-burst-'));
registerCleanup(async () => {
  const left = await reapDockerds(prefix);
  if (left.length > 0) console.error(`swept leftover processes:\n${left.join('\n')}`);
  rmSync(root, { recursive: true, force: true });
});
const cleanup = cleanupOnExit();

/** Runs fn over items with at most `limit` at once. */
async function pool<T>(items: T[], limit: number, fn: (x: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i]!, i);
      }
    }),
  );
}

interface Target {
  host: string;
  hostIndex: number;
  name: string;
  servedAt?: number;
}

const keepAlive = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
function status(port: number, host: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/', headers: { host }, agent: keepAlive, timeout: 5_000 },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', () => resolve(0));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
    req.end();
  });
}

try {
  const memStart = memAvailableMb();
  console.log(
    `burst: ${HOSTS} hosts × ${PER_HOST} containers = ${HOSTS * PER_HOST}; load ${loadavg()}; MemAvailable ${(memStart / 1024).toFixed(1)} GiB`,
  );
  const dataDir = join(root, 'server');
  mkdirSync(dataDir);
  const berth = await startBerth({ command: 'server', dataDir, args: ['--log-level', 'warn'] });
  const api = (path: string) =>
    fetch(`${berth.apiUrl}${path}`, { headers: { authorization: `Bearer ${berth.token}` } }).then((r) =>
      r.json(),
    );
  const k = await berth.cli(['keys', 'create', '--name', 'burst', '--auto-approve', '--json']);
  if (k.code !== 0) throw new Error(`keys create: ${k.stderr}`);
  const key = JSON.parse(k.stdout).secret as string;

  // Hosts: a private dockerd and an agent each, three set up at a time.
  const hosts: { d: TestDockerd; ip: string }[] = [];
  const tSetup = performance.now();
  await pool(
    Array.from({ length: HOSTS }, (_, i) => i),
    3,
    async (i) => {
      const d = await startDockerd({ name: `burst${i}` });
      await importBusybox(d);
      const ip = `127.0.0.${i + 2}`;
      hosts[i] = { d, ip };
      const agentDir = join(root, `agent${i}`);
      mkdirSync(agentDir);
      const agent = spawnLogged(
        process.execPath,
        [
          BERTH_BIN,
          'agent',
          '--server',
          berth.apiUrl,
          '--docker',
          d.dockerHost,
          '--host-ip',
          ip,
          '--name',
          `h${i}`,
          '--data-dir',
          agentDir,
          '--log-level',
          'warn',
        ],
        { env: { ...process.env, BERTH_AGENT_KEY: key }, logFile: join(agentDir, 'agent.log') },
      );
      registerCleanup(() => agent.stop('SIGTERM', 10_000));
    },
  );
  await waitUntil(
    async () =>
      ((await api('/api/agents')).agents as { status: string }[]).filter((a) => a.status === 'online')
        .length === HOSTS,
    { timeoutMs: 60_000, intervalMs: 250, message: 'agents did not all come online' },
  );
  console.log(`  ${HOSTS} dockerds and agents up in ${fmtS(performance.now() - tSetup)}`);

  // Create (not timed): one httpd per container on its host's address, ports free at creation.
  const targets: Target[] = [];
  const byHost: Target[][] = hosts.map(() => []);
  const tCreate = performance.now();
  await pool(hosts, HOSTS, async ({ d, ip }, h) => {
    for (let j = 0; j < PER_HOST; j++) {
      const n = h * PER_HOST + j;
      // Distinct within this run: freePort never hands out the same port twice.
      const port = await freePort(ip);
      const t: Target = { host: `c${n}.bench.test`, hostIndex: h, name: `c${n}` };
      await d.run([
        'create',
        '--network',
        'host',
        '--name',
        t.name,
        '-l',
        `berth.host=${t.host}`,
        '-l',
        `berth.port=${port}`,
        IMAGE,
        'httpd',
        '-f',
        '-p',
        `${ip}:${port}`,
        '-h',
        '/www',
      ]);
      byHost[h]!.push(t);
    }
  });
  for (const list of byHost) targets.push(...list);
  console.log(`  created ${targets.length} containers in ${fmtS(performance.now() - tCreate)} (not timed)`);
  await sleep(2_000); // let the agents' re-lists of the creations settle

  const serverPid = berth.pid;
  const caddyPid = pidFrom(join(dataDir, 'caddy.pid'));
  const dnsPid = pidFrom(join(dataDir, 'dns', 'dns.pid'));
  const before = {
    server: procSample(serverPid),
    caddy: procSample(caddyPid),
    dns: procSample(dnsPid),
    applies: metricValues(await fetchMetrics(berth.apiUrl), 'berth_caddy_applies_total').get('') ?? 0,
    mem: memAvailableMb(),
  };
  const loadBefore = loadavg();

  // ---- the burst
  const t0 = performance.now();
  const t0Wall = Date.now();
  const startedAt: number[] = [];
  const startErrors: string[] = [];
  const starting = Promise.all(
    hosts.map(async ({ d }, h) => {
      const r = await d.docker(['start', ...byHost[h]!.map((t) => t.name)]);
      startedAt[h] = performance.now() - t0;
      if (r.code !== 0) startErrors.push(`host ${h}: ${r.stderr.trim().split('\n').slice(0, 3).join(' | ')}`);
    }),
  );
  let minMem = before.mem;
  let peakServerRss = before.server?.rssMb ?? 0;
  const pending = new Set(targets);
  const port = berth.httpPort;
  const check = async (t: Target) => {
    if (!pending.has(t)) return;
    if ((await status(port, t.host)) === 200 && pending.has(t)) {
      t.servedAt = performance.now() - t0;
      pending.delete(t);
    }
  };
  // Each host's CLI starts its containers in order, so the head of each host's pending list is
  // what can come next: poll a window there every round, and everything pending every ~2 s.
  let lastSweep = performance.now();
  let rounds = 0;
  let allStarted = false;
  void starting.then(() => {
    allStarted = true;
  });
  let lastExitCheck = 0;
  const exited: string[] = [];
  while (pending.size > 0 && performance.now() - t0 < DEADLINE_MS) {
    rounds++;
    // Once every CLI has returned, a container that is not running will never serve: drop it.
    if (allStarted && performance.now() - lastExitCheck > 10_000) {
      lastExitCheck = performance.now();
      for (const [h, { d }] of hosts.entries()) {
        const names = byHost[h]!.filter((t) => pending.has(t)).map((t) => t.name);
        if (names.length === 0) continue;
        const r = await d.docker(['inspect', '--format', '{{.Name}} {{.State.Running}}', ...names]);
        for (const line of r.stdout.split('\n')) {
          const [name, running] = line.trim().split(' ');
          if (running !== 'false') continue;
          const t = byHost[h]!.find((x) => x.name === name?.replace(/^\//, ''));
          if (!t) continue;
          pending.delete(t);
          const log = await d.docker(['logs', '--tail', '1', t.name]);
          exited.push(`${t.name}: ${`${log.stdout}${log.stderr}`.trim().slice(0, 100) || 'no output'}`);
        }
      }
    }
    let batch: Target[];
    if (performance.now() - lastSweep > 2_000) {
      batch = [...pending];
      lastSweep = performance.now();
    } else {
      batch = byHost.flatMap((list) => list.filter((t) => pending.has(t)).slice(0, 8));
    }
    await pool(batch, CONCURRENCY, check);
    minMem = Math.min(minMem, memAvailableMb());
    peakServerRss = Math.max(peakServerRss, procSample(serverPid)?.rssMb ?? 0);
    await sleep(20);
  }
  const tAll = performance.now() - t0;
  await starting;
  const after = {
    server: procSample(serverPid),
    caddy: procSample(caddyPid),
    dns: procSample(dnsPid),
    applies: metricValues(await fetchMetrics(berth.apiUrl), 'berth_caddy_applies_total').get('') ?? 0,
    mem: memAvailableMb(),
  };

  const served = targets.filter((t) => t.servedAt !== undefined).map((t) => t.servedAt!);
  const total = targets.length;
  const at = (frac: number) => {
    const n = Math.ceil(frac * total);
    if (served.length < n) return Number.NaN;
    return [...served].sort((a, b) => a - b)[n - 1]!;
  };
  const cpu = (k: 'server' | 'caddy' | 'dns') =>
    ((after[k]?.cpuSeconds ?? 0) - (before[k]?.cpuSeconds ?? 0)).toFixed(1);
  const running = (
    await Promise.all(hosts.map(({ d }) => d.docker(['ps', '-q']).then((r) => r.stdout.split('\n'))))
  )
    .flat()
    .filter(Boolean).length;

  console.log(
    `\nburst of ${total} container starts across ${HOSTS} hosts (dynamic layout, load before ${loadBefore})`,
  );
  console.log(
    `  docker start, all hosts at once: every CLI returned after ${fmtS(Math.max(...startedAt))} (per host: ${startedAt.map((ms) => (ms / 1000).toFixed(1)).join(', ')} s); running: ${running}/${total}`,
  );
  if (startErrors.length > 0) console.log(`  docker start errors: ${startErrors.join('; ')}`);
  if (exited.length > 0)
    console.log(
      `  ${exited.length} containers exited instead of serving, e.g. ${exited.slice(0, 3).join('; ')}`,
    );
  console.log(
    `  serving 200 through Caddy (of all ${total}): first ${fmtS(at(1 / total))}, 50% ${fmtS(at(0.5))}, 99% ${fmtS(at(0.99))}, all ${fmtS(at(1))}` +
      (pending.size > 0 ? `; ${pending.size} not serving at the ${fmtS(tAll)} deadline` : ''),
  );
  // Each container's own start (dockerd's State.StartedAt, same clock) to its first 200.
  const startedWall = new Map<string, number>();
  for (const [h, { d }] of hosts.entries()) {
    const r = await d.docker([
      'inspect',
      '--format',
      '{{.Name}} {{.State.StartedAt}}',
      ...byHost[h]!.map((t) => t.name),
    ]);
    for (const line of r.stdout.split('\n')) {
      const [name, at] = line.trim().split(' ');
      const ms = Date.parse(at ?? '');
      if (name && ms > 0) startedWall.set(name.replace(/^\//, ''), ms);
    }
  }
  const own = targets
    .filter((t) => t.servedAt !== undefined && startedWall.has(t.name))
    .map((t) => t.servedAt! + t0Wall - startedWall.get(t.name)!);
  console.log(
    `  per container, its own start (State.StartedAt) → first 200: p50 ${fmtS(pct(own, 50))}, p99 ${fmtS(pct(own, 99))}, max ${fmtS(Math.max(...own))} (poll resolution ~50 ms)`,
  );
  console.log(`  Caddy applies during the burst: ${after.applies - before.applies} (poll rounds: ${rounds})`);
  console.log(
    `  berth server: RSS ${after.server?.rssMb.toFixed(0)} MiB at the end (peak seen ${peakServerRss.toFixed(0)} MiB, VmHWM ${after.server?.hwmMb.toFixed(0)} MiB), CPU ${cpu('server')} s during the burst`,
  );
  console.log(
    `  caddy: RSS ${after.caddy?.rssMb.toFixed(0)} MiB, CPU ${cpu('caddy')} s (incl. answering the poller); dns responder: RSS ${after.dns?.rssMb.toFixed(0)} MiB, CPU ${cpu('dns')} s`,
  );
  console.log(
    `  memory: MemAvailable ${(before.mem / 1024).toFixed(1)} GiB before the burst, lowest ${(minMem / 1024).toFixed(1)} GiB during, ${(after.mem / 1024).toFixed(1)} GiB at the end (≈${((before.mem - after.mem) / Math.max(1, running)).toFixed(1)} MiB per running container incl. shim)`,
  );
  console.log(`  load after: ${loadavg()}`);
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  keepAlive.destroy();
  await cleanup();
}
