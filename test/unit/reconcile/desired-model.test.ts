// The incremental desired state must equal the full recomputation, whatever the history: random
// fleets change one step at a time (agents added, removed, re-reporting, or unchanged), and after
// every step the model's answer is compared with a fresh computeDesired of the same fleet.
import { describe, expect, it } from 'vitest';
import { SiteSplit, splitSites } from '../../../src/ingress/caddy/config.js';
import { DnsTable, tableFromSites } from '../../../src/ingress/dns/sidecar.js';
import type { Site } from '../../../src/model/desired.js';
import type { RouteSpec, TcpRouteSpec } from '../../../src/model/types.js';
import {
  type AgentRoutes,
  computeDesired,
  type Desired,
  DesiredModel,
  mergeSites,
} from '../../../src/reconcile/desired.js';

/** A small deterministic PRNG (mulberry32), so a failure names a seed that reproduces it. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  return { next, int, pick };
}

const HOSTS = ['a.test', 'b.test', 'c.test', '*.x.test', 'y.x.test', 'shop.example.com'];
const PATHS = ['/', '/api', '/static'];

function randomAgent(r: ReturnType<typeof rng>, id: string, version: number): AgentRoutes {
  const routes: RouteSpec[] = [];
  const n = r.int(6);
  for (let i = 0; i < n; i++) {
    const hosts = [...new Set(Array.from({ length: 1 + r.int(2) }, () => r.pick(HOSTS)))];
    const route: RouteSpec = {
      id: `c${r.int(4)}-${i}/default`,
      group: 'default',
      hosts,
      path: r.pick(PATHS),
      stripPath: r.next() < 0.2,
      upstream: {
        host: `127.0.0.${2 + r.int(3)}`,
        port: 8000 + r.int(3),
        scheme: r.next() < 0.15 ? 'https' : 'http',
      },
      containerId: `${id}-c${r.int(4)}`,
      containerName: `${id}-c${i}`,
      containerCreated: r.int(5),
    };
    if (r.next() < 0.4) route.lbGroup = r.pick(['g1', 'g2']);
    if (r.next() < 0.1) route.notReady = 'starting';
    if (r.next() < 0.1) route.allow = ['10.0.0.0/8'];
    routes.push(route);
  }
  const tcp: TcpRouteSpec[] = [];
  for (let i = 0; i < r.int(3); i++) {
    tcp.push({
      id: `t${i}/default`,
      group: 'default',
      listen: 9000 + r.int(3),
      upstream: { host: '127.0.0.2', port: 7000 + r.int(3) },
      containerId: `${id}-t${i}`,
      containerName: `${id}-t${i}`,
      containerCreated: r.int(5),
    } as TcpRouteSpec);
  }
  const claims: Record<string, { since: number }> = Object.create(null);
  for (const rt of routes) for (const h of rt.hosts) claims[`${h}\u0000${rt.path}`] = { since: r.int(4) };
  const entry: AgentRoutes = {
    agentId: id,
    agentName: `${id}-v${version}`,
    routes,
    tcp,
    claims,
    scope: r.pick(['k1', 'k2', id]),
  };
  if (r.next() < 0.3) entry.grants = [r.pick(['*.x.test', 'a.test', '*.example.com'])];
  return entry;
}

/**
 * The same agent re-reporting: every route a new object with the same data (as a fresh snapshot
 * gives), and a few changed: one removed, one's upstream or hosts changed, one added, a claim
 * time moved, now and then its name or grants.
 */
function reReport(r: ReturnType<typeof rng>, a: AgentRoutes, version: number): AgentRoutes {
  const routes: RouteSpec[] = structuredClone(a.routes);
  const claims: Record<string, { since: number }> = Object.assign(
    Object.create(null),
    structuredClone(a.claims),
  );
  const change = r.int(6);
  const i = r.int(Math.max(1, routes.length));
  if (change === 0 && routes.length > 0) routes.splice(i, 1);
  else if (change === 1 && routes[i]) routes[i]!.upstream.port = 8000 + r.int(3);
  else if (change === 2 && routes[i]) {
    routes[i]!.hosts = [r.pick(HOSTS)];
    claims[`${routes[i]!.hosts[0]}\u0000${routes[i]!.path}`] ??= { since: r.int(4) };
  } else if (change === 3) {
    const extra = randomAgent(r, a.agentId, version).routes[0];
    if (extra && !routes.some((x) => x.id === extra.id)) {
      routes.push(extra);
      for (const h of extra.hosts) claims[`${h}\u0000${extra.path}`] ??= { since: r.int(4) };
    }
  } else if (change === 4) {
    const units = Object.keys(claims);
    if (units.length > 0) claims[r.pick(units)] = { since: r.int(4) };
  }
  const entry: AgentRoutes = { ...a, routes, claims, tcp: structuredClone(a.tcp) };
  if (r.next() < 0.05) entry.agentName = `${a.agentId}-v${version}`;
  if (r.next() < 0.05) entry.grants = r.next() < 0.5 ? undefined : [r.pick(['*.x.test', 'a.test'])];
  return entry;
}

