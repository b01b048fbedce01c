// One contract for every Store adapter: the embedded SQLite file and Redis (a private
// redis-server). Then what only a shared store does: change messages, presence and leases.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../src/model/types.js';
import { parseRedisUrl, RedisStore } from '../../src/store/redis.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord, AuditEntry, KeyRecord, Store, StoreChange } from '../../src/store/store.js';
import { useCleanup } from './support/cleanup.js';
import { waitUntil } from './support/proc.js';
import { startRedis, type TestRedis } from './support/redis.js';

useCleanup();

const logger = pino({ level: 'silent' });
let redis: TestRedis;
const dirs: string[] = [];
let prefixes = 0;

beforeAll(async () => {
  redis = await startRedis({ password: 'contract-secret' });
});

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Each Redis store of a test gets its own prefix: tests never see each other's keys. */
const openRedis = (prefix: string, o: { auditMax?: number } = {}) =>
  RedisStore.open(parseRedisUrl(`${redis.url}/1?prefix=${prefix}`), { logger, ...o });

const adapters: { name: string; open: () => Promise<Store> }[] = [
  {
    name: 'sqlite',
    open: async () => {
      const dir = mkdtempSync(join(tmpdir(), 'bstore-'));
      dirs.push(dir);
      return new SqliteStore(join(dir, 'berth.db'));
    },
  },
  { name: 'redis', open: () => openRedis(`c${++prefixes}:`) },
];

const agent = (id: string, extra: Partial<AgentRecord> = {}): AgentRecord => ({
  id,
  name: `name-${id}`,
  kind: 'remote',
  keyId: 'key_1',
  approved: false,
  createdAt: 1000,
  lastSeenAt: 1000,
  ...extra,
});

const key = (id: string, hash: string, extra: Partial<KeyRecord> = {}): KeyRecord => ({
  id,
  name: `key-${id}`,
  hash,
  domains: ['*.example.com'],
  autoApprove: false,
  createdAt: 1000,
  ...extra,
});

const snapshot = (agentId: string, generation: number, hosts: string[]): Snapshot => ({
  agentId,
  generation,
  hostIp: '127.0.0.2',
  takenAt: generation,
  containers: hosts.map((h, i) => ({
    id: `c${i}`,
    name: `ctr-${h}`,
    state: 'running',
  })) as Snapshot['containers'],
  routes: hosts.map((h, i) => ({
    id: `r-${h}`,
    containerId: `c${i}`,
    containerName: `ctr-${h}`,
    hosts: [h],
    path: '/',
    stripPath: false,
    upstream: { scheme: 'http', host: '127.0.0.2', port: 8000 + i },
    createdAt: 1,
  })) as unknown as Snapshot['routes'],
  diagnostics: [],
});

const audit = (i: number): AuditEntry => ({
  id: `ex_${i}`,
  at: 1000 + i,
  requester: 'admin',
  agentId: 'ag_1',
  agentName: 'host',
  container: 'app',
  argv: ['php', 'occ', `n${i}`],
  decision: i % 2 ? 'denied' : 'allowed',
  exitCode: i % 2 ? null : 0,
});

