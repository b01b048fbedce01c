// A real multi-node Swarm on this machine, for tests and benches: private dockerds, each in a
// network namespace (and UTS namespace, for its node name) of its own, joined by veth pairs to a
// bridge created here (a random 10.241.x.0/24 in the root namespace); the first node inits the
// swarm (its address pool inside the namespaces, never Docker's defaults), the others join as the
// roles asked. Everything is stopped and removed by the registered cleanups.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { registerCleanup } from './cleanup.js';
import { importBusybox, startDockerd, type TestDockerd } from './dockerd.js';

export const SWARM_IMAGE = 'berth-test/busybox:latest';

export interface SwarmNodeHandle {
  name: string;
  role: 'manager' | 'worker';
  /** The node's address on the bridge (its swarm advertise address). */
  addr: string;
  d: TestDockerd;
}

export interface TestSwarm {
  /** The bridge's own address (root namespace): where a server listens for the nodes' agents. */
  gateway: string;
  nodes: SwarmNodeHandle[];
  byName(name: string): SwarmNodeHandle;
  /** The node that leads the raft now. */
  leader(): Promise<SwarmNodeHandle>;
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });

/** A bridge of the test's own in the root namespace, and namespaces joined to it by veth pairs. */
export interface TestBridge {
  /** The bridge's own address (root namespace). */
  gateway: string;
  /** Joins a namespace as `eth0` at the bridge's address .<11 + i>; returns that address. */
  join(netns: string, i: number): string;
}

/** A bridge on a random 10.241.x.0/24, removed by the registered cleanups (veth ends go with it). */
export function startBridge(): TestBridge {
  const net = `10.241.${randomBytes(1)[0]! % 250}`;
  const bridge = `bsw${randomBytes(3).toString('hex')}`;
  ip('link', 'add', bridge, 'type', 'bridge');
  registerCleanup(() => ip('link', 'del', bridge));
  ip('addr', 'add', `${net}.1/24`, 'dev', bridge);
  ip('link', 'set', bridge, 'up');
  return {
    gateway: `${net}.1`,
    join(netns, i) {
      const veth = `${bridge}${i}`;
      const addr = `${net}.${11 + i}`;
      // The veth's far end lives in the node's namespace and goes with it.
      ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
      ip('link', 'set', veth, 'master', bridge, 'up');
      ip('netns', 'exec', netns, 'ip', 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
      ip('netns', 'exec', netns, 'ip', 'link', 'set', 'eth0', 'up');
      return addr;
    },
  };
}

export async function startSwarm(
  spec: { name: string; role: 'manager' | 'worker' }[],
  o: { pool?: string } = {},
): Promise<TestSwarm> {
  const bridge = startBridge();
  const started = await Promise.all(
    spec.map((s) => startDockerd({ name: s.name, netns: true, hostname: s.name })),
  );
  const nodes: SwarmNodeHandle[] = spec.map((s, i) => ({
    ...s,
    addr: bridge.join(started[i]!.netns!, i),
    d: started[i]!,
  }));
  await Promise.all(nodes.map((n) => importBusybox(n.d, SWARM_IMAGE)));
  const first = nodes[0]!;
  await first.d.run([
    'swarm',
    'init',
    '--advertise-addr',
    first.addr,
    '--default-addr-pool',
    o.pool ?? '10.242.0.0/16',
  ]);
  const token = async (role: string) =>
    (await first.d.run(['swarm', 'join-token', '-q', role])).stdout.trim();
  for (const n of nodes.slice(1)) {
    await n.d.run([
      'swarm',
      'join',
      '--advertise-addr',
      n.addr,
      '--token',
      await token(n.role),
      `${first.addr}:2377`,
    ]);
  }
  registerCleanup(async () => {
    for (const n of nodes) await n.d.docker(['swarm', 'leave', '--force']);
  });
  const byName = (name: string) => {
    const n = nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no swarm node ${name}`);
    return n;
  };
  return {
    gateway: bridge.gateway,
    nodes,
    byName,
    async leader() {
      for (const n of nodes.filter((x) => x.role === 'manager')) {
        const r = await n.d.docker(['node', 'ls', '--format', '{{.Hostname}} {{.ManagerStatus}}']);
        const line = r.stdout.split('\n').find((l) => l.endsWith(' Leader'));
        if (line) return byName(line.split(' ')[0]!);
      }
      throw new Error('the swarm has no leader');
    },
  };
}

/** A busybox httpd on its node's network at `port`, answering "<name>@<node>", exiting at once on SIGTERM. */
export function swarmApp(port: number, name: string): string[] {
  return [
    'sh',
    '-c',
    `mkdir -p /w; echo "${name}@$NODE" > /w/index.html; trap "exit 0" TERM; httpd -f -p 0.0.0.0:${port} -h /w & wait`,
  ];
}

/** `docker service create` of swarmApp on the host network, with labels and extra flags. */
export async function createAppService(
  manager: TestDockerd,
  name: string,
  port: number,
  labels: Record<string, string>,
  extra: string[] = [],
): Promise<void> {
  await manager.run([
    'service',
    'create',
    '--detach',
    '--name',
    name,
    '--network',
    'host',
    '--env',
    'NODE={{.Node.Hostname}}',
    ...Object.entries(labels).flatMap(([k, v]) => ['--label', `${k}=${v}`]),
    ...extra,
    SWARM_IMAGE,
    ...swarmApp(port, name),
  ]);
}
