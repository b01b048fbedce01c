import { describe, expect, it } from 'vitest';
import { parseAgentMessage } from '../../src/model/protocol.js';

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
    ['unknown type', JSON.stringify({ type: 'exec', argv: ['sh'] }), /invalid message/],
    [
      'bad port',
      snap([route({ upstream: { host: '127.0.0.2', port: 70000, scheme: 'http' } })]),
      /invalid message/,
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
  ])('rejects %s', (_name, raw, err) => {
    expect(() => parseAgentMessage(raw as string)).toThrowError(err as RegExp);
  });
});
