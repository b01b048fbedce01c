import { describe, expect, it } from 'vitest';
import {
  EngineError,
  engineError,
  engineTarget,
  FrameDemuxer,
  JsonLineSplitter,
  type OutputStream,
} from '../../src/agent/docker-engine.js';

/** One multiplexed frame: header (type, 0, 0, 0, length BE) + payload. */
function frame(type: number, payload: string | Buffer): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const h = Buffer.alloc(8);
  h[0] = type;
  h.writeUInt32BE(body.length, 4);
  return Buffer.concat([h, body]);
}

function demux(chunks: Buffer[], max?: number) {
  const out: [OutputStream, string][] = [];
  const d = new FrameDemuxer((s, c) => {
    const last = out.at(-1);
    if (last && last[0] === s) last[1] += c.toString('utf8');
    else out.push([s, c.toString('utf8')]);
  }, max);
  for (const c of chunks) d.push(c);
  return { out, d };
}

/** Every way of cutting `buf` into pieces of `size` bytes. */
const pieces = (buf: Buffer, size: number) =>
  Array.from({ length: Math.ceil(buf.length / size) }, (_, i) => buf.subarray(i * size, (i + 1) * size));

describe('FrameDemuxer', () => {
  const stream = Buffer.concat([
    frame(1, 'hello '),
    frame(1, 'world\n'),
    frame(2, 'oops\n'),
    frame(1, ''),
    frame(3, 'daemon: exec failed\n'),
    frame(1, 'héllo ✓\n'),
  ]);
  const expected = [
    ['stdout', 'hello world\n'],
    ['stderr', 'oops\ndaemon: exec failed\n'],
    ['stdout', 'héllo ✓\n'],
  ];

  it('splits stdout and stderr, whole', () => {
    const { out, d } = demux([stream]);
    d.end();
    expect(out).toEqual(expected);
  });

  it.each([1, 2, 3, 5, 7, 8, 9, 13])(
    'gives the same output across chunk boundaries (pieces of %i bytes)',
    (n) => {
      // Multi-byte characters cut in two come out as two Buffers; joined they are the same bytes.
      const bytes: Record<string, Buffer[]> = { stdout: [], stderr: [] };
      const d = new FrameDemuxer((s, c) => bytes[s]!.push(Buffer.from(c)));
      for (const p of pieces(stream, n)) d.push(p);
      d.end();
      expect(Buffer.concat(bytes.stdout!).toString()).toBe('hello world\nhéllo ✓\n');
      expect(Buffer.concat(bytes.stderr!).toString()).toBe('oops\ndaemon: exec failed\n');
    },
  );

  it('passes a large frame on as it arrives, never holding it whole', () => {
    const big = Buffer.alloc(1 << 20, 'x');
    const sizes: number[] = [];
    const d = new FrameDemuxer((_s, c) => sizes.push(c.length));
    for (const p of pieces(frame(1, big), 64 * 1024)) d.push(p);
    d.end();
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(1 << 20);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(64 * 1024);
  });

  it('refuses a stream that ends inside a header or short of its frame, saying so', () => {
    const cut = demux([frame(1, 'hello').subarray(0, 5)]);
    expect(cut.out).toEqual([]);
    expect(() => cut.d.end()).toThrow('the output stream ended inside a frame header (5 of 8 bytes)');
    const short = demux([frame(1, 'hello world').subarray(0, 12)]);
    expect(short.out).toEqual([['stdout', 'hell']]);
    expect(() => short.d.end()).toThrow('the output stream ended 7 bytes short of its last frame');
  });

  it('refuses an oversized frame before reading it', () => {
    const h = Buffer.alloc(8);
    h[0] = 1;
    h.writeUInt32BE(0xffff_ffff, 4);
    const d = new FrameDemuxer(() => {
      throw new Error('no output expected');
    }, 16 << 20);
    expect(() => d.push(Buffer.concat([h, Buffer.from('x')]))).toThrow(
      'an output frame of 4294967295 bytes, more than 16777216: not a Docker multiplexed stream',
    );
    // Once broken, it stays broken: later bytes are not read as frames.
    expect(() => d.push(frame(1, 'late'))).toThrow(/more than 16777216/);
    expect(() => d.end()).not.toThrow();
  });

  it('refuses what is not a multiplexed stream (a TTY stream, text), naming the header', () => {
    const { d } = demux([]);
    expect(() => d.push(Buffer.from('plain text output\n'))).toThrow(
      'not a Docker multiplexed stream (frame header 706c61696e207465)',
    );
    const bad = Buffer.from(frame(1, 'x'));
    bad[2] = 7;
    expect(() => new FrameDemuxer(() => {}).push(bad)).toThrow(/not a Docker multiplexed stream/);
    expect(() => new FrameDemuxer(() => {}).push(frame(4, 'x'))).toThrow(/not a Docker multiplexed stream/);
  });

  it("lets a consumer's throw reach the caller (docker.ts guards its consumer)", () => {
    const d = new FrameDemuxer(() => {
      throw new Error('consumer');
    });
    expect(() => d.push(frame(1, 'x'))).toThrow('consumer');
  });
});

