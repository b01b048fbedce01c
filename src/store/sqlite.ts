// The embedded default store: one SQLite file in the data dir, WAL mode, synchronous writes.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Snapshot } from '../model/types.js';
import type { AgentRecord, Store } from './store.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
  created_at INTEGER NOT NULL, last_seen_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  agent_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, body TEXT NOT NULL
);
`;

export class SqliteStore implements Store {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
  }

  static openDataDir(dataDir: string): SqliteStore {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    return new SqliteStore(join(dataDir, 'berth.db'));
  }

  async getMeta(key: string): Promise<string | undefined> {
    const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as
      | { value: string }
      | undefined;
    return row?.value;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.db
      .prepare(
        'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
      )
      .run(key, value);
  }

  async upsertAgent(a: AgentRecord): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO agents (id, name, kind, created_at, last_seen_at) VALUES (@id, @name, @kind, @createdAt, @lastSeenAt)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, kind = excluded.kind, last_seen_at = excluded.last_seen_at`,
      )
      .run(a);
  }

  async listAgents(): Promise<AgentRecord[]> {
    return this.db
      .prepare(
        'SELECT id, name, kind, created_at AS createdAt, last_seen_at AS lastSeenAt FROM agents ORDER BY id',
      )
      .all() as AgentRecord[];
  }

  async saveSnapshot(s: Snapshot): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO snapshots (agent_id, generation, body) VALUES (?, ?, ?)
         ON CONFLICT(agent_id) DO UPDATE SET generation = excluded.generation, body = excluded.body`,
      )
      .run(s.agentId, s.generation, JSON.stringify(s));
  }

  async loadSnapshots(): Promise<Snapshot[]> {
    const rows = this.db.prepare('SELECT body FROM snapshots ORDER BY agent_id').all() as { body: string }[];
    return rows.map((r) => JSON.parse(r.body) as Snapshot);
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
