// How fast a Swarm task's move reaches the front door: a real three-node swarm (test/e2e/support/
// swarm.ts), an agent per node, one server. A one-replica service is moved between the two other
// nodes by its placement constraint, again and again; each round records when its new container
// started (Docker's State.StartedAt on the node) and when the front door first answered from it,
// so the figure is Berth's part (the leader's task poll, snapshot, admission, Caddy), not Swarm's
// scheduling. Also: scale to 0 until the front door answers 404, and a killed task until its
// replacement serves.
//
//   npm run build && sudo npx tsx bench/swarm.ts [--rounds 10] [--json]
import { startAgent, startBerth } from '../test/e2e/support/berth.js';
import { httpGet, waitUntil } from '../test/e2e/support/proc.js';
import { createAppService, startSwarm } from '../test/e2e/support/swarm.js';
import { cleanupOnExit, flag, pct } from './lib.js';

const rounds = flag('rounds', 10);
const asJson = process.argv.includes('--json');
const done = cleanupOnExit();
const HOST = 'move.bench.test';

async function main() {
  const swarm = await startSwarm([
    { name: 'bench-a', role: 'manager' },
    { name: 'bench-b', role: 'worker' },
    { name: 'bench-c', role: 'worker' },
  ]);
  const manager = swarm.nodes[0]!.d;
  const server = await startBerth({ command: 'server', apiHost: swarm.gateway });
  const key = JSON.parse(
    (await server.cli(['keys', 'create', '--name', 'bench', '--auto-approve', '--json'])).stdout,
  ).secret;
  for (const n of swarm.nodes) {
    await startAgent({
      // Over TLS to the agent listener, as a node elsewhere would, with only the printed key.
      server: server.agentUrl,
      key,
      docker: n.d.dockerHost,
      hostIp: n.addr,
      name: n.name,
      netns: n.d.netns,
    });
  }
  const get = () => httpGet(`http://127.0.0.1:${server.httpPort}/`, { host: HOST, timeoutMs: 2_000 });
  /** Polls the front door until `ok`; the time it first held. */
  const until = async (ok: (r: { status: number; body: string }) => boolean, timeoutMs = 60_000) => {
    let at = 0;
    await waitUntil(
      async () => {
        const r = await get();
        if (ok(r)) at = Date.now();
        return at > 0;
      },
      { timeoutMs, intervalMs: 10, message: `${HOST} never reached the state wanted` },
    );
    return at;
  };
  /** When the service's container on this node started, from Docker on that node. */
  const startedOn = async (nodeName: string): Promise<number> => {
    const d = swarm.byName(nodeName).d;
    const id = (
      await d.run(['ps', '-q', '--filter', 'label=com.docker.swarm.service.name=move'])
    ).stdout.trim();
    const at = (await d.run(['inspect', '-f', '{{.State.StartedAt}}', id.split('\n')[0]!])).stdout.trim();
    return Date.parse(at);
  };

  await createAppService(manager, 'move', 18090, { 'berth.host': HOST, 'berth.port': '18090' }, [
    '--constraint',
    'node.hostname==bench-b',
  ]);
  await until((r) => r.body.includes('move@bench-b'), 120_000);

  const lag: number[] = [];
  const total: number[] = [];
  let at = 'bench-b';
  for (let i = 0; i < rounds; i++) {
    const to = at === 'bench-b' ? 'bench-c' : 'bench-b';
    const t0 = Date.now();
    await manager.run([
      'service',
      'update',
      '--detach',
      '--constraint-rm',
      `node.hostname==${at}`,
      '--constraint-add',
      `node.hostname==${to}`,
      'move',
    ]);
    const served = await until((r) => r.body.includes(`move@${to}`));
    const started = await startedOn(to);
    lag.push(served - started);
    total.push(served - t0);
    at = to;
  }

  // A killed task: Swarm starts another, the route follows.
  const killed: number[] = [];
  for (let i = 0; i < Math.min(rounds, 5); i++) {
    const d = swarm.byName(at).d;
    const id = (
      await d.run(['ps', '-q', '--filter', 'label=com.docker.swarm.service.name=move'])
    ).stdout.trim();
    const before = (await server.routes()).find((r) => r.hosts.includes(HOST))?.container.id;
    const t0 = Date.now();
    await d.run(['kill', id]);
    let t1 = 0;
    await waitUntil(
      async () => {
        const r = (await server.routes()).find((x) => x.hosts.includes(HOST));
        if (r && r.container.id !== before && r.status === 'applied' && (await get()).status === 200)
          t1 = Date.now();
        return t1 > 0;
      },
      { timeoutMs: 60_000, intervalMs: 20, message: 'the killed task was never replaced at the front door' },
    );
    killed.push(t1 - t0);
  }

  const t0 = Date.now();
  await manager.run(['service', 'scale', '--detach', 'move=0']);
  const gone = (await until((r) => r.status === 404)) - t0;

  const fig = (xs: number[]) => ({ p50: pct(xs, 50), max: Math.max(...xs) });
  const summary = {
    bench: 'swarm',
    rounds,
    moveLagMs: fig(lag),
    moveTotalMs: fig(total),
    killToServedMs: fig(killed),
    scaleToZeroMs: gone,
  };
  if (!asJson) {
    console.log(`task moves: ${rounds} (service update of its constraint, between two workers)`);
    console.log(
      `  new container started → front door serves it: p50 ${summary.moveLagMs.p50} ms, max ${summary.moveLagMs.max} ms`,
    );
    console.log(
      `  service update → front door serves the new node: p50 ${summary.moveTotalMs.p50} ms, max ${summary.moveTotalMs.max} ms`,
    );
    console.log(
      `task killed → replacement routed and serving: p50 ${summary.killToServedMs.p50} ms, max ${summary.killToServedMs.max} ms`,
    );
    console.log(`scale to 0 → front door 404: ${gone} ms`);
  } else console.log(JSON.stringify(summary));
}

main().then(done, async (err) => {
  console.error(err);
  await done();
  process.exit(1);
});
