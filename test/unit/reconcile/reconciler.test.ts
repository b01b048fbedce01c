// The reconcile loop against fakes of the data-plane interfaces it declares
// (reconcile/data-plane.ts): how wakes coalesce, what a pass hands to whom and in which order,
// what it does when a target fails, and how drift is repaired.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DnsSidecar } from '../../../src/ingress/dns/sidecar.js';
import { TableLogReader } from '../../../src/ingress/dns/table-log.js';
import type { ApplyResult, ListenerStatus } from '../../../src/model/data-plane.js';
import { type Site, siteSignature, type TcpListenerSite } from '../../../src/model/desired.js';
import type { RouteSpec, TcpRouteSpec } from '../../../src/model/types.js';
import type { DnsTableSync, HttpTarget, TcpListenerSync } from '../../../src/reconcile/data-plane.js';
import type { AgentRoutes } from '../../../src/reconcile/desired.js';
import {
  Reconciler,
  type ReconcilerOptions,
  type ReconcileState,
  servedEverywhere,
} from '../../../src/reconcile/reconciler.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** Everything the fakes were asked, in order. */
type Journal = string[];

/**
 * An HTTP target that behaves like CaddyTarget where the reconciler can tell: an apply of what it
 * already holds sends nothing, sites in `rejects` are quarantined, and `failNext` applies throw.
 */
class FakeTarget implements HttpTarget {
  held?: string;
  failNext = 0;
  drift = false;
  rejects = new Set<string>();
  applied: Site[][] = [];
  /** While set, apply() waits for it (to wake the loop during a pass). */
  gate?: Promise<void>;
  onApply?: () => void;
  /** Applies running now, and the most there ever were at once. */
  active = 0;
  maxActive = 0;

  constructor(
    readonly name: string,
    private readonly journal: Journal,
  ) {}

  async apply(sites: Site[]): Promise<ApplyResult> {
    this.journal.push(`${this.name}.apply`);
    this.onApply?.();
    this.maxActive = Math.max(this.maxActive, ++this.active);
    try {
      if (this.gate) await this.gate;
    } finally {
      this.active--;
    }
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error(`${this.name} unreachable`);
    }
    const quarantined = new Map<string, string>();
    for (const s of sites)
      if (this.rejects.has(s.host)) quarantined.set(siteSignature(s), `${s.host} rejected`);
    const kept = sites.filter((s) => !this.rejects.has(s.host));
    const served = new Set(kept.map(siteSignature));
    const key = [...served].sort().join('\n');
    if (key === this.held) return { changed: false, quarantined, served, loads: 0, ms: 0 };
    this.held = key;
    this.applied.push(kept);
    return { changed: true, quarantined, served, loads: 1, ms: 7 };
  }

  invalidate(): void {
    this.journal.push(`${this.name}.invalidate`);
    this.held = undefined;
  }

  forgetRejections(): void {
    this.journal.push(`${this.name}.forgetRejections`);
  }

  async drifted(): Promise<boolean> {
    this.journal.push(`${this.name}.drifted`);
    if (this.drift) this.held = undefined;
    return this.drift;
  }
}

class FakeTcp implements TcpListenerSync {
  synced: TcpListenerSite[][] = [];
  constructor(private readonly journal: Journal) {}
  async sync(listeners: TcpListenerSite[]): Promise<void> {
    this.journal.push('tcp.sync');
    this.synced.push(listeners);
  }
  status(): ListenerStatus[] {
    return (this.synced.at(-1) ?? []).map((l) => ({
      listen: l.listen,
      state: 'listening',
      upstreams: l.upstreams.map((u) => `${u.host}:${u.port}`),
      allow: l.allow,
      active: 0,
      routeKeys: l.routeKeys,
    }));
  }
}

class FakeDns implements DnsTableSync {
  published: { hosts: string[]; transition: boolean }[] = [];
  constructor(private readonly journal: Journal) {}
  publish(sites: Site[], o: { transition?: boolean } = {}): void {
    this.journal.push(o.transition ? 'dns.transition' : 'dns.publish');
    this.published.push({ hosts: sites.map((s) => s.host), transition: Boolean(o.transition) });
  }
}

function route(host: string, over: Partial<RouteSpec> = {}): RouteSpec {
  return {
    id: `c-${host}/default`,
    group: 'default',
    hosts: [host],
    path: '/',
    stripPath: false,
    upstream: { host: '127.0.0.1', port: 8000, scheme: 'http' },
    containerId: `c-${host}`,
    containerName: host,
    containerCreated: 100,
    ...over,
  };
}

