// The embedded default store: one SQLite file in the data dir, WAL mode.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, gzip } from 'node:zlib';
import Database from 'better-sqlite3';
import type { Snapshot } from '../model/types.js';
import type { AgentRecord, AuditEntry, KeyRecord, Store, StoreChange } from './store.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, previous_hash TEXT, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_previous_hash ON keys (previous_hash);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (agent_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, body TEXT NOT NULL);
`;

const gzipAsync = promisify(gzip);
/** Snapshot texts of this many characters or more are stored gzipped (a BLOB; smaller ones stay text). */
export const COMPRESS_FROM = 1 << 20;

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  /** Prepared once: an agent's record is written on every heartbeat (1000 agents: 67 a second). */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
  }

  private sql(text: string): Database.Statement {
    let st = this.statements.get(text);
    if (!st) {
      st = this.db.prepare(text);
      this.statements.set(text, st);
    }
    return st;
  }

  static openDataDir(dataDir: string): SqliteStore {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    return new SqliteStore(join(dataDir, 'berth.db'));
  }

  async getMeta(key: string): Promise<string | undefined> {
    const row = this.sql('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return row?.value;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.sql(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
    ).run(key, value);
  }

  async claimMeta(key: string, value: string): Promise<string> {
    this.db
      .prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING')
      .run(key, value);
    return (await this.getMeta(key)) ?? value;
  }

  async upsertAgent(a: AgentRecord): Promise<void> {
    this.sql(
      'INSERT INTO agents (id, body) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET body = excluded.body',
    ).run(a.id, JSON.stringify(a));
  }

  async deleteAgent(id: string): Promise<void> {
    this.sql('DELETE FROM agents WHERE id = ?').run(id);
  }

  async listAgents(): Promise<AgentRecord[]> {
    return (this.sql('SELECT body FROM agents ORDER BY id').all() as { body: string }[]).map((r) =>
      JSON.parse(r.body),
    );
  }

  async saveKey(k: KeyRecord): Promise<void> {
    this.sql(
      `INSERT INTO keys (id, hash, previous_hash, body) VALUES (?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET hash = excluded.hash, previous_hash = excluded.previous_hash, body = excluded.body`,
    ).run(k.id, k.hash, k.previousHash ?? null, JSON.stringify(k));
  }

  async listKeys(): Promise<KeyRecord[]> {
    return (this.sql('SELECT body FROM keys ORDER BY id').all() as { body: string }[]).map((r) =>
      JSON.parse(r.body),
    );
  }

  async findKeyByHash(hash: string, now: number): Promise<KeyRecord | undefined> {
    const row = this.sql('SELECT body FROM keys WHERE hash = ? OR previous_hash = ?').get(hash, hash) as
      | { body: string }
      | undefined;
    if (!row) return undefined;
    const k = JSON.parse(row.body) as KeyRecord;
    if (k.hash === hash) return k;
    return k.previousExpiresAt !== undefined && k.previousExpiresAt > now ? k : undefined;
  }

  async saveSnapshot(s: Snapshot, body = JSON.stringify(s)): Promise<void> {
    // A big text is stored gzipped, compressed on libuv's thread pool: 8 MiB written as it is
    // held the event loop for a tenth of a second (SQLite's page writes), 0.5 MiB does not.
    const value = body.length >= COMPRESS_FROM ? await gzipAsync(body, { level: 1 }) : body;
    this.sql(
      `INSERT INTO snapshots (agent_id, generation, body) VALUES (?, ?, ?)
         ON CONFLICT(agent_id) DO UPDATE SET generation = excluded.generation, body = excluded.body`,
    ).run(s.agentId, s.generation, value);
  }

  async deleteSnapshot(agentId: string): Promise<void> {
    this.sql('DELETE FROM snapshots WHERE agent_id = ?').run(agentId);
  }

  async loadSnapshots(): Promise<Snapshot[]> {
    const rows = this.sql('SELECT body FROM snapshots ORDER BY agent_id').all() as {
      body: string | Buffer;
    }[];
    return rows.map(
      (r) =>
        JSON.parse(typeof r.body === 'string' ? r.body : gunzipSync(r.body).toString('utf8')) as Snapshot,
    );
  }

  async addAudit(e: AuditEntry): Promise<void> {
    this.sql('INSERT INTO audit (id, at, body) VALUES (?, ?, ?)').run(e.id, e.at, JSON.stringify(e));
  }

  async listAudit(limit: number): Promise<AuditEntry[]> {
    return (
      this.sql('SELECT body FROM audit ORDER BY seq DESC LIMIT ?').all(limit) as { body: string }[]
    ).map((r) => JSON.parse(r.body));
  }

  /** One process owns the file: no other writer to hear from. */
  watch(_fn: (change: StoreChange) => void): () => void {
    return () => {};
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
