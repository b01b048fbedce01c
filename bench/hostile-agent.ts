// How a server answers while one approved agent sends its worst: /healthz latency (from a prober
// process of its own, every 20 ms) when idle, while the agent sends snapshots just under
// --agent-max-message back to back (many diagnostics; many routes), and while it sends one
// 64 MiB message; server RSS before and at its peak. Prints figures; asserts nothing.
// Usage: npm run build && npx tsx bench/hostile-agent.ts [--snapshots 10] [--json]

import { startBerth } from '../test/e2e/support/berth.js';
import { runCleanups } from '../test/e2e/support/cleanup.js';
import { connectFakeAgent } from '../test/e2e/support/fake-agent.js';
import { type HealthStats, watchHealth } from '../test/e2e/support/health-watch.js';
import { waitUntil } from '../test/e2e/support/proc.js';
import { flag, pct, procSample, sleep } from './lib.js';

const SNAPSHOTS = flag('snapshots', 10);
const json = process.argv.includes('--json');

interface Phase {
  phase: string;
  probes: number;
  failed: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  serverRssPeakMiB: number;
}

try {
  const server = await startBerth({ command: 'server', args: ['--log-level', 'warn'] });
  const r = await server.cli(['keys', 'create', '--name', 'worst', '--auto-approve', '--json']);
  const secret = JSON.parse(r.stdout).secret as string;
  const phases: Phase[] = [];
  /** Waits until the named agent's last snapshot (told apart by its route count) has landed. */
  const landed = (agent: string, routes: number) =>
    waitUntil(
      async () => {
        const res = await fetch(`${server.apiUrl}/api/agents`, {
          headers: { authorization: `Bearer ${server.token}` },
        });
        const { agents } = (await res.json()) as { agents: { name: string; routes: number }[] };
        return agents.find((x) => x.name === agent)?.routes === routes;
      },
      { timeoutMs: 180_000, intervalMs: 200 },
    );
  const measure = async (phase: string, work: () => Promise<void>) => {
    // What the phase before left to do (store writes, error scans) is not this phase's.
    await quiet(server.pid);
    const probe = watchHealth(`${server.apiUrl}/healthz`, 20);
    await probe.ready;
    let peak = procSample(server.pid)?.rssMb ?? 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, procSample(server.pid)?.rssMb ?? 0);
    }, 20);
    await work();
    clearInterval(sampler);
    const h: HealthStats = await probe.stop();
    phases.push({
      phase,
      probes: h.ok + h.failed,
      failed: h.failed,
      p50Ms: pct(h.latenciesMs, 50),
      p99Ms: pct(h.latenciesMs, 99),
      maxMs: h.maxMs,
      serverRssPeakMiB: peak,
    });
  };
  const baselineRss = procSample(server.pid)?.rssMb ?? 0;
  await measure('idle', () => sleep(3_000));

  const diagnostics = Array.from({ length: 19_000 }, (_, i) => ({
    severity: 'warning',
    containerId: `w${i % 500}`,
    containerName: `w${i % 500}`,
    label: 'berth.host',
    value: 'v'.repeat(100),
    message: 'm'.repeat(200),
  }));
  const a = await connectFakeAgent(server.apiUrl, secret, 'worst-diag');
  await measure(`${SNAPSHOTS} snapshots of 19k diagnostics (~8 MiB each)`, async () => {
    for (let i = 0; i < SNAPSHOTS; i++) {
      const rs = Array.from({ length: i + 1 }, (_, j) => ({
        id: `d${j}/default`,
        hosts: [`d${j}.worst.test`],
        upstream: { host: '127.0.0.1', port: 8000 + j, scheme: 'http' as const },
      }));
      a.snapshot(rs, { diagnostics } as never);
    }
    await landed('worst-diag', SNAPSHOTS);
    await sleep(1_000);
  });

  const b = await connectFakeAgent(server.apiUrl, secret, 'worst-routes');
  const routes = Array.from({ length: 25_000 }, (_, i) => ({
    id: `c${i}/default`,
    hosts: [`r${i}.worst.test`],
    upstream: { host: '127.0.0.1', port: 10_000 + (i % 50_000), scheme: 'http' as const },
    containerId: `c${i}`,
    containerName: `c${i}`,
    containerCreated: 1,
  }));
  await measure(`${SNAPSHOTS} snapshots of 25k routes (~7 MiB each)`, async () => {
    for (let i = 0; i < SNAPSHOTS; i++) b.snapshot(routes.slice(i));
    await landed('worst-routes', routes.length - (SNAPSHOTS - 1));
    await sleep(1_000);
  });

  // The same as a swarm manager: a swarm agent's admission depends on the other agents of its
  // swarm, so it is not kept per agent like the others'.
  const d = await connectFakeAgent(server.apiUrl, secret, 'worst-swarm');
  const swarm = {
    clusterId: 'evil',
    nodeId: 'n1',
    nodeName: 'n1',
    manager: true,
    leader: true,
    nodes: [],
    services: [],
  };
  await measure(`${SNAPSHOTS} swarm snapshots of 25k routes`, async () => {
    for (let i = 0; i < SNAPSHOTS; i++) d.snapshot(routes.slice(i), { swarm } as never);
    await landed('worst-swarm', routes.length - (SNAPSHOTS - 1));
    await sleep(1_000);
  });

  // The server refuses this frame at its header and never unmasks it, so it is sent with a zero
  // mask: masking 64 MiB here would take this process most of a core of the two while /healthz is
  // being probed. The text is made before the phase begins, for the same reason.
  const c = await connectFakeAgent(server.apiUrl, secret, 'worst-huge', {
    generateMask: (mask) => mask.fill(0),
  });
  const huge = Buffer.from(`{"type":"snapshot","pad":"${'x'.repeat(64 << 20)}"}`);
  await measure('one 64 MiB message', async () => {
    c.ws.send(huge, { binary: false });
    await c.closed;
    await sleep(1_000);
  });

  console.log(
    `/healthz while one agent sends its worst (server RSS at rest ${baselineRss.toFixed(0)} MiB; prober every 20 ms)`,
  );
  console.log(
    'phase                                              probes  failed  p50 ms  p99 ms  max ms  RSS peak MiB',
  );
  for (const p of phases)
    console.log(
      `${p.phase.padEnd(50)} ${String(p.probes).padStart(6)}  ${String(p.failed).padStart(6)}  ${p.p50Ms.toFixed(1).padStart(6)}  ${p.p99Ms.toFixed(1).padStart(6)}  ${p.maxMs.toFixed(1).padStart(6)}  ${p.serverRssPeakMiB.toFixed(0).padStart(12)}`,
    );
  if (json) console.log(JSON.stringify({ bench: 'hostile-agent', serverRssMiB: baselineRss, phases }));
  await server.stop();
} finally {
  await runCleanups();
}

/** Waits (up to 30 s) until the server has used under 5% of a core for half a second. */
async function quiet(pid: number | undefined): Promise<void> {
  const until = Date.now() + 30_000;
  let last = procSample(pid)?.cpuSeconds ?? 0;
  while (Date.now() < until) {
    await sleep(500);
    const now = procSample(pid)?.cpuSeconds ?? 0;
    if (now - last < 0.025) return;
    last = now;
  }
}
