// Where the front door reaches a container: the network it names must be one of its own.
import { describe, expect, it } from 'vitest';
import { resolveAddress } from '../../../src/labels/upstream.js';
import { container } from './container.js';

describe('resolveAddress', () => {
  const c = container({ networkMode: 'bridge', networks: { app: '10.1.0.5', db: '10.2.0.5' } });
  const ctx = { hostIp: '192.168.1.10' };

  it('takes the address on the network the label names', () => {
    expect(resolveAddress(c, 80, ctx, 'db')).toEqual({ ok: true, host: '10.2.0.5', port: 80 });
  });

  it.each(['constructor', 'toString', '__proto__', 'hasOwnProperty'])(
    'finds no address on a network named %s that the container is not on',
    (name) => {
      expect(resolveAddress(c, 80, ctx, name)).toEqual({
        ok: false,
        message: `container has no address on network "${name}" (its networks: app, db)`,
      });
    },
  );
});
