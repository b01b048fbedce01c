import { describe, expect, it } from 'vitest';
import { domainAllowed, HostIndex, publicSuffixWildcard } from '../../src/model/domains.js';

describe('HostIndex', () => {
  const index = new HostIndex(['app.example.com', '*.wild.example.com', '*.corp.test']);
  it.each([
    ['app.example.com', true],
    ['other.example.com', false],
    ['a.wild.example.com', true],
    ['a.b.wild.example.com', true],
    ['wild.example.com', false],
    ['x.corp.test', true],
    ['corp.test', false],
    ['example.com', false],
  ])('%s → %s, as domainAllowed says', (name, want) => {
    expect(index.covers(name)).toBe(want);
    expect(
      ['app.example.com', '*.wild.example.com', '*.corp.test'].some((h) => domainAllowed(name, [h])),
    ).toBe(want);
  });
});

describe('publicSuffixWildcard', () => {
  it.each([
    ['*.com', 'com'],
    ['*.co.uk', 'co.uk'],
    ['*.github.io', 'github.io'],
    ['*.example.com', undefined],
    ['*.test', undefined],
    ['example.com', undefined],
  ])('%s → %s', (host, want) => {
    expect(publicSuffixWildcard(host)).toBe(want);
  });
});
