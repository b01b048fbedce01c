// WebSocket masking four bytes at a time, for `ws`. Every frame an agent sends is masked, and ws
// unmasks it in one go once the whole frame is in: at one byte per step an 8 MiB snapshot held
// the server's event loop for 20 to 36 ms (bench/hostile-agent.ts, profiled), a third of what a
// request may wait. ws takes Node's `http.websocketMask` / `http.websocketUnmask` when they exist
// (newer Node versions have them built in) and loads them when it is first imported, so this
// module is imported before `ws` by the modules that use it; where Node has its own, it is kept.
import http from 'node:http';
import { endianness } from 'node:os';

type Mask = (
  source: Uint8Array,
  mask: Uint8Array,
  output: Uint8Array,
  offset: number,
  length: number,
) => void;
type Unmask = (buffer: Uint8Array, mask: Uint8Array) => void;

/** `mask` as one little-endian word whose first byte applies at `phase` (0..3). */
function word(mask: Uint8Array, phase: number): number {
  return (
    (mask[phase & 3]! |
      (mask[(phase + 1) & 3]! << 8) |
      (mask[(phase + 2) & 3]! << 16) |
      (mask[(phase + 3) & 3]! << 24)) >>>
    0
  );
}

/** XORs `buffer` in place with `mask` repeated, the mask's first byte at buffer[0]. */
export const unmask: Unmask = (buffer, mask) => {
  const n = buffer.length;
  // Bytes up to the first 4-byte boundary of the underlying memory, one at a time.
  const lead = Math.min(n, (4 - (buffer.byteOffset & 3)) & 3);
  let i = 0;
  for (; i < lead; i++) buffer[i]! ^= mask[i & 3]!;
  const words = (n - lead) >>> 2;
  if (words > 0) {
    const w = new Uint32Array(buffer.buffer, buffer.byteOffset + lead, words);
    const m = word(mask, lead);
    for (let k = 0; k < words; k++) w[k]! ^= m;
    i += words * 4;
  }
  for (; i < n; i++) buffer[i]! ^= mask[i & 3]!;
};

/** output[offset + i] = source[i] ^ mask[i & 3], for i < length. */
export const mask: Mask = (source, m, output, offset, length) => {
  const out = output.subarray(offset, offset + length);
  out.set(source.subarray(0, length));
  unmask(out, m);
};

const h = http as unknown as { websocketMask?: Mask; websocketUnmask?: Unmask };
// Words are XORed as little-endian numbers; elsewhere ws keeps its own byte loop.
if (endianness() === 'LE' && !h.websocketMask && !h.websocketUnmask) {
  h.websocketMask = mask;
  h.websocketUnmask = unmask;
}