function tcpRoute(listen: number): TcpRouteSpec {
  return {
    id: `t${listen}/tcp/db`,
    name: 'db',
    listen,
    upstream: { host: '127.0.0.1', port: 5432 },
    allow: [],
    containerId: `t${listen}`,
    containerName: `db${listen}`,
    containerCreated: 100,
  };
}

/** A reconciler over fakes; `routes` and `tcp` are what the registry holds now. */
function setup({
  count = 1,
  ...o
}: { count?: number } & Partial<Omit<ReconcilerOptions<FakeTarget>, 'targets'>> = {}) {
  const journal: Journal = [];
  const world = { routes: [route('a.test')], tcp: [] as TcpRouteSpec[], reads: 0 };
  const targets = Array.from({ length: count }, (_, i) => new FakeTarget(`caddy${i}`, journal));
  const tcp = new FakeTcp(journal);
  const dns = new FakeDns(journal);
  const passes: { state: ReconcileState; applyMs: number[] }[] = [];
  const logs: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l)) });
  const rec = new Reconciler<FakeTarget>({
    source: (): AgentRoutes[] => {
      world.reads++;
      journal.push('source');
      return [{ agentId: 'h1', agentName: 'host1', routes: world.routes, tcp: world.tcp }];
    },
    targets,
    tcp,
    dns,
    logger,
    debounceMs: 5,
    onPass: (state, info) => passes.push({ state, applyMs: info.applyMs }),
    ...o,
  });
  cleanups.push(() => rec.stop());
  return { rec, world, targets, target: targets[0]!, tcp, dns, journal, passes, logs };
}

describe('Reconciler: wakes', () => {
  it('gathers a burst of wakes into one pass', async () => {
    const { rec, world, passes } = setup();
    for (let i = 0; i < 100; i++) rec.wake();
    await rec.idle();
    expect(world.reads).toBe(1);
    expect(passes).toHaveLength(1);
    expect(rec.counters).toMatchObject({ passes: 1, applies: 1 });
  });

  it('turns wakes that arrive during a pass into exactly one more pass after it, which sees the latest state', async () => {
    const { rec, world, target } = setup();
    let release!: () => void;
    target.gate = new Promise<void>((r) => {
      release = r;
    });
    const inPass = new Promise<void>((r) => {
      target.onApply = r;
    });
    rec.wake();
    await inPass;
    target.onApply = undefined;
    world.routes = [route('a.test'), route('b.test')];
    for (let i = 0; i < 10; i++) rec.wake();
    // Longer than the debounce: a wake that scheduled a pass of its own would start it now.
    await new Promise((r) => setTimeout(r, 50));
    target.gate = undefined;
    release();
    await rec.idle();
    expect(target.maxActive).toBe(1);
    expect(world.reads).toBe(2);
    expect(target.applied.map((s) => s.map((x) => x.host))).toEqual([['a.test'], ['a.test', 'b.test']]);
  });

  it('charges the apply budget only for passes that applied to Caddy', async () => {
    // A budget of two applies, refilled once an hour.
    const { rec, world, target, passes } = setup({ budget: { burst: 2, perSecond: 1 / 3_600 } });
    const passSoon = async () => {
      const before = passes.length;
      rec.wake();
      for (let i = 0; i < 20 && passes.length === before; i++) await new Promise((r) => setTimeout(r, 5));
      return passes.length > before;
    };
    expect(await passSoon()).toBe(true); // applies: one token left
    expect(target.applied).toHaveLength(1);
    // Passes that leave Caddy's config alone (most changes, in the dynamic layout) give their
    // token back, so any number of them come at once.
    for (let i = 0; i < 5; i++) expect(await passSoon()).toBe(true);
    expect(target.applied).toHaveLength(1);
    world.routes = [route('a.test'), route('b.test')];
    expect(await passSoon()).toBe(true); // applies: the last token
    expect(target.applied).toHaveLength(2);
    expect(await passSoon()).toBe(false); // the budget is spent: the next pass waits for it
    rec.stop();
  });

  it('does nothing after stop()', async () => {
    const { rec, world } = setup();
    rec.stop();
    rec.wake();
    await rec.idle();
    expect(world.reads).toBe(0);
  });
});

/** How every pass begins: read the registry, publish the transition table, sync TCP. */
const PASS_START = ['source', 'dns.transition', 'tcp.sync'];