/** Desired as plain data, outcomes in key order (their Map order is not part of the answer). */
const plain = (d: Desired) => ({
  sites: d.sites,
  tcp: d.tcp,
  outcomes: [...d.outcomes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
});

describe('DesiredModel', () => {
  it('equals the full recomputation after every step of 2,000 random histories (agents added, removed, replaced, re-reporting with small changes), and so do the split and the DNS table patched from its changes', () => {
    let steps = 0;
    for (let seed = 1; seed <= 2_000; seed++) {
      const r = rng(seed);
      const model = new DesiredModel();
      const split = new SiteSplit();
      const dns = new DnsTable();
      // One split shared by a Caddy target and a DNS table, as the server runs them: the table
      // sometimes misses a pass's publish (it must then work out every host again), and the
      // target sometimes reads the pass first.
      const shared = new SiteSplit();
      const sharedDns = new DnsTable(shared);
      /** What a responder that applies only takePatch() holds. */
      const patched = new Map<string, string>();
      let sharedTable: Record<string, [string, number][]> = {};
      let prevSites: readonly Site[] = [];
      let prevTable: Record<string, [string, number][]> = {};
      let fleet: AgentRoutes[] = [];
      let version = 0;
      for (let step = 0; step < 12; step++) {
        const op = r.int(6);
        if (op === 0 || fleet.length === 0)
          fleet = [...fleet, randomAgent(r, `h${r.int(6)}-${version}`, ++version)];
        else if (op === 1) fleet = fleet.filter((_, i) => i !== r.int(fleet.length));
        else if (op === 2 || op === 3) {
          const i = r.int(fleet.length);
          fleet = fleet.map((a, j) => (j === i ? randomAgent(r, a.agentId, ++version) : a));
        } else if (op === 5) {
          const i = r.int(fleet.length);
          fleet = fleet.map((a, j) => (j === i ? reReport(r, a, ++version) : a));
        } // op 4: the same fleet again, every entry the same object
        const got = model.update(fleet);
        const want = computeDesired(fleet);
        if (JSON.stringify(plain(got)) !== JSON.stringify(plain(want)))
          expect({ seed, step, ...plain(got) }).toEqual({ seed, step, ...plain(want) });
        // The changes lead from the previous list to this one, and what the data plane keeps
        // from them (the split, the DNS table in both phases) equals what the whole list gives.
        if (step > 0) {
          expect(got.changes?.since).toBe(prevSites);
          const after = new Set<Site>(prevSites);
          for (const x of got.changes!.removed) after.delete(x);
          for (const x of got.changes!.added) after.add(x);
          expect(after).toEqual(new Set(got.sites));
        }
        split.update(got.sites, got.changes);
        const full = splitSites(got.sites);
        expect(split.explicit).toEqual(full.explicit);
        expect(new Map(full.dynamic.map((x) => [x.host, x]))).toEqual(split.dynamic);
        const during = dns.update(got.sites, { transition: true }, got.changes) ?? dns.text();
        expect(JSON.parse(during)).toEqual(tableFromSites(got.sites, prevTable));
        const settled = dns.update(got.sites, {}, got.changes) ?? dns.text();
        prevTable = JSON.parse(settled);
        expect(prevTable).toEqual(tableFromSites(got.sites));
        const targetFirst = r.next() < 0.5;
        if (targetFirst) shared.update(got.sites, got.changes);
        const published = r.next() < 0.8;
        if (published && r.next() < 0.8) {
          // The phase before an apply (an apply that fails skips the one after).
          const sharedDuring = sharedDns.update(got.sites, { transition: true }, got.changes);
          expect(JSON.parse(sharedDuring ?? sharedDns.text())).toEqual(
            tableFromSites(got.sites, sharedTable),
          );
        }
        if (!targetFirst) shared.update(got.sites, got.changes);
        expect(shared.explicit).toEqual(full.explicit);
        expect(shared.dynamic).toEqual(split.dynamic);
        if (published) {
          sharedDns.update(got.sites, {}, got.changes);
          expect(JSON.parse(sharedDns.text())).toEqual(prevTable);
          sharedTable = prevTable;
          const patch = sharedDns.takePatch();
          for (const host of patch.del) patched.delete(JSON.stringify(host));
          for (const e of patch.set) patched.set(e.slice(0, e.indexOf('":') + 1), e);
          expect(JSON.parse(`{${[...patched.values()].join(',')}}`)).toEqual(prevTable);
        }
        prevSites = got.sites;
        steps++;
      }
    }
    expect(steps).toBe(24_000);
  });

  it('keeps the sites it did not touch as the same objects, and the list when nothing changed', () => {
    const r = rng(7);
    const a = randomAgent(r, 'h1', 1);
    const b: AgentRoutes = {
      agentId: 'h2',
      agentName: 'h2',
      routes: [
        {
          id: 'web/default',
          group: 'default',
          hosts: ['only.h2.test'],
          path: '/',
          stripPath: false,
          upstream: { host: '127.0.0.9', port: 80, scheme: 'http' },
          containerId: 'web',
          containerName: 'web',
          containerCreated: 1,
        },
      ],
    };
    const model = new DesiredModel();
    const one = model.update([a, b]);
    const mine = one.sites.find((s) => s.host === 'only.h2.test')!;
    const again = model.update([a, b]);
    expect(again.sites).toBe(one.sites);
    const changed = model.update([randomAgent(r, 'h1', 2), b]);
    expect(changed.sites.find((s) => s.host === 'only.h2.test')).toBe(mine);
    expect(model.update([a]).sites.some((s) => s.host === 'only.h2.test')).toBe(false);
  });

  it('gives the same answer in slices, yielding to the event loop during a big update', async () => {
    const big = (id: string, n: number, port: number): AgentRoutes => ({
      agentId: id,
      agentName: id,
      routes: Array.from({ length: n }, (_, i) => ({
        id: `c${i}/default`,
        group: 'default',
        hosts: [`r${i}.${id}.test`, `shared${i % 50}.test`],
        path: '/',
        stripPath: false,
        upstream: { host: '127.0.0.2', port, scheme: 'http' as const },
        containerId: `c${i}`,
        containerName: `c${i}`,
        containerCreated: i,
      })),
    });
    const fleets = [
      [big('a', 20_000, 80)],
      [big('a', 20_000, 81), big('b', 5_000, 82)],
      [big('b', 5_000, 82)],
    ];
    const sliced = new DesiredModel();
    const whole = new DesiredModel();
    for (const fleet of fleets) {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 0);
      const got = await sliced.updateInSlices(fleet, 1);
      clearInterval(timer);
      expect(ticks).toBeGreaterThan(0);
      expect(JSON.stringify(plain(got))).toBe(JSON.stringify(plain(whole.update(fleet))));
    }
  });
});

