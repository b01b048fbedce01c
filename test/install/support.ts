// What the install tests and bench/install.ts share: the image build on a private dockerd whose
// data root is kept (the layer cache), two "hosts" (dockerds in network namespaces joined by a
// veth pair), requests from inside a namespace, compose, and container RSS.
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { inNetns } from '../e2e/support/berth.js';
import { registerCleanup } from '../e2e/support/cleanup.js';
import { isAlive, startDockerd, type TestDockerd } from '../e2e/support/dockerd.js';

const run = promisify(execFile);
export const ROOT = join(import.meta.dirname, '..', '..');
export const VERSION: string = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version;

/** Where scripts/build-image keeps its bases; the build dockerd's layers live beside them. */
export function cacheDir(): string {
  return (
    process.env.BERTH_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'berth')
  );
}

/**
 * A dockerd on this machine's network (no bridge, no iptables) whose images outlive it. One at a
 * time per data root: a second run waits for nothing and says who holds it.
 */
export async function startBuildDockerd(dataRoot = join(cacheDir(), 'dockerd')): Promise<TestDockerd> {
  mkdirSync(dataRoot, { recursive: true });
  const lock = `${dataRoot}.lock`;
  try {
    writeFileSync(lock, String(process.pid), { flag: 'wx' });
  } catch {
    const holder = Number(readFileSync(lock, 'utf8'));
    if (holder > 0 && isAlive(holder)) throw new Error(`${dataRoot} is in use by process ${holder}`);
    writeFileSync(lock, String(process.pid)); // left by a run that died
  }
  registerCleanup(() => rmSync(lock, { force: true }));
  return startDockerd({ name: 'build', dataRoot });
}

export interface BuildSummary {
  tags: string[];
  bytes: number;
  base: string;
  buildBase: string;
  seconds: number;
}

/** scripts/build-image against `d`; throws with its output when it fails. */
export async function buildImage(d: TestDockerd, env: NodeJS.ProcessEnv = {}): Promise<BuildSummary> {
  try {
    const r = await run(join(ROOT, 'scripts', 'build-image'), [], {
      cwd: ROOT,
      env: { ...process.env, DOCKER_HOST: d.dockerHost, ...env },
      maxBuffer: 16 << 20,
      timeout: 40 * 60_000,
    });
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '');
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`scripts/build-image failed: ${e.message}\n${e.stderr ?? ''}${e.stdout ?? ''}`);
  }
}

/** `docker save … | docker load` from one daemon to others. */
export async function copyImages(from: TestDockerd, to: TestDockerd[], images: string[]): Promise<void> {
  const { stdout } = await run('docker', ['-H', from.dockerHost, 'save', ...images], {
    encoding: 'buffer',
    maxBuffer: 1 << 30,
  });
  for (const d of to) await d.run(['load', '-q'], { input: stdout });
}

export interface Host {
  d: TestDockerd;
  netns: string;
  /** This host's address on the link between the two hosts. */
  ip: string;
}

/**
 * Two Docker hosts: dockerds in network namespaces of their own that manage bridge networks as on
 * a real host (NAT, published ports), joined by a veth pair on 10.240.18.0/24. Nothing they do
 * reaches this machine's own network.
 */
export async function twoHosts(): Promise<[Host, Host]> {
  const a = await startDockerd({ name: 'hosta', netns: true, bridgeNetworks: { pool: '10.236.0.0/16' } });
  const b = await startDockerd({ name: 'hostb', netns: true, bridgeNetworks: { pool: '10.237.0.0/16' } });
  const hosts: [Host, Host] = [
    { d: a, netns: a.netns!, ip: '10.240.18.1' },
    { d: b, netns: b.netns!, ip: '10.240.18.2' },
  ];
  execFileSync('ip', [
    'link',
    'add',
    'bhA',
    'netns',
    a.netns!,
    'type',
    'veth',
    'peer',
    'name',
    'bhB',
    'netns',
    b.netns!,
  ]);
  for (const [h, dev] of [
    [hosts[0], 'bhA'],
    [hosts[1], 'bhB'],
  ] as const) {
    execFileSync('ip', ['-n', h.netns, 'addr', 'add', `${h.ip}/24`, 'dev', dev]);
    execFileSync('ip', ['-n', h.netns, 'link', 'set', dev, 'up']);
  }
  return hosts;
}

export interface Reply {
  status: number;
  body: string;
}

/**
 * GET url from inside a namespace (status 0 when it could not connect). node:http, not fetch:
 * fetch drops a Host header, and the front door routes by it.
 */
export async function getFrom(
  netns: string,
  url: string,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const script = `const req = require('node:http').get(${JSON.stringify(url)}, { headers: ${JSON.stringify(headers)}, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c) => (body += c)).on('end', () => console.log(JSON.stringify({ status: res.statusCode, body })));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => console.log(JSON.stringify({ status: 0, body: '' })));`;
  const [cmd, args] = inNetns(netns, process.execPath, ['-e', script]);
  const { stdout } = await run(cmd, args, { timeout: 15_000 });
  return JSON.parse(stdout);
}

