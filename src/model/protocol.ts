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

export type AgentMessage = { type: 'snapshot'; snapshot: Snapshot } | Heartbeat;

export type ServerMessage =
  | { type: 'welcome'; agentId: string; status: string; heartbeatMs: number }
  | { type: 'resync' }
  | { type: 'error'; message: string };

const str = { type: 'string', maxLength: 1024 };
const port = { type: 'integer', minimum: 1, maximum: 65535 };

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
        properties: { id: str, name: str, state: str, health: str, labelled: { type: 'boolean' } },
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
            properties: { host: str, port, scheme: { enum: ['http', 'https'] } },
          },
          lbGroup: str,
          containerId: str,
          containerName: str,
          containerCreated: { type: 'integer' },
          notReady: str,
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

const messageSchema = {
  oneOf: [
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
