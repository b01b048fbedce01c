import { describe, expect, it } from 'vitest';
import { claimedSince, nextClaims } from '../../../src/reconcile/claims.js';

const units = (...u: string[]) => new Set(u);

describe('nextClaims', () => {
  it('keeps the time a claim was first seen, starts new ones now', () => {
    const first = nextClaims(undefined, units('a'), 1_000, 60_000);
    const second = nextClaims(first, units('a', 'b'), 5_000, 60_000);
    expect(claimedSince(second, 'a')).toBe(1_000);
    expect(claimedSince(second, 'b')).toBe(5_000);
  });

  it('remembers a released claim for the memory window, so a recreated container keeps its place', () => {
    const held = nextClaims(undefined, units('a'), 1_000, 60_000);
    const released = nextClaims(held, units(), 10_000, 60_000);
    expect(released.a).toEqual({ since: 1_000, releasedAt: 10_000 });
    expect(claimedSince(released, 'a')).toBe(0); // released: it claims nothing now
    const back = nextClaims(released, units('a'), 40_000, 60_000);
    expect(claimedSince(back, 'a')).toBe(1_000);
  });

  it('forgets a released claim after the window: coming back later is a new claim', () => {
    const held = nextClaims(undefined, units('a'), 1_000, 60_000);
    const released = nextClaims(held, units(), 10_000, 60_000);
    const stillGone = nextClaims(released, units(), 80_000, 60_000);
    expect(stillGone.a).toBeUndefined();
    const back = nextClaims(released, units('a'), 80_000, 60_000);
    expect(claimedSince(back, 'a')).toBe(80_000);
  });

  it('keeps at most 10,000 released claims, the most recent', () => {
    let c = nextClaims(undefined, units(...Array.from({ length: 12_000 }, (_, i) => `u${i}`)), 0, 60_000);
    c = nextClaims(c, units(), 1, 60_000);
    expect(Object.keys(c)).toHaveLength(10_000);
  });

  it('answers the same looked up in place (few units) or through its index (many), and for claims read back from JSON', () => {
    for (const n of [3, 50, 1_023, 1_024, 5_000]) {
      const all = Array.from({ length: n }, (_, i) => `h${i}.test\u0000/`);
      const first = nextClaims(undefined, new Set(all.slice(0, n - 1)), 1_000, 60_000);
      // One released (remembered, not claimed), one new.
      const next = nextClaims(first, new Set([...all.slice(1, n - 1), all[n - 1]!]), 2_000, 60_000);
      for (const c of [next, JSON.parse(JSON.stringify(next))]) {
        expect(claimedSince(c, all[0]!)).toBe(0);
        expect(claimedSince(c, all[1]!)).toBe(1_000);
        expect(claimedSince(c, all[n - 1]!)).toBe(2_000);
        // Names of Object's prototype are not claims.
        for (const u of ['constructor', '__proto__', 'toString', 'hasOwnProperty'])
          expect(claimedSince(c, u)).toBe(0);
      }
    }
  });
});
