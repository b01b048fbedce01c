import { describe, expect, it } from 'vitest';
import { type UpstreamRules, upstreamRefusal } from '../../../src/reconcile/upstreams.js';

const rules: UpstreamRules = {
  protected: [
    { host: '127.0.0.1', port: 7080, what: 'admin API (--api-listen)' },
    { port: 80, what: 'front door' },
    { host: '127.0.0.1', port: 5353, what: 'DNS responder' },
  ],
  localAddresses: new Set(['127.0.0.1', '10.0.0.1', '::1']),
};
const remote = (seenFrom?: string, upstreams?: string[], hostIp?: string) =>
  ({ kind: 'remote', seenFrom, upstreams, hostIp }) as const;

describe('upstreamRefusal', () => {
  it.each([
    ['its own host', '10.0.0.5', 8080, remote('10.0.0.5'), undefined],
    ['its own host, IPv4-mapped', '10.0.0.5', 8080, remote('::ffff:10.0.0.5'), undefined],
    [
      'another host on the network',
      '10.0.0.6',
      8080,
      remote('10.0.0.5'),
      /not this agent's host \(the agent connects from 10\.0\.0\.5\)/,
    ],
    ['a network its key allows', '172.20.0.3', 80, remote('10.0.0.5', ['172.20.0.0/16']), undefined],
    ['the server API', '127.0.0.1', 7080, remote('127.0.0.1'), /this server's own admin API/],
    ['the server API through another local address', '10.0.0.1', 80, remote('10.0.0.1'), /own front door/],
    ['the DNS responder', '127.0.0.1', 5353, remote('127.0.0.1'), /DNS responder/],
    ['cloud metadata', '169.254.169.254', 80, remote('169.254.169.254'), /link-local, metadata/],
    ['link-local IPv6', 'fe80::1', 80, remote('10.0.0.5', ['::/0']), /link-local/],
    ['a name', 'metadata.google.internal', 80, remote('10.0.0.5'), /is a name, not an IP address/],
    ['any loopback address from an agent on this machine', '127.0.0.2', 8080, remote('127.0.0.1'), undefined],
    ['loopback from a remote agent', '127.0.0.1', 8080, remote('10.0.0.5'), /not this agent's host/],
    [
      'its reported host IP before the server saw it connect',
      '10.0.0.5',
      80,
      remote(undefined, undefined, '10.0.0.5'),
      undefined,
    ],
  ])('%s', (_n, host, port, agent, want) => {
    const got = upstreamRefusal(host, port, agent, rules);
    if (want === undefined) expect(got).toBeUndefined();
    else expect(got).toMatch(want);
  });

  it('lets the local agent use its containers’ addresses, never the server’s own listeners or metadata', () => {
    const local = { kind: 'local' } as const;
    expect(upstreamRefusal('172.18.0.4', 80, local, rules)).toBeUndefined();
    expect(upstreamRefusal('127.0.0.1', 7080, local, rules)).toMatch(/admin API/);
    expect(upstreamRefusal('169.254.169.254', 80, local, rules)).toMatch(/metadata/);
  });

  it('refuses every spelling of a refused address, IPv4-mapped ones included', () => {
    const local = { kind: 'local' } as const;
    for (const h of ['::FFFF:169.254.169.254', '::ffff:a9fe:a9fe', '[0:0:0:0:0:ffff:a9fe:a9fe]'])
      expect(upstreamRefusal(h, 80, local, rules), h).toMatch(
        /169\.254\.169\.254:80 is a link-local, metadata/,
      );
    for (const h of ['::ffff:7f00:1', '::FFFF:127.0.0.1'])
      expect(upstreamRefusal(h, 7080, local, rules), h).toMatch(
        /127\.0\.0\.1:7080 is this server's own admin API/,
      );
    for (const h of ['::ffff:7f4d:1', '::FFFF:127.77.0.1'])
      expect(upstreamRefusal(h, 4000, local, rules), h).toMatch(/127\.77\.0\.1:4000 is in 127\.77\.0\.0\/16/);
    // A remote agent's own host, in another spelling, is still its own.
    expect(upstreamRefusal('::ffff:a00:5', 8080, remote('10.0.0.5'), rules)).toBeUndefined();
    expect(upstreamRefusal('0:0:0:0:0:0:0:1', 80, remote('127.0.0.1'), rules)).toMatch(/own front door/);
  });
});

describe('upstreamRefusal, tunnel agents', () => {
  const tunnel = (seenFrom: string) => ({ kind: 'remote', seenFrom, tunnel: true }) as const;
  it.each([
    // The agent dials from its own host: its loopback and its own networks are its side's.
    ['its own loopback', '127.0.0.1', 8080, tunnel('10.0.0.5'), undefined],
    ['another address of its network', '192.168.1.20', 80, tunnel('10.0.0.5'), undefined],
    [
      "a port that is this server's on this server's loopback",
      '127.0.0.1',
      7080,
      tunnel('10.0.0.5'),
      undefined,
    ],
    // Run on this machine, its loopback is this server's: the server's own listeners stay off limits.
    [
      'the server API when the agent runs on this machine',
      '127.0.0.1',
      7080,
      tunnel('127.0.0.1'),
      /own admin API/,
    ],
    ['the server API at a local address', '10.0.0.1', 80, tunnel('10.0.0.1'), /own front door/],
    ['cloud metadata', '169.254.169.254', 80, tunnel('10.0.0.5'), /link-local, metadata/],
    ['a name', 'db.internal', 5432, tunnel('10.0.0.5'), /is a name, not an IP address/],
    ['a tunnel endpoint', '127.77.0.4', 40000, tunnel('10.0.0.5'), /tunnel endpoints/],
  ])('%s', (_what, host, port, agent, want) => {
    const got = upstreamRefusal(host, port, agent, rules);
    if (want === undefined) expect(got).toBeUndefined();
    else expect(got).toMatch(want);
  });

  it('keeps every agent, tunnel or not, off the tunnel endpoints', () => {
    expect(upstreamRefusal('127.77.0.1', 4000, remote('127.0.0.1'), rules)).toMatch(/127\.77\.0\.0\/16/);
    expect(upstreamRefusal('127.77.0.1', 4000, { kind: 'local' }, rules)).toMatch(/tunnel endpoints/);
  });
});
