// The relay pieces the tunnels' TLS path uses (src/net/relay.ts), with real loopback sockets and
// a real TLS handshake: records gathered into bigger writes arrive whole and in order, a short
// message is not held, a half-close still follows the last byte; a connection's first bytes are
// read before its handover and none is lost; an accepted TLS socket reads into a given buffer.
import { createServer as createTcpServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { handover, readIntoBuffers, relay } from '../../../src/net/relay.js';
import { splice } from '../../../src/net/splice.js';
import { createCa, issueServerCert } from '../../../src/tls/ca.js';

const chain = issueServerCert(createCa(), { names: ['127.0.0.1'] });
const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

const listen = (s: Server | TlsServer) =>
  new Promise<number>((r) => s.listen(0, '127.0.0.1', () => r((s.address() as { port: number }).port)));

/** Bytes that say where they are: a relay that drops, repeats or reorders a chunk is caught. */
function pattern(n: number, from = 0): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = ((from + i) * 31 + ((from + i) >> 12)) & 255;
  return b;
}

/**
 * A plain sink: everything it got, once its peer half-closes. With `stalls`, it stops reading for
 * a moment every 256 KiB, so the relay's writes back up (the case where a reused buffer could be
 * overwritten while a write still holds it).
 */
async function sink(stalls = false): Promise<{ port: number; got: Promise<Buffer> }> {
  let gotIt!: (b: Buffer) => void;
  const got = new Promise<Buffer>((r) => {
    gotIt = r;
  });
  const s = createTcpServer({ allowHalfOpen: true }, (c) => {
    const parts: Buffer[] = [];
    let since = 0;
    c.on('data', (d) => {
      parts.push(d);
      since += d.length;
      if (stalls && since >= 128 * 1024) {
        since = 0;
        c.pause();
        setTimeout(() => c.resume(), 5);
      }
    });
    c.on('end', () => {
      gotIt(Buffer.concat(parts));
      c.end();
    });
    c.on('error', () => {});
  });
  closers.push(() => s.close());
  return { port: await listen(s), got };
}

describe('relay, gathering TLS records', () => {
  it('delivers a bulk transfer whole and in order to a reader that stalls, then the half-close', async () => {
    const out = await sink(true);
    const body = pattern(32 * 1024 * 1024 + 777);
    // The TLS server sends the body and half-closes; the client relays it to the sink, gathered.
    const server = createTlsServer({ ...chain, allowHalfOpen: true }, (t) => {
      t.on('error', () => {});
      t.end(body);
    });
    closers.push(() => server.close());
    const port = await listen(server);
    const plain = tcpConnect({ port: out.port, host: '127.0.0.1', allowHalfOpen: true });
    // Records were gathered: the destination was corked for them (uncorked by the relay).
    let corks = 0;
    const cork = plain.cork.bind(plain);
    plain.cork = () => {
      corks++;
      cork();
    };
    const t = tlsConnect({
      port,
      host: '127.0.0.1',
      ca: chain.cert,
      allowHalfOpen: true,
      onread: relay(() => plain, { tls: true }),
    });
    t.on('error', () => {});
    // The TLS end's half-close reaches the sink only after the last byte.
    splice(t, plain);
    const got = await out.got;
    expect(got.length).toBe(body.length);
    expect(got.equals(body)).toBe(true);
    expect(corks).toBeGreaterThan(0);
    t.destroy();
  });

  it('never holds a short message: an echo through a gathering relay answers each one', async () => {
    const echo = createTcpServer((c) => {
      c.on('data', (d) => c.write(d));
      c.on('error', () => {});
    });
    closers.push(() => echo.close());
    const echoPort = await listen(echo);
    let adopted: boolean | undefined;
    // TLS server side: each message from the TLS client goes to the echo and back.
    const server = createTlsServer({ ...chain, allowHalfOpen: true }, (t) => {
      t.on('error', () => {});
      const up: Socket = tcpConnect({ port: echoPort, host: '127.0.0.1', allowHalfOpen: true });
      up.on('error', () => {});
      // Before any byte came (else it keeps 'data' events): writes wait for the connect.
      adopted = readIntoBuffers(
        t,
        relay(() => up, { tls: true }),
      );
      splice(up, t);
    });
    closers.push(() => server.close());
    const port = await listen(server);
    const c = tlsConnect({ port, host: '127.0.0.1', ca: chain.cert });
    c.on('error', () => {});
    await new Promise((r) => c.once('secureConnect', r));
    const first = new Promise<Buffer>((r) => c.once('data', r));
    c.write('x');
    expect((await first).toString()).toBe('x');
    expect(adopted).toBe(true);
    for (let i = 0; i < 50; i++) {
      const msg = pattern(64, i);
      const back = new Promise<Buffer>((r) => c.once('data', r));
      c.write(msg);
      expect((await back).equals(msg)).toBe(true);
    }
    // A full record alone (16 KiB) is held only until the event loop turns: it still comes back.
    const big = pattern(16 * 1024, 99);
    const parts: Buffer[] = [];
    const whole = new Promise<void>((r) => {
      const on = (d: Buffer) => {
        parts.push(d);
        if (Buffer.concat(parts).length >= big.length) {
          c.off('data', on);
          r();
        }
      };
      c.on('data', on);
    });
    c.write(big);
    await whole;
    expect(Buffer.concat(parts).equals(big)).toBe(true);
    c.destroy();
  });
});

