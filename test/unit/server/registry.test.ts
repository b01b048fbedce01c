import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { RouteSpec, Snapshot } from '../../../src/model/types.js';
import { EventBus } from '../../../src/server/events.js';
import { ENROLMENTS_PER_MINUTE, type LiveChange, Registry } from '../../../src/server/registry.js';
import { SqliteStore } from '../../../src/store/sqlite.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'breg-'));
  dirs.push(dir);
  const store = SqliteStore.openDataDir(dir);
  let now = 1_000_000;
  const events = new EventBus();
  const clock = () => now;
  const make = () =>
    new Registry({ store, liveness: { heartbeatMs: 1_000, offlineGraceMs: 10_000 }, events, clock });
  const registry = make();
  return {
    store,
    registry,
    events,
    make,
    advance: (ms: number) => {
      now += ms;
    },
    now: () => now,
  };
}

const route = (id: string, host = `${id}.example.com`, over: Partial<RouteSpec> = {}): RouteSpec => ({
  id: `${id}/default`,
  group: 'default',
  hosts: [host],
  path: '/',
  stripPath: false,
  upstream: { host: '127.0.0.2', port: 80, scheme: 'http' },
  containerId: id,
  containerName: id,
  containerCreated: 1,
  ...over,
});
const snapshot = (agentId: string, generation: number, routes: RouteSpec[]): Snapshot => ({
  agentId,
  generation,
  hostIp: '127.0.0.2',
  takenAt: 0,
  containers: [],
  routes,
  diagnostics: [],
});

async function keyed(r: Registry, name = 'k', o: { autoApprove?: boolean; maxPending?: number } = {}) {
  const { secret } = await r.createKey({
    name,
    domains: [],
    autoApprove: o.autoApprove ?? false,
    maxPending: o.maxPending,
  });
  return (await r.authenticate(secret))!;
}

describe('Registry with a swarm', () => {
  const sw = (leader: boolean) => ({ clusterId: 'cl1', nodeId: 'n', nodeName: 'n', manager: true, leader });
  const svcRoute = (task: string) =>
    route(task, 'web.example.com', { swarm: { serviceId: 's1', service: 'web' }, lbGroup: 'swarm:cl1:s1' });

  it('holds a former leader’s service routes until a new leader of the same key speaks', async () => {
    const { registry, advance } = setup();
    const k = await keyed(registry, 'swarm', { autoApprove: true });
    const other = await keyed(registry, 'rival', { autoApprove: true });
    const a = await registry.register(k, { name: 'a' });
    const b = await registry.register(k, { name: 'b' });
    const r = await registry.register(other, { name: 'r' });
    const served = () =>
      registry
        .admitted()
        .agentRoutes.flatMap((x) => x.routes.filter((y) => y.swarm).map(() => x.agentName))
        .sort();
    await registry.replaceAgentState({ ...snapshot(a.id, 1, [svcRoute('t1')]), swarm: sw(true) });
    expect(served()).toEqual(['a']);
    advance(1_000);
    // a is no longer the leader and b has not spoken: a's view is held, still served.
    await registry.replaceAgentState({ ...snapshot(a.id, 2, []), swarm: sw(false) });
    expect(registry.snapshotOf(a.id)?.swarm?.heldSince).toBeDefined();
    expect(served()).toEqual(['a']);
    // An agent of another key claiming the lead neither serves our swarm nor ends the hold.
    await registry.replaceAgentState({ ...snapshot(r.id, 1, [svcRoute('t9')]), swarm: sw(true) });
    advance(1_000);
    await registry.replaceAgentState({ ...snapshot(a.id, 3, []), swarm: sw(false) });
    expect(registry.snapshotOf(a.id)?.routes.some((x) => x.swarm)).toBe(true);
    // The new leader of the same key speaks: its view replaces the held one.
    await registry.replaceAgentState({ ...snapshot(b.id, 1, [svcRoute('t2')]), swarm: sw(true) });
    expect(served()).toEqual(['b', 'r']);
    advance(1_000);
    await registry.replaceAgentState({ ...snapshot(a.id, 4, []), swarm: sw(false) });
    expect(registry.snapshotOf(a.id)?.routes).toEqual([]);
  });
});

