// A real three-node Swarm: three private dockerds, each in a network namespace (and UTS namespace,
// for its node name) of the test's own, joined by veth pairs to a bridge the test creates; two
// managers and a worker; one `berth agent` per node, inside that node's namespace, reporting to
// one `berth server` on the bridge. Services use the host network of their node: Swarm's routing
// mesh and VIPs need IPVS, which this kernel lacks, and published ports need iptables, which test
// daemons run without (so --swarm-upstream vip and host-mode published ports are unit-tested only).
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RouteView } from '../../src/model/types.js';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import type { TestDockerd } from './support/dockerd.js';
import { httpGet, waitUntil } from './support/proc.js';
import { createAppService, SWARM_IMAGE as IMAGE, startSwarm, type TestSwarm } from './support/swarm.js';

useCleanup();

const NAMES = ['swarm-a', 'swarm-b', 'swarm-c'] as const;
type NodeName = (typeof NAMES)[number];

let swarm: TestSwarm;
let server: BerthProcess;
const node = {} as Record<NodeName, TestDockerd>;
const addr = {} as Record<NodeName, string>;
const agents: Partial<Record<NodeName, AgentProcess>> = {};

/** The leader (or any manager) of the swarm, for service commands. */
let manager: TestDockerd;

const createService = (name: string, port: number, labels: Record<string, string>, extra: string[] = []) =>
  createAppService(manager, name, port, labels, extra);

const get = (host: string) => httpGet(`http://127.0.0.1:${server.httpPort}/`, { host, timeoutMs: 3_000 });

async function serves(host: string, body: string, timeoutMs = 60_000) {
  await waitUntil(async () => (await get(host)).body.includes(body), {
    timeoutMs,
    intervalMs: 100,
    message: async () =>
      `${host} never served ${body}: ${JSON.stringify(await get(host))}\nroutes: ${JSON.stringify(await server.routes().catch(() => []))}`,
  });
}

async function routesOf(host: string): Promise<RouteView[]> {
  return (await server.routes()).filter((r) => r.hosts.includes(host));
}

/** Bodies seen over `n` requests: which nodes' tasks answer. */
async function bodies(host: string, n: number): Promise<Set<string>> {
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) seen.add((await get(host)).body.trim());
  return seen;
}

const leaderName = async () => (await swarm.leader()).name as NodeName;

beforeAll(async () => {
  // Two managers (a leader change needs another) and a worker.
  swarm = await startSwarm([
    { name: 'swarm-a', role: 'manager' },
    { name: 'swarm-b', role: 'manager' },
    { name: 'swarm-c', role: 'worker' },
  ]);
  for (const n of swarm.nodes) {
    node[n.name as NodeName] = n.d;
    addr[n.name as NodeName] = n.addr;
  }
  manager = node['swarm-a'];
  server = await startBerth({
    command: 'server',
    apiHost: swarm.gateway,
    args: ['--offline-grace', '20s', '--agent-heartbeat', '1s'],
  });
  const key = JSON.parse(
    (await server.cli(['keys', 'create', '--name', 'swarm', '--auto-approve', '--json'])).stdout,
  ).secret;
  for (const n of NAMES) {
    // Each agent runs in its node's namespace: it connects from, and names, the node's address.
    agents[n] = await startAgent({
      // Over TLS to the agent listener, as a node elsewhere would, with only the printed key.
      server: server.agentUrl,
      key,
      docker: node[n].dockerHost,
      hostIp: addr[n],
      name: `agent-${n}`,
      netns: node[n].netns,
    });
  }
  await waitUntil(
    async () => {
      const list = JSON.parse((await server.cli(['agents', 'list', '--json'])).stdout) as {
        status: string;
      }[];
      return list.length === 3 && list.every((a) => a.status === 'online');
    },
    {
      timeoutMs: 30_000,
      message: async () =>
        `agents not online: ${(await server.cli(['agents', 'list'])).stdout}\n${agents['swarm-a']?.output()}`,
    },
  );
}, 180_000);

afterAll(async () => {
  for (const a of Object.values(agents)) await a?.stop();
  await server?.stop();
}, 120_000);