describe('mergeSites', () => {
  const site = (host: string, path = '/'): Site => ({
    host,
    path,
    stripPath: false,
    upstreams: [{ host: '127.0.0.1', port: 80, scheme: 'http' }],
    routeKeys: [`a:${host}${path}`],
  });
  const collate = new Intl.Collator().compare;
  const sorted = (xs: Site[]) => xs.sort((a, b) => collate(a.host, b.host) || collate(a.path, b.path));

  it('equals filtering and sorting again, for 2,000 random lists, removals and additions (equal keys included)', () => {
    for (let seed = 1; seed <= 2_000; seed++) {
      const r = rng(seed);
      const names = Array.from({ length: 1 + r.int(40) }, (_, i) => `h${r.int(60)}-${i % 3}.test`);
      const sites = sorted(names.map((h) => site(h, r.pick(PATHS))));
      const removed = new Set(sites.filter(() => r.next() < 0.3));
      const added = sorted(
        Array.from({ length: r.int(8) }, () => site(`h${r.int(60)}-${r.int(3)}.test`, r.pick(PATHS))),
      );
      const got = mergeSites(sites, removed, added);
      const want = sorted([...sites.filter((s) => !removed.has(s)), ...added]);
      const key = (xs: Site[]) => xs.map((s) => `${s.host}${s.path}`);
      expect(key(got), `seed ${seed}`).toEqual(key(want));
      expect(got.length, `seed ${seed}`).toBe(sites.length - removed.size + added.length);
      // Every kept and added object is there once, and nothing removed.
      expect(new Set(got).size, `seed ${seed}`).toBe(got.length);
      for (const s of got) expect(removed.has(s), `seed ${seed}`).toBe(false);
    }
  });

  it('leaves its input list alone', () => {
    const sites = sorted([site('a.test'), site('c.test'), site('e.test')]);
    const before = [...sites];
    mergeSites(sites, new Set([sites[1]!]), [site('b.test'), site('d.test'), site('f.test')]);
    expect(sites).toEqual(before);
  });
});