describe('relay to a TLS destination', () => {
  /**
   * A TLS server that reads what its client (the relay's destination) sends: echoes each chunk
   * back, or collects everything, stalling every 128 KiB so the relay's writes back up.
   */
  async function tlsPeer(mode: 'echo' | 'collect'): Promise<{ port: number; got: Promise<Buffer> }> {
    let gotIt!: (b: Buffer) => void;
    const got = new Promise<Buffer>((r) => {
      gotIt = r;
    });
    const server = createTlsServer({ ...chain, allowHalfOpen: true }, (t) => {
      t.on('error', () => {});
      const parts: Buffer[] = [];
      let since = 0;
      t.on('data', (d: Buffer) => {
        if (mode === 'echo') return t.write(d);
        parts.push(d);
        since += d.length;
        if (since >= 128 * 1024) {
          since = 0;
          t.pause();
          setTimeout(() => t.resume(), 5);
        }
      });
      t.on('end', () => {
        gotIt(Buffer.concat(parts));
        t.end();
      });
    });
    closers.push(() => server.close());
    return { port: await listen(server), got };
  }

  /** A plain connection whose reads are relayed to a TLS socket; `buffers` are those handed out. */
  async function plainToTls(port: number) {
    const t = tlsConnect({ port, host: '127.0.0.1', ca: chain.cert, allowHalfOpen: true });
    t.on('error', () => {});
    await new Promise((r) => t.once('secureConnect', r));
    const buffers = new Set<unknown>();
    const r = relay(() => t);
    const onread = {
      buffer: () => {
        const b = (r.buffer as () => Uint8Array)();
        buffers.add(b.buffer);
        return b;
      },
      callback: r.callback,
    };
    let from!: Socket;
    const src = createTcpServer({ allowHalfOpen: true }, (c) => {
      from = c;
    });
    closers.push(() => src.close());
    const srcPort = await listen(src);
    const plain = tcpConnect({ port: srcPort, host: '127.0.0.1', allowHalfOpen: true, onread });
    plain.on('error', () => {});
    await new Promise((r) => plain.once('connect', r));
    await new Promise((r) => setTimeout(r, 20));
    splice(plain, t);
    return { t, from, buffers };
  }

  it('reuses its buffer for chatty traffic: TLS has encrypted each chunk before write() returned', async () => {
    const peer = await tlsPeer('echo');
    const { t, from, buffers } = await plainToTls(peer.port);
    for (let i = 0; i < 50; i++) {
      const msg = pattern(64, i);
      const back = new Promise<Buffer>((r) => t.once('data', r));
      from.write(msg);
      expect((await back).equals(msg)).toBe(true);
    }
    // One buffer read into throughout (a fresh one per message before).
    expect(buffers.size).toBeLessThanOrEqual(2);
    t.destroy();
  });

  it('delivers a bulk transfer whole and in order to a TLS reader that stalls', async () => {
    const peer = await tlsPeer('collect');
    const { from } = await plainToTls(peer.port);
    const body = pattern(32 * 1024 * 1024 + 333);
    from.end(body);
    const got = await peer.got;
    expect(got.length).toBe(body.length);
    expect(got.equals(body)).toBe(true);
  });
});

describe('handover', () => {
  it('keeps what came before anyone took it, gives it first, and hands the rest to the relay', async () => {
    const out = await sink();
    const src = createTcpServer((c) => {
      c.on('error', () => {});
      c.write('HEAD\n');
      setTimeout(() => c.end(pattern(300_000)), 20);
    });
    closers.push(() => src.close());
    const port = await listen(src);
    const reads = handover();
    const sock = tcpConnect({ port, host: '127.0.0.1', allowHalfOpen: true, onread: reads });
    sock.on('error', () => {});
    // Nobody takes the reads yet: the head waits.
    const head = await new Promise<Buffer>((r) => {
      const wait = () => setTimeout(() => reads.take(r), 10);
      sock.once('connect', wait);
    });
    expect(head.toString()).toBe('HEAD\n');
    reads.unread(Buffer.from('again:'));
    const plain = tcpConnect({ port: out.port, host: '127.0.0.1', allowHalfOpen: true });
    await new Promise((r) => plain.once('connect', r));
    const before = reads.relayTo(() => plain);
    expect(before.toString()).toBe('again:');
    plain.write(before);
    splice(sock, plain);
    const got = await out.got;
    expect(got.subarray(0, 6).toString()).toBe('again:');
    expect(got.subarray(6).equals(pattern(300_000))).toBe(true);
  });
});

describe('readIntoBuffers', () => {
  it('gives an accepted TLS socket a buffer of its own, unless bytes already wait in it', async () => {
    let used: boolean | undefined;
    let readBytes = 0;
    let dataEvents = 0;
    const done = new Promise<void>((resolve) => {
      const server = createTlsServer(chain, (t) => {
        t.on('error', () => {});
        const buf = Buffer.alloc(4096);
        used = readIntoBuffers(t, {
          buffer: buf,
          callback: (n) => {
            readBytes += n;
            if (readBytes >= 10_000) resolve();
            return true;
          },
        });
        t.on('data', () => dataEvents++);
        t.resume();
      });
      closers.push(() => server.close());
      void listen(server).then((port) => {
        const c = tlsConnect({ port, host: '127.0.0.1', ca: chain.cert }, () => c.write(pattern(10_000)));
        c.on('error', () => {});
        closers.push(() => c.destroy());
      });
    });
    await done;
    expect(used).toBe(true);
    expect(readBytes).toBe(10_000);
    expect(dataEvents).toBe(0);

    // A socket with bytes in its buffer is left alone (they would come out of order).
    const s = tcpConnect({ port: 9, host: '127.0.0.1' });
    s.on('error', () => {});
    s.unshift(Buffer.from('x'));
    expect(readIntoBuffers(s, { buffer: Buffer.alloc(16), callback: () => true })).toBe(false);
    s.destroy();
  });
});
