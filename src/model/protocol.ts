// The agent ↔ server protocol over one WebSocket, and its validation at the server's boundary.
// A remote agent is not trusted: every message is checked against a schema, and every hostname
// and path again with the same checks the label parser uses.
import { Ajv } from 'ajv';
import { checkHostname, checkPath } from '../labels/validate.js';
import type { Snapshot } from './types.js';

export const AGENT_PATH = '/agent/v1/connect';
export const PROTOCOL_VERSION = 1;

export interface Heartbeat {
  type: 'heartbeat';
  version: string;
  dockerVersion?: string;
  dockerConnected: boolean;
  containers: number;
  routes: number;
  generation: number;
  hostIp?: string;
  /** The agent's report interval: the server calls it stale after two missed beats. */
  intervalMs?: number;
}

/** Server → agent: run argv in a container, if the agent's policy allows it. */
export interface ExecRequest {
  type: 'exec';
  id: string;
  /** Container id or name on the agent's host. */
  container: string;
  argv: string[];
  timeoutMs: number;
  /** The requesting key's narrowing; the agent applies it on top of its own rules. */
  serverRules?: string[];
}

export interface ExecResult {
  exitCode: number | null;
  durationMs: number;
  stdoutBytes: number;
  stderrBytes: number;
  truncated: boolean;
  timedOut: boolean;
}

/** Agent → server, about one exec request. */
export type ExecEvent =
  | { type: 'exec.started'; id: string; rule: string; container: string }
  | { type: 'exec.denied'; id: string; reason: string; considered: string[] }
  | { type: 'exec.output'; id: string; stream: 'stdout' | 'stderr'; data: string /* base64 */ }
  | ({ type: 'exec.exit'; id: string } & ExecResult)
  | { type: 'exec.error'; id: string; code: 'NOT_FOUND' | 'BUSY' | 'FAILED'; message: string };

export type AgentMessage = { type: 'snapshot'; snapshot: Snapshot } | Heartbeat | ExecEvent;

export type ServerMessage =
  | { type: 'welcome'; agentId: string; status: string; heartbeatMs: number }
  | { type: 'resync' }
  | { type: 'error'; message: string }
  | ExecRequest;

const str = { type: 'string', maxLength: 1024 };
const port = { type: 'integer', minimum: 1, maximum: 65535 };
/** Which container a route comes from, and whether it may serve yet. */
const owner = {
  lbGroup: str,
  containerId: str,
  containerName: str,
  containerCreated: { type: 'integer' },
  notReady: str,
};
/** Canonical CIDRs only: these reach Caddy's config and the TCP forwarder. */
const cidrList = {
  type: 'array',
  maxItems: 256,
  items: { type: 'string', maxLength: 64, pattern: '^[0-9a-f:.]+/[0-9]{1,3}$' },
};

const snapshotSchema = {
  type: 'object',
  required: ['agentId', 'generation', 'hostIp', 'takenAt', 'containers', 'routes', 'diagnostics'],
  properties: {
    agentId: str,
    generation: { type: 'integer', minimum: 0 },
    hostIp: str,
    takenAt: { type: 'integer' },
    containers: {
      type: 'array',
      maxItems: 100_000,
      items: {
        type: 'object',
        required: ['id', 'name', 'state', 'health', 'labelled'],
        properties: {
          id: str,
          name: str,
          service: str,
          execRules: { type: 'array', maxItems: 64, items: str },
          state: str,
          health: str,
          labelled: { type: 'boolean' },
          explain: {
            type: 'object',
            required: ['dialect', 'labels'],
            properties: {
              dialect: { type: 'string', maxLength: 32 },
              labels: {
                type: 'array',
                maxItems: 1000,
                items: {
                  type: 'object',
                  required: ['key', 'value', 'use'],
                  properties: {
                    key: str,
                    value: { type: 'string', maxLength: 4096 },
                    use: { enum: ['route', 'used', 'ignored', 'error'] },
                    note: { type: 'string', maxLength: 4096 },
                  },
                },
              },
            },
          },
        },
      },
    },
    routes: {
      type: 'array',
      maxItems: 100_000,
      items: {
        type: 'object',
        required: [
          'id',
          'group',
          'hosts',
          'path',
          'stripPath',
          'upstream',
          'containerId',
          'containerName',
          'containerCreated',
        ],
        properties: {
          id: str,
          group: str,
          hosts: { type: 'array', minItems: 1, maxItems: 100, items: str },
          path: str,
          stripPath: { type: 'boolean' },
          upstream: {
            type: 'object',
            required: ['host', 'port', 'scheme'],
            properties: { host: str, port, scheme: { enum: ['http', 'https', 'h2c'] } },
          },
          allow: cidrList,
          ...owner,
        },
      },
    },
    tcp: {
      type: 'array',
      maxItems: 10_000,
      items: {
        type: 'object',
        required: [
          'id',
          'name',
          'listen',
          'upstream',
          'allow',
          'containerId',
          'containerName',
          'containerCreated',
        ],
        properties: {
          id: str,
          name: str,
          listen: port,
          upstream: { type: 'object', required: ['host', 'port'], properties: { host: str, port } },
          allow: cidrList,
          ...owner,
        },
      },
    },
    diagnostics: {
      type: 'array',
      maxItems: 100_000,
      items: {
        type: 'object',
        required: ['severity', 'containerId', 'containerName', 'label', 'message'],
        properties: {
          severity: { enum: ['error', 'warning'] },
          containerId: str,
          containerName: str,
          label: str,
          value: { type: 'string', maxLength: 4096 },
          message: { type: 'string', maxLength: 4096 },
        },
      },
    },
  },
};