describe('JsonLineSplitter', () => {
  const events = [
    { Type: 'container', Action: 'start', Actor: { ID: 'a'.repeat(64), Attributes: { name: 'wéb' } } },
    { Type: 'service', Action: 'update', Actor: { ID: 'svc1' } },
    { status: 'die', id: 'b'.repeat(64) },
  ];
  const text = Buffer.from(events.map((e) => `${JSON.stringify(e)}\n`).join(''));

  it.each([1, 2, 7, 64, 1000])('yields each line once, across chunk boundaries (pieces of %i bytes)', (n) => {
    const got: unknown[] = [];
    const s = new JsonLineSplitter((v) => got.push(v));
    for (const p of pieces(text, n)) s.push(p);
    expect(got).toEqual(events);
  });

  it('skips blank lines and CRLF, and holds a last line without its newline', () => {
    const got: unknown[] = [];
    const s = new JsonLineSplitter((v) => got.push(v));
    s.push(Buffer.from('\n\r\n{"a":1}\r\n\n{"b":'));
    expect(got).toEqual([{ a: 1 }]);
    s.push(Buffer.from('2}\n'));
    expect(got).toEqual([{ a: 1 }, { b: 2 }]);
  });

  it('refuses invalid JSON with an error that names it, after passing on the good lines before it', () => {
    const got: unknown[] = [];
    const s = new JsonLineSplitter((v) => got.push(v));
    expect(() => s.push(Buffer.from('{"a":1}\n{"torn": \n'))).toThrow(
      'invalid JSON in the event stream: "{\\"torn\\":"',
    );
    expect(got).toEqual([{ a: 1 }]);
    const long = new JsonLineSplitter(() => {});
    expect(() => long.push(Buffer.from(`<html>${'x'.repeat(500)}</html>\n`))).toThrow(
      /^invalid JSON in the event stream: "<html>x+…"$/,
    );
  });

  it('refuses a line longer than its bound, without buffering past it', () => {
    const s = new JsonLineSplitter(() => {}, 1024);
    s.push(Buffer.alloc(1000, 'x'));
    expect(() => s.push(Buffer.alloc(100, 'x'))).toThrow('an event stream line longer than 1024 bytes');
  });
});

describe('engineError', () => {
  it("names the call, the status and Docker's message", () => {
    const e = engineError('inspect container', 404, '{"message":"No such container: web"}\n');
    expect(e).toBeInstanceOf(EngineError);
    expect(e.message).toBe('docker inspect container: HTTP 404: No such container: web');
    expect(e.statusCode).toBe(404);
    expect(e.dockerMessage).toBe('No such container: web');
  });

  it('falls back to the body (a proxy page), clipped, and to the status alone', () => {
    expect(engineError('create exec', 403, '<html>\n  Forbidden\n</html>').message).toBe(
      'docker create exec: HTTP 403: <html> Forbidden </html>',
    );
    expect(engineError('events', 502, '').message).toBe('docker events: HTTP 502');
    expect(engineError('info', 500, 'x'.repeat(1000)).dockerMessage).toHaveLength(301);
    expect(engineError('info', 500, '{"message": 5}').dockerMessage).toBe('{"message": 5}');
  });
});

describe('engineTarget', () => {
  it.each([
    ['unix:///var/run/docker.sock', { kind: 'unix', socketPath: '/var/run/docker.sock' }],
    ['/run/user/1000/docker.sock', { kind: 'unix', socketPath: '/run/user/1000/docker.sock' }],
    ['tcp://docker-socket-proxy:2375', { kind: 'tcp', host: 'docker-socket-proxy', port: 2375, tls: false }],
    ['tcp://10.0.0.5', { kind: 'tcp', host: '10.0.0.5', port: 2375, tls: false }],
    ['http://127.0.0.1:8080', { kind: 'tcp', host: '127.0.0.1', port: 8080, tls: false }],
    ['https://docker.example:2376', { kind: 'tcp', host: 'docker.example', port: 2376, tls: true }],
    ['https://docker.example', { kind: 'tcp', host: 'docker.example', port: 2376, tls: true }],
    ['tcp://[::1]:2375', { kind: 'tcp', host: '::1', port: 2375, tls: false }],
  ])('%s', (endpoint, target) => {
    expect(engineTarget(endpoint)).toEqual(target);
  });

  it('refuses what it cannot reach, naming it', () => {
    expect(() => engineTarget('ssh://me@host')).toThrow(
      'docker endpoint "ssh://me@host": expected unix:///path or tcp://host:port',
    );
    expect(() => engineTarget('not a url')).toThrow(/expected unix:\/\/\/path or tcp:\/\/host:port/);
  });
});
