// Two sockets joined both ways, for tunneled streams: backpressure in each direction (a full
// side stops reads from the other until it drains), an end from one side becomes a half-close
// towards the other, and a failure of either resets both, so a broken stream ends at once at
// both ends instead of hanging.
import type { Socket } from 'node:net';
import { TLS_RECORD_BYTES, uncork } from './relay.js';

/** The most a 'data' reader gathers into one write (see below). */
const GATHER_BYTES = 256 * 1024;

/** Closes a socket with a reset (RST) where the platform can, else destroys it. */
export function resetSocket(s: Socket): void {
  if (s.destroyed) return;
  try {
    s.resetAndDestroy();
  } catch {
    s.destroy();
  }
}

/**
 * Joins a and b; `done(failed)` runs once, when both have closed (failed: one of them broke and
 * both were reset). Both sockets must allow half-open connections.
 */
export function splice(a: Socket, b: Socket, done: (failed: boolean) => void = () => {}): void {
  let closes = 0;
  let finished = false;
  const finish = (failed: boolean) => {
    if (finished) return;
    finished = true;
    if (failed) {
      resetSocket(a);
      resetSocket(b);
    }
    done(failed);
  };
  const oneWay = (from: Socket, to: Socket) => {
    // A TLS socket emits one record (at most 16 KiB) per 'data': full records are gathered, the
    // destination corked until a shorter one comes, GATHER_BYTES are held or the event loop turns,
    // so a bulk transfer costs one writev per burst rather than one write per record. A short
    // message is never held. (A socket that reads into a buffer of its own never emits 'data'.)
    from.on('data', (chunk: Buffer) => {
      const full = chunk.length === TLS_RECORD_BYTES;
      if (full && !to.writableCorked) {
        to.cork();
        setImmediate(uncork, to);
      }
      const more = to.write(chunk);
      if (to.writableCorked === 0) {
        if (!more) from.pause();
        return;
      }
      if (!full || to.writableLength >= GATHER_BYTES) {
        uncork(to);
        if (to.writableLength >= to.writableHighWaterMark) from.pause();
      }
    });
    to.on('drain', () => from.resume());
    from.once('end', () => {
      if (!to.destroyed) to.end();
    });
    from.on('error', () => finish(true));
    from.once('close', (hadError: boolean) => {
      if (hadError) finish(true);
      else if (++closes === 2) finish(false);
      // Destroyed by someone (not ended both ways): the other side cannot finish either.
      else if (!from.readableEnded || !from.writableFinished) finish(true);
    });
  };
  oneWay(a, b);
  oneWay(b, a);
  a.setNoDelay?.(true);
  b.setNoDelay?.(true);
  a.resume();
  b.resume();
}
