// The key string: secret and pin in one word; malformed strings get an error that says what is
// wrong without repeating the string (it may be most of a real key).
import { describe, expect, it } from 'vitest';
import { AgentKeyError, formatAgentKey, parseAgentKey } from '../../src/model/agent-key.js';

const SECRET = 'berth_agent_G1TlPJBJDPi-FJTWkncYpv9K6_2E1aov';
const PIN = '01CPLJ_giURkJBLWJ1trg915B4VZ2H7demTV3zuyEeQ';

describe('parseAgentKey', () => {
  it('reads a pinned key and a key from before pins', () => {
    expect(parseAgentKey(`${SECRET}.${PIN}`)).toEqual({ secret: SECRET, pin: PIN });
    expect(parseAgentKey(SECRET)).toEqual({ secret: SECRET });
    expect(parseAgentKey(`  ${SECRET}.${PIN}\n`)).toEqual({ secret: SECRET, pin: PIN });
    expect(formatAgentKey({ secret: SECRET, pin: PIN })).toBe(`${SECRET}.${PIN}`);
    expect(formatAgentKey({ secret: SECRET })).toBe(SECRET);
  });

  it.each([
    ['', /is empty/],
    [`${SECRET} ${PIN}`, /white space/],
    [`${SECRET}.${PIN}.x`, /2 dots, expected at most one/],
    [`.${PIN}`, /nothing before the dot/],
    [`${SECRET}.${PIN.slice(1)}`, /pin \(after the dot\) is malformed: expected 43 .* got 42 characters/],
    [`${SECRET}.${PIN.slice(0, -1)}=`, /pin \(after the dot\) is malformed/],
    [`${SECRET.slice(0, -1)}%.${PIN}`, /secret is malformed/],
  ])('refuses %j with a clear error', (text, message) => {
    let err: unknown;
    try {
      parseAgentKey(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentKeyError);
    expect((err as Error).message).toMatch(message);
    if (text.length > 10) expect((err as Error).message).not.toContain(SECRET.slice(12));
  });
});
