// A private dockerd per test file: its own data-root, exec-root, pidfile and socket, no bridge,
// no iptables, no forwarding. Containers run with --network host; all traffic stays on loopback.
import { execFile, execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { registerCleanup } from './cleanup.js';
import { freePort } from './ports.js';
import { type Logged, spawnLogged, waitUntil } from './proc.js';

export interface DockerResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface DockerOptions {
  /** Written to the CLI's stdin (e.g. a tarball for `import -`). */
  input?: string | Buffer;
  /** Extra environment for the CLI (e.g. variables a stack file interpolates). */
  env?: NodeJS.ProcessEnv;
}

export interface TestDockerd {
  dir: string;
  /** The network namespace the daemon (and its host-network containers) live in, if any. */
  netns?: string;
  socket: string;
  dockerHost: string;
  /** The current dockerd's PID (changes on restart). */
  readonly pid: number;
  /** The docker CLI against this daemon; never throws, the exit code is in the result. */
  docker(args: string[], opts?: DockerOptions): Promise<DockerResult>;
  /** Like docker(), but throws with stderr when the CLI exits non-zero. */
  run(args: string[], opts?: DockerOptions): Promise<DockerResult>;
  /**
   * SIGTERM the daemon, then start it again on the same dirs and socket; containers with a restart
   * policy come back. The daemon waits each container's stop timeout (10 s unless run with
   * --stop-timeout): a busybox PID 1 ignores SIGTERM.
   */
  restart(): Promise<void>;
  /** Remove every container, stop dockerd and its containerd by PID, unmount and delete the dir. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

/**
 * Where private daemons live. The run id (set by the global setup) lets the global teardown reap
 * whatever a crashed worker left behind without touching daemons of other runs or benchmarks.
 */
export function dockerdPrefix(runId = process.env.BERTH_TEST_RUN): string {
  // containerd's socket sits deepest: <dir>/x/containerd/containerd.sock.ttrpc, and unix socket
  // paths must stay under 108 bytes. Fall back to /tmp when TMPDIR is long.
  const base = tmpdir().length <= 40 ? tmpdir() : '/tmp';
  return join(base, runId ? `bk-${runId}-` : 'bk-');
}

/** The docker CLI pointed at one socket, isolated from the user's CLI config and environment. */
export function dockerCli(socket: string, args: string[], opts: DockerOptions = {}): Promise<DockerResult> {
  const { DOCKER_HOST: _h, DOCKER_CONTEXT: _c, ...env } = process.env;
  return new Promise((resolve) => {
    const child = execFile(
      'docker',
      ['-H', `unix://${socket}`, ...args],
      { maxBuffer: 64 << 20, env: { ...env, ...opts.env, DOCKER_CONFIG: join(socket, '..', 'cli') } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ stdout, stderr: err && !stderr ? err.message : stderr, code });
      },
    );
    child.stdin?.on('error', () => {}); // the CLI may exit before reading all input
    child.stdin?.end(opts.input);
  });
}

export interface DockerdOptions {
  name?: string;
  /**
   * Run the daemon in a network namespace of its own (created here, deleted on stop), for features
   * that make Docker create networks, such as `swarm init`: their bridges then exist only inside
   * that namespace, never on the machine's own network.
   */
  netns?: boolean;
  /**
   * With netns: let the daemon manage its bridge networks the way it does on a real host (iptables
   * NAT, forwarding, published ports; all of it inside the namespace), for compose stacks. `pool`
   * is the /16 its networks are carved from.
   */
  bridgeNetworks?: { pool: string };
  /** Keep images and layers here across runs (e.g. a build cache); not deleted on stop. */
  dataRoot?: string;
  /**
   * With netns: the daemon's own hostname (a UTS namespace of its own), e.g. for a Swarm node,
   * whose name `docker node ls` shows is the engine's hostname.
   */
  hostname?: string;
}

