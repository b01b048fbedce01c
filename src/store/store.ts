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
  /** The address the server saw the agent's last connection come from (through trusted proxies). */
  seenFrom?: string;
  /** Its last connection came without TLS from a non-loopback address. */
  cleartext?: boolean;
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
  /** Networks (CIDR) the key's agents may route to besides their own host's address. */
  upstreams?: string[];
  /** Routes (HTTP and TCP) one agent of this key may have served; undefined: the default. */
  maxRoutes?: number;
  /** Agents of this key waiting for approval at once; undefined: the default. */
  maxPending?: number;
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
  /** The Swarm node the container runs on, when it is a service's task. */
  node?: string;
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

/** A change another server process made to a store it shares with this one. */
export type StoreChange =
  | { kind: 'agent'; id: string }
  | { kind: 'key'; id: string }
  | { kind: 'snapshot'; agentId: string }
  /** The agent's connection moved: `presence` is the new holder, undefined when it ended. */
  | { kind: 'presence'; agentId: string; presence?: Presence }
  | { kind: 'meta'; key: string }
  | { kind: 'lease'; name: string }
  /** Changes may have been missed (the connection to the store was lost): reload everything. */
  | { kind: 'reload' };

/** An agent's connection, as the replica holding it reports it. */
export interface Presence {
  replica: string;
  since: number;
  lastHeartbeatAt?: number;
  heartbeatMs?: number;
  version?: string;
  dockerVersion?: string;
}

export interface LeaseState {
  /** Whether this replica holds the lease now. */
  held: boolean;
  /** The holder's replica id; undefined when nobody holds it. */
  holder?: string;
  /** How long the lease runs without renewal, as the store saw it. */
  ttlMs: number;
}

/**
 * What several `berth server` replicas sharing one store coordinate through (Redis): targeted
 * reads for remote changes, which replica holds each agent's connection, and leases.
 */
export interface SharedStore {
  /** This process among the replicas, unique per run. */
  readonly replicaId: string;
  /** Where the store is, for logs and status; never carries a password. */
  readonly display: string;
  getAgent(id: string): Promise<AgentRecord | undefined>;
  getKey(id: string): Promise<KeyRecord | undefined>;
  getSnapshot(agentId: string): Promise<Snapshot | undefined>;
  /** Agent id → generation of its stored snapshot: cheap to compare before loading any. */
  snapshotGenerations(): Promise<Map<string, number>>;
  /** This replica holds the agent's connection (set on connect, refreshed on heartbeats). */
  setPresence(agentId: string, p: Omit<Presence, 'replica'>): Promise<void>;
  /** The connection ended: forgets the presence if this replica still holds it. */
  clearPresence(agentId: string): Promise<void>;
  /** Presence records of replicas that are alive now (a killed replica's expire with it). */
  listPresence(): Promise<Map<string, Presence>>;
  /** Takes the lease if free, renews it if ours (atomically); tells who holds it otherwise. */
  acquireLease(name: string, ttlMs: number): Promise<LeaseState>;
  /** Gives the lease up if this replica holds it, and tells the others at once. */
  releaseLease(name: string): Promise<void>;
  /** This replica's latest traffic figures (a small JSON summary), replacing its previous ones. */
  publishTraffic(summary: string): Promise<void>;
  /** Every live replica's latest summary by replica id (this one's included); dead ones' are dropped. */
  listTraffic(): Promise<Map<string, string>>;
}

export interface Store {
  getMeta(key: string): Promise<string | undefined>;
  setMeta(key: string, value: string): Promise<void>;
  /**
   * Sets the value only if the key has none, atomically, and returns the value the key holds
   * afterwards (this one, or the one another replica set first): for things made once and
   * shared, such as the agent CA.
   */
  claimMeta(key: string, value: string): Promise<string>;
  upsertAgent(agent: AgentRecord): Promise<void>;
  deleteAgent(id: string): Promise<void>;
  listAgents(): Promise<AgentRecord[]>;
  saveKey(key: KeyRecord): Promise<void>;
  listKeys(): Promise<KeyRecord[]>;
  /** The key whose current or (unexpired) previous secret has this hash. */
  findKeyByHash(hash: string, now: number): Promise<KeyRecord | undefined>;
  /**
   * Replaces the agent's whole state: snapshots are never merged. `body`, when given, is the
   * snapshot's JSON text already made (by stringifyInSlices, off the event loop's long path).
   */
  saveSnapshot(snapshot: Snapshot, body?: string): Promise<void>;
  deleteSnapshot(agentId: string): Promise<void>;
  loadSnapshots(): Promise<Snapshot[]>;
  addAudit(entry: AuditEntry): Promise<void>;
  /** Newest first. */
  listAudit(limit: number): Promise<AuditEntry[]>;
  /**
   * Calls fn with every change other server processes make to this store; returns a function
   * that stops. The embedded store is never shared: nothing is ever reported.
   */
  watch(fn: (change: StoreChange) => void): () => void;
  /** Present when several server replicas may share this store. */
  readonly shared?: SharedStore;
  close(): Promise<void>;
}
