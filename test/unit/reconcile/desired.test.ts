import { describe, expect, it } from 'vitest';
import type { RouteSpec, TcpRouteSpec } from '../../../src/model/types.js';
import { computeDesired, DesiredModel } from '../../../src/reconcile/desired.js';

function route(id: string, over: Partial<RouteSpec> = {}): RouteSpec {
  return {
    id: `${id}/default`,
    group: 'default',
    hosts: ['a.example.com'],
    path: '/',
    stripPath: false,
    upstream: { host: '127.0.0.1', port: 8000, scheme: 'http' },
    containerId: id,
    containerName: `name-${id}`,
    containerCreated: 100,
    ...over,
  };
}

describe('computeDesired', () => {
  it('serves one route per host and path', () => {
    const d = computeDesired([{ agentId: 'h1', agentName: 'host1', routes: [route('c1')] }]);
    expect(d.sites).toEqual([
      {
        host: 'a.example.com',
        path: '/',
        stripPath: false,
        upstreams: [{ host: '127.0.0.1', port: 8000, scheme: 'http' }],
        routeKeys: ['h1:c1/default'],
      },
    ]);
    expect(d.outcomes.get('h1:c1/default')).toEqual({ errors: [], units: 1 });
  });

  it('gives a conflict to the younger claim and names the winner, whatever the input order', () => {
    const old = route('c1', { containerCreated: 50 });
    const young = route('c2', {
      containerCreated: 60,
      upstream: { host: '127.0.0.1', port: 9000, scheme: 'http' },
    });
    for (const routes of [
      [old, young],
      [young, old],
    ]) {
      const d = computeDesired([{ agentId: 'h1', agentName: 'host1', routes }]);
      expect(d.sites).toHaveLength(1);
      expect(d.sites[0]!.upstreams).toEqual([old.upstream]);
      expect(d.outcomes.get('h1:c2/default')!.errors[0]).toMatch(
        /already claimed by container name-c1 \(c1\) on host1/,
      );
      expect(d.outcomes.get('h1:c1/default')!.errors).toEqual([]);
    }
  });

  it('keeps an agent of another key off every path of a host another holds, in full and incremental passes', () => {
    const holder = route('c1', { containerCreated: 10 });
    const login = route('c2', {
      id: 'c2/login',
      path: '/login',
      upstream: { host: '127.0.0.9', port: 9000, scheme: 'http' },
    });
    const a = {
      agentId: 'h1',
      agentName: 'host1',
      routes: [holder],
      scope: 'key1',
      claims: { 'a.example.com\u0000/': { since: 1 } },
    };
    const b = {
      agentId: 'h2',
      agentName: 'host2',
      routes: [login],
      scope: 'key2',
      claims: { 'a.example.com\u0000/login': { since: 2 } },
    };
    const d = computeDesired([a, b]);
    expect(d.sites.map((x) => `${x.host}${x.path}`)).toEqual(['a.example.com/']);
    expect(d.outcomes.get('h2:c2/login')!.errors).toEqual([
      'a.example.com is already claimed by container name-c1 (c1) on host1 (at a.example.com, first); an agent of another key may not serve a path of it: use the same key, or a key whose --domains name a.example.com',
    ]);
    // The same key, or a key whose --domains name the host, may.
    for (const other of [
      { ...b, scope: 'key1' },
      { ...b, grants: ['*.example.com'] },
    ]) {
      const ok = computeDesired([a, other]);
      expect(ok.sites.map((x) => `${x.host}${x.path}`)).toEqual(['a.example.com/', 'a.example.com/login']);
      expect(ok.outcomes.get('h2:c2/login')!.errors).toEqual([]);
    }
    // Incremental: once the holder goes, the other path is served; when it comes back first-seen
    // earlier, it holds the host again.
    const m = new DesiredModel();
    expect(m.update([a, b]).sites).toHaveLength(1);
    const alone = m.update([b]);
    expect(alone.sites.map((x) => `${x.host}${x.path}`)).toEqual(['a.example.com/login']);
    expect(alone.outcomes.get('h2:c2/login')!.errors).toEqual([]);
    const back = m.update([{ ...a }, b]);
    expect(back.sites.map((x) => `${x.host}${x.path}`)).toEqual(['a.example.com/']);
    expect(back.outcomes.get('h2:c2/login')!.errors[0]).toMatch(/already claimed by container name-c1/);
  });

  it('load-balances claims that share a group, across agents', () => {
    const a = route('c1', { lbGroup: 'api', containerCreated: 10 });
    const b = route('c2', { lbGroup: 'api', upstream: { host: '127.0.0.3', port: 8000, scheme: 'http' } });
    const d = computeDesired([
      { agentId: 'h1', agentName: 'host1', routes: [a], scope: 'key1' },
      { agentId: 'h2', agentName: 'host2', routes: [b], scope: 'key1' },
    ]);
    expect(d.sites[0]!.upstreams.map((u) => u.host)).toEqual(['127.0.0.1', '127.0.0.3']);
    expect(d.sites[0]!.routeKeys).toEqual(['h1:c1/default', 'h2:c2/default']);
  });

  it('lets an agent of another key join a group only where its key names the host', () => {
    const a = route('c1', { lbGroup: 'api', containerCreated: 10 });
    const b = route('c2', { lbGroup: 'api', upstream: { host: '127.0.0.3', port: 8000, scheme: 'http' } });
    const holder = { agentId: 'h1', agentName: 'host1', routes: [a], scope: 'key1' };
    const stranger = computeDesired([
      holder,
      { agentId: 'h2', agentName: 'host2', routes: [b], scope: 'key2' },
    ]);
    expect(stranger.sites[0]!.routeKeys).toEqual(['h1:c1/default']);
    expect(stranger.outcomes.get('h2:c2/default')!.errors[0]).toMatch(
      /already claimed by container name-c1 .* on host1; its group api is shared only by agents of the same key/,
    );
    const granted = computeDesired([
      holder,
      { agentId: 'h2', agentName: 'host2', routes: [b], scope: 'key2', grants: ['*.example.com'] },
    ]);
    expect(granted.sites[0]!.routeKeys).toEqual(['h1:c1/default', 'h2:c2/default']);
  });

  it('orders claims by when the server first saw them, not by the creation time an agent reports', () => {
    const victim = route('c1', { containerCreated: 1_700_000_000 });
    const spoof = route('c2', {
      containerCreated: -1e15,
      upstream: { host: '127.0.0.9', port: 80, scheme: 'http' },
    });
    const unit = 'a.example.com\u0000/';
    const d = computeDesired([
      { agentId: 'thief', agentName: 'thief', routes: [spoof], claims: { [unit]: { since: 2_000 } } },
      { agentId: 'victim', agentName: 'victim', routes: [victim], claims: { [unit]: { since: 1_000 } } },
    ]);
    expect(d.sites[0]!.upstreams[0]!.host).toBe('127.0.0.1');
    expect(d.outcomes.get('thief:c2/default')!.errors[0]).toMatch(
      /already claimed by container name-c1 \(c1\) on victim/,
    );
  });

  it('keeps different paths on one host apart, and a conflict on one host spares the others', () => {
    const root = route('c1', { hosts: ['a.example.com', 'b.example.com'], containerCreated: 1 });
    const api = route('c2', { path: '/api' });
    const clash = route('c3', { hosts: ['b.example.com', 'c.example.com'], containerCreated: 5 });
    const d = computeDesired([{ agentId: 'h', agentName: 'h', routes: [root, api, clash] }]);
    expect(d.sites.map((s) => `${s.host}${s.path}`)).toEqual([
      'a.example.com/',
      'a.example.com/api',
      'b.example.com/',
      'c.example.com/',
    ]);
    expect(d.outcomes.get('h:c3/default')!.errors).toHaveLength(1);
  });

  it('leaves out routes that are not ready but still lets them hold their claim', () => {
    const sick = route('c1', { notReady: 'container is unhealthy', containerCreated: 1 });
    const other = route('c2', { containerCreated: 2 });
    const d = computeDesired([{ agentId: 'h', agentName: 'h', routes: [sick, other] }]);
    expect(d.sites).toEqual([]);
    expect(d.outcomes.get('h:c1/default')!.pending).toBe('container is unhealthy');
  });
});

