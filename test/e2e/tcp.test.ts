// TCP routes through Berth's own forwarder, and client allow-lists and bind addresses for TCP
// and HTTP: a private dockerd, busybox nc upstreams, berth standalone with its own Caddy.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, startBerth } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
const BIND = '127.0.0.5';
const HTTP_BIND = '127.0.0.6';
const ALLOWED_CLIENT = '127.0.0.9';
let d: TestDockerd;
let berth: BerthProcess;
let accessLog: string;
let dataDir: string;
let httpPort: number;
const port: Record<string, number> = {};

/** A client connection that collects what it receives. */
interface Conn {
  sock: Socket;
  received(): Buffer;
  /** Resolves when the far side has ended its direction (or the socket closed). */
  ended: Promise<void>;
}

function open(listen: number, o: { host?: string; localAddress?: string } = {}): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const sock = connect({
      host: o.host ?? BIND,
      port: listen,
      localAddress: o.localAddress,
      allowHalfOpen: true,
    });
    const chunks: Buffer[] = [];
    sock.on('data', (c) => chunks.push(c));
    const ended = new Promise<void>((r) => {
      sock.once('end', r);
      sock.once('close', r);
    });
    sock.once('connect', () => resolve({ sock, received: () => Buffer.concat(chunks), ended }));
    sock.once('error', reject);
  });
}

async function until(conn: Conn, text: string, timeoutMs = 10_000) {
  await waitUntil(async () => conn.received().toString().includes(text), {
    timeoutMs,
    intervalMs: 20,
    message: () =>
      `never received ${JSON.stringify(text)}; got ${JSON.stringify(conn.received().toString())}`,
  });
}

