import { describe, expect, it } from 'vitest';
import type { RouteSpec } from '../../../src/model/types.js';
import { computeDesired } from '../../../src/reconcile/desired.js';

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

  it('load-balances claims that share a group, across agents', () => {
    const a = route('c1', { lbGroup: 'api', containerCreated: 10 });
    const b = route('c2', { lbGroup: 'api', upstream: { host: '127.0.0.3', port: 8000, scheme: 'http' } });
    const d = computeDesired([
      { agentId: 'h1', agentName: 'host1', routes: [a] },
      { agentId: 'h2', agentName: 'host2', routes: [b] },
    ]);
    expect(d.sites[0]!.upstreams.map((u) => u.host)).toEqual(['127.0.0.1', '127.0.0.3']);
    expect(d.sites[0]!.routeKeys).toEqual(['h1:c1/default', 'h2:c2/default']);
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
