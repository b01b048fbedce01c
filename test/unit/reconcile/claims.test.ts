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
});
