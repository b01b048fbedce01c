// The server's side of the TCP forwarder process (src/ingress/tcp/sidecar.ts), against the real
// `berth tcp-server` from dist/: a killed forwarder comes back at once with its listeners, and
// one that cannot start is retried with a growing wait, not in a spawn loop.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TcpSidecar } from '../../src/ingress/tcp/sidecar.js';
import { BERTH_BIN } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { freePort } from './support/ports.js';
import { waitUntil } from './support/proc.js';

useCleanup();

let echo: Server;
let dataDir: string;
let sidecar: TcpSidecar;
let listen: number;
const pidFile = () => join(dataDir, 'tcp', 'tcp.pid');
const forwarderPid = () => Number(readFileSync(pidFile(), 'utf8'));

/** Whether one byte sent through the listener comes back within 500 ms. */
function served(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port: listen });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => s.write('x'));
    s.once('data', () => done(true));
    s.once('error', () => done(false));
    setTimeout(() => done(false), 500);
  });
}

beforeAll(async () => {
  echo = createServer((s) => s.pipe(s));
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  listen = await freePort();
  dataDir = mkdtempSync(join(tmpdir(), 'bt-'));
  sidecar = new TcpSidecar({
    dataDir,
    config: { bind: '127.0.0.1', idleTimeoutMs: 0, maxConnections: 10 },
    command: [process.execPath, BERTH_BIN],
    logger: pino({ level: 'silent' }),
  });
  registerCleanup(async () => {
    await sidecar.close();
    echo.close();
    rmSync(dataDir, { recursive: true, force: true });
  });
  await sidecar.start();
  const port = (echo.address() as { port: number }).port;
  await sidecar.sync([{ listen, upstreams: [{ host: '127.0.0.1', port }], allow: [], routeKeys: ['echo'] }]);
});

afterAll(async () => {
  await sidecar.close();
});

describe('the TCP forwarder process, from the server side', () => {
  it('replaces a killed forwarder at once, and the new one serves the same listener', async () => {
    expect(await served()).toBe(true);
    const first = forwarderPid();
    // Old enough not to count as a forwarder that cannot start.
    await new Promise((r) => setTimeout(r, 2_100));
    const t0 = Date.now();
    process.kill(first, 'SIGKILL');
    await waitUntil(served, { timeoutMs: 3_000, intervalMs: 10, message: 'not served after the kill' });
    console.log(`[figure] forwarder SIGKILLed → listener served again in ${Date.now() - t0} ms`);
    expect(forwarderPid()).not.toBe(first);
    expect(sidecar.restarts).toBe(1);
    expect(sidecar.status()).toEqual([expect.objectContaining({ listen, state: 'listening' })]);
  });

  it('retries a forwarder that cannot start with a growing wait, and recovers when it can', async () => {
    const config = join(dataDir, 'tcp', 'config.json');
    const good = readFileSync(config, 'utf8');
    writeFileSync(config, '{ not json');
    const before = sidecar.restarts;
    process.kill(forwarderPid(), 'SIGKILL');
    await new Promise((r) => setTimeout(r, 3_000));
    // Each failed start takes about 0.3 s; with no wait that would be about 10 restarts in 3 s.
    // Waits of 0, 0.1, 0.2, 0.4, 0.8 and 1.6 s allow at most 6.
    const restarts = sidecar.restarts - before;
    expect(restarts).toBeGreaterThanOrEqual(2);
    expect(restarts).toBeLessThanOrEqual(6);
    writeFileSync(config, good);
    await waitUntil(served, { timeoutMs: 10_000, intervalMs: 50, message: 'not served after the fix' });
  });
});
