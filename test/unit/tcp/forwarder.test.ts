// TcpForwarder's accept path on real loopback sockets: who is let in, where a connection goes,
// how it ends, and what is counted and logged. The forwarder runs in the test's process here;
// test/e2e/tcp*.test.ts run it as `berth tcp-server` behind a real Berth.
import { type ChildProcess, spawn } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TcpForwarder, type TcpForwarderOptions } from '../../../src/ingress/tcp/forwarder.js';
import type { TcpListenerSite } from '../../../src/model/desired.js';

const HOST = '127.0.0.1';
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface AccessLine {
  client: string;
  listener: string;
  upstream: string | null;
  bytesIn: number;
  bytesOut: number;
  reason: string;
  detail?: string;
}

/** A forwarder on 127.0.0.1 whose access-log lines the test reads; `waitLog` resolves on the n-th. */
function forwarder(o: Partial<TcpForwarderOptions> = {}) {
  const lines: AccessLine[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  const fw = new TcpForwarder({
    bind: HOST,
    logger: pino({ level: 'silent' }),
    accessLog: (line) => {
      lines.push(JSON.parse(line));
      for (const w of waiters.filter((w) => lines.length >= w.n)) w.resolve();
    },
    idleTimeoutMs: 0,
    maxConnections: 100,
    ...o,
  });
  cleanups.push(() => fw.close());
  const waitLog = (n = 1): Promise<AccessLine[]> =>
    lines.length >= n
      ? Promise.resolve(lines)
      : new Promise((resolve) => waiters.push({ n, resolve: () => resolve(lines) }));
  return { fw, lines, waitLog };
}

/** A port nothing listens on now (the kernel just handed it out and took it back). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, HOST, r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, HOST, r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as { port: number }).port;
}

/** An upstream that sends its name on connect, then echoes; `conns` are its open sockets. */
async function upstream(name = 'up') {
  const conns = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    conns.add(s);
    s.on('close', () => conns.delete(s));
    s.write(`${name}\n`);
    s.pipe(s);
  });
  cleanups.push(() => {
    for (const s of conns) s.destroy();
  });
  return { port: await listen(server), conns };
}

/** A listening port whose queue is full and which never accepts: a connect to it gets no answer. */
async function unanswered(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen({ port: 0, host: HOST, backlog: 1 }, r));
  const { port } = server.address() as { port: number };
  // A child that never accepts holds the listening socket; this process lets go of it.
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  const holder: ChildProcess = spawn('sleep', ['600'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
  cleanups.push(() => {
    holder.kill();
  });
  await new Promise<void>((r) => server.close(() => r()));
  // Two connections fill a queue of one; the kernel drops the SYNs of every later one.
  const fillers = await Promise.all([0, 1].map(() => open(port)));
  cleanups.push(() => {
    for (const f of fillers) f.sock.destroy();
  });
  return port;
}

/**
 * A client connection: what it received, and promises for its end and its close. Without
 * `halfOpen` it closes when the other side ends, like most clients.
 */
function open(
  port: number,
  halfOpen = false,
): Promise<{
  sock: Socket;
  received: () => string;
  ended: Promise<void>;
  closed: Promise<void>;
}> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: HOST, port, allowHalfOpen: halfOpen });
    let data = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      data += d;
    });
    const ended = new Promise<void>((r) => sock.once('end', () => r()));
    const closed = new Promise<void>((r) => sock.once('close', () => r()));
    sock.on('error', () => {});
    sock.once('connect', () => resolve({ sock, received: () => data, ended, closed }));
    sock.once('error', reject);
    cleanups.push(() => {
      sock.destroy();
    });
  });
}

async function until(c: { received: () => string; sock: Socket }, text: string): Promise<void> {
  while (!c.received().includes(text)) {
    if (c.sock.destroyed) throw new Error(`closed before "${text}"; got "${c.received()}"`);
    await new Promise((r) => c.sock.once('data', r).once('close', r));
  }
}

async function listener(
  fw: TcpForwarder,
  ups: number[],
  over: Partial<TcpListenerSite> = {},
): Promise<number> {
  const listen = await freePort();
  await fw.sync([
    { listen, upstreams: ups.map((port) => ({ host: HOST, port })), allow: [], routeKeys: ['a:r'], ...over },
  ]);
  expect(fw.status()[0]).toMatchObject({ listen, state: 'listening' });
  return listen;
}