describe('Reconciler: a pass', () => {
  it('syncs TCP listeners before Caddy, and publishes the DNS table around the applies', async () => {
    const { rec, world, journal, tcp, passes } = setup({ count: 2 });
    world.tcp = [tcpRoute(5000)];
    rec.wake();
    await rec.idle();
    expect(journal).toEqual([...PASS_START, 'caddy0.apply', 'caddy1.apply', 'dns.publish']);
    expect(tcp.synced[0]!.map((l) => l.listen)).toEqual([5000]);
    expect([...passes[0]!.state.tcp.keys()]).toEqual([5000]);
  });

  it('reports what each target serves and quarantined, and how long each apply took', async () => {
    const { rec, world, targets, passes } = setup({ count: 2 });
    world.routes = [route('a.test'), route('bad.test')];
    targets[1]!.rejects.add('bad.test');
    rec.wake();
    await rec.idle();
    const [a, bad] = rec.state!.desired.sites.map(siteSignature);
    expect(rec.state!.targets[0]).toEqual({ served: new Set([a, bad]), quarantined: new Map() });
    expect(rec.state!.targets[1]).toEqual({
      served: new Set([a]),
      quarantined: new Map([[bad!, 'bad.test rejected']]),
    });
    expect(servedEverywhere(rec.state!, a!)).toBe(true);
    expect(servedEverywhere(rec.state!, bad!)).toBe(false);
    expect(passes[0]!.applyMs).toEqual([7, 7]);
    expect(rec.counters).toMatchObject({ applies: 2, loads: 2 });
  });

  it('sends nothing new when nothing changed: no apply counted, no apply time reported', async () => {
    const { rec, target, passes, logs } = setup();
    rec.wake();
    await rec.idle();
    rec.wake();
    await rec.idle();
    expect(rec.counters).toMatchObject({ passes: 2, applies: 1 });
    expect(target.applied).toHaveLength(1);
    expect(passes.map((p) => p.applyMs)).toEqual([[7], []]);
    expect(logs.filter((l) => l.msg === 'applied routes to caddy')).toHaveLength(1);
  });

  it('patches the desired state from what changed, and a forced pass computes it whole again', async () => {
    // The same entry object twice is an unchanged agent: a change made inside it (which nothing
    // in Berth does) is what an incremental update could miss, and a full pass repairs.
    const entry: AgentRoutes = { agentId: 'h1', agentName: 'host1', routes: [route('a.test')] };
    const { rec, target } = setup({ source: () => [entry] });
    rec.wake();
    await rec.idle();
    entry.routes = [route('a.test'), route('b.test')];
    rec.wake();
    await rec.idle();
    expect(rec.state?.desired.sites.map((x) => x.host)).toEqual(['a.test']);
    rec.wake({ force: true });
    await rec.idle();
    expect(rec.state?.desired.sites.map((x) => x.host)).toEqual(['a.test', 'b.test']);
    expect(target.applied.at(-1)?.map((x) => x.host)).toEqual(['a.test', 'b.test']);
  });

  it('on a forced wake, makes every target resend everything and retry what it rejected', async () => {
    const { rec, target, journal } = setup();
    rec.wake();
    await rec.idle();
    journal.length = 0;
    rec.wake({ force: true });
    await rec.idle();
    expect(journal).toEqual([
      ...PASS_START,
      'caddy0.invalidate',
      'caddy0.forgetRejections',
      'caddy0.apply',
      'dns.publish',
    ]);
    expect(target.applied).toHaveLength(2);
    rec.wake();
    await rec.idle();
    expect(journal.filter((j) => j === 'caddy0.invalidate')).toHaveLength(1); // force is one pass only
  });

  it('applies only where canApply allows, and reports standby results for the other targets', async () => {
    const standby = { served: new Set(['from the holder']), quarantined: new Map() };
    const { rec, targets } = setup({
      count: 2,
      canApply: (t) => t.name === 'caddy0',
      standby: () => standby,
    });
    rec.wake();
    await rec.idle();
    expect(targets[0]!.applied).toHaveLength(1);
    expect(targets[1]!.applied).toHaveLength(0);
    expect(rec.state!.targets[1]).toBe(standby);
  });
});