describe('swarm', () => {
  it('routes services by their labels in each dialect to tasks on the worker (placed by a constraint)', async () => {
    const worker = ['--constraint', 'node.role==worker'];
    await createService('bsvc', 18081, { 'berth.host': 'b.swarm.test', 'berth.port': '18081' }, worker);
    await createService(
      'csvc',
      18082,
      { caddy: 'c.swarm.test', 'caddy.reverse_proxy': '{{upstreams 18082}}' },
      worker,
    );
    await createService(
      'tsvc',
      18083,
      {
        'traefik.enable': 'true',
        'traefik.http.routers.t.rule': 'Host(`t.swarm.test`)',
        'traefik.http.services.t.loadbalancer.server.port': '18083',
        'traefik.swarm.lbswarm': 'false',
      },
      worker,
    );
    await createService(
      'dsvc',
      18084,
      {
        'dockflare.enable': 'true',
        'dockflare.hostname': 'd.swarm.test',
        'dockflare.service': 'http://dsvc:18084',
      },
      worker,
    );
    await serves('b.swarm.test', 'bsvc@swarm-c');
    await serves('c.swarm.test', 'csvc@swarm-c');
    await serves('t.swarm.test', 'tsvc@swarm-c');
    await serves('d.swarm.test', 'dsvc@swarm-c');
    // The route is the leader's agent's, and goes to the worker's address.
    const [r] = await routesOf('b.swarm.test');
    expect(r).toMatchObject({ agentName: `agent-${await leaderName()}`, status: 'applied' });
    expect(r!.upstreams).toEqual([`http://${addr['swarm-c']}:18081`]);
    // Only one agent speaks for the swarm's services.
    expect((await server.routes()).filter((x) => x.hosts.includes('b.swarm.test'))).toHaveLength(1);
  });

  it('scales 1 → 3 → 0: every task on its node serves, and none after scale to 0', async () => {
    await createService('scaled', 18085, { 'berth.host': 'scaled.swarm.test', 'berth.port': '18085' }, [
      '--replicas',
      '1',
      '--replicas-max-per-node',
      '1',
    ]);
    await serves('scaled.swarm.test', 'scaled@');
    await manager.run(['service', 'scale', '--detach', 'scaled=3']);
    await waitUntil(async () => (await bodies('scaled.swarm.test', 12)).size === 3, {
      timeoutMs: 60_000,
      message: async () => `not all 3 tasks serve: ${[...(await bodies('scaled.swarm.test', 12))]}`,
    });
    expect(await bodies('scaled.swarm.test', 20)).toEqual(new Set(NAMES.map((n) => `scaled@${n}`)));
    await manager.run(['service', 'scale', '--detach', 'scaled=0']);
    await waitUntil(async () => (await get('scaled.swarm.test')).status === 404, {
      timeoutMs: 30_000,
      message: async () => `scaled still served: ${JSON.stringify(await get('scaled.swarm.test'))}`,
    });
    expect(await routesOf('scaled.swarm.test')).toEqual([]);
  });

  it('follows a task that is killed, and one rescheduled on another node', async () => {
    await createService('mover', 18086, { 'berth.host': 'mover.swarm.test', 'berth.port': '18086' }, [
      '--constraint',
      'node.role==worker',
    ]);
    await serves('mover.swarm.test', 'mover@swarm-c');
    const first = (await routesOf('mover.swarm.test'))[0]!.container.id;
    // Killed: Swarm starts a new task (a new task id), and the route follows it.
    const ids = (
      await node['swarm-c'].run(['ps', '-q', '--filter', 'label=com.docker.swarm.service.name=mover'])
    ).stdout.trim();
    await node['swarm-c'].run(['kill', ids]);
    await waitUntil(
      async () => {
        const r = await routesOf('mover.swarm.test');
        return r.length === 1 && r[0]!.container.id !== first && r[0]!.status === 'applied';
      },
      {
        timeoutMs: 60_000,
        message: async () => `no new task routed: ${JSON.stringify(await routesOf('mover.swarm.test'))}`,
      },
    );
    await serves('mover.swarm.test', 'mover@swarm-c');
    // Rescheduled elsewhere: the constraint now names swarm-b only.
    await manager.run([
      'service',
      'update',
      '--detach',
      '--constraint-rm',
      'node.role==worker',
      '--constraint-add',
      'node.hostname==swarm-b',
      'mover',
    ]);
    await serves('mover.swarm.test', 'mover@swarm-b');
    expect((await routesOf('mover.swarm.test'))[0]!.upstreams).toEqual([`http://${addr['swarm-b']}:18086`]);
  });

  it('keeps serving through a leader change, and the new leader speaks for the services', async () => {
    const before = await leaderName();
    let failures = 0;
    let requests = 0;
    let stop = false;
    const load = (async () => {
      while (!stop) {
        const r = await get('b.swarm.test');
        requests++;
        if (!r.body.includes('bsvc@swarm-c')) failures++;
        await new Promise((res) => setTimeout(res, 50));
      }
    })();
    const other = NAMES.find((n) => n !== before && n !== 'swarm-c')!;
    await node[other].run(['node', 'demote', before]);
    await waitUntil(async () => (await leaderName().catch(() => before)) !== before, {
      timeoutMs: 60_000,
      message: 'no new leader',
    });
    const after = await leaderName();
    manager = node[after];
    await waitUntil(async () => (await routesOf('b.swarm.test'))[0]?.agentName === `agent-${after}`, {
      timeoutMs: 30_000,
      message: async () =>
        `routes not from the new leader ${after}: ${JSON.stringify(await routesOf('b.swarm.test'))}`,
    });
    // A few more requests after the handover, then stop.
    await new Promise((res) => setTimeout(res, 2_000));
    stop = true;
    await load;
    expect(requests).toBeGreaterThan(20);
    expect(failures).toBe(0);
    expect(await routesOf('b.swarm.test')).toHaveLength(1);
    await manager.run(['node', 'promote', before]);
  });

  it('runs berth exec in a task on another node, and audits the node', async () => {
    await manager.run([
      'service',
      'create',
      '--detach',
      '--name',
      'shell',
      '--network',
      'host',
      '--constraint',
      'node.hostname==swarm-c',
      '--container-label',
      'berth.exec.allow=echo hello *',
      IMAGE,
      'sleep',
      '100000',
    ]);
    await waitUntil(
      async () => (await server.cli(['exec', 'shell', '--', 'echo', 'hello', 'x'])).code === 0,
      {
        timeoutMs: 60_000,
        message: async () =>
          `exec never ran: ${JSON.stringify(await server.cli(['exec', 'shell', '--', 'echo', 'hello', 'x']))}`,
      },
    );
    const r = await server.cli([
      'exec',
      '--node',
      'swarm-c',
      '--task',
      '1',
      'shell',
      '--',
      'echo',
      'hello',
      'node',
    ]);
    expect(r).toMatchObject({ code: 0, stdout: 'hello node\n' });
    const audit = JSON.parse((await server.cli(['audit', '--json'])).stdout);
    expect(audit.find((e: { argv: string[] }) => e.argv.join(' ') === 'echo hello node')).toMatchObject({
      decision: 'allowed',
      node: 'swarm-c',
      agentName: 'agent-swarm-c',
    });
    const wrong = await server.cli(['exec', '--node', 'swarm-a', 'shell', '--', 'echo', 'hello', 'x']);
    expect(wrong.stderr).toMatch(/no container or service "shell" on node swarm-a/);
    // No agent on the task's node: the error names the node.
    await agents['swarm-c']!.stop();
    await server.cli(['agents', 'remove', 'agent-swarm-c']);
    const none = await server.cli(['exec', 'shell', '--', 'echo', 'hello', 'x']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/task shell\.1 runs on node swarm-c .*where no agent reports it/);
    await agents['swarm-c']!.start();
    await waitUntil(
      async () => (await server.cli(['exec', 'shell', '--', 'echo', 'hello', 'x'])).code === 0,
      {
        timeoutMs: 60_000,
        message: 'agent on swarm-c never back',
      },
    );
  });

  it('keeps a task out while its health check has not passed, and serves it once it does', async () => {
    await createService('checked', 18089, { 'berth.host': 'checked.swarm.test', 'berth.port': '18089' }, [
      '--constraint',
      'node.role==worker',
      '--health-cmd',
      'test -e /w/ready',
      '--health-interval',
      '1s',
      '--health-retries',
      '10000',
    ]);
    const worker = node['swarm-c'];
    let id = '';
    // Swarm holds the task in "starting" until the container is healthy; its httpd already answers.
    await waitUntil(
      async () => {
        id = (
          await worker.docker(['ps', '-q', '--filter', 'label=com.docker.swarm.service.name=checked'])
        ).stdout.trim();
        if (!id) return false;
        const state = (await manager.docker(['service', 'ps', '--format', '{{.CurrentState}}', 'checked']))
          .stdout;
        return (
          state.startsWith('Starting') &&
          (await worker.docker(['exec', id, 'test', '-e', '/w/index.html'])).code === 0
        );
      },
      {
        timeoutMs: 60_000,
        message: async () =>
          `task never starting: ${(await manager.docker(['service', 'ps', 'checked'])).stdout}`,
      },
    );
    // A full agent report cycle (the leader polls tasks every 500 ms; heartbeats are 1 s).
    await new Promise((res) => setTimeout(res, 2_000));
    expect((await get('checked.swarm.test')).status).toBe(404);
    expect(await routesOf('checked.swarm.test')).toEqual([]);
    await worker.run(['exec', id, 'touch', '/w/ready']);
    await serves('checked.swarm.test', 'checked@swarm-c');
  });

  it('rolls a 2-replica service start-first with no failed request at 20 requests/s', async () => {
    await createService('roll', 18087, { 'berth.host': 'roll.swarm.test', 'berth.port': '18087' }, [
      '--replicas',
      '2',
      '--replicas-max-per-node',
      '1',
      '--update-order',
      'start-first',
      '--update-parallelism',
      '1',
      // Host network: a new task needs its node's port free, so the next one waits for the last to be gone.
      '--update-delay',
      '5s',
      '--stop-grace-period',
      '10s',
    ]);
    await waitUntil(async () => (await bodies('roll.swarm.test', 10)).size === 2, {
      timeoutMs: 60_000,
      message: async () => `2 tasks never served: ${[...(await bodies('roll.swarm.test', 10))]}`,
    });
    const before = new Set((await routesOf('roll.swarm.test')).map((r) => r.container.id));
    const failed: string[] = [];
    let requests = 0;
    let stop = false;
    // 20 requests a second, each on its own timer so a slow one does not lower the rate.
    const inflight: Promise<void>[] = [];
    const timer = setInterval(() => {
      if (stop) return;
      inflight.push(
        get('roll.swarm.test').then((r) => {
          requests++;
          if (r.status !== 200 || !r.body.startsWith('roll@'))
            failed.push(`${r.status} ${r.body.slice(0, 100)}`);
        }),
      );
    }, 50);
    try {
      const up = await manager.docker(['service', 'update', '--force', 'roll']); // waits for the update to converge
      expect(
        up.code,
        `${up.stderr}\n${(await manager.docker(['service', 'ps', '--no-trunc', 'roll'])).stdout}`,
      ).toBe(0);
      await waitUntil(
        async () => {
          const now = await routesOf('roll.swarm.test');
          return now.length === 2 && now.every((r) => !before.has(r.container.id));
        },
        {
          timeoutMs: 30_000,
          message: async () => `old tasks still routed: ${JSON.stringify(await routesOf('roll.swarm.test'))}`,
        },
      );
      await new Promise((res) => setTimeout(res, 1_000));
    } finally {
      stop = true;
      clearInterval(timer);
      await Promise.all(inflight);
    }
    expect(requests).toBeGreaterThan(100);
    expect(failed).toEqual([]);
  }, 180_000);

  it('explains that a service label routes a task, not its container label', async () => {
    await createService('both', 18088, { 'berth.host': 'both.swarm.test', 'berth.port': '18088' }, [
      '--constraint',
      'node.role==worker',
      '--container-label',
      'berth.host=both-container.swarm.test',
      '--container-label',
      'berth.port=18088',
    ]);
    await serves('both.swarm.test', 'both@swarm-c');
    expect((await get('both-container.swarm.test')).status).toBe(404);
    const r = await server.cli(['explain', 'both', '--json']);
    const ex = JSON.parse(r.stdout);
    expect(ex.source).toMatch(/service labels of both/);
    expect(
      ex.routes.some((x: { errors: string[] }) =>
        x.errors.some((e) => /task of Swarm service both, whose service labels route it/.test(e)),
      ),
    ).toBe(true);
  });

  it('deploys deploy/stack.yml: the server on a manager, an agent and a socket proxy on every node', async () => {
    const stack = resolve(import.meta.dirname, '../../deploy/stack.yml');
    const env = { BERTH_SERVER: server.agentUrl, BERTH_PUBLIC_NAME: new URL(server.agentUrl).hostname };
    const config = await manager.docker(['stack', 'config', '-c', stack], { env });
    expect(config.code, config.stderr).toBe(0);
    await manager.run(['secret', 'create', 'berth_agent_key', '-'], { input: 'not-a-real-key' });
    const deployed = await manager.docker(['stack', 'deploy', '-c', stack, 'berthstack'], { env });
    expect(deployed.code, deployed.stderr).toBe(0);
    const ls = await manager.run(['service', 'ls', '--format', '{{.Name}} {{.Mode}}']);
    expect(
      ls.stdout
        .split('\n')
        .filter((l) => l.startsWith('berthstack_'))
        .sort(),
    ).toEqual([
      'berthstack_agent global',
      'berthstack_docker-socket-proxy global',
      'berthstack_server replicated',
    ]);
    const placement = await manager.run([
      'service',
      'inspect',
      'berthstack_server',
      '--format',
      '{{json .Spec.TaskTemplate.Placement.Constraints}}',
    ]);
    expect(JSON.parse(placement.stdout)).toEqual(['node.role == manager']);
    await manager.run(['stack', 'rm', 'berthstack']);
  });
});