function logLines(): Record<string, unknown>[] {
  try {
    return readFileSync(accessLog, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

async function routeStatus(match: (r: { listen?: number; container: { name: string } }) => boolean) {
  return (await berth.routes()).find(match);
}

async function applied(listen: number, container: string) {
  await waitUntil(
    async () =>
      (await routeStatus((r) => r.listen === listen && r.container.name === container))?.status === 'applied',
    {
      timeoutMs: 20_000,
      message: async () =>
        `tcp :${listen} never applied: ${JSON.stringify(await berth.routes())}\n${berth.output()}`,
    },
  );
}

/** A host-network container whose nc serves `program` on each port: greeting, then echo. */
async function ncContainer(name: string, labels: Record<string, string>, servers: [number, string][]) {
  const script = `${servers.map(([p, prog]) => `nc -ll -p ${p} -e ${prog} &`).join(' ')} wait`;
  await runHostContainer(d, name, labels, ['sh', '-c', script]);
}

beforeAll(async () => {
  for (const k of ['live', 'paper', 'stream', 'down', 'extra', 'thief'])
    port[`${k}Listen`] = await freePort(BIND);
  for (const k of ['live', 'paper', 'stream', 'down', 'extra', 'thief']) port[k] = await freePort();
  httpPort = await freePort(HTTP_BIND);
  d = await startDockerd({ name: 'tcp' });
  await importBusybox(d, IMAGE);
  await ncContainer(
    'ib',
    {
      'berth.tcp.live.listen': String(port.liveListen),
      'berth.tcp.live.port': String(port.live),
      'berth.tcp.paper.listen': String(port.paperListen),
      'berth.tcp.paper.port': String(port.paper),
      'berth.tcp.paper.allow': `${ALLOWED_CLIENT}/32`,
    },
    [
      [port.live!, `sh -c 'echo live; exec cat'`],
      [port.paper!, `sh -c 'echo paper; exec cat'`],
    ],
  );
  await ncContainer(
    'stream',
    { 'berth.tcp.stream.listen': String(port.streamListen), 'berth.tcp.stream.port': String(port.stream) },
    [[port.stream!, 'busybox head -c 20000000 /dev/zero']],
  );
  // Labels for a port nothing listens on.
  await runHostContainer(
    d,
    'down',
    { 'berth.tcp.down.listen': String(port.downListen), 'berth.tcp.down.port': String(port.down) },
    ['sleep', '100000'],
  );
  dataDir = mkdtempSync(join(tmpdir(), 'bd-'));
  accessLog = join(dataDir, 'tcp-access.log');
  berth = await startBerth({
    docker: d.dockerHost,
    dataDir,
    args: [
      '--tcp-bind',
      BIND,
      '--tcp-idle-timeout',
      '4s',
      '--tcp-access-log',
      accessLog,
      '--http-listen',
      `:${httpPort}`,
      '--http-bind',
      HTTP_BIND,
    ],
  });
  await applied(port.liveListen!, 'ib');
  await applied(port.paperListen!, 'ib');
});

afterAll(async () => {
  await berth?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe('TCP routes', () => {
  it('serves live and paper side by side, each to its own container port', async () => {
    const live = await open(port.liveListen!);
    await until(live, 'live\n');
    live.sock.write('order 1\n');
    await until(live, 'order 1\n');
    const paper = await open(port.paperListen!, { localAddress: ALLOWED_CLIENT });
    await until(paper, 'paper\n');
    paper.sock.write('order 2\n');
    await until(paper, 'order 2\n');
    expect(live.received().toString()).toBe('live\norder 1\n');
    expect(paper.received().toString()).toBe('paper\norder 2\n');
    live.sock.destroy();
    paper.sock.destroy();
  });

  it('streams a large download and echoes a large upload intact, with half-close', async () => {
    const dl = await open(port.streamListen!);
    await dl.ended;
    expect(dl.received().length).toBe(20_000_000);
    dl.sock.destroy();

    // 8 MB up, then a half-close: the echo of everything still comes back, then the upstream's end.
    const payload = Buffer.alloc(8 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 9)) & 255;
    const up = await open(port.liveListen!);
    up.sock.end(payload);
    await up.ended;
    const got = up.received();
    expect(got.subarray(0, 5).toString()).toBe('live\n');
    expect(got.length).toBe(payload.length + 5);
    expect(got.subarray(5).equals(payload)).toBe(true);
    up.sock.destroy();
    await waitUntil(async () => logLines().some((l) => l.bytesIn === payload.length && l.reason === 'done'), {
      timeoutMs: 5_000,
      message: () => `no access-log line for the upload: ${JSON.stringify(logLines())}`,
    });
    const line = logLines().find((l) => l.bytesIn === payload.length)!;
    expect(line).toMatchObject({
      listener: `${BIND}:${port.liveListen}`,
      upstream: `127.0.0.1:${port.live}`,
      bytesOut: payload.length + 5,
      reason: 'done',
    });
    expect(line.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(typeof line.durationMs).toBe('number');
  });

  it('closes a connection from outside the allow-list at once and logs it', async () => {
    const denied = await open(port.paperListen!);
    await denied.ended;
    expect(denied.received().length).toBe(0);
    denied.sock.destroy();
    await waitUntil(async () => logLines().some((l) => l.reason === 'denied'), {
      timeoutMs: 5_000,
      message: () => JSON.stringify(logLines()),
    });
    expect(logLines().find((l) => l.reason === 'denied')).toMatchObject({
      listener: `${BIND}:${port.paperListen}`,
      upstream: null,
      detail: `client 127.0.0.1 is not in the allow-list (${ALLOWED_CLIENT}/32)`,
    });
  });

  it('listens only on the bind address', async () => {
    await expect(open(port.liveListen!, { host: '127.0.0.1' })).rejects.toThrow(/ECONNREFUSED/);
  });

  it('closes an idle connection after the idle timeout', async () => {
    const c = await open(port.liveListen!);
    await until(c, 'live\n');
    const t0 = Date.now();
    await c.ended;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(3_000);
    await waitUntil(async () => logLines().some((l) => l.reason === 'idle'), { timeoutMs: 5_000 });
  });

  it('keeps a connection with traffic open past the idle timeout', async () => {
    const c = await open(port.liveListen!);
    await until(c, 'live\n');
    // One line a second for 6 s, against a 4 s idle timeout.
    for (let i = 0; i < 6; i++) {
      c.sock.write(`tick ${i}\n`);
      await until(c, `tick ${i}\n`);
      await new Promise((r) => setTimeout(r, 1_000));
    }
    expect(c.sock.destroyed).toBe(false);
    c.sock.write('still here\n');
    await until(c, 'still here\n');
    c.sock.destroy();
  });

  it('refuses promptly, with a log line, when the upstream is down', async () => {
    await applied(port.downListen!, 'down');
    const c = await open(port.downListen!);
    await c.ended;
    expect(c.received().length).toBe(0);
    await waitUntil(async () => logLines().some((l) => l.reason === 'upstream-refused'), {
      timeoutMs: 5_000,
    });
    expect(logLines().find((l) => l.reason === 'upstream-refused')?.detail).toMatch(/ECONNREFUSED/);
  });

  it('adds and removes a listener without disturbing another listener’s connection', async () => {
    const held = await open(port.liveListen!);
    await until(held, 'live\n');
    await ncContainer(
      'extra',
      { 'berth.tcp.extra.listen': String(port.extraListen), 'berth.tcp.extra.port': String(port.extra) },
      [[port.extra!, `sh -c 'echo extra; exec cat'`]],
    );
    held.sock.write('one\n');
    await until(held, 'one\n');
    await applied(port.extraListen!, 'extra');
    const e = await open(port.extraListen!);
    await until(e, 'extra\n');
    e.sock.destroy();
    held.sock.write('two\n');
    await until(held, 'two\n');
    await d.run(['rm', '-f', 'extra']);
    await waitUntil(
      async () => {
        try {
          (await open(port.extraListen!)).sock.destroy();
          return false;
        } catch {
          return true;
        }
      },
      { timeoutMs: 20_000, message: () => 'the removed listener still accepts' },
    );
    held.sock.write('three\n');
    await until(held, 'three\n');
    expect(held.received().toString()).toBe('live\none\ntwo\nthree\n');
    held.sock.destroy();
  });

  it('reports a conflicting listen port on the younger container and keeps the older one serving', async () => {
    await runHostContainer(
      d,
      'thief',
      { 'berth.tcp.x.listen': String(port.liveListen), 'berth.tcp.x.port': String(port.thief) },
      ['sleep', '100000'],
    );
    await waitUntil(
      async () => (await routeStatus((r) => r.container.name === 'thief'))?.status === 'error',
      {
        timeoutMs: 20_000,
      },
    );
    const thief = await routeStatus((r) => r.container.name === 'thief');
    expect((thief as { errors: string[] }).errors[0]).toMatch(
      new RegExp(`TCP port ${port.liveListen} is already claimed by container ib`),
    );
    const c = await open(port.liveListen!);
    await until(c, 'live\n');
    c.sock.destroy();
    const text = (await berth.cli(['routes'])).stdout;
    expect(text).toMatch(
      new RegExp(`tcp :${port.paperListen} +allow ${ALLOWED_CLIENT}/32 +tcp://127.0.0.1:${port.paper}`),
    );
  });

  it('reports each listener in /healthz and counts connections in /metrics', async () => {
    const health = await (await fetch(`${berth.apiUrl}/healthz`)).json();
    expect(health.tcp.bind).toBe(BIND);
    expect(health.tcp.forwarder).toEqual({ answering: true, restarts: 0 });
    expect(health.tcp.listeners).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          listen: port.liveListen,
          address: `${BIND}:${port.liveListen}`,
          state: 'listening',
        }),
        expect.objectContaining({ listen: port.paperListen, state: 'listening' }),
      ]),
    );
    expect(JSON.stringify(health)).not.toContain(`:${port.live}`); // no upstreams on an open endpoint
    const metrics = await (await fetch(`${berth.apiUrl}/metrics`)).text();
    expect(metrics).toMatch(
      new RegExp(`berth_tcp_connections_total\\{listener="${port.paperListen}",reason="denied"\\} [1-9]`),
    );
    expect(metrics).toMatch(
      new RegExp(`berth_tcp_bytes_total\\{listener="${port.liveListen}",direction="in"\\} [1-9]`),
    );
  });
});