describe('Reconciler: failures', () => {
  it('retries a failing target on its own, keeping what it served before until then', async () => {
    const { rec, world, target, passes, logs } = setup();
    rec.wake();
    await rec.idle();
    const before = rec.state!.targets[0]!.served;
    world.routes = [route('a.test'), route('b.test')];
    target.failNext = 1;
    rec.wake();
    // idle() waits for the retry too: a failed pass schedules the next one itself.
    await rec.idle();
    expect(passes).toHaveLength(3);
    expect(passes[1]!.state.targets[0]).toEqual({
      served: before,
      quarantined: new Map(),
      error: 'caddy0 unreachable',
    });
    expect(passes[2]!.state.targets[0]!.error).toBeUndefined();
    expect(target.applied.at(-1)!.map((s) => s.host)).toEqual(['a.test', 'b.test']);
    expect(rec.counters).toMatchObject({ failures: 1, applies: 2 });
    expect(logs.some((l) => l.msg === 'apply failed; will retry')).toBe(true);
  });

  it('still applies to the other targets when one fails', async () => {
    const { rec, targets, passes } = setup({ count: 2 });
    targets[0]!.failNext = 1;
    rec.wake();
    await rec.idle();
    expect(passes[0]!.state.targets[0]!.error).toBe('caddy0 unreachable');
    expect(passes[0]!.state.targets[1]!.served.size).toBe(1);
    expect(targets[1]!.applied).toHaveLength(1);
  });

  it('keeps the DNS table of before the pass until every apply has landed', async () => {
    const { rec, target, dns, journal } = setup();
    target.failNext = 1;
    rec.wake();
    await rec.idle();
    // First pass: only the transition table (hosts leaving it keep their entries); the retry
    // lands, and only then is the table of the new state published.
    expect(journal).toEqual([...PASS_START, 'caddy0.apply', ...PASS_START, 'caddy0.apply', 'dns.publish']);
    expect(dns.published.at(-1)).toEqual({ hosts: ['a.test'], transition: false });
  });

  it('retries a pass whose source throws, and logs it', async () => {
    const { rec, world, passes, logs } = setup();
    let fail = true;
    const routes = world.routes;
    Object.defineProperty(world, 'routes', {
      get: () => {
        if (fail) {
          fail = false;
          throw new Error('store away');
        }
        return routes;
      },
    });
    rec.wake();
    await rec.idle();
    expect(logs.find((l) => l.msg === 'reconcile pass failed')).toMatchObject({ err: 'store away' });
    expect(passes).toHaveLength(1);
    expect(world.reads).toBe(2);
  });
});

describe('Reconciler: drift', () => {
  it('wakes a pass that resends to a target that lost its config, and only then', async () => {
    const { rec, target, passes } = setup();
    rec.wake();
    await rec.idle();
    await rec.checkDrift();
    await rec.idle();
    expect(passes).toHaveLength(1);
    target.drift = true;
    await rec.checkDrift();
    await rec.idle();
    expect(passes).toHaveLength(2);
    expect(target.applied).toHaveLength(2);
    expect(rec.counters.applies).toBe(2);
  });

  it('does not ask a target this replica may not apply to', async () => {
    const { rec, journal } = setup({ count: 2, canApply: (t) => t.name === 'caddy1' });
    await rec.checkDrift();
    expect(journal).toEqual(['caddy1.drifted']);
  });
});

describe('Reconciler with the real DNS table', () => {
  it('keeps serving a host through DNS while the apply that moves it into Caddy’s config fails', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'berth-rec-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    mkdirSync(join(dataDir, 'dns'));
    const dns = new DnsSidecar({
      dataDir,
      listen: '127.0.0.1:0',
      command: [],
      logger: pino({ level: 'silent' }),
    });
    // What a responder starting now would read.
    const table = () => {
      const reader = new TableLogReader(join(dataDir, 'dns', 'table.log'));
      reader.poll();
      reader.close();
      return [...reader.table.keys()].sort();
    };
    const { rec, world, target } = setup({ dns });
    world.routes = [route('moving.test'), route('plain.test')];
    rec.wake();
    await rec.idle();
    expect(table()).toEqual(['moving.test', 'plain.test']);

    // moving.test gains a path: Caddy's config must carry it now, and the first apply fails.
    world.routes = [route('moving.test', { path: '/api' }), route('plain.test')];
    const tableAtApply: string[][] = [];
    target.onApply = () => tableAtApply.push(table());
    target.failNext = 1;
    rec.wake();
    await rec.idle();
    // During the failed apply and its retry the catch-all still finds moving.test through DNS;
    // once Caddy's config carries it, the table lets it go.
    expect(tableAtApply).toEqual([
      ['moving.test', 'plain.test'],
      ['moving.test', 'plain.test'],
    ]);
    expect(table()).toEqual(['plain.test']);
    expect(target.applied.at(-1)!.map((s) => `${s.host}${s.path}`)).toContain('moving.test/api');
  });
});

describe('servedEverywhere', () => {
  const state = (targets: { served: string[] }[]): ReconcileState => ({
    desired: { sites: [], tcp: [], outcomes: new Map() },
    targets: targets.map((t) => ({ served: new Set(t.served), quarantined: new Map() })),
    tcp: new Map(),
    passes: 1,
    completedAt: 0,
  });
  it.each([
    { targets: [{ served: ['s'] }], sig: 's', want: true },
    { targets: [{ served: ['s'] }, { served: ['s', 't'] }], sig: 's', want: true },
    { targets: [{ served: ['s'] }, { served: ['t'] }], sig: 's', want: false },
    { targets: [], sig: 's', want: false },
  ])('$targets.length targets, $sig → $want', ({ targets, sig, want }) => {
    expect(servedEverywhere(state(targets), sig)).toBe(want);
  });
});