/** A private dockerd; see DockerdOptions for the namespace and network choices. */
export async function startDockerd(opts: DockerdOptions = {}): Promise<TestDockerd> {
  if (opts.hostname && !opts.netns) throw new Error('hostname needs netns');
  if (opts.bridgeNetworks && !opts.netns) throw new Error('bridgeNetworks needs netns: they stay inside it');
  const name = (opts.name ?? 'd').replace(/[^\w.-]/g, '').slice(0, 12);
  const dir = mkdtempSync(`${dockerdPrefix()}${name}-`);
  const netns = opts.netns ? `berth-${dir.slice(-6).replace(/[^\w]/g, 'x')}` : undefined;
  if (netns) {
    execFileSync('ip', ['netns', 'add', netns]);
    execFileSync('ip', ['netns', 'exec', netns, 'ip', 'link', 'set', 'lo', 'up']);
  }
  const socket = join(dir, 'd.sock');
  const execRoot = join(dir, 'x');
  // No --containerd: dockerd starts its own containerd under the exec-root, so it is private too.
  const args = [
    '--data-root',
    opts.dataRoot ?? join(dir, 'data'),
    '--exec-root',
    execRoot,
    '--pidfile',
    join(dir, 'dockerd.pid'),
    '-H',
    `unix://${socket}`,
    '--bridge=none',
    ...(opts.bridgeNetworks
      ? // NAT, forwarding and published ports for the networks it makes, all inside the namespace,
        // from an address pool of the test's choosing (never Docker's 172.17.0.0/16 default).
        ['--default-address-pool', `base=${opts.bridgeNetworks.pool},size=24`]
      : ['--iptables=false', '--ip-masq=false', '--ip-forward=false']),
  ];
  let proc: Logged | undefined;
  let starts = 0;
  let stopped = false;

  const launch = async () => {
    // nsenter switches only the network namespace (`ip netns exec` would also remount /sys and
    // hide the cgroups dockerd needs).
    const inNs = ['nsenter', `--net=/var/run/netns/${netns}`, 'dockerd', ...args];
    const p = netns
      ? opts.hostname
        ? // unshare and sh exec in place: the PID is dockerd's, as without a hostname.
          spawnLogged(
            'unshare',
            ['--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', opts.hostname, ...inNs],
            { logFile: join(dir, `dockerd-${starts++}.log`) },
          )
        : spawnLogged(inNs[0]!, inNs.slice(1), { logFile: join(dir, `dockerd-${starts++}.log`) })
      : spawnLogged('dockerd', args, { logFile: join(dir, `dockerd-${starts++}.log`) });
    proc = p;
    let exited = false;
    void p.exited.then(() => {
      exited = true;
    });
    const tail = () => p.output().split('\n').slice(-30).join('\n');
    await waitUntil(
      async () => {
        if (exited) throw new Error(`private dockerd exited during start-up:\n${tail()}`);
        return (await dockerCli(socket, ['version', '--format', '{{.Server.Version}}'])).code === 0;
      },
      {
        timeoutMs: START_TIMEOUT_MS,
        intervalMs: 200,
        message: () => `private dockerd (${dir}) did not answer \`docker version\`:\n${tail()}`,
      },
    );
  };

  const stopDaemon = async () => {
    await proc?.stop('SIGTERM', STOP_TIMEOUT_MS);
    // dockerd normally stops its containerd on the way out; make sure, so a restart does not meet
    // a stale containerd on the same socket and a stop leaves nothing behind.
    const containerdPid = readPid(join(execRoot, 'containerd', 'containerd.pid'));
    if (containerdPid && cmdlineOf(containerdPid)?.includes(`${execRoot}/`)) {
      await terminate([containerdPid], 5_000);
    }
    await killTrees(`${execRoot}/`); // leftover shims and whatever runs under them
  };

  const d: TestDockerd = {
    dir,
    ...(netns ? { netns } : {}),
    socket,
    dockerHost: `unix://${socket}`,
    get pid() {
      return proc?.pid ?? -1;
    },
    docker: (a, o) => dockerCli(socket, a, o),
    async run(a, o) {
      const r = await dockerCli(socket, a, o);
      if (r.code !== 0) throw new Error(`docker ${a.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
      return r;
    },
    async restart() {
      await stopDaemon();
      await launch();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      const ids = (await dockerCli(socket, ['ps', '-aq'])).stdout.split('\n').filter(Boolean);
      if (ids.length > 0) await dockerCli(socket, ['rm', '-f', ...ids]);
      await stopDaemon();
      unmountUnder(dir);
      if (opts.dataRoot) unmountUnder(opts.dataRoot);
      rmSync(dir, { recursive: true, force: true });
      if (netns) execFileSync('ip', ['netns', 'del', netns]);
    },
  };
  registerCleanup(() => d.stop());
  await launch();
  if (netns) {
    // Swarm's gateway bridge would default to 172.17.0.0/16; give it an address of our choosing,
    // inside the namespace, before anything creates it.
    await d.run([
      'network',
      'create',
      '--driver',
      'bridge',
      '--subnet',
      '10.231.0.0/24',
      '-o',
      'com.docker.network.bridge.name=docker_gwbridge',
      '-o',
      'com.docker.network.bridge.enable_icc=false',
      'docker_gwbridge',
    ]);
  }
  return d;
}

/**
 * Last-resort sweep for the global teardown: kill every process tree whose command line names a
 * directory under `prefix` (dockerd, containerd, shims, containers, anything pointed at the
 * socket), then unmount and delete those directories.
 */
export async function reapDockerds(prefix: string): Promise<string[]> {
  const killed = await killTrees(prefix);
  const parent = join(prefix, '..');
  const base = prefix.slice(parent.length + 1);
  for (const entry of readdirSync(parent)) {
    if (!entry.startsWith(base)) continue;
    unmountUnder(join(parent, entry));
    rmSync(join(parent, entry), { recursive: true, force: true });
  }
  return killed;
}

// ---- processes, found through /proc so nothing is killed by name ----

function readPid(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function cmdlineOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return undefined;
  }
}

/** Alive means present and not a zombie (a zombie's parent may simply not have reaped it yet). */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

function processTable(): { pid: number; ppid: number; cmd: string }[] {
  const rows = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      rows.push({ pid: Number(p), ppid, cmd: cmdlineOf(Number(p)) ?? '' });
    } catch {
      // exited while we looked
    }
  }
  return rows;
}

/** SIGKILL every process whose command line contains `needle`, and all their descendants. */
async function killTrees(needle: string): Promise<string[]> {
  const table = processTable();
  const doomed = new Set(
    table.filter((r) => r.pid !== process.pid && r.cmd.includes(needle)).map((r) => r.pid),
  );
  // Descendants matter: a container's processes are children of a shim and never name the dir.
  for (let grew = true; grew; ) {
    grew = false;
    for (const r of table) {
      if (doomed.has(r.ppid) && !doomed.has(r.pid)) {
        doomed.add(r.pid);
        grew = true;
      }
    }
  }
  const described = table.filter((r) => doomed.has(r.pid)).map((r) => `${r.pid} ${r.cmd}`);
  await terminate([...doomed], 0);
  return described;
}

/** SIGTERM (unless graceMs is 0), SIGKILL after graceMs, then wait until every PID is gone. */
async function terminate(pids: number[], graceMs: number): Promise<void> {
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // gone already
    }
  };
  if (graceMs > 0) {
    for (const pid of pids) signal(pid, 'SIGTERM');
    await waitUntil(() => pids.every((p) => !isAlive(p)), {
      timeoutMs: graceMs,
      intervalMs: 50,
      message: '',
    }).catch(() => {});
  }
  for (const pid of pids.filter(isAlive)) signal(pid, 'SIGKILL');
  await waitUntil(() => pids.every((p) => !isAlive(p)), {
    timeoutMs: 10_000,
    intervalMs: 50,
    message: `processes ${pids.filter(isAlive).join(', ')} survived SIGKILL`,
  });
}

/** Lazily unmount anything still mounted under dir (overlay, shm, netns), deepest first. */
function unmountUnder(dir: string): void {
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      // already unmounted with its parent
    }
  }
}

// ---- the test image ----

const BUSYBOX_APPLETS = [
  'sh',
  'httpd',
  'nc',
  'echo',
  'cat',
  'sleep',
  'ls',
  'touch',
  'printf',
  'wc',
  'head',
  'dd',
  'true',
  'false',
  'env',
  'id',
  'mkdir',
  'rm',
  'test',
  'seq',
  'tr',
  'kill',
];

/** The static busybox, or a clear error: a dynamic one cannot run in an image without libc. */
function staticBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (!existsSync(p)) continue;
    let ldd = '';
    try {
      ldd = execFileSync('ldd', [p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string };
      ldd = `${e.stdout ?? ''}${e.stderr ?? ''}`;
    }
    if (/not a dynamic executable|statically linked/.test(ldd)) return p;
  }
  throw new Error('no static busybox found: run scripts/install-deps (installs busybox-static)');
}

/** A busybox-static root imported as an image: no registry is reachable here. Cached per daemon. */
export async function importBusybox(d: TestDockerd, tag = 'berth-test/busybox:latest'): Promise<string> {
  if ((await d.docker(['image', 'inspect', tag])).code === 0) return tag;
  const root = mkdtempSync(join(tmpdir(), 'bbroot-'));
  try {
    for (const sub of ['bin', 'tmp', 'etc', 'www', 'srv']) mkdirSync(join(root, sub), { recursive: true });
    copyFileSync(staticBusybox(), join(root, 'bin', 'busybox'));
    chmodSync(join(root, 'bin', 'busybox'), 0o755);
    for (const a of BUSYBOX_APPLETS) symlinkSync('busybox', join(root, 'bin', a));
    writeFileSync(join(root, 'www', 'index.html'), 'berth test page\n');
    writeFileSync(
      join(root, 'etc', 'passwd'),
      'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n',
    );
    writeFileSync(join(root, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    chmodSync(join(root, 'tmp'), 0o1777);
    const tar = await new Promise<Buffer>((resolve, reject) =>
      execFile('tar', ['-C', root, '-c', '.'], { encoding: 'buffer', maxBuffer: 64 << 20 }, (err, out) =>
        err ? reject(err) : resolve(out),
      ),
    );
    await d.run(['import', '-', tag], { input: tar });
    return tag;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** `docker run -d --network host --name <name> -l k=v … <image> <argv…>`: how tests run containers. */
export async function runHostContainer(
  d: TestDockerd,
  name: string,
  labels: Record<string, string>,
  argv: string[],
  o: { extra?: string[]; image?: string } = {},
): Promise<DockerResult> {
  const l = Object.entries(labels).flatMap(([k, v]) => ['-l', `${k}=${v}`]);
  return d.run([
    'run',
    '-d',
    '--network',
    'host',
    '--name',
    name,
    ...l,
    ...(o.extra ?? []),
    o.image ?? 'berth-test/busybox:latest',
    ...argv,
  ]);
}

/**
 * A web container: busybox httpd on `ip`:<a free port> answering `body` (default "body of
 * <name>") at /, labelled `berth.port=<port>` plus `labels`. Resolves with the port.
 */
export async function runWebContainer(
  d: TestDockerd,
  name: string,
  labels: Record<string, string>,
  o: { ip?: string; body?: string } = {},
): Promise<number> {
  const ip = o.ip ?? '127.0.0.1';
  const p = await freePort(ip);
  const body = o.body ?? `body of ${name}`;
  await runHostContainer(d, name, { 'berth.port': String(p), ...labels }, [
    'sh',
    '-c',
    `mkdir -p /w && echo "${body}" > /w/index.html && exec httpd -f -p ${ip}:${p} -h /w`,
  ]);
  return p;
}