describe('HTTP isolation', () => {
  it('serves the front door on --http-bind only, and answers 403 outside berth.allow', async () => {
    const p = await freePort();
    const script = `mkdir -p /srv/www && echo "allowed page" > /srv/www/index.html && exec httpd -f -p 127.0.0.1:${p} -h /srv/www`;
    await runHostContainer(
      d,
      'private-web',
      { 'berth.host': 'private.test', 'berth.port': String(p), 'berth.allow': ALLOWED_CLIENT },
      ['sh', '-c', script],
    );
    const url = `http://${HTTP_BIND}:${httpPort}/`;
    await waitUntil(
      async () => (await httpGet(url, { host: 'private.test', localAddress: ALLOWED_CLIENT })).status === 200,
      {
        timeoutMs: 20_000,
        message: async () => JSON.stringify(await httpGet(url, { host: 'private.test' })),
      },
    );
    expect((await httpGet(url, { host: 'private.test', localAddress: ALLOWED_CLIENT })).body).toBe(
      'allowed page\n',
    );
    const outside = await httpGet(url, { host: 'private.test' });
    expect(outside.status).toBe(403);
    expect(outside.body).toMatch(/may not use this route/);
    const other = await httpGet(`http://127.0.0.1:${httpPort}/`, { host: 'private.test' });
    expect(other.status).toBe(0);
    expect(other.body).toMatch(/ECONNREFUSED/);
  });
});

