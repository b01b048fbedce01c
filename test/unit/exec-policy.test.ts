import { describe, expect, it } from 'vitest';
import {
  checkArgv,
  DEFAULT_POLICY,
  decide,
  matchRule,
  parsePolicy,
  parseRule,
  rulesFromLabels,
} from '../../src/agent/exec-policy.js';

describe('exec rules', () => {
  it.each([
    ['php occ files:scan *', ['php', 'occ', 'files:scan', '--all'], true],
    ['php occ files:scan *', ['php', 'occ', 'files:scan'], false],
    ['php occ files:scan *', ['php', 'occ', 'files:scan', 'a', 'b'], false],
    ['photoprism index ...', ['photoprism', 'index'], true],
    ['photoprism index ...', ['photoprism', 'index', '--cleanup', '-f'], true],
    ['photoprism index ...', ['photoprism', 'backup'], false],
    ['echo', ['echo'], true],
  ])('%s vs %j → %s', (rule, argv, ok) => {
    expect(matchRule(parseRule(rule)!, argv)).toBe(ok);
  });

  it('refuses malformed rules', () => {
    expect(parseRule('')).toBeUndefined();
    expect(parseRule('* anything')).toBeUndefined();
    expect(parseRule('a ... b')).toBeUndefined();
  });

  it('reads labels in order, numbered ones after the base', () => {
    const labels = {
      'berth.exec.allow.10': 'c',
      'berth.exec.allow': 'a',
      'berth.exec.allow.2': 'b',
      'berth.exec.allowx': 'no',
    };
    expect(rulesFromLabels(labels, 'berth')).toEqual(['a', 'b', 'c']);
  });

  it('checks every argument conservatively', () => {
    expect(checkArgv(['ls', '-la', '/var/www', 'a=b,c:d@e%f+g'])).toEqual([]);
    expect(checkArgv(['echo', 'a b'])[0]).toMatch(
      /argument 1 "a b" contains characters that are not allowed: " "/,
    );
    expect(checkArgv(['echo', '$(id)'])[0]).toMatch(/"\$" "\(" "\)"/);
    expect(checkArgv([])).toEqual(['no command given']);
    expect(checkArgv(['echo', 'x'.repeat(300)])[0]).toMatch(/300 characters long/);
  });
});

describe('decide', () => {
  const c = { name: 'nextcloud', labels: { 'berth.exec.allow': 'php occ files:scan *' } };
  it('allows a matching command and names the rule', () => {
    expect(decide(['php', 'occ', 'files:scan', '--all'], c, DEFAULT_POLICY, 'berth')).toEqual({
      allowed: true,
      rule: 'php occ files:scan *',
    });
  });
  it('denies with the rules considered', () => {
    const d = decide(['php', 'occ', 'user:delete', 'x'], c, DEFAULT_POLICY, 'berth');
    expect(d).toEqual({
      allowed: false,
      reason: 'no rule of container nextcloud matches; considered: "php occ files:scan *"',
      considered: ['php occ files:scan *'],
    });
  });
  it('obeys a policy that disables exec or ignores labels', () => {
    expect(
      decide(['php', 'occ', 'files:scan', 'a'], c, { ...DEFAULT_POLICY, enabled: false }, 'berth').allowed,
    ).toBe(false);
    expect(
      decide(['php', 'occ', 'files:scan', 'a'], c, { ...DEFAULT_POLICY, ignoreLabels: true }, 'berth')
        .allowed,
    ).toBe(false);
  });
  it('lets the server narrow but not widen', () => {
    expect(
      decide(['php', 'occ', 'files:scan', 'a'], c, DEFAULT_POLICY, 'berth', ['php occ status']).allowed,
    ).toBe(false);
    expect(decide(['php', 'occ', 'status'], c, DEFAULT_POLICY, 'berth', ['php occ status']).allowed).toBe(
      false,
    );
  });
});

describe('containers named like what every object has', () => {
  it.each(['constructor', 'toString', 'valueOf', 'hasOwnProperty'])(
    'finds no rules for a container named %s, and the rest still work',
    (name) => {
      const d = decide(['id'], { name, labels: {} }, DEFAULT_POLICY, 'berth');
      expect(d).toMatchObject({ allowed: false, considered: [] });
      const policy = parsePolicy(`{"allow":{"${name}":["uptime"],"*":["date"]}}`, 'p.json');
      expect(decide(['uptime'], { name, labels: {} }, policy, 'berth').allowed).toBe(true);
      expect(decide(['date'], { name: 'web', labels: {} }, policy, 'berth').allowed).toBe(true);
      expect(decide(['uptime'], { name: 'web', labels: {} }, policy, 'berth').allowed).toBe(false);
    },
  );

  it('keeps an allow entry named __proto__ as a name, not as the prototype', () => {
    const policy = parsePolicy('{"allow":{"__proto__":["uptime"],"web":["date"]}}', 'p.json');
    expect(decide(['date'], { name: 'web', labels: {} }, policy, 'berth').allowed).toBe(true);
    expect(decide(['uptime'], { name: 'web', labels: {} }, policy, 'berth').allowed).toBe(false);
    expect(decide(['uptime'], { name: 'other', labels: {} }, policy, 'berth').allowed).toBe(false);
  });
});

describe('parsePolicy', () => {
  it('reads a policy and reports every problem', () => {
    expect(parsePolicy('{"enabled":false}', 'p.json').enabled).toBe(false);
    expect(() =>
      parsePolicy('{"enabled":"no","maxConcurrent":0,"allow":{"x":["* a"]},"extra":1}', 'p.json'),
    ).toThrowError(
      /enabled: expected true or false[\s\S]*maxConcurrent: expected a positive whole number[\s\S]*allow.x: "\* a" is not a valid rule[\s\S]*extra: unknown setting/,
    );
    expect(() => parsePolicy('{', 'p.json')).toThrowError(/p.json: not valid JSON/);
  });
});