describe('TcpForwarder: admission', { timeout: 15_000 }, () => {
  it('refuses a client outside the allow-list before dialling the upstream', async () => {
    const up = await upstream();
    const { fw, waitLog } = forwarder();
    const port = await listener(fw, [up.port], { allow: ['10.0.0.0/8'] });
    const c = await open(port);
    await c.closed;
    expect(c.received()).toBe('');
    const [line] = await waitLog();
    expect(line).toMatchObject({ reason: 'denied', upstream: null, bytesIn: 0, bytesOut: 0 });
    expect(line!.detail).toBe('client 127.0.0.1 is not in the allow-list (10.0.0.0/8)');
    expect(up.conns.size).toBe(0);
    expect(fw.counters().get(port)).toMatchObject({ accepted: 0, denied: 1, closed: { denied: 1 } });
  });

  it('lets in a client the allow-list covers', async () => {
    const up = await upstream();
    const { fw } = forwarder();
    const port = await listener(fw, [up.port], { allow: ['10.0.0.0/8', '127.0.0.0/8'] });
    const c = await open(port);
    await until(c, 'up\n');
    expect(fw.counters().get(port)).toMatchObject({ accepted: 1, denied: 0 });
  });

  it('refuses connections beyond the limit and takes new ones once one ends', async () => {
    const up = await upstream();
    const { fw, waitLog } = forwarder({ maxConnections: 2 });
    const port = await listener(fw, [up.port]);
    const held = [await open(port), await open(port)];
    for (const h of held) await until(h, 'up\n');
    const third = await open(port);
    await third.closed;
    expect(third.received()).toBe('');
    const [line] = await waitLog();
    expect(line).toMatchObject({ reason: 'limit', detail: 'listener has 2 connections (limit 2)' });
    expect(fw.status()[0]!.active).toBe(2);

    held[0]!.sock.end();
    await waitLog(2);
    const fourth = await open(port);
    await until(fourth, 'up\n');
    expect(fw.counters().get(port)).toMatchObject({ accepted: 3, denied: 1 });
  });

  it('refuses every client of a listener that has no upstream', async () => {
    const { fw, waitLog } = forwarder();
    const port = await listener(fw, []);
    const c = await open(port);
    await c.closed;
    expect((await waitLog())[0]).toMatchObject({ reason: 'upstream-refused', detail: 'no upstream' });
    expect(fw.counters().get(port)).toMatchObject({ accepted: 0, refused: 1 });
  });
});

describe('TcpForwarder: dialling the upstream', { timeout: 15_000 }, () => {
  it('closes the client at once when the upstream refuses (no wait for the connect timeout)', async () => {
    const { fw, waitLog } = forwarder({ connectTimeoutMs: 600_000 });
    const port = await listener(fw, [await freePort()]);
    const c = await open(port);
    await c.closed;
    expect(c.received()).toBe('');
    const [line] = await waitLog();
    expect(line!.reason).toBe('upstream-refused');
    expect(line!.detail).toMatch(/ECONNREFUSED/);
    expect(fw.counters().get(port)).toMatchObject({ accepted: 1, refused: 1 });
    expect(fw.status()[0]!.active).toBe(0);
  });

  it('closes the client when the upstream does not answer within the connect timeout', async () => {
    const silent = await unanswered();
    const { fw, waitLog } = forwarder({ connectTimeoutMs: 300 });
    const port = await listener(fw, [silent]);
    const c = await open(port);
    await c.closed;
    const [line] = await waitLog();
    expect(line).toMatchObject({
      reason: 'upstream-refused',
      upstream: `${HOST}:${silent}`,
      detail: `no answer from ${HOST}:${silent} within the connect timeout`,
    });
    expect(fw.status()[0]!.active).toBe(0);
  });

  it('hands connections to its upstreams in turn, and a dead one costs only the connections sent to it', async () => {
    const a = await upstream('a');
    const b = await upstream('b');
    const dead = await freePort();
    const { fw, waitLog } = forwarder();
    const port = await listener(fw, [a.port, dead, b.port]);
    const firsts: string[] = [];
    for (let i = 0; i < 6; i++) {
      const c = await open(port);
      if (i % 3 === 1) {
        await c.closed;
        firsts.push('closed');
      } else {
        await until(c, '\n');
        firsts.push(c.received().trim());
        c.sock.end();
      }
    }
    expect(firsts).toEqual(['a', 'closed', 'b', 'a', 'closed', 'b']);
    const lines = await waitLog(6);
    expect(lines.filter((l) => l.reason === 'upstream-refused').map((l) => l.upstream)).toEqual([
      `${HOST}:${dead}`,
      `${HOST}:${dead}`,
    ]);
  });

  it('sends new connections to new upstreams after a sync, and leaves open ones where they are', async () => {
    const a = await upstream('a');
    const b = await upstream('b');
    const { fw } = forwarder();
    const port = await listener(fw, [a.port]);
    const old = await open(port);
    await until(old, 'a\n');
    await fw.sync([{ listen: port, upstreams: [{ host: HOST, port: b.port }], allow: [], routeKeys: [] }]);
    const fresh = await open(port);
    await until(fresh, 'b\n');
    old.sock.write('still a\n');
    await until(old, 'still a\n');
  });
});