describe.each(adapters)('store contract: $name', ({ open }) => {
  let store: Store;
  beforeEach(async () => {
    store = await open();
  });
  afterEach(async () => {
    await store.close().catch(() => {});
  });

  it('keeps meta values, replacing on set', async () => {
    expect(await store.getMeta('admin_token_sha256')).toBeUndefined();
    await store.setMeta('admin_token_sha256', 'aa');
    await store.setMeta('admin_token_sha256', 'bb');
    expect(await store.getMeta('admin_token_sha256')).toBe('bb');
  });

  it('claims a meta value once: the first claim wins, later ones get it back', async () => {
    expect(await store.claimMeta('agent_tls_ca', 'first')).toBe('first');
    expect(await store.claimMeta('agent_tls_ca', 'second')).toBe('first');
    expect(await store.getMeta('agent_tls_ca')).toBe('first');
    // Claims racing each other agree on one value.
    const racing = await Promise.all(['a', 'b', 'c'].map((v) => store.claimMeta('raced', v)));
    expect(new Set(racing).size).toBe(1);
    expect(await store.getMeta('raced')).toBe(racing[0]);
  });

  it('upserts, lists (by id) and deletes agents', async () => {
    await store.upsertAgent(agent('ag_b'));
    await store.upsertAgent(agent('ag_a', { hostIp: '127.0.0.3', version: '0.1.0' }));
    await store.upsertAgent(agent('ag_b', { approved: true, name: 'renamed' }));
    expect(await store.listAgents()).toEqual([
      agent('ag_a', { hostIp: '127.0.0.3', version: '0.1.0' }),
      agent('ag_b', { approved: true, name: 'renamed' }),
    ]);
    await store.deleteAgent('ag_a');
    await store.deleteAgent('ag_unknown');
    expect((await store.listAgents()).map((a) => a.id)).toEqual(['ag_b']);
  });

  it('saves keys, lists them by id, and finds one by the hash of its secret', async () => {
    await store.saveKey(key('key_2', 'h2', { execAllow: ['php occ ...'] }));
    await store.saveKey(key('key_1', 'h1', { autoApprove: true }));
    expect((await store.listKeys()).map((k) => k.id)).toEqual(['key_1', 'key_2']);
    expect(await store.findKeyByHash('h2', 5000)).toEqual(key('key_2', 'h2', { execAllow: ['php occ ...'] }));
    expect(await store.findKeyByHash('nope', 5000)).toBeUndefined();
    // Revocation is the registry's decision: the store still finds the key.
    await store.saveKey(key('key_1', 'h1', { autoApprove: true, revokedAt: 2000 }));
    expect((await store.findKeyByHash('h1', 5000))?.revokedAt).toBe(2000);
  });

  it('finds a rotated key by its old secret only during the overlap', async () => {
    await store.saveKey(key('key_1', 'old'));
    await store.saveKey(key('key_1', 'new', { previousHash: 'old', previousExpiresAt: 10_000 }));
    expect((await store.findKeyByHash('new', 9_999))?.id).toBe('key_1');
    expect((await store.findKeyByHash('old', 9_999))?.hash).toBe('new');
    expect(await store.findKeyByHash('old', 10_000)).toBeUndefined();
    // A second rotation: the first secret is gone for good, the second is the overlap one.
    await store.saveKey(key('key_1', 'newer', { previousHash: 'new', previousExpiresAt: 20_000 }));
    expect(await store.findKeyByHash('old', 0)).toBeUndefined();
    expect((await store.findKeyByHash('new', 15_000))?.hash).toBe('newer');
    expect((await store.findKeyByHash('newer', 30_000))?.hash).toBe('newer');
    expect(await store.listKeys()).toHaveLength(1);
  });

  it('replaces an agent’s snapshot whole, never merging, and deletes it', async () => {
    await store.saveSnapshot(snapshot('ag_b', 1, ['a.test', 'b.test']));
    await store.saveSnapshot(snapshot('ag_a', 1, ['x.test']));
    await store.saveSnapshot(snapshot('ag_b', 2, ['c.test']));
    const all = await store.loadSnapshots();
    expect(all.map((s) => s.agentId)).toEqual(['ag_a', 'ag_b']);
    expect(all[1]).toEqual(snapshot('ag_b', 2, ['c.test']));
    await store.saveSnapshot(snapshot('ag_b', 3, []));
    expect((await store.loadSnapshots())[1]?.routes).toEqual([]);
    await store.deleteSnapshot('ag_b');
    await store.deleteSnapshot('ag_unknown');
    expect((await store.loadSnapshots()).map((s) => s.agentId)).toEqual(['ag_a']);
  });

  it('keeps a big snapshot (several MiB, given as text made beforehand) and a small one after it', async () => {
    const hosts = Array.from({ length: 60_000 }, (_, i) => `r${i}.big.test`);
    const big = snapshot('ag_big', 1, hosts);
    const text = JSON.stringify(big);
    expect(text.length).toBeGreaterThan(2 << 20);
    await store.saveSnapshot(big, text);
    expect((await store.loadSnapshots()).find((s) => s.agentId === 'ag_big')).toEqual(big);
    await store.saveSnapshot(snapshot('ag_big', 2, ['small.test']));
    expect((await store.loadSnapshots()).find((s) => s.agentId === 'ag_big')).toEqual(
      snapshot('ag_big', 2, ['small.test']),
    );
  });

  it('lists audit entries newest first, up to the limit', async () => {
    expect(await store.listAudit(10)).toEqual([]);
    for (let i = 1; i <= 5; i++) await store.addAudit(audit(i));
    expect((await store.listAudit(3)).map((e) => e.id)).toEqual(['ex_5', 'ex_4', 'ex_3']);
    expect(await store.listAudit(100)).toEqual([5, 4, 3, 2, 1].map(audit));
    expect(await store.listAudit(0)).toEqual([]);
  });

  it('reports no change of its own through watch, and refuses work once closed', async () => {
    const seen: StoreChange[] = [];
    const stop = store.watch((c) => seen.push(c));
    await store.upsertAgent(agent('ag_1'));
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual([]);
    stop();
    await store.close();
    await expect(store.getMeta('x')).rejects.toThrow();
  });
});

