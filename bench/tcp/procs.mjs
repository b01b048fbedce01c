// Process helpers for bench/tcp/run.mjs: free loopback ports, starting the upstream and the
// three proxies, waiting until they accept, reading their memory, and stopping each by its PID.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = join(HERE, '..', '..');
const HOST = '127.0.0.1';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port that was free on 127.0.0.1 a moment ago (bind to 0, read it, release it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = connect({ host: HOST, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/**
 * Starts a child in its own process group and remembers it in `registry`. Its stdin is a pipe
 * that the Node children watch, so they also go when the runner dies without cleaning up.
 */
export function startProcess(registry, name, command, args) {
  const child = spawn(command, args, { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  const proc = { name, child, pid: child.pid, stdout: '', stderr: '', exited: false };
  child.stdout.on('data', (d) => {
    proc.stdout = (proc.stdout + d).slice(-4096);
  });
  child.stderr.on('data', (d) => {
    proc.stderr = (proc.stderr + d).slice(-4096);
  });
  proc.exit = new Promise((resolve) => child.once('exit', resolve));
  proc.exit.then(() => {
    proc.exited = true;
  });
  child.once('error', (err) => {
    proc.stderr += `\n${err.message}`;
    proc.exited = true;
  });
  registry.push(proc);
  return proc;
}

/** Waits (at most `timeoutMs`) until `test()` holds, failing early if the process exits. */
async function waitFor(proc, what, test, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await test()) return;
    if (proc.exited) throw new Error(`${proc.name} exited before ${what}: ${proc.stderr.trim()}`);
    await sleep(50);
  }
  throw new Error(`${proc.name}: no ${what} within ${timeoutMs} ms: ${proc.stderr.trim()}`);
}

export async function startUpstream(registry) {
  const proc = startProcess(registry, 'upstream', process.execPath, [join(HERE, 'upstream.mjs')]);
  await waitFor(proc, 'port line', () => proc.stdout.includes('\n'));
  proc.port = JSON.parse(proc.stdout.split('\n')[0]).port;
  return proc;
}

/**
 * Berth's forwarder exactly as `berth server` runs it: `berth tcp-server` from dist/, with the
 * same Node flags, the default idle timeout and connection limit, and one access-log line per
 * connection (as with --tcp-access-log). Its one listener comes from the listener file the
 * forwarder restores at start, so no Berth server is involved.
 */
export async function startBerth(registry, upstreamPort, dir) {
  const cli = join(REPO, 'dist/cli/main.js');
  if (!existsSync(cli)) throw new Error('dist/ is missing: run `npm run build` first');
  const { TCP_NODE_FLAGS, writeTcpServerFiles } = await import(join(REPO, 'dist/ingress/tcp/sidecar.js'));
  const port = await freePort();
  const dataDir = join(dir, 'berth');
  const config = {
    bind: HOST,
    idleTimeoutMs: 3_600_000, // --tcp-idle-timeout's default
    maxConnections: 1024, // --tcp-max-connections's default
    accessLog: join(dir, 'berth-access.log'),
  };
  const listener = {
    listen: port,
    upstreams: [{ host: HOST, port: upstreamPort }],
    allow: [],
    routeKeys: ['bench'],
  };
  writeTcpServerFiles(dataDir, config, [listener]);
  const args = [...TCP_NODE_FLAGS, cli, 'tcp-server', '--data-dir', dataDir];
  const proc = startProcess(registry, 'berth', process.execPath, args);
  await waitFor(proc, 'listener', () => canConnect(port), 30_000);
  proc.port = port;
  return proc;
}

export async function startSocat(registry, upstreamPort) {
  const port = await freePort();
  const proc = startProcess(registry, 'socat', 'socat', [
    `TCP-LISTEN:${port},bind=${HOST},reuseaddr,fork`,
    `TCP:${HOST}:${upstreamPort}`,
  ]);
  await waitFor(proc, 'listener', () => canConnect(port));
  proc.port = port;
  return proc;
}

export function haproxyConfig(port, upstreamPort) {
  return [
    'global',
    '  maxconn 4096',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    'frontend bench',
    `  bind ${HOST}:${port}`,
    '  maxconn 4096',
    '  default_backend upstream',
    'backend upstream',
    `  server up ${HOST}:${upstreamPort} maxconn 4096`,
    '',
  ].join('\n');
}

export async function startHaproxy(registry, upstreamPort, dir) {
  const port = await freePort();
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(cfg, haproxyConfig(port, upstreamPort));
  const proc = startProcess(registry, 'haproxy', 'haproxy', ['-db', '-f', cfg]);
  await waitFor(proc, 'listener', () => canConnect(port));
  proc.port = port;
  return proc;
}

/** Resident and peak resident memory in MiB, from /proc/<pid>/status. */
export function memoryMiB(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'))?.[1] ?? Number.NaN);
    return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
  } catch {
    return { rss: Number.NaN, peak: Number.NaN };
  }
}

function signal(proc, sig) {
  try {
    process.kill(-proc.pid, sig); // its own group: socat's forked children go too
  } catch {
    try {
      process.kill(proc.pid, sig);
    } catch {}
  }
}

/** SIGTERM by PID, then SIGKILL if it has not exited within 3 s. */
export async function stopProcess(proc) {
  if (proc.exited || proc.pid === undefined) return;
  proc.child.stdin.destroy();
  signal(proc, 'SIGTERM');
  const exited = await Promise.race([proc.exit.then(() => true), sleep(3_000).then(() => false)]);
  if (!exited) {
    signal(proc, 'SIGKILL');
    await Promise.race([proc.exit, sleep(1_000)]);
  }
}

/** Last resort on process exit: synchronous SIGKILL to anything still running. */
export function killAllSync(registry) {
  for (const proc of registry) if (!proc.exited && proc.pid !== undefined) signal(proc, 'SIGKILL');
}
