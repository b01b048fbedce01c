// The server's source of truth. Async so that SQLite (embedded) and Redis (shared) fit one shape.
import type { Snapshot } from '../model/types.js';

export interface AgentRecord {
  id: string;
  name: string;
  /** How the agent joined: 'local' for the in-process agent of `berth standalone`. */
  kind: 'local' | 'remote';
  createdAt: number;
  lastSeenAt: number;
}

export interface Store {
  getMeta(key: string): Promise<string | undefined>;
  setMeta(key: string, value: string): Promise<void>;
  upsertAgent(agent: AgentRecord): Promise<void>;
  listAgents(): Promise<AgentRecord[]>;
  /** Replaces the agent's whole state: snapshots are never merged. */
  saveSnapshot(snapshot: Snapshot): Promise<void>;
  loadSnapshots(): Promise<Snapshot[]>;
  close(): Promise<void>;
}