describe('TcpForwarder: relaying', { timeout: 15_000 }, () => {
  it('passes a half-close from the client on and still delivers the reply', async () => {
    // Request, then EOF; the upstream answers only after it has seen the EOF.
    const server = createServer({ allowHalfOpen: true }, (s) => {
      let got = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        got += d;
      });
      s.on('end', () => s.end(`got ${got.length} bytes: ${got}`));
    });
    const upPort = await listen(server);
    const { fw, waitLog } = forwarder();
    const port = await listener(fw, [upPort]);
    const c = await open(port, true);
    c.sock.end('request');
    await c.ended;
    expect(c.received()).toBe('got 7 bytes: request');
    const [line] = await waitLog();
    expect(line).toMatchObject({ reason: 'done', bytesIn: 7, bytesOut: 20, upstream: `${HOST}:${upPort}` });
  });

  it('passes a half-close from the upstream on while the client keeps sending', async () => {
    let received = '';
    let upstreamEnded!: () => void;
    const ended = new Promise<void>((r) => {
      upstreamEnded = r;
    });
    const server = createServer({ allowHalfOpen: true }, (s) => {
      s.setEncoding('utf8');
      s.end('bye\n'); // the upstream is done sending at once
      s.on('data', (d: string) => {
        received += d;
      });
      s.on('end', () => upstreamEnded());
    });
    const upPort = await listen(server);
    const { fw, waitLog } = forwarder();
    const port = await listener(fw, [upPort]);
    const c = await open(port, true);
    await c.ended;
    expect(c.received()).toBe('bye\n');
    c.sock.write('one more\n');
    c.sock.end('and the last\n');
    await ended;
    expect(received).toBe('one more\nand the last\n');
    const [line] = await waitLog();
    expect(line).toMatchObject({ reason: 'done', bytesIn: 22, bytesOut: 4 });
  });

  it('counts the bytes both ways, per listener and in the access-log line', async () => {
    const up = await upstream('hello'); // 6 bytes on connect, then an echo
    const { fw, waitLog } = forwarder();
    const port = await listener(fw, [up.port]);
    const payload = 'x'.repeat(300_000);
    const c = await open(port);
    c.sock.write(payload);
    await until(c, 'x'.repeat(1000));
    while (c.received().length < 6 + payload.length) await new Promise((r) => c.sock.once('data', r));
    c.sock.end();
    await c.closed;
    const [line] = await waitLog();
    expect(line).toMatchObject({ reason: 'done', bytesIn: 300_000, bytesOut: 300_006 });
    expect(line!.client).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(line!.listener).toBe(`${HOST}:${port}`);
    expect(fw.counters().get(port)).toMatchObject({
      bytesIn: 300_000,
      bytesOut: 300_006,
      closed: { done: 1 },
    });
  });

  it('ends a connection with no traffic either way after the idle timeout', async () => {
    const up = await upstream();
    const { fw, waitLog } = forwarder({ idleTimeoutMs: 200 });
    const port = await listener(fw, [up.port]);
    const c = await open(port);
    await until(c, 'up\n');
    await c.closed;
    expect((await waitLog())[0]).toMatchObject({ reason: 'idle', bytesIn: 0, bytesOut: 3 });
    expect(fw.status()[0]!.active).toBe(0);
  });

  it('ends the connections of a listener that a sync removes, and only those', async () => {
    const up = await upstream();
    const { fw, waitLog } = forwarder();
    const kept = await listener(fw, [up.port]);
    const gone = await freePort();
    const both = [
      { listen: kept, upstreams: [{ host: HOST, port: up.port }], allow: [], routeKeys: [] },
      { listen: gone, upstreams: [{ host: HOST, port: up.port }], allow: [], routeKeys: [] },
    ];
    await fw.sync(both);
    const a = await open(kept);
    const b = await open(gone);
    await until(a, 'up\n');
    await until(b, 'up\n');
    await fw.sync([both[0]!]);
    await b.closed;
    expect((await waitLog())[0]).toMatchObject({ reason: 'listener-removed', listener: `${HOST}:${gone}` });
    a.sock.write('alive\n');
    await until(a, 'alive\n');
    expect(fw.status().map((l) => l.listen)).toEqual([kept]);
  });
});
