import { describe, expect, it } from 'vitest';
import { stringifyInSlices } from '../../src/store/json-slices.js';

describe('stringifyInSlices', () => {
  it("gives JSON.stringify's text for records with large arrays and objects, empty ones and odd keys", async () => {
    const claims: Record<string, unknown> = Object.create(null);
    for (let i = 0; i < 5_003; i++) claims[`h${i}.test\u0000/`] = { since: i };
    const proto = '__proto__'; // a key like any other in the claims
    claims[proto] = { since: -1 };
    claims['7'] = { since: 7 }; // an integer key comes first in both
    const record = {
      agentId: 'ag_1',
      generation: 3,
      routes: Array.from({ length: 4_001 }, (_, i) => ({
        id: `r${i}`,
        hosts: [`"q${i}".test`],
        missing: undefined,
      })),
      containers: [],
      empty: {},
      tcp: [undefined, null, 1],
      claims,
      skipped: undefined,
      text: 'ü\u2028\u0000',
    };
    const got = await stringifyInSlices(record);
    expect(got).toBe(JSON.stringify(record));
    expect(Object.getOwnPropertyDescriptor(JSON.parse(got).claims, proto)?.value).toEqual({ since: -1 });
  });

  it('yields to the event loop between slices', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const big = { routes: Array.from({ length: 40_000 }, (_, i) => ({ id: `r${i}`, pad: 'x'.repeat(200) })) };
    await stringifyInSlices(big);
    clearInterval(timer);
    expect(ticks).toBeGreaterThan(0);
  });
});
