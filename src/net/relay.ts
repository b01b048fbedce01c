// Relaying bytes between sockets without stream machinery: reads go straight into reused
// buffers (`onread`) and each chunk is written on at once. Shared by the TCP forwarder and the
// tunnels (src/net/splice.ts).
import { type OnReadOpts, Socket, type SocketConstructorOpts } from 'node:net';
import type { TLSSocket } from 'node:tls';

export interface RelayOptions {
  /**
   * The source is TLS. It hands decrypted data over one record (at most 16 KiB) per read, so a
   * bulk transfer would cost one write to the destination per 16 KiB: full records are gathered
   * instead (the destination corked, uncorked once the buffer is full, a shorter read comes, or
   * before the event loop next waits), so a burst leaves in one writev of up to the buffer's size.
   * A short message is never held: only a full record is. And stopping its reads does not stop
   * them at once (the records already decrypted from what the kernel gave still come), so a
   * buffer that a pending write holds is never handed out again, full destination or not.
   */
  tls?: boolean;
}

/**
 * Reads for one direction: the socket reads straight into `readBuf`, and each chunk is written to
 * `to()` from there, with no stream machinery and no allocation per chunk. Returning false (the
 * destination is full) stops reading until it drains, and a drained socket has sent everything,
 * so the buffer is free again when reading resumes. A write that the kernel did not take whole
 * while the destination still has room is queued by reference, though, so the next read goes to a
 * fresh buffer (not when it is TLS, which has copied it). Reads that fill the buffer move on to a bigger one (up to MAX_READ_BYTES): fewer
 * system calls for bulk transfers, little memory for chatty ones. From a TLS source (`tls`),
 * consecutive full records are read into consecutive parts of one buffer and written together.
 */
export function relay(to: () => Socket, o: RelayOptions = {}): OnReadOpts {
  let readBuf = Buffer.allocUnsafe(FIRST_READ_BYTES);
  /** Where the next read goes in readBuf: past the records gathered (and still referenced) so far. */
  let offset = 0;
  let next = readBuf;
  return {
    buffer: () => next,
    callback: (n, buf) => {
      const dest = to();
      const gather = o.tls === true && n === TLS_RECORD_BYTES && buf.length - n >= TLS_RECORD_BYTES;
      if (gather && !dest.writableCorked) {
        dest.cork();
        setImmediate(uncork, dest);
      }
      // A TLS destination encrypts what it is given before write() returns (Node's TLSWrap copies
      // anything it cannot encrypt at once), so the buffer is free again at once, though the write's
      // callback comes later; unless the write waits in the stream's own queue, behind another.
      const copied = dest.writableLength === 0 && !dest.writableCorked && isTls(dest);
      let more = dest.write(n === buf.length ? buf : buf.subarray(0, n));
      // Corked, write() says "full" past the socket's highWaterMark (16 KiB): what is held is
      // bounded by the buffer instead, and the uncork below or at setImmediate sends it.
      if (gather) {
        offset += n;
        next = readBuf.subarray(offset);
        return true;
      }
      // The buffer's end, or a short read: what was gathered goes now.
      if (dest.writableCorked) {
        uncork(dest);
        more = dest.writableLength < dest.writableHighWaterMark;
      }
      const filled = offset + n === readBuf.length;
      offset = 0;
      if (filled && readBuf.length < MAX_READ_BYTES) readBuf = Buffer.allocUnsafe(readBuf.length * 4);
      else if (!copied && (more || o.tls) && dest.writableLength > 0)
        readBuf = Buffer.allocUnsafe(readBuf.length);
      next = readBuf;
      return more;
    },
  };
}

const isTls = (s: Socket) => (s as Partial<TLSSocket>).encrypted === true && !s.connecting && !s.destroyed;

/** Sends everything a corked socket holds (however many times it was corked). */
export function uncork(s: Socket): void {
  while (s.writableCorked > 0) s.uncork();
}

