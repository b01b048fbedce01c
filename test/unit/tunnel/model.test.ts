// The pure parts of tunnels: endpoint allocation, stream ids, the agent's "only my own upstreams"
// check, and the new protocol messages at both boundaries.
import { describe, expect, it } from 'vitest';
import { parseAgentMessage } from '../../../src/model/protocol.js';
import { parseServerMessage } from '../../../src/model/server-protocol.js';
import {
  EndpointTable,
  isTunnelAddress,
  parseStreamId,
  tunnelRefusal,
  tunnelTargets,
} from '../../../src/model/tunnel.js';
import type { RouteSpec, TcpRouteSpec } from '../../../src/model/types.js';

const route = (host: string, port: number): RouteSpec => ({
  id: `c/${host}:${port}`,
  group: 'default',
  hosts: ['a.test'],
  path: '/',
  stripPath: false,
  upstream: { host, port, scheme: 'http' },
  containerId: 'c',
  containerName: 'n',
  containerCreated: 1,
});
const tcp = (host: string, port: number): TcpRouteSpec => ({
  id: `c/tcp/${port}`,
  name: 'x',
  listen: 5000,
  upstream: { host, port },
  allow: [],
  containerId: 'c',
  containerName: 'n',
  containerCreated: 1,
});

describe('EndpointTable', () => {
  it('gives each (agent, upstream) its own loopback address on one port, the same one while it is kept', () => {
    const t = new EndpointTable(40000);
    const a = t.get('A', '127.0.0.1', 8080)!;
    expect(a).toMatchObject({ host: '127.77.0.1', port: 40000, fresh: true });
    expect(t.get('A', '127.0.0.1', 8080)).toMatchObject({ host: '127.77.0.1', fresh: false });
    expect(t.get('A', '127.0.0.1', 8081)!.host).toBe('127.77.0.2');
    // Another agent naming the same address on its own side gets an endpoint of its own.
    expect(t.get('B', '127.0.0.1', 8080)!.host).toBe('127.77.0.3');
    expect(t.owner(a.index)).toMatchObject({ agentId: 'A', upstream: { host: '127.0.0.1', port: 8080 } });
    expect(t.size).toBe(3);
  });

  it('releases what an agent no longer names, and hands a released address out last', () => {
    const t = new EndpointTable(1);
    t.get('A', '10.0.0.1', 80);
    t.get('A', '10.0.0.1', 81);
    const keep = new Set([EndpointTable.key('A', '10.0.0.1', 81)]);
    expect(t.release('A', keep)).toEqual([0]);
    expect(t.owner(0)).toBeUndefined();
    expect(t.get('A', '10.0.0.1', 80)!.host).toBe('127.77.0.3');
    expect(t.release('A')).toHaveLength(2);
    expect(t.size).toBe(0);
  });

  it('normalises the upstream (brackets, case) in its key', () => {
    const t = new EndpointTable(1);
    expect(t.get('A', '[FD00::1]', 80)!.index).toBe(t.get('A', 'fd00::1', 80)!.index);
  });

  it('covers 127.77.0.1 to 127.77.255.254 and says when every address is taken', () => {
    expect(EndpointTable.address(0)).toBe('127.77.0.1');
    expect(EndpointTable.address(255)).toBe('127.77.1.0');
    expect(EndpointTable.address(EndpointTable.SIZE - 1)).toBe('127.77.255.254');
    const t = new EndpointTable(1);
    for (let i = 0; i < EndpointTable.SIZE; i++) expect(t.get('A', '10.0.0.1', i + 1)).toBeDefined();
    expect(t.get('A', '10.0.0.2', 1)).toBeUndefined();
  });

  it('knows its own range', () => {
    expect(isTunnelAddress('127.77.3.4')).toBe(true);
    expect(isTunnelAddress('::ffff:127.77.3.4')).toBe(true);
    expect(isTunnelAddress('::FFFF:127.77.3.4')).toBe(true);
    expect(isTunnelAddress('::ffff:7f4d:304')).toBe(true);
    expect(isTunnelAddress('[0:0:0:0:0:ffff:7f4d:304]')).toBe(true);
    expect(isTunnelAddress('127.7.3.4')).toBe(false);
    expect(isTunnelAddress('10.127.77.1')).toBe(false);
  });
});

describe('parseStreamId', () => {
  it.each([
    ['1', 1],
    ['4096', 4096],
    [['12'], 12],
    ['0', undefined],
    ['012', undefined],
    ['-1', undefined],
    ['1e3', undefined],
    ['99999999999999999', undefined],
    ['pool', undefined],
    [undefined, undefined],
    [7, undefined],
  ])('%j → %j', (v, want) => {
    expect(parseStreamId(v)).toBe(want);
  });
});

