// The harness itself, against real processes: a private dockerd, the busybox image, host-network
// containers on loopback, restart and a stop that leaves nothing behind.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, isAlive, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, spawnLogged, waitUntil } from './support/proc.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
let d: TestDockerd;
let webPort: number;

/** PIDs of live processes whose command line mentions `needle`. */
function pidsMentioning(needle: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(needle) && isAlive(Number(p));
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function serves(port: number) {
  await waitUntil(async () => (await httpGet(`http://127.0.0.1:${port}/`)).status === 200, {
    timeoutMs: 15_000,
    message: async () => `httpd on ${port}: ${JSON.stringify(await httpGet(`http://127.0.0.1:${port}/`))}`,
  });
}

beforeAll(async () => {
  d = await startDockerd({ name: 'harness' });
  await importBusybox(d, IMAGE);
});

afterAll(async () => {
  await d?.stop();
});

describe('private dockerd', () => {
  it('listens on a short private socket and imports busybox once', async () => {
    expect(d.socket.length).toBeLessThan(108);
    expect(d.dockerHost).toBe(`unix://${d.socket}`);
    expect(isAlive(d.pid)).toBe(true);
    expect(await importBusybox(d, IMAGE)).toBe(IMAGE); // cached: a second call is a no-op
    const info = await d.run(['info', '--format', '{{.DockerRootDir}}']);
    expect(info.stdout.trim()).toBe(join(d.dir, 'data'));
  });

  it('runs a host-network httpd that answers on loopback', async () => {
    webPort = await freePort();
    await d.run([
      'run',
      '-d',
      '--network',
      'host',
      '--restart',
      'always',
      '--stop-timeout',
      '1', // httpd as PID 1 ignores SIGTERM; keeps restart() quick
      '--name',
      'web',
      IMAGE,
      '/bin/busybox',
      'httpd',
      '-f',
      '-p',
      `127.0.0.1:${webPort}`,
      '-h',
      '/www',
    ]);
    await serves(webPort);
    const res = await httpGet(`http://127.0.0.1:${webPort}/`, { host: 'anything.test' });
    expect(res.status).toBe(200);
    expect(res.body).toContain('berth test page');
  });

  it('keeps container labels', async () => {
    await d.run([
      'run',
      '-d',
      '--network',
      'host',
      '--name',
      'labelled',
      '-l',
      'berth.host=x.test',
      IMAGE,
      'sleep',
      '600',
    ]);
    const out = await d.run(['inspect', '--format', '{{json .Config.Labels}}', 'labelled']);
    expect(JSON.parse(out.stdout)).toMatchObject({ 'berth.host': 'x.test' });
    await d.run(['rm', '-f', 'labelled']); // sleep ignores SIGTERM and would slow restart()
  });

  it('reports failures without throwing from docker() and with stderr from run()', async () => {
    const r = await d.docker(['inspect', 'no-such-container']);
    expect(r.code).not.toBe(0);
    await expect(d.run(['inspect', 'no-such-container'])).rejects.toThrow(/no-such-container/i);
  });

  it('restarts on the same dirs; restart-policy containers come back', async () => {
    const before = d.pid;
    await d.restart();
    expect(d.pid).not.toBe(before);
    expect(isAlive(before)).toBe(false);
    expect((await d.docker(['version'])).code).toBe(0);
    await serves(webPort);
  });

  it('stop() leaves no dockerd, containerd, container or directory behind', async () => {
    const pid = d.pid;
    const execRoot = join(d.dir, 'x');
    expect(pidsMentioning(`${execRoot}/`).length).toBeGreaterThan(0); // containerd and shims
    await d.stop();
    expect(isAlive(pid)).toBe(false);
    expect(pidsMentioning(`${execRoot}/`)).toEqual([]);
    expect(existsSync(d.dir)).toBe(false);
    expect((await httpGet(`http://127.0.0.1:${webPort}/`)).status).toBe(0);
    await d.stop(); // idempotent, as the cleanup calls it again
  });
});

describe('process helpers', () => {
  it('waits for output and stops by PID', async () => {
    const p = spawnLogged('sh', ['-c', 'echo starting; sleep 0.2; echo ready >&2; exec sleep 60']);
    await p.waitFor(/ready/, 5_000);
    expect(p.output()).toBe('starting\nready');
    expect(await p.stop()).toBeNull(); // killed by the signal
    expect(isAlive(p.pid)).toBe(false);
  });

  it('fails waitFor when the process exits first', async () => {
    const p = spawnLogged('sh', ['-c', 'echo bye']);
    await expect(p.waitFor(/never/, 5_000)).rejects.toThrow(/exited/);
  });

  it('turns connection errors into status 0', async () => {
    const res = await httpGet(`http://127.0.0.1:${await freePort()}/`);
    expect(res.status).toBe(0);
    expect(res.body).toMatch(/ECONNREFUSED/);
  });
});
