// The shared store: several `berth server` replicas on one Redis. Every write publishes a small
// change message on one channel, in the same transaction, so the other replicas reload just that
// record; a replica that lost messages (its connection dropped) is told to reload everything.
// Keys live under a prefix (`berth:` by default): meta, agents, keys, keyhash (secret hash → key
// id), snapshots, snapgen (agent → generation), audit (a capped list), presence (agent → the
// replica holding its connection), replica:<id> (alive, short TTL), lease:<name> and traffic
// (replica → its latest traffic summary).
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { errorMessage, UserError } from '../errors.js';
import type { Snapshot } from '../model/types.js';
import type {
  AgentRecord,
  AuditEntry,
  KeyRecord,
  LeaseState,
  Presence,
  SharedStore,
  Store,
  StoreChange,
} from './store.js';

export interface RedisUrl {
  host: string;
  port: number;
  db: number;
  username?: string;
  password?: string;
  tls: boolean;
  prefix: string;
  /** The URL without credentials, for logs and errors. */
  display: string;
}

const DEFAULT_PREFIX = 'berth:';

/**
 * `redis://[[user]:password@]host[:port][/db][?prefix=berth:]` (or `rediss://` for TLS).
 * Errors name what is wrong and never repeat the password.
 */
export function parseRedisUrl(value: string, source = '--store'): RedisUrl {
  const bad = (why: string) =>
    new UserError(
      'CONFIG_INVALID',
      `${source}: ${why}; expected redis://[:password@]host:port[/db][?prefix=berth:]`,
    );
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw bad('not a URL');
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw bad(`unsupported scheme "${u.protocol}"`);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw bad('no host');
  const port = u.port === '' ? 6379 : Number(u.port);
  const dbMatch = /^\/?(\d{0,4})$/.exec(u.pathname);
  if (!dbMatch) throw bad(`the path must be a database number, got "${u.pathname}"`);
  const db = dbMatch[1] ? Number(dbMatch[1]) : 0;
  let prefix = DEFAULT_PREFIX;
  for (const [k, v] of u.searchParams) {
    if (k !== 'prefix') throw bad(`unknown parameter "${k}"`);
    if (!/^[\w:.-]{1,64}$/.test(v)) throw bad(`prefix "${v}" must be 1-64 letters, digits, _ : . or -`);
    prefix = v;
  }
  const password = u.password ? decodeURIComponent(u.password) : undefined;
  const username = u.username ? decodeURIComponent(u.username) : undefined;
  const auth = password ? `${username ? `${username}:` : ':'}***@` : username ? `${username}@` : '';
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const display = `${u.protocol}//${auth}${hostPart}:${port}/${db}${prefix === DEFAULT_PREFIX ? '' : `?prefix=${prefix}`}`;
  const out: RedisUrl = { host, port, db, tls: u.protocol === 'rediss:', prefix, display };
  if (username) out.username = username;
  if (password) out.password = password;
  return out;
}

export interface RedisStoreOptions {
  logger: Logger;
  /** Audit entries kept (oldest dropped first). */
  auditMax?: number;
  /** How long a replica counts as alive without refreshing (it refreshes every third of it). */
  replicaTtlMs?: number;
  connectTimeoutMs?: number;
}

/** Takes the lease when free, renews it when ours; else reports the holder and its time left. */
const LEASE = `
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1], tonumber(ARGV[2])}
end
return {0, v, redis.call('PTTL', KEYS[1])}`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0`;

/** Saves a key and its hash index; hashes the key no longer has stop finding it. */
const SAVE_KEY = `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local o = cjson.decode(old)
  for _, h in ipairs({o.hash, o.previousHash}) do
    if type(h) == 'string' and h ~= ARGV[3] and h ~= ARGV[4] and redis.call('HGET', KEYS[2], h) == ARGV[1] then
      redis.call('HDEL', KEYS[2], h)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[1]) end
