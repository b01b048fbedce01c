// Writes `total` bytes of filler to a socket as fast as it takes them, honouring backpressure;
// resolves once all are handed to the socket. Shared by the bench's client and its upstream.
const CHUNK = Buffer.alloc(256 * 1024, 0x61);

export function writeBytes(sock, total) {
  return new Promise((resolve) => {
    let left = total;
    const pump = () => {
      while (left > 0) {
        const len = Math.min(left, CHUNK.length);
        left -= len;
        if (!sock.write(len === CHUNK.length ? CHUNK : CHUNK.subarray(0, len))) {
          sock.once('drain', pump);
          return;
        }
      }
      resolve();
    };
    pump();
  });
}
