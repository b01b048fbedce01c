// A private dockerd per test file: its own data-root, exec-root, pidfile and socket, no bridge,
// no iptables, no forwarding. Containers run with --network host; all traffic stays on loopback.
import { execFile } from 'node:child_process';
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
import { type Logged, spawnLogged, waitUntil } from './proc.js';

export interface DockerResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface TestDockerd {
  dir: string;
  socket: string;
  dockerHost: string;
  readonly pid: number;
  docker(args: string[], opts?: { input?: string }): Promise<DockerResult>;
  /** Like docker(), but throws with stderr on failure and returns stdout. */
  run(args: string[]): Promise<string>;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export function dockerCli(socket: string, args: string[], input?: string): Promise<DockerResult> {
  return new Promise((resolve) => {
    const child = execFile(
      'docker',
      ['-H', `unix://${socket}`, ...args],
      { maxBuffer: 64 << 20, env: { ...process.env, DOCKER_CONFIG: join(socket, '..', 'cli') } },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : 1
          : 0;
        resolve({ stdout, stderr, code });
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

export async function startDockerd(opts: { name?: string } = {}): Promise<TestDockerd> {
  // Unix socket paths must stay under 108 bytes: keep the directory short.
  const dir = mkdtempSync(join('/tmp', `bk-${(opts.name ?? 'd').slice(0, 12)}-`));
  const socket = join(dir, 'd.sock');
  const execRoot = join(dir, 'x');
  const args = [
    '--data-root',
    join(dir, 'data'),
    '--exec-root',
    execRoot,
    '--pidfile',
    join(dir, 'dockerd.pid'),
    '-H',
    `unix://${socket}`,
    '--bridge=none',
    '--iptables=false',
    '--ip-masq=false',
    '--ip-forward=false',
  ];
  let proc: Logged;
  let starts = 0;
  const launch = async () => {
    proc = spawnLogged('dockerd', args, { logFile: join(dir, `dockerd-${starts++}.log`) });
    await waitUntil(
      async () => (await dockerCli(socket, ['version', '--format', '{{.Server.Version}}'])).code === 0,
      {
        timeoutMs: 45_000,
        intervalMs: 200,
        message: () => `private dockerd did not start:\n${proc.output().split('\n').slice(-20).join('\n')}`,
      },
    );
  };

  const stopDaemon = async () => {
    await proc.stop('SIGTERM', 20_000);
    killByCmdline(execRoot); // containerd and shims started for this daemon only
  };

  const d: TestDockerd = {
    dir,
    socket,
    dockerHost: `unix://${socket}`,
    get pid() {
      return proc.pid;
    },
    docker: (a, o) => dockerCli(socket, a, o?.input),
    async run(a) {
      const r = await dockerCli(socket, a);
      if (r.code !== 0) throw new Error(`docker ${a.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
      return r.stdout;
    },
    async restart() {
      await stopDaemon();
      await launch();
    },
    async stop() {
      const ids = (await dockerCli(socket, ['ps', '-aq'])).stdout.split('\n').filter(Boolean);
      if (ids.length > 0) await dockerCli(socket, ['rm', '-f', ...ids]);
      await stopDaemon();
      unmountUnder(dir);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  registerCleanup(() => d.stop());
  await launch();
  return d;
}

/** SIGKILL every process whose command line mentions `needle` (e.g. this daemon's exec-root). */
function killByCmdline(needle: string): void {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes(needle)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

function unmountUnder(dir: string): void {
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m.startsWith(dir))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) execFile('umount', ['-l', m], () => {});
}

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

/** A busybox-static root imported as an image: no registry is reachable here. */
export async function importBusybox(d: TestDockerd, tag = 'berth-test/busybox:latest'): Promise<string> {
  if ((await d.docker(['image', 'inspect', tag])).code === 0) return tag;
  const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));
  if (!busybox) throw new Error('busybox-static is not installed (apt-get install busybox-static)');
  const root = mkdtempSync(join(tmpdir(), 'bbroot-'));
  for (const sub of ['bin', 'tmp', 'etc', 'www', 'srv']) mkdirSync(join(root, sub), { recursive: true });
  copyFileSync(busybox, join(root, 'bin', 'busybox'));
  chmodSync(join(root, 'bin', 'busybox'), 0o755);
  for (const a of BUSYBOX_APPLETS) symlinkSync('busybox', join(root, 'bin', a));
  writeFileSync(join(root, 'www', 'index.html'), 'berth test page\n');
  writeFileSync(
    join(root, 'etc', 'passwd'),
    'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n',
  );
  chmodSync(join(root, 'tmp'), 0o1777);
  const tar = await new Promise<Buffer>((resolve, reject) =>
    execFile('tar', ['-C', root, '-c', '.'], { encoding: 'buffer', maxBuffer: 64 << 20 }, (err, out) =>
      err ? reject(err) : resolve(out),
    ),
  );
  await new Promise<void>((resolve, reject) => {
    const child = execFile('docker', ['-H', d.dockerHost, 'import', '-', tag], (err, _o, stderr) =>
      err ? reject(new Error(`docker import failed: ${stderr}`)) : resolve(),
    );
    child.stdin?.end(tar);
  });
  rmSync(root, { recursive: true, force: true });
  return tag;
}