redis.call('PUBLISH', KEYS[3], ARGV[5])
return 1`;

/** Forgets an agent's presence only if this replica holds it (a newer connection elsewhere wins). */
const CLEAR_PRESENCE = `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and cjson.decode(v).replica == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', KEYS[2], ARGV[3])
  return 1
end
return 0`;

type Json = Record<string, unknown>;

export class RedisStore implements Store, SharedStore {
  readonly replicaId = `${hostname().slice(0, 32)}-${process.pid}-${randomBytes(3).toString('hex')}`;
  readonly display: string;
  readonly shared: SharedStore = this;
  private readonly prefix: string;
  private readonly channel: string;
  private readonly listeners = new Set<(c: StoreChange) => void>();
  private sub?: Redis;
  private alive?: NodeJS.Timeout;
  private closed = false;

  private constructor(
    private readonly redis: Redis,
    url: RedisUrl,
    private readonly o: RedisStoreOptions,
  ) {
    this.display = url.display;
    this.prefix = url.prefix;
    this.channel = `${url.prefix}changes`;
  }

  /** Connects (or throws a UserError naming the URL without its password) and starts following. */
  static async open(url: RedisUrl, o: RedisStoreOptions): Promise<RedisStore> {
    const options: RedisOptions = {
      host: url.host,
      port: url.port,
      db: url.db,
      lazyConnect: true,
      // Fail fast while Redis is away: the server keeps serving from memory and logs, instead
      // of piling up writes that would land out of order later.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: 5_000,
      connectTimeout: o.connectTimeoutMs ?? 5_000,
      retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
    };
    if (url.username) options.username = url.username;
    if (url.password) options.password = url.password;
    if (url.tls) options.tls = {};
    const redis = new Redis(options);
    const store = new RedisStore(redis, url, o);
    let lastError = '';
    redis.on('error', (err: Error) => {
      lastError = err.message;
    });
    try {
      await redis.connect();
      await redis.ping();
    } catch (err) {
      redis.disconnect();
      throw new UserError(
        'CONFIG_INVALID',
        `--store ${url.display}: cannot reach Redis: ${lastError || errorMessage(err)}`,
      );
    }
    redis.removeAllListeners('error');
    store.follow(redis, 'store');
    const sub = redis.duplicate();
    store.sub = sub;
    store.follow(sub, 'subscriber');
    sub.on('message', (_channel: string, message: string) => store.onMessage(message));
    await sub.connect();
    await sub.subscribe(store.channel);
    await store.beat();
    const ttl = o.replicaTtlMs ?? 5_000;
    store.alive = setInterval(() => {
      store.beat().catch(() => {}); // the connection's own logging reports the outage
    }, ttl / 3);
    return store;
  }

  /** Logs an outage once and its end; after a reconnect the listeners reload everything. */
  private follow(conn: Redis, role: string): void {
    let lost = false;
    conn.on('error', (err: Error) => {
      if (lost || this.closed) return;
      lost = true;
      this.o.logger.warn(
        { store: this.display, role, err: err.message },
        'lost the connection to Redis; serving from memory and reconnecting',
      );
    });
    conn.on('close', () => {
      if (!this.closed) lost = true;
    });
    conn.on('ready', () => {
      if (!lost) return;
      lost = false;
      this.o.logger.info({ store: this.display, role }, 'reconnected to Redis; reloading');
      this.notify({ kind: 'reload' });
    });
  }

  private k(name: string): string {
    return this.prefix + name;
  }

  private message(change: StoreChange): string {
    return JSON.stringify({ from: this.replicaId, ...change });
  }

  private onMessage(raw: string): void {
    let m: Json;
    try {
      m = JSON.parse(raw);
    } catch {
      return;
    }
    if (m.from === this.replicaId || typeof m.kind !== 'string') return;
    const { from: _from, ...change } = m;
    this.notify(change as StoreChange);
  }

  private notify(change: StoreChange): void {
    for (const fn of this.listeners) fn(change);
  }

  watch(fn: (change: StoreChange) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** A transaction that also tells the other replicas; an error in any part is thrown. */
  private async write(change: StoreChange | undefined, build: (m: ReturnType<Redis['multi']>) => void) {
    const m = this.redis.multi();
    build(m);
    if (change) m.publish(this.channel, this.message(change));
    const results = await m.exec();
    for (const [err] of results ?? []) if (err) throw err;
  }

  private async script(lua: string, keys: string[], args: (string | number)[]): Promise<unknown> {
    return this.redis.eval(lua, keys.length, ...keys, ...args);
  }

  private async beat(): Promise<void> {
    await this.redis.set(this.k(`replica:${this.replicaId}`), '1', 'PX', this.o.replicaTtlMs ?? 5_000);
  }

  // ---- Store

  async getMeta(key: string): Promise<string | undefined> {
    return (await this.redis.hget(this.k('meta'), key)) ?? undefined;
  }

  async setMeta(key: string, value: string): Promise<void> {
    await this.write({ kind: 'meta', key }, (m) => m.hset(this.k('meta'), key, value));
  }

  async claimMeta(key: string, value: string): Promise<string> {
    const set = await this.redis.hsetnx(this.k('meta'), key, value);
    if (set === 1) {
      await this.redis.publish(this.channel, this.message({ kind: 'meta', key }));
      return value;
    }
    return (await this.getMeta(key)) ?? value;
  }

  async upsertAgent(a: AgentRecord): Promise<void> {
    await this.write({ kind: 'agent', id: a.id }, (m) => m.hset(this.k('agents'), a.id, JSON.stringify(a)));
  }

  async deleteAgent(id: string): Promise<void> {
    await this.write({ kind: 'agent', id }, (m) => m.hdel(this.k('agents'), id));
  }

  async listAgents(): Promise<AgentRecord[]> {
    return this.values<AgentRecord>('agents', (a) => a.id);
  }

  async saveKey(k: KeyRecord): Promise<void> {
    await this.script(
      SAVE_KEY,
      [this.k('keys'), this.k('keyhash'), this.channel],
      [k.id, JSON.stringify(k), k.hash, k.previousHash ?? '', this.message({ kind: 'key', id: k.id })],
    );
  }

  async listKeys(): Promise<KeyRecord[]> {
    return this.values<KeyRecord>('keys', (k) => k.id);
  }

  async findKeyByHash(hash: string, now: number): Promise<KeyRecord | undefined> {
    const id = await this.redis.hget(this.k('keyhash'), hash);
    const k = id ? await this.getKey(id) : undefined;
    if (!k) return undefined;
    if (k.hash === hash) return k;
    return k.previousHash === hash && k.previousExpiresAt !== undefined && k.previousExpiresAt > now
      ? k
      : undefined;
  }

  async saveSnapshot(s: Snapshot, body = JSON.stringify(s)): Promise<void> {
    await this.write({ kind: 'snapshot', agentId: s.agentId }, (m) =>
      m.hset(this.k('snapshots'), s.agentId, body).hset(this.k('snapgen'), s.agentId, s.generation),
    );
  }

  async deleteSnapshot(agentId: string): Promise<void> {
    await this.write({ kind: 'snapshot', agentId }, (m) =>
      m.hdel(this.k('snapshots'), agentId).hdel(this.k('snapgen'), agentId),
    );
  }

  async loadSnapshots(): Promise<Snapshot[]> {
    return this.values<Snapshot>('snapshots', (s) => s.agentId);
  }

  async addAudit(e: AuditEntry): Promise<void> {
    await this.write(undefined, (m) =>
      m.lpush(this.k('audit'), JSON.stringify(e)).ltrim(this.k('audit'), 0, (this.o.auditMax ?? 100_000) - 1),
    );
  }

  async listAudit(limit: number): Promise<AuditEntry[]> {
    if (limit <= 0) return [];
    return (await this.redis.lrange(this.k('audit'), 0, limit - 1)).map((r) => JSON.parse(r));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.alive);
    this.listeners.clear();
    try {
      await this.redis.del(this.k(`replica:${this.replicaId}`));
    } catch {
      // Redis is away: the record expires by itself
    }
    for (const conn of [this.sub, this.redis]) {
      if (!conn) continue;
      try {
        await conn.quit();
      } catch {
        conn.disconnect();
      }
    }
  }

  /** A hash's JSON values, ordered like the SQLite store's listings. */
  private async values<T>(hash: string, id: (v: T) => string): Promise<T[]> {
    const all = await this.redis.hgetall(this.k(hash));
    return Object.values(all)
      .map((v) => JSON.parse(v) as T)
      .sort((a, b) => (id(a) < id(b) ? -1 : id(a) > id(b) ? 1 : 0));
  }

  // ---- SharedStore

  async getAgent(id: string): Promise<AgentRecord | undefined> {
    const v = await this.redis.hget(this.k('agents'), id);
    return v ? JSON.parse(v) : undefined;
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    const v = await this.redis.hget(this.k('keys'), id);
    return v ? JSON.parse(v) : undefined;
  }

  async getSnapshot(agentId: string): Promise<Snapshot | undefined> {
    const v = await this.redis.hget(this.k('snapshots'), agentId);
    return v ? JSON.parse(v) : undefined;
  }

  async snapshotGenerations(): Promise<Map<string, number>> {
    const all = await this.redis.hgetall(this.k('snapgen'));
    return new Map(Object.entries(all).map(([id, g]) => [id, Number(g)]));
  }

  async setPresence(agentId: string, p: Omit<Presence, 'replica'>): Promise<void> {
    const presence: Presence = { replica: this.replicaId, ...p };
    await this.write({ kind: 'presence', agentId, presence }, (m) =>
      m.hset(this.k('presence'), agentId, JSON.stringify(presence)),
    );
  }

  async clearPresence(agentId: string): Promise<void> {
    await this.script(
      CLEAR_PRESENCE,
      [this.k('presence'), this.channel],
      [agentId, this.replicaId, this.message({ kind: 'presence', agentId })],
    );
  }

  async listPresence(): Promise<Map<string, Presence>> {
    const all = Object.entries(await this.redis.hgetall(this.k('presence'))).map(
      ([id, v]) => [id, JSON.parse(v) as Presence] as const,
    );
    const replicas = [...new Set(all.map(([, p]) => p.replica))];
    if (replicas.length === 0) return new Map();
    const alive = await this.redis.mget(...replicas.map((r) => this.k(`replica:${r}`)));
    const up = new Set(replicas.filter((_, i) => alive[i] !== null));
    return new Map(all.filter(([, p]) => up.has(p.replica)));
  }

  async acquireLease(name: string, ttlMs: number): Promise<LeaseState> {
    const [held, holder, ttl] = (await this.script(
      LEASE,
      [this.k(`lease:${name}`)],
      [this.replicaId, ttlMs],
    )) as [number, string, number];
    return { held: held === 1, holder, ttlMs: Math.max(0, Number(ttl)) };
  }

  async publishTraffic(summary: string): Promise<void> {
    await this.redis.hset(this.k('traffic'), this.replicaId, summary);
  }

  async listTraffic(): Promise<Map<string, string>> {
    const all = Object.entries(await this.redis.hgetall(this.k('traffic')));
    if (all.length === 0) return new Map();
    const alive = await this.redis.mget(...all.map(([r]) => this.k(`replica:${r}`)));
    const dead = all.filter((_, i) => alive[i] === null).map(([r]) => r);
    if (dead.length > 0) await this.redis.hdel(this.k('traffic'), ...dead);
    return new Map(all.filter((_, i) => alive[i] !== null));
  }

  async releaseLease(name: string): Promise<void> {
    await this.script(
      RELEASE,
      [this.k(`lease:${name}`), this.channel],
      [this.replicaId, this.message({ kind: 'lease', name })],
    );
  }
}
