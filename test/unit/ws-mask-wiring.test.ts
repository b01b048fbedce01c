import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
// The server's module that uses ws, alone: importing it must put the word-wise functions in
// place before ws loads (a file of its own, so that nothing else here imports them first).
import '../../src/server/agent-hub.js';

describe('ws-mask in the server', () => {
  it('is what ws uses in the server', () => {
    const req = createRequire(import.meta.url);
    const bufferUtil = createRequire(join(dirname(req.resolve('ws')), 'lib', 'x.js'))('./buffer-util.js') as {
      unmask: (b: Uint8Array, m: Uint8Array) => void;
    };
    // ws wraps Node's (here: ours) for buffers of 24 bytes or more, and keeps its byte loop otherwise.
    expect(bufferUtil.unmask.toString()).toContain('websocketUnmask');
    const data = randomBytes(1 << 20);
    const m = randomBytes(4);
    const want = Buffer.from(data);
    for (let i = 0; i < want.length; i++) want[i]! ^= m[i & 3]!;
    bufferUtil.unmask(data, m);
    expect(Buffer.compare(data, want)).toBe(0);
  });
});