describe('redis: what replicas share', () => {
  let a: RedisStore;
  let b: RedisStore;
  let prefix: string;
  beforeEach(async () => {
    prefix = `s${++prefixes}:`;
    a = await openRedis(prefix, { auditMax: 10 });
    b = await openRedis(prefix);
  });
  afterEach(async () => {
    await a.close();
    await b.close();
  });

  it('tells the other replica what changed, record by record', async () => {
    const seen: StoreChange[] = [];
    b.watch((c) => seen.push(c));
    await a.upsertAgent(agent('ag_1'));
    await a.saveKey(key('key_1', 'h1'));
    await a.saveSnapshot(snapshot('ag_1', 7, ['a.test']));
    await a.setMeta('applied:x', '{}');
    await a.deleteAgent('ag_1');
    await waitUntil(() => seen.length >= 5, { timeoutMs: 2_000, message: () => JSON.stringify(seen) });
    expect(seen).toEqual([
      { kind: 'agent', id: 'ag_1' },
      { kind: 'key', id: 'key_1' },
      { kind: 'snapshot', agentId: 'ag_1' },
      { kind: 'meta', key: 'applied:x' },
      { kind: 'agent', id: 'ag_1' },
    ]);
    expect(await b.getKey('key_1')).toEqual(key('key_1', 'h1'));
    expect(await b.getAgent('ag_1')).toBeUndefined();
    expect((await b.getSnapshot('ag_1'))?.generation).toBe(7);
    expect(await b.snapshotGenerations()).toEqual(new Map([['ag_1', 7]]));
  });

  it('keeps presence per replica: only the holder clears it, and a closed replica’s goes with it', async () => {
    const seen: StoreChange[] = [];
    b.watch((c) => seen.push(c));
    await a.setPresence('ag_1', { since: 1, lastHeartbeatAt: 2, heartbeatMs: 1000 });
    await b.setPresence('ag_2', { since: 3 });
    expect(await b.listPresence()).toEqual(
      new Map([
        ['ag_1', { replica: a.replicaId, since: 1, lastHeartbeatAt: 2, heartbeatMs: 1000 }],
        ['ag_2', { replica: b.replicaId, since: 3 }],
      ]),
    );
    await waitUntil(() => seen.length === 1, { timeoutMs: 2_000, message: 'no presence message' });
    expect(seen[0]).toMatchObject({ kind: 'presence', agentId: 'ag_1', presence: { replica: a.replicaId } });
    await b.clearPresence('ag_1'); // not b's: kept
    expect((await a.listPresence()).has('ag_1')).toBe(true);
    // The agent moves to b: a's late clear must not erase b's record.
    await b.setPresence('ag_1', { since: 4 });
    await a.clearPresence('ag_1');
    expect((await a.listPresence()).get('ag_1')?.replica).toBe(b.replicaId);
    await a.setPresence('ag_3', { since: 5 });
    await a.close();
    expect([...(await b.listPresence()).keys()].sort()).toEqual(['ag_1', 'ag_2']);
  });

  it('gives a lease to one replica at a time, renews it, releases it, and lets it expire', async () => {
    expect(await a.acquireLease('caddy:x', 300)).toEqual({ held: true, holder: a.replicaId, ttlMs: 300 });
    const refused = await b.acquireLease('caddy:x', 300);
    expect(refused).toMatchObject({ held: false, holder: a.replicaId });
    expect(refused.ttlMs).toBeGreaterThan(0);
    expect(refused.ttlMs).toBeLessThanOrEqual(300);
    expect((await a.acquireLease('caddy:x', 300)).held).toBe(true); // renewed
    const seen: StoreChange[] = [];
    b.watch((c) => seen.push(c));
    await b.releaseLease('caddy:x'); // not b's: no effect
    expect((await b.acquireLease('caddy:x', 300)).held).toBe(false);
    await a.releaseLease('caddy:x');
    await waitUntil(() => seen.some((c) => c.kind === 'lease'), {
      timeoutMs: 2_000,
      message: 'no release message',
    });
    expect((await b.acquireLease('caddy:x', 300)).held).toBe(true);
    // b stops renewing: after the TTL a takes over.
    await new Promise((r) => setTimeout(r, 350));
    expect(await a.acquireLease('caddy:x', 300)).toMatchObject({ held: true, holder: a.replicaId });
  });

  it('caps the audit, dropping the oldest entries', async () => {
    for (let i = 1; i <= 15; i++) await a.addAudit(audit(i));
    const kept = await b.listAudit(100);
    expect(kept.map((e) => e.id)).toEqual([15, 14, 13, 12, 11, 10, 9, 8, 7, 6].map((i) => `ex_${i}`));
  });

  it('keeps everything under its prefix and secrets out of Redis', async () => {
    await a.saveKey(key('key_1', 'sha256-of-secret'));
    await a.addAudit(audit(1));
    const keys = (await redis.cli(['-n', '1', '--scan', '--pattern', `${prefix}*`]))
      .split('\n')
      .filter(Boolean);
    const mine = keys.sort();
    const values = await redis.cli(['-n', '1', 'hgetall', `${prefix}keys`]);
    expect(values).toContain('sha256-of-secret');
    expect(mine).toEqual(
      [
        `${prefix}audit`,
        `${prefix}keyhash`,
        `${prefix}keys`,
        `${prefix}replica:${a.replicaId}`,
        `${prefix}replica:${b.replicaId}`,
      ].sort(),
    );
  });

  it('refuses to start when Redis is unreachable, naming the URL without the password', async () => {
    const err = await RedisStore.open(parseRedisUrl('redis://:hunter2hunter2@127.0.0.1:1/0'), {
      logger,
      connectTimeoutMs: 1_000,
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(
      /--store redis:\/\/:\*\*\*@127\.0\.0\.1:1\/0: cannot reach Redis: .*ECONNREFUSED/,
    );
    expect((err as Error).message).not.toContain('hunter2');
    const wrong = await RedisStore.open(parseRedisUrl(`redis://:wrong@127.0.0.1:${redis.port}/0`), {
      logger,
    }).catch((e: Error) => e);
    expect((wrong as Error).message).toMatch(/cannot reach Redis: .*(WRONGPASS|NOAUTH|invalid)/i);
    expect((wrong as Error).message).not.toContain(':wrong@');
  });
});