describe('Registry', () => {
  it('enrols a new agent as pending, knows it again by id and key, and not with another key', async () => {
    const { registry } = setup();
    const k = await keyed(registry);
    const a = await registry.register(k, { name: 'h1' });
    expect(a.approved).toBe(false);
    expect(registry.statusOf(a.id)?.status).toBe('pending');
    const again = await registry.register(k, { agentId: a.id, name: 'h1-renamed' });
    expect(again.id).toBe(a.id);
    expect(again.name).toBe('h1-renamed');
    const other = await keyed(registry, 'other');
    expect((await registry.register(other, { agentId: a.id, name: 'h1' })).id).not.toBe(a.id);
  });

  it('authenticates only current secrets, and an old one for the overlap after a rotation', async () => {
    const { registry, advance } = setup();
    const { secret } = await registry.createKey({ name: 'k', domains: [], autoApprove: true });
    expect(await registry.authenticate('berth_agent_nope')).toBeUndefined();
    const { secret: fresh } = await registry.rotateKey('k', 60_000);
    expect((await registry.authenticate(secret))?.name).toBe('k');
    expect((await registry.authenticate(fresh))?.name).toBe('k');
    advance(60_001);
    expect(await registry.authenticate(secret)).toBeUndefined();
    await registry.revokeKey('k');
    expect(await registry.authenticate(fresh)).toBeUndefined();
  });

  it('refuses enrolment past the key’s pending limit and its rate, naming the key', async () => {
    const { registry, advance } = setup();
    const k = await keyed(registry, 'few', { maxPending: 2 });
    await registry.register(k, { name: 'a' });
    await registry.register(k, { name: 'b' });
    await expect(registry.register(k, { name: 'c' })).rejects.toThrowError(
      /key few already has 2 agents waiting for approval \(at most 2\)/,
    );
    const auto = await keyed(registry, 'auto', { autoApprove: true });
    for (let i = 0; i < ENROLMENTS_PER_MINUTE; i++) await registry.register(auto, { name: `x${i}` });
    await expect(registry.register(auto, { name: 'one-more' })).rejects.toThrowError(
      /enrolled 60 new agents in the last minute/,
    );
    advance(60_001);
    await expect(registry.register(auto, { name: 'later' })).resolves.toBeDefined();
  });

  it('replaces an agent’s whole state, ignores older generations, and keeps the server’s claim times', async () => {
    const { registry, advance, now } = setup();
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    const first = now();
    expect(await registry.replaceAgentState(snapshot(a.id, 5, [route('web')]))).toBe(true);
    advance(5_000);
    expect(await registry.replaceAgentState(snapshot(a.id, 4, []))).toBe(false);
    expect(await registry.replaceAgentState(snapshot(a.id, 6, [route('web'), route('api')]))).toBe(true);
    const s = registry.snapshotOf(a.id)!;
    expect(s.routes).toHaveLength(2);
    expect(s.claims!['web.example.com\u0000/']).toEqual({ since: first });
    expect(s.claims!['api.example.com\u0000/']).toEqual({ since: first + 5_000 });
    // A claims map an agent puts in its snapshot is the server's to replace.
    const spoofed = {
      ...snapshot(a.id, 7, [route('web')]),
      claims: { 'web.example.com\u0000/': { since: -1 } },
    };
    await registry.replaceAgentState(spoofed);
    expect(registry.snapshotOf(a.id)!.claims!['web.example.com\u0000/']).toEqual({ since: first });
  });

  it('restores keys, agents and snapshots from the store after a restart, agents offline until back', async () => {
    const { registry, make, store } = setup();
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    await registry.replaceAgentState(snapshot(a.id, 3, [route('web')]));
    await registry.flush();
    const again = make();
    await again.load();
    expect(again.snapshotOf(a.id)?.routes.map((r) => r.id)).toEqual(['web/default']);
    expect(again.statusOf(a.id)?.status).toBe('offline');
    expect(again.admitted().agentRoutes[0]!.routes).toHaveLength(1); // within the grace
    await store.close();
  });

  it('lands a big snapshot whose record another replica replaced meanwhile, and none once the agent is removed', async () => {
    const { registry } = setup();
    const a = await registry.register(await keyed(registry), { name: 'big' });
    const routes = Array.from({ length: 25_000 }, (_, i) => route(`c${i}`));
    // 25k routes are worked out in slices: what happens between them must not lose the snapshot.
    const landing = registry.replaceAgentState(snapshot(a.id, 1, routes));
    await new Promise((r) => setImmediate(r));
    registry.applyRemoteAgent(a.id, { ...registry.agentRecord(a.id)!, approved: true });
    expect(await landing).toBe(true);
    expect(registry.snapshotOf(a.id)?.routes).toHaveLength(25_000);
    // Admitted as the approved agent it is now (the key's limit: 10k routes), not as it was.
    expect(registry.admitted().agentRoutes.find((x) => x.agentId === a.id)?.routes).toHaveLength(10_000);
    const late = registry.replaceAgentState(snapshot(a.id, 2, routes.slice(1)));
    await new Promise((r) => setImmediate(r));
    await registry.removeAgent(a.id);
    expect(await late).toBe(false);
    expect(registry.snapshotOf(a.id)).toBeUndefined();
  });

  it('tells who publishes presence about connections, and who closes sockets about drops', async () => {
    const { registry } = setup();
    const live: [string, LiveChange['kind']][] = [];
    const drops: [string[], string][] = [];
    registry.onLive((id, c) => live.push([id, c.kind]));
    registry.onDrop((ids, why) => drops.push([ids, why]));
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    await registry.heartbeat(a.id, { version: '1', intervalMs: 1_000 });
    registry.disconnected(a.id);
    expect(live).toEqual([
      [a.id, 'connected'],
      [a.id, 'heartbeat'],
      [a.id, 'disconnected'],
    ]);
    await registry.revokeKey('k');
    expect(drops).toEqual([[[a.id], 'key k was revoked']]);
    expect(registry.statusOf(a.id)?.status).toBe('revoked');
  });

  it('computes admission once per change, and again after a change', async () => {
    const { registry } = setup();
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    const one = registry.admitted();
    expect(registry.admitted()).toBe(one);
    await registry.replaceAgentState(snapshot(a.id, 1, [route('web')]));
    const two = registry.admitted();
    expect(two).not.toBe(one);
    expect(two.agentRoutes[0]!.routes).toHaveLength(1);
  });

  it('re-admits only the agent that changed, and an agent whose key changed in place', async () => {
    const { registry } = setup();
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    const b = await registry.register(k, { name: 'h2' });
    await registry.replaceAgentState(snapshot(a.id, 1, [route('web')]));
    await registry.replaceAgentState(snapshot(b.id, 1, [route('api')]));
    const entryOf = (id: string) => registry.admitted().agentRoutes.find((e) => e.agentId === id)!;
    const aBefore = entryOf(a.id);
    const bBefore = entryOf(b.id);
    await registry.replaceAgentState(snapshot(b.id, 2, [route('api'), route('api2')]));
    expect(entryOf(a.id)).toBe(aBefore);
    expect(entryOf(b.id)).not.toBe(bBefore);
    expect(entryOf(b.id).routes).toHaveLength(2);
    // The key record changes in place: its new domains must still reach both agents at once.
    await registry.updateKey('k', { domains: ['*.other.test'] });
    const after = registry.admitted();
    expect(after.agentRoutes.every((e) => e.routes.length === 0)).toBe(true);
    expect([...after.errors.values()].flat().join('\n')).toMatch(/outside the domains allowed for key k/);
  });

  it('writes an agent’s snapshots behind: one write of the latest for a burst, all of them on flush', async () => {
    const { registry, store, make } = setup();
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    const written: number[] = [];
    const save = store.saveSnapshot.bind(store);
    store.saveSnapshot = async (s) => {
      written.push(s.generation);
      await save(s);
    };
    for (let g = 1; g <= 20; g++) await registry.replaceAgentState(snapshot(a.id, g, [route(`w${g}`)]));
    expect(registry.snapshotOf(a.id)?.generation).toBe(20); // served from memory at once
    await new Promise((r) => setTimeout(r, 20));
    expect(written).toEqual([20]);
    await registry.replaceAgentState(snapshot(a.id, 21, [route('w21')]));
    await registry.flush();
    expect(written).toEqual([20, 21]);
    const again = make();
    await again.load();
    expect(again.snapshotOf(a.id)?.routes.map((r) => r.id)).toEqual(['w21/default']);
  });

  it('writes an agent’s record on a heartbeat only when it changed or its last-seen time is a minute old', async () => {
    const { registry, store, advance } = setup();
    const k = await keyed(registry, 'k', { autoApprove: true });
    const a = await registry.register(k, { name: 'h1' });
    let writes = 0;
    const save = store.upsertAgent.bind(store);
    store.upsertAgent = async (r) => {
      writes++;
      await save(r);
    };
    await registry.heartbeat(a.id, { version: '1' });
    for (let i = 0; i < 10; i++) {
      advance(5_000);
      await registry.heartbeat(a.id, { version: '1' });
    }
    expect(writes).toBe(1); // the version was new; 50 s since
    advance(10_000);
    await registry.heartbeat(a.id, { version: '1' });
    expect(writes).toBe(2); // a minute since the last write
    await registry.heartbeat(a.id, { version: '2' });
    expect(writes).toBe(3); // changed
  });

  it('never removes the local agent, and counts it online while it heartbeats', async () => {
    const { registry, advance } = setup();
    await registry.registerLocal('local', 'box', '0.1.0');
    expect(registry.statusOf('local')?.status).toBe('online');
    await expect(registry.removeAgent('local')).rejects.toThrowError(/cannot be removed/);
    advance(5_000);
    expect(registry.statusOf('local')?.status).toBe('stale');
    await registry.heartbeat('local', { intervalMs: 1_000 });
    expect(registry.statusOf('local')?.status).toBe('online');
  });

  it('applies what other replicas wrote: agents, keys, snapshots and presence', async () => {
    const { registry, events } = setup();
    const seen: string[] = [];
    events.subscribe((e) => seen.push(e.type));
    const drops: string[][] = [];
    registry.onDrop((ids) => drops.push(ids));
    expect(
      registry.applyRemoteKey('k9', {
        id: 'k9',
        name: 'remote',
        hash: 'h',
        domains: [],
        autoApprove: true,
        createdAt: 0,
      }),
    ).toBe(true);
    expect(
      registry.applyRemoteAgent('ag9', {
        id: 'ag9',
        name: 'far',
        kind: 'remote',
        keyId: 'k9',
        approved: true,
        createdAt: 0,
        lastSeenAt: 0,
      }),
    ).toBe(true);
    expect(registry.applyRemoteSnapshot('ag9', snapshot('ag9', 2, [route('far')]))).toBe(true);
    expect(registry.applyRemoteSnapshot('ag9', snapshot('ag9', 1, []))).toBe(false);
    expect(registry.isConnected('ag9')).toBe(false);
    expect(registry.setRemotePresence('ag9', { replica: 'other', since: 0 })).toBe(true);
    expect(registry.isConnected('ag9')).toBe(true);
    expect(
      registry.applyRemoteKey('k9', {
        id: 'k9',
        name: 'remote',
        hash: 'h',
        domains: [],
        autoApprove: true,
        createdAt: 0,
        revokedAt: 1,
      }),
    ).toBe(true);
    expect(drops).toEqual([['ag9']]);
    expect(registry.applyRemoteAgent('ag9', undefined)).toBe(true);
    expect(registry.snapshotOf('ag9')).toBeUndefined();
    expect(seen).toEqual(['key.created', 'agent.connected', 'key.revoked', 'agent.removed']);
  });
});
