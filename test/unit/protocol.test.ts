import { describe, expect, it } from 'vitest';
import { parseAgentMessage, type SnapshotMessage } from '../../src/model/protocol.js';

const route = (over: Record<string, unknown> = {}) => ({
  id: 'c1/default',
  group: 'default',
  hosts: ['a.example.com'],
  path: '/',
  stripPath: false,
  upstream: { host: '127.0.0.2', port: 8080, scheme: 'http' },
  containerId: 'c1',
  containerName: 'web',
  containerCreated: 1,
  ...over,
});
const snap = (routes: unknown[]) =>
  JSON.stringify({
    type: 'snapshot',
    snapshot: {
      agentId: 'x',
      generation: 1,
      hostIp: '127.0.0.2',
      takenAt: 1,
      containers: [],
      routes,
      diagnostics: [],
    },
  });

describe('parseAgentMessage', () => {
  it('accepts a valid snapshot and heartbeat', () => {
    expect(parseAgentMessage(snap([route()])).type).toBe('snapshot');
    const hb = {
      type: 'heartbeat',
      version: '0.1.0',
      dockerConnected: true,
      containers: 1,
      routes: 1,
      generation: 5,
    };
    expect(parseAgentMessage(JSON.stringify(hb))).toEqual(hb);
  });

  it.each([
    ['not JSON', '{', /not JSON/],
    ['unknown type', JSON.stringify({ type: 'exec', argv: ['sh'] }), /unknown type "exec"/],
    ['no type', JSON.stringify({ id: 'x' }), /no "type"/],
    ['an array', '[1]', /not a JSON object/],
    [
      'an unsafe generation',
      JSON.stringify({
        type: 'heartbeat',
        version: '1',
        dockerConnected: true,
        containers: 0,
        routes: 0,
        generation: 1e308,
      }),
      /heartbeat\.generation must be <= 9007199254740991/,
    ],
    [
      'a small snapshot nested 20,000 levels deep in one route',
      snap([route({ x: 'DEEP' })]).replace('"DEEP"', `${'['.repeat(20_000)}${']'.repeat(20_000)}`),
      /not JSON that Berth reads: nesting deeper than 64 levels/,
    ],
    [
      'a heartbeat nested too deep',
      `{"type":"heartbeat","x":${'{"a":'.repeat(65)}1${'}'.repeat(65)}}`,
      /nesting deeper than 64 levels/,
    ],
    [
      'an oversize message',
      JSON.stringify({ type: 'protocol.error', message: 'x'.repeat(9 << 20) }),
      /over the limit/,
    ],
  ])('rejects %s as a whole', (_name, raw, err) => {
    expect(() => parseAgentMessage(raw as string)).toThrowError(err as RegExp);
  });

  it('takes brackets inside strings for text, at any depth', () => {
    const text = `${'['.repeat(100)}"${']'.repeat(100)}\\"[{`;
    const m = snap([route({ containerName: text.slice(0, 60) })]);
    expect(parseAgentMessage(m).type).toBe('snapshot');
  });

  it('refuses an unsafe generation in a snapshot envelope', () => {
    const raw = JSON.parse(snap([route()]));
    raw.snapshot.generation = 1e308;
    expect(() => parseAgentMessage(JSON.stringify(raw))).toThrowError(
      /snapshot\.snapshot\.generation must be <=/,
    );
  });

  it('never takes claim times from an agent', () => {
    const raw = JSON.parse(snap([route()]));
    raw.snapshot.claims = { 'a.example.com\u0000/': { since: -1e15 } };
    raw.refused = [{ severity: 'error' }];
    const m = parseAgentMessage(JSON.stringify(raw)) as SnapshotMessage;
    expect(m.snapshot.claims).toBeUndefined();
    expect(m.refused).toBeUndefined();
  });

  it.each([
    [
      'bad port',
      snap([route({ upstream: { host: '127.0.0.2', port: 70000, scheme: 'http' } })]),
      /route 0\.upstream\.port must be <= 65535/,
    ],
    [
      'hostile hostname',
      snap([route({ hosts: ['a.com{http.request.header.x}'] })]),
      /host "a.com\{http.request.header.x\}" is not a hostname/,
    ],
    [
      'placeholder upstream',
      snap([route({ upstream: { host: '{env.SECRET}', port: 80, scheme: 'http' } })]),
      /upstream host/,
    ],
    ['path with wildcard', snap([route({ path: '/api/*' })]), /path "\/api\/\*" is not a path prefix/],
    [
      'uppercase host that was not normalised',
      snap([route({ hosts: ['A.example.com'] })]),
      /is not a hostname/,
    ],
  ])('refuses %s on that container alone, keeping the rest', (_name, raw, err) => {
    const parsed = JSON.parse(raw as string);
    parsed.snapshot.routes.push(
      route({ id: 'c2/default', containerId: 'c2', containerName: 'good', hosts: ['b.example.com'] }),
    );
    // A second route of the bad container goes too: a container serves all its routes or none.
    parsed.snapshot.routes.push(route({ id: 'c1/api', path: '/api' }));
    const m = parseAgentMessage(JSON.stringify(parsed)) as SnapshotMessage;
    expect(m.snapshot.routes.map((r) => r.id)).toEqual(['c2/default']);
    expect(m.refused).toHaveLength(1);
    expect(m.refused![0]).toMatchObject({ severity: 'error', containerId: 'c1', containerName: 'web' });
    expect(m.refused![0]!.message).toMatch(err as RegExp);
    expect(m.refused![0]!.message).toMatch(/^refused by the server: route /);
  });

  it('refuses a container with 101 hostnames, naming it and the limit, and keeps the others', () => {
    const hosts = Array.from({ length: 101 }, (_, i) => `h${i}.example.com`);
    const m = parseAgentMessage(
      snap([
        route({ hosts }),
        route({ id: 'c2/default', containerId: 'c2', containerName: 'ok', hosts: ['ok.example.com'] }),
      ]),
    ) as SnapshotMessage;
    expect(m.snapshot.routes.map((r) => r.containerId)).toEqual(['c2']);
    expect(m.refused![0]!.message).toMatch(/route 0\.hosts must NOT have more than 100 items/);
  });

  it('refuses an item with no usable container id under a container of its own', () => {
    const m = parseAgentMessage(snap([route({ containerId: 42 })])) as SnapshotMessage;
    expect(m.snapshot.routes).toEqual([]);
    expect(m.refused![0]).toMatchObject({ containerId: '' });
    expect(m.refused![0]!.message).toMatch(/route 0\.containerId must be string/);
  });
});
