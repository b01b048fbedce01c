import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mask, unmask } from '../../src/net/ws-mask.js';

function byteWise(buffer: Uint8Array, m: Uint8Array): Uint8Array {
  const out = Uint8Array.from(buffer);
  for (let i = 0; i < out.length; i++) out[i]! ^= m[i & 3]!;
  return out;
}

describe('ws-mask', () => {
  it('unmasks like the byte loop at every length and alignment', () => {
    const backing = randomBytes(70_000);
    for (let trial = 0; trial < 3_000; trial++) {
      const offset = trial % 7;
      const length = trial < 2_000 ? trial % 67 : (trial * 7919) % (backing.length - offset);
      const view = Buffer.from(backing.buffer, backing.byteOffset + offset, length);
      const m = randomBytes(4);
      const want = byteWise(view, m);
      const copy = Buffer.from(view);
      const before = Buffer.from(backing);
      unmask(view, m);
      expect(Buffer.compare(view, want)).toBe(0);
      // Nothing outside the view is touched.
      expect(Buffer.compare(backing.subarray(0, offset), before.subarray(0, offset))).toBe(0);
      expect(Buffer.compare(backing.subarray(offset + length), before.subarray(offset + length))).toBe(0);
      unmask(view, m);
      expect(Buffer.compare(view, copy)).toBe(0);
    }
  });

  it('masks into an output buffer at an offset', () => {
    for (let trial = 0; trial < 500; trial++) {
      const source = randomBytes(trial * 3);
      const m = randomBytes(4);
      const output = Buffer.alloc(source.length + 10, 0xee);
      const offset = trial % 10;
      mask(source, m, output, offset, source.length);
      expect(Buffer.compare(output.subarray(offset, offset + source.length), byteWise(source, m))).toBe(0);
      expect(output.subarray(0, offset).every((b) => b === 0xee)).toBe(true);
    }
  });
});