const execId = { type: 'string', minLength: 1, maxLength: 64 };
const count = { type: 'integer', minimum: 0 };

const messageSchema = {
  oneOf: [
    {
      type: 'object',
      required: ['type', 'id', 'rule', 'container'],
      properties: { type: { const: 'exec.started' }, id: execId, rule: str, container: str },
    },
    {
      type: 'object',
      required: ['type', 'id', 'reason', 'considered'],
      properties: {
        type: { const: 'exec.denied' },
        id: execId,
        reason: { type: 'string', maxLength: 8192 },
        considered: { type: 'array', maxItems: 1000, items: str },
      },
    },
    {
      type: 'object',
      required: ['type', 'id', 'stream', 'data'],
      properties: {
        type: { const: 'exec.output' },
        id: execId,
        stream: { enum: ['stdout', 'stderr'] },
        data: { type: 'string', maxLength: 1 << 22 },
      },
    },
    {
      type: 'object',
      required: [
        'type',
        'id',
        'exitCode',
        'durationMs',
        'stdoutBytes',
        'stderrBytes',
        'truncated',
        'timedOut',
      ],
      properties: {
        type: { const: 'exec.exit' },
        id: execId,
        exitCode: { type: ['integer', 'null'] },
        durationMs: count,
        stdoutBytes: count,
        stderrBytes: count,
        truncated: { type: 'boolean' },
        timedOut: { type: 'boolean' },
      },
    },
    {
      type: 'object',
      required: ['type', 'id', 'code', 'message'],
      properties: {
        type: { const: 'exec.error' },
        id: execId,
        code: { enum: ['NOT_FOUND', 'BUSY', 'FAILED'] },
        message: { type: 'string', maxLength: 8192 },
      },
    },
    {
      type: 'object',
      required: ['type', 'snapshot'],
      properties: { type: { const: 'snapshot' }, snapshot: snapshotSchema },
    },
    {
      type: 'object',
      required: ['type', 'version', 'dockerConnected', 'containers', 'routes', 'generation'],
      properties: {
        type: { const: 'heartbeat' },
        version: str,
        dockerVersion: str,
        dockerConnected: { type: 'boolean' },
        containers: { type: 'integer', minimum: 0 },
        routes: { type: 'integer', minimum: 0 },
        generation: { type: 'integer', minimum: 0 },
        hostIp: str,
        intervalMs: { type: 'integer', minimum: 100 },
      },
    },
  ],
};

const ajv = new Ajv({ allErrors: false, strict: false });
const validateMessage = ajv.compile(messageSchema);
// The upstream address must be an IP or hostname, never something Caddy would read as a placeholder.
const UPSTREAM_HOST_RE = /^[A-Za-z0-9.:-]{1,253}$/;

/** Parses and checks one agent message; throws an Error whose message says what is wrong. */
export function parseAgentMessage(raw: string): AgentMessage {
  let msg: unknown;
  try {
    msg = JSON.parse(raw);
  } catch {
    throw new Error('message is not JSON');
  }
  if (!validateMessage(msg)) {
    const e = validateMessage.errors?.[0];
    throw new Error(
      `invalid message: ${e?.instancePath || '(root)'} ${e?.message ?? 'does not match the protocol'}`,
    );
  }
  const m = msg as AgentMessage;
  if (m.type === 'snapshot') {
    for (const r of m.snapshot.routes) {
      for (const h of r.hosts) {
        const c = checkHostname(h);
        if (!c.ok || c.value !== h)
          throw new Error(`invalid message: route ${r.id} host "${h}" is not a hostname`);
      }
      const p = checkPath(r.path);
      if (!p.ok || p.value !== r.path)
        throw new Error(`invalid message: route ${r.id} path "${r.path}" is not a path prefix`);
      if (!UPSTREAM_HOST_RE.test(r.upstream.host)) {
        throw new Error(
          `invalid message: route ${r.id} upstream host "${r.upstream.host}" is not an address`,
        );
      }
    }
  }
  return m;
}