function tcp(id: string, listen: number, over: Partial<TcpRouteSpec> = {}): TcpRouteSpec {
  return {
    id: `${id}/tcp/t`,
    name: 't',
    listen,
    upstream: { host: '127.0.0.2', port: 4001 },
    allow: [],
    containerId: id,
    containerName: `name-${id}`,
    containerCreated: 100,
    ...over,
  };
}

describe('computeDesired for TCP routes', () => {
  it('gives each listen port to the oldest claim, across agents, and names it to the others', () => {
    const d = computeDesired([
      { agentId: 'h2', agentName: 'host2', routes: [], tcp: [tcp('c2', 4003, { containerCreated: 60 })] },
      {
        agentId: 'h1',
        agentName: 'host1',
        routes: [],
        tcp: [tcp('c1', 4003, { containerCreated: 50 }), tcp('c3', 4004, { allow: ['10.0.0.0/8'] })],
      },
    ]);
    expect(d.tcp).toEqual([
      { listen: 4003, upstreams: [{ host: '127.0.0.2', port: 4001 }], allow: [], routeKeys: ['h1:c1/tcp/t'] },
      {
        listen: 4004,
        upstreams: [{ host: '127.0.0.2', port: 4001 }],
        allow: ['10.0.0.0/8'],
        routeKeys: ['h1:c3/tcp/t'],
      },
    ]);
    expect(d.outcomes.get('h2:c2/tcp/t')?.errors).toEqual([
      'TCP port 4003 is already claimed by container name-c1 (c1) on host1; set the same group label on both to share traffic',
    ]);
  });

  it('shares a port within a group and leaves out claims that are not ready', () => {
    const d = computeDesired([
      {
        agentId: 'h1',
        agentName: 'host1',
        routes: [],
        tcp: [
          tcp('c1', 5000, { lbGroup: 'db', upstream: { host: '127.0.0.2', port: 1 } }),
          tcp('c2', 5000, { lbGroup: 'db', upstream: { host: '127.0.0.3', port: 1 } }),
          tcp('c3', 5000, { lbGroup: 'db', upstream: { host: '127.0.0.4', port: 1 }, notReady: 'unhealthy' }),
        ],
      },
    ]);
    expect(d.tcp[0]?.upstreams).toEqual([
      { host: '127.0.0.2', port: 1 },
      { host: '127.0.0.3', port: 1 },
    ]);
    expect(d.outcomes.get('h1:c3/tcp/t')).toEqual({ errors: [], units: 0, pending: 'unhealthy' });
  });

  it('carries an HTTP allow-list onto the site', () => {
    const d = computeDesired([
      { agentId: 'h1', agentName: 'host1', routes: [route('c1', { allow: ['127.0.0.9/32'] })] },
    ]);
    expect(d.sites[0]?.allow).toEqual(['127.0.0.9/32']);
  });
});
