// The server's source of truth. Async so that SQLite (embedded) and Redis (shared) fit one shape.
import type { Snapshot } from '../model/types.js';

export interface AgentRecord {
  id: string;
  name: string;
  /** 'local' for the in-process agent of `berth standalone`, 'remote' for `berth agent`. */
  kind: 'local' | 'remote';
  /** The key the agent enrolled with; its domains bound what the agent may claim. */
  keyId?: string;
  approved: boolean;
  createdAt: number;
  lastSeenAt: number;
  hostIp?: string;
  version?: string;
  dockerVersion?: string;
}

export interface KeyRecord {
  id: string;
  name: string;
  /** SHA-256 (hex) of the secret; the secret itself is never stored. */
  hash: string;
  /** Hostnames the key's agents may claim (exact or `*.` wildcards); empty: any. */
  domains: string[];
  autoApprove: boolean;
  /** Exec rules the server allows for this key's agents (narrowing only); undefined: no narrowing. */
  execAllow?: string[];
  createdAt: number;
  revokedAt?: number;
  /** After a rotation the old secret stays valid until previousExpiresAt. */
  previousHash?: string;
  previousExpiresAt?: number;
}

/** One exec request, whatever became of it. */
export interface AuditEntry {
  id: string;
  at: number;
  requester: string;
  agentId: string;
  agentName: string;
  container: string;
  argv: string[];
  decision: 'allowed' | 'denied' | 'error';
  reason?: string;
  exitCode?: number | null;
  durationMs?: number;
  stdoutBytes?: number;
  stderrBytes?: number;
  truncated?: boolean;
  timedOut?: boolean;
}

export interface Store {
  getMeta(key: string): Promise<string | undefined>;
  setMeta(key: string, value: string): Promise<void>;
  upsertAgent(agent: AgentRecord): Promise<void>;
  deleteAgent(id: string): Promise<void>;
  listAgents(): Promise<AgentRecord[]>;
  saveKey(key: KeyRecord): Promise<void>;
  listKeys(): Promise<KeyRecord[]>;
  /** The key whose current or (unexpired) previous secret has this hash. */
  findKeyByHash(hash: string, now: number): Promise<KeyRecord | undefined>;
  /** Replaces the agent's whole state: snapshots are never merged. */
  saveSnapshot(snapshot: Snapshot): Promise<void>;
  deleteSnapshot(agentId: string): Promise<void>;
  loadSnapshots(): Promise<Snapshot[]>;
  addAudit(entry: AuditEntry): Promise<void>;
  /** Newest first. */
  listAudit(limit: number): Promise<AuditEntry[]>;
  close(): Promise<void>;
}