describe("the agent's own upstreams", () => {
  const targets = tunnelTargets({
    routes: [route('127.0.0.1', 8080), route('FD00::2', 80)],
    tcp: [tcp('10.0.0.9', 5432)],
  });

  it.each([
    ['an HTTP route upstream', '127.0.0.1', 8080],
    ['a TCP route upstream', '10.0.0.9', 5432],
    ['an IPv6 upstream in another spelling', 'fd00::2', 80],
    ['an IPv6 upstream written out whole', 'fd00:0:0:0:0:0:0:2', 80],
    ['an IPv4 upstream written IPv4-mapped', '::ffff:a00:9', 5432],
  ])('dials %s', (_w, host, port) => {
    expect(tunnelRefusal(targets, host, port)).toBeUndefined();
  });

  it.each([
    ['another port of the same host', '127.0.0.1', 22],
    ['another host of its network', '10.0.0.10', 5432],
    ['cloud metadata', '169.254.169.254', 80],
  ])('refuses %s, naming it', (_w, host, port) => {
    expect(tunnelRefusal(targets, host, port)).toMatch(/is not the upstream of any route of this agent/);
  });

  it.each([
    ['a name, even one a route names', 'db.internal'],
    ['hex letters that are a name, not an address', 'cafe'],
    ['a short IPv4 spelling that a resolver would take', '127.1'],
  ])('refuses %s: it never resolves for the server', (_w, host) => {
    const named = tunnelTargets({ routes: [route(host, 80)], tcp: [] });
    expect(tunnelRefusal(named, host, 80)).toMatch(/is not an IP address/);
  });

  it('dials nothing before it has a snapshot', () => {
    expect(tunnelRefusal(tunnelTargets(undefined), '127.0.0.1', 8080)).toBeDefined();
  });
});

describe('tunnel messages, server → agent', () => {
  it('takes an open request for an address and a port', () => {
    expect(parseServerMessage('{"type":"tunnel.open","id":3,"host":"127.0.0.1","port":8080}')).toEqual({
      kind: 'message',
      message: { type: 'tunnel.open', id: 3, host: '127.0.0.1', port: 8080 },
    });
    expect(parseServerMessage('{"type":"tunnel.cancel","id":3}').kind).toBe('message');
  });

  it.each([
    [
      'a name instead of an address',
      '{"type":"tunnel.open","id":4,"host":"metadata.internal","port":80}',
      /host must be an IP address/,
      4,
    ],
    [
      'a port out of range',
      '{"type":"tunnel.open","id":5,"host":"127.0.0.1","port":70000}',
      /port must be a port number/,
      5,
    ],
    [
      'no id',
      '{"type":"tunnel.open","host":"127.0.0.1","port":80}',
      /id must be a positive whole number: it is missing/,
      undefined,
    ],
    [
      'a fractional id',
      '{"type":"tunnel.open","id":1.5,"host":"127.0.0.1","port":80}',
      /id must be/,
      undefined,
    ],
  ])('refuses %s, with the id to answer when it has one', (_w, raw, error, tunnelId) => {
    const r = parseServerMessage(raw);
    expect(r.kind).toBe('invalid');
    if (r.kind !== 'invalid') return;
    expect(r.error).toMatch(error);
    expect(r.tunnelId).toBe(tunnelId);
  });

  it('reads whether the server carries tunnels from its welcome', () => {
    const w = (extra: string) =>
      parseServerMessage(`{"type":"welcome","agentId":"a","status":"online","heartbeatMs":1000${extra}}`);
    expect(w(',"tunnel":{"maxStreams":1024}').kind).toBe('message');
    expect(w('').kind).toBe('message');
    expect(w(',"tunnel":{"maxStreams":0}').kind).toBe('invalid');
  });
});

describe('tunnel messages, agent → server', () => {
  it('takes a stream failure with a known code', () => {
    expect(parseAgentMessage('{"type":"tunnel.failed","id":9,"code":"REFUSED","message":"no"}')).toEqual({
      type: 'tunnel.failed',
      id: 9,
      code: 'REFUSED',
      message: 'no',
    });
  });

  it.each([
    ['an unknown code', '{"type":"tunnel.failed","id":9,"code":"MAYBE","message":"x"}'],
    ['id 0', '{"type":"tunnel.failed","id":0,"code":"BUSY","message":"x"}'],
    [
      'an oversize message',
      `{"type":"tunnel.failed","id":9,"code":"BUSY","message":"${'x'.repeat(20_000)}"}`,
    ],
  ])('refuses %s', (_w, raw) => {
    expect(() => parseAgentMessage(raw)).toThrow(/invalid message: tunnel\.failed/);
  });

  it("keeps a snapshot's tunnel declaration within bounds", () => {
    const snap = (tunnel: string) =>
      `{"type":"snapshot","snapshot":{"agentId":"a","generation":1,"hostIp":"127.0.0.1","takenAt":1,"containers":[],"routes":[],"diagnostics":[]${tunnel}}}`;
    expect(parseAgentMessage(snap(',"tunnel":{"maxStreams":8}'))).toMatchObject({
      snapshot: { tunnel: { maxStreams: 8 } },
    });
    expect(() => parseAgentMessage(snap(',"tunnel":{"maxStreams":0}'))).toThrow(/tunnel/);
    expect(() => parseAgentMessage(snap(',"tunnel":{"maxStreams":100000000}'))).toThrow(/tunnel/);
  });
});