export interface Handover extends OnReadOpts {
  /**
   * Reads go to `fn`, one copy per read, until relayTo() (or take(undefined)); reads that came
   * while nobody took them are given to it first, at once.
   */
  take(fn: ((chunk: Buffer) => void) | undefined): void;
  /** Puts bytes back, to be read first by whoever takes the reads next. */
  unread(chunk: Buffer): void;
  /** From now on reads are relayed to `to()` as relay() does; returns what came before, to send first. */
  relayTo(to: () => Socket, o?: RelayOptions): Buffer;
}

/**
 * `onread` for a socket whose first bytes (a handshake's answer, a request line) are read by
 * someone else before it is handed over to a relay: a connection that reads into a reused buffer
 * from the start, so nothing has to move its handle later. Reads before the handover go to a small
 * buffer (an idle connection keeps only that). Pausing the socket does not stop a TLS socket's
 * reads at once (the records already decrypted still come), so what nobody takes is kept.
 */
export function handover(): Handover {
  const small = Buffer.allocUnsafe(EARLY_READ_BYTES);
  let relayed: OnReadOpts | undefined;
  let early: ((chunk: Buffer) => void) | undefined;
  let backlog: Buffer[] = [];
  return {
    buffer: () => (relayed ? (relayed.buffer as () => Uint8Array)() : small),
    callback: (n, buf) => {
      if (relayed) return relayed.callback(n, buf);
      const chunk = Buffer.from(buf.subarray(0, n));
      if (early) early(chunk);
      else backlog.push(chunk);
      return true;
    },
    take(fn) {
      early = fn;
      while (early && backlog.length > 0) {
        const chunk = Buffer.concat(backlog);
        backlog = [];
        early(chunk);
      }
    },
    unread(chunk) {
      if (chunk.length > 0) backlog.unshift(chunk);
    },
    relayTo(to, o) {
      relayed = relay(to, o);
      early = undefined;
      const before = Buffer.concat(backlog);
      backlog = [];
      return before;
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

/**
 * `onread` for a socket that already exists and was made without it: a TLS socket that an HTTPS
 * server accepted (its handle, the TLS layer, cannot move into a plain Socket as withOnread()
 * does). Sets what the option would have set (Node keeps it under symbols of its own, on every
 * socket) and hands the handle the buffer, so decrypted records are copied into it instead of each
 * becoming a new Buffer and a 'data' event. False, and nothing changed, where a Node release keeps
 * these elsewhere, or bytes are already waiting in the socket's buffer: the caller reads 'data'.
 */
export function readIntoBuffers(sock: Socket, onread: OnReadOpts): boolean {
  const handle = (sock as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } | null })
    ._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || sock.readableLength > 0) return false;
  const own = new Map(Object.getOwnPropertySymbols(sock).map((k) => [k.description, k]));
  const [kBuffer, kBufferGen, kBufferCb] = ['kBuffer', 'kBufferGen', 'kBufferCb'].map((d) => own.get(d));
  if (!kBuffer || !kBufferGen || !kBufferCb) return false;
  const slots = sock as unknown as Record<symbol, unknown>;
  if (slots[kBuffer] !== null || slots[kBufferCb] !== null) return false;
  const gen = typeof onread.buffer === 'function' ? onread.buffer : null;
  const first = gen ? gen() : (onread.buffer as Uint8Array);
  slots[kBuffer] = first;
  slots[kBufferGen] = gen;
  slots[kBufferCb] = onread.callback;
  handle.useUserBuffer(first);
  return true;
}

/**
 * Bytes read at a time: a connection starts with FIRST and grows (×4 on each read that fills the
 * buffer) to MAX. Each direction of every open connection holds its buffer for as long as it is
 * open, so a small start is what an idle or chatty connection costs (the forwarder's and the
 * tunnels'); a bulk transfer reaches 256 KiB in three reads.
 */
const FIRST_READ_BYTES = 4 * 1024;
const MAX_READ_BYTES = 256 * 1024;
/** Reads before a handover: an answer head or an open request line, a few hundred bytes. */
const EARLY_READ_BYTES = 2 * 1024;
/** The most plaintext one TLS record carries (RFC 8446 §5.1); Node hands TLS reads over one by one. */
export const TLS_RECORD_BYTES = 16 * 1024;
