// Relaying bytes between sockets without stream machinery: reads go straight into reused
// buffers (`onread`) and each chunk is written on at once. Shared by the TCP forwarder and the
// tunnels (src/net/splice.ts).
import { type OnReadOpts, Socket, type SocketConstructorOpts } from 'node:net';

/**
 * Reads for one direction: the socket reads straight into `readBuf`, and each chunk is written to
 * `to()` from there, with no stream machinery and no allocation per chunk. Returning false (the
 * destination is full) stops reading until it drains, and a drained socket has sent everything,
 * so the buffer is free again when reading resumes. A write that the kernel did not take whole
 * while the destination still has room is queued by reference, though, so the next read goes to a
 * fresh buffer. Reads that fill the buffer move on to a bigger one (up to MAX_READ_BYTES): fewer
 * system calls for bulk transfers, little memory for chatty ones.
 */
export function relay(to: () => Socket): OnReadOpts {
  let readBuf = Buffer.allocUnsafe(FIRST_READ_BYTES);
  return {
    buffer: () => readBuf,
    callback: (n, buf) => {
      const dest = to();
      const more = dest.write(buf.subarray(0, n));
      if (n === buf.length && n < MAX_READ_BYTES) readBuf = Buffer.allocUnsafe(n * 4);
      else if (more && dest.writableLength > 0) readBuf = Buffer.allocUnsafe(buf.length);
      return more;
    },
  };
}

/**
 * net.Server has no `onread` option, so the accepted socket's handle moves into a new Socket made
 * with one; the emptied socket is destroyed, which also settles the server's count of it. Node
 * does this itself for every accepted connection (`new Socket({ handle })`). Where a Node release
 * keeps its handle elsewhere, this returns undefined and the caller reads 'data' events instead.
 */
export function withOnread(accepted: Socket, onread: OnReadOpts): Socket | undefined {
  const s = accepted as unknown as { _handle?: { readStart?: unknown } | null };
  const handle = s._handle;
  if (!handle || typeof handle.readStart !== 'function') return undefined;
  s._handle = null;
  try {
    const opts = { handle, allowHalfOpen: true, readable: true, writable: true, onread };
    const adopted = new Socket(opts as SocketConstructorOpts);
    accepted.destroy();
    return adopted;
  } catch {
    s._handle = handle;
    return undefined;
  }
}

/** Bytes read from an upstream at a time: a connection starts with FIRST and grows to MAX. */
const FIRST_READ_BYTES = 16 * 1024;
const MAX_READ_BYTES = 256 * 1024;