/** docker-compose (Debian's, v1) against one daemon; throws with its output on failure. */
export async function compose(
  d: TestDockerd,
  project: string,
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<string> {
  try {
    const r = await run('docker-compose', ['-p', project, '-f', join(ROOT, file), ...args], {
      cwd: ROOT,
      env: { ...process.env, DOCKER_HOST: d.dockerHost, DOCKER_BUILDKIT: '0', ...env },
      timeout: 5 * 60_000,
      maxBuffer: 16 << 20,
    });
    return r.stdout + r.stderr;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(
      `docker-compose ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}${e.stdout ?? ''}`,
    );
  }
}

/** Installs Debian's docker-compose when it is missing (the install tests' only extra package). */
export function ensureCompose(): void {
  try {
    execFileSync('docker-compose', ['version'], { stdio: 'ignore' });
  } catch {
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'docker-compose'], {
      stdio: 'ignore',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
  }
}

export interface ProcessRss {
  pid: number;
  command: string;
  /** Resident set size. */
  mib: number;
  /** Proportional set size: shared pages (the node binary in three processes) split among sharers. */
  pssMib: number;
}

/** Resident memory (RSS and PSS) of every process in a container, read from /proc by host PID. */
export async function containerRss(d: TestDockerd, container: string): Promise<ProcessRss[]> {
  const { stdout } = await d.run(['top', container, '-eo', 'pid,args']);
  return stdout
    .trim()
    .split('\n')
    .slice(1)
    .map((line) => {
      const [pid, ...cmd] = line.trim().split(/\s+/);
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      const pss = Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
      return { pid: Number(pid), command: cmd.join(' ').slice(0, 80), mib: kb / 1024, pssMib: pss / 1024 };
    });
}

/** The one container of a compose service. */
export async function serviceContainer(d: TestDockerd, project: string, service: string): Promise<string> {
  const { stdout } = await d.run([
    'ps',
    '-q',
    '--filter',
    `label=com.docker.compose.project=${project}`,
    '--filter',
    `label=com.docker.compose.service=${service}`,
  ]);
  const id = stdout.trim().split('\n')[0];
  if (!id) throw new Error(`no container for ${project}/${service}`);
  return id;
}

export const BUSYBOX = 'berth-test/busybox:latest';

/**
 * A busybox web server answering "body of <name>" on the `apps` network, published on the host's
 * `hostPort` and labelled for Berth as `hostname`. Needs importBusybox and the network first.
 */
export async function runLabelledWeb(
  h: Host,
  name: string,
  hostPort: number,
  hostname: string,
): Promise<void> {
  await h.d.run([
    'run',
    '-d',
    '--name',
    name,
    '--network',
    'apps',
    '-p',
    `${hostPort}:8000`,
    '-l',
    `berth.host=${hostname}`,
    '-l',
    'berth.port=8000',
    BUSYBOX,
    'sh',
    '-c',
    `mkdir -p /w && echo "body of ${name}" > /w/index.html && exec httpd -f -p 8000 -h /w`,
  ]);
}

/**
 * `docker run … berth standalone` as the README gives it: read-only, no capabilities, the
 * host's Docker socket with its group, the front door on `frontPort`, plain HTTP. `extra` goes
 * before the image (e.g. `-p 7081:7080 -e BERTH_API_LISTEN=0.0.0.0:7080`).
 */
export async function runStandalone(
  h: Host,
  name: string,
  frontPort: number,
  extra: string[] = [],
): Promise<void> {
  await h.d.run([
    'run',
    '-d',
    '--name',
    name,
    '--read-only',
    '--cap-drop',
    'ALL',
    '--security-opt',
    'no-new-privileges:true',
    '--network',
    'apps',
    '-p',
    `${frontPort}:80`,
    '-v',
    `${name}-data:/data`,
    '-v',
    `${h.d.socket}:/var/run/docker.sock`,
    '--group-add',
    String(statSync(h.d.socket).gid),
    '-e',
    'BERTH_TLS=off',
    '-e',
    `BERTH_HOST_IP=${h.ip}`,
    ...extra,
    'berth:latest',
    'standalone',
  ]);
}

/** `berth keys create --auto-approve` by the CLI inside the server's container; the key's secret. */
export async function createAgentKey(
  h: Host,
  container: string,
  name: string,
  domains?: string,
): Promise<string> {
  const r = await h.d.run([
    'exec',
    container,
    'berth',
    'keys',
    'create',
    '--name',
    name,
    ...(domains ? ['--domains', domains] : []),
    '--auto-approve',
    '--json',
  ]);
  return JSON.parse(r.stdout).secret;
}
