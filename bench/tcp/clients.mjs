// Client side of bench/tcp/run.mjs: each function drives one measurement against a port on
// 127.0.0.1 (the upstream itself, or a proxy in front of it) and is bounded by a deadline.
// The protocol is upstream.mjs's: a 9-byte header (mode byte, 64-bit big-endian length).
import { connect } from 'node:net';
import { writeBytes } from './bytes.mjs';

const HOST = '127.0.0.1';
/** A port on 127.0.0.1, or { host, port } (bench/tunnel.ts dials Berth's tunnel endpoints on 127.77.x.y). */
const where = (port) => (typeof port === 'object' ? port : { host: HOST, port });
const MiB = 1024 * 1024;

function header(mode, n) {
  const h = Buffer.alloc(9);
  h.write(mode, 0, 'latin1');
  h.writeBigUInt64BE(BigInt(n), 1);
  return h;
}

const now = () => process.hrtime.bigint();
const secondsSince = (t0) => Number(now() - t0) / 1e9;
const microsSince = (t0) => Number(now() - t0) / 1e3;

/** Rejects after `ms`, running `onTimeout` (which should destroy the sockets involved). */
async function withDeadline(promise, ms, what, onTimeout) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new Error(`${what}: gave up after ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function open(port) {
  return new Promise((resolve, reject) => {
    const sock = connect(where(port));
    sock.setNoDelay(true);
    sock.once('connect', () => {
      sock.off('error', reject);
      resolve(sock);
    });
    sock.once('error', reject);
  });
}

/** Settles once `sock` ends or fails; a close before `isDone()` is an error. */
function untilEnd(sock, isDone) {
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.once('close', () => (isDone() ? resolve() : reject(new Error('connection closed early'))));
  });
}

/** Upstream → client: MiB/s for `bytes` sent by the upstream through `port`. */
export async function download(port, bytes, timeoutMs) {
  const sock = await open(port);
  try {
    const t0 = now();
    let got = 0;
    let secs = 0;
    sock.on('data', (d) => {
      got += d.length;
      if (got === bytes) secs = secondsSince(t0);
    });
    const done = untilEnd(sock, () => got === bytes);
    sock.write(header('S', bytes));
    await withDeadline(done, timeoutMs, 'download', () => sock.destroy());
    return bytes / MiB / secs;
  } finally {
    sock.destroy();
  }
}

/** Client → upstream: MiB/s until the upstream confirms it has read all `bytes`. */
export async function upload(port, bytes, timeoutMs) {
  const sock = await open(port);
  try {
    const t0 = now();
    let secs = 0;
    sock.on('data', (d) => {
      if (!secs && d.includes(0x4b)) secs = secondsSince(t0); // 'K': the upstream has it all
    });
    const done = untilEnd(sock, () => secs > 0);
    sock.write(header('R', bytes));
    void writeBytes(sock, bytes);
    await withDeadline(done, timeoutMs, 'upload', () => sock.destroy());
    return bytes / MiB / secs;
  } finally {
    sock.destroy();
  }
}

/**
 * `count` request/response round trips of `msg` on an echoing `sock`, one at a time;
 * `record(µs)` gets each one's time unless it is a warm-up.
 */
function pingPong(sock, count, msg, record) {
  return new Promise((resolve, reject) => {
    let done = 0;
    let waiting = msg.length;
    let t0 = 0n;
    const send = () => {
      waiting = msg.length;
      t0 = now();
      sock.write(msg);
    };
    const finish = (err) => {
      sock.off('data', onData);
      sock.off('error', finish);
      sock.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onClose = () => finish(new Error('connection closed during round trips'));
    const onData = (d) => {
      waiting -= d.length;
      if (waiting > 0) return;
      record?.(microsSince(t0));
      if (++done >= count) finish();
      else send();
    };
    sock.on('data', onData);
    sock.once('error', finish);
    sock.once('close', onClose);
    if (count > 0) send();
    else finish();
  });
}

/**
 * Round-trip latency: `connections` echo connections, each doing its share of `warmup` then of
 * `roundTrips` round trips of `msgBytes`, all connections at once. Returns the per-round-trip
 * times (µs, sorted) and round trips per second over all connections.
 */
export async function latency(port, { connections, roundTrips, warmup, msgBytes, timeoutMs }) {
  const msg = Buffer.alloc(msgBytes, 0x71);
  const socks = [];
  const destroyAll = () => {
    for (const s of socks) s.destroy();
  };
  try {
    for (let i = 0; i < connections; i++) {
      const sock = await open(port);
      socks.push(sock);
      sock.write(header('E', 0));
    }
    const share = (total, i) => Math.floor(total / connections) + (i < total % connections ? 1 : 0);
    const warm = Promise.all(socks.map((s, i) => pingPong(s, share(warmup, i), msg)));
    await withDeadline(warm, timeoutMs, 'latency warm-up', destroyAll);
    const samples = new Float64Array(roundTrips);
    let n = 0;
    const record = (us) => {
      samples[n++] = us;
    };
    const t0 = now();
    const timed = Promise.all(socks.map((s, i) => pingPong(s, share(roundTrips, i), msg, record)));
    await withDeadline(timed, timeoutMs, 'latency', destroyAll);
    const secs = secondsSince(t0);
    return { samples: samples.subarray(0, n).sort(), perSecond: n / secs };
  } finally {
    destroyAll();
  }
}

/** One fresh connection: connect, one round trip of `msg`, close; µs until fully closed. */
async function connectCycle(port, msg, timeoutMs) {
  const t0 = now();
  const sock = connect(where(port));
  sock.setNoDelay(true);
  let got = 0;
  const done = new Promise((resolve, reject) => {
    sock.once('connect', () => sock.write(Buffer.concat([header('E', 0), msg])));
    sock.on('data', (d) => {
      got += d.length;
      if (got >= msg.length) sock.end();
    });
    sock.once('error', reject);
    sock.once('close', () => (got >= msg.length ? resolve() : reject(new Error('closed before the echo'))));
  });
  try {
    await withDeadline(done, timeoutMs, 'connection cycle', () => sock.destroy());
    return microsSince(t0);
  } finally {
    sock.destroy();
  }
}

/** `count` connection cycles one after another (stopping early at `timeoutMs` in total). */
export async function connectionSetup(port, { count, msgBytes, timeoutMs }) {
  const msg = Buffer.alloc(msgBytes, 0x63);
  const samples = [];
  const t0 = now();
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < count && Date.now() < deadline; i++) {
    samples.push(await connectCycle(port, msg, Math.min(5_000, timeoutMs)));
  }
  const secs = secondsSince(t0);
  return { samples: Float64Array.from(samples).sort(), perSecond: samples.length / secs };
}

/** The value at quantile `q` (0..1) of ascending `sorted`. */
export function quantile(sorted, q) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}