describe('the TCP forwarder process', () => {
  const forwarderPid = () => Number(readFileSync(join(berth.dataDir, 'tcp', 'tcp.pid'), 'utf8'));

  it('rejects a malformed listener set on its control socket and keeps its listeners', async () => {
    const socketPath = join(berth.dataDir, 'tcp', 'control.sock');
    const put = (body: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = request({ socketPath, method: 'PUT', path: '/listeners' }, (res) => {
          let text = '';
          res.on('data', (c) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        });
        req.on('error', reject);
        req.end(body);
      });
    expect(await put('{"listen": 1}')).toEqual({
      status: 400,
      body: JSON.stringify({ error: 'listeners must be a JSON array' }),
    });
    const bad = await put('[{"listen": "x", "upstreams": []}]');
    expect(bad.status).toBe(400);
    expect(bad.body).toMatch(/listener 0 needs listen, upstreams/);
    const c = await open(port.liveListen!);
    await until(c, 'live');
    c.sock.destroy();
  });

  it('keeps connections through a server crash, is adopted on restart, and comes back when killed', async () => {
    const c = await open(port.liveListen!);
    await until(c, 'live');
    const before = forwarderPid();
    // A line a second keeps the connection inside the 4 s idle timeout however long the restart
    // takes, so that what ends it below can only be the forwarder's death.
    const ticking = setInterval(() => c.sock.write('tick\n'), 1_000);
    registerCleanup(() => clearInterval(ticking));
    await berth.kill();
    // The server is gone: the open connection and the listener carry on.
    c.sock.write('through the crash\n');
    await until(c, 'through the crash');
    const during = await open(port.liveListen!);
    await until(during, 'live');
    during.sock.destroy();

    await berth.restart();
    await applied(port.liveListen!, 'ib');
    expect(forwarderPid()).toBe(before); // adopted, not replaced
    clearInterval(ticking);
    c.sock.write('after the restart\n');
    await until(c, 'after the restart');

    // The forwarder dies: its connections go with it, and the server starts a new one that
    // serves the same listeners.
    process.kill(before, 'SIGKILL');
    await c.ended;
    await waitUntil(
      async () => {
        try {
          const again = await open(port.liveListen!);
          await until(again, 'live', 2_000);
          again.sock.destroy();
          return true;
        } catch {
          return false;
        }
      },
      {
        timeoutMs: 10_000,
        intervalMs: 100,
        message: () => `no listener after the forwarder died\n${berth.output()}`,
      },
    );
    expect(forwarderPid()).not.toBe(before);
    const health = await (await fetch(`${berth.apiUrl}/healthz`)).json();
    expect(health.tcp.listeners).toEqual(
      expect.arrayContaining([expect.objectContaining({ listen: port.liveListen, state: 'listening' })]),
    );
    expect(health.tcp.forwarder).toEqual({ answering: true, restarts: 1 });
  });
});
