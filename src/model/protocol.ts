// The agent ↔ server protocol over one WebSocket, and its validation at the server's boundary.
// A remote agent is not trusted: every message is checked against a schema, and every hostname
// and path again with the same checks the label parser uses. A snapshot is checked item by item:
// a route, container or diagnostic that is wrong is refused on its container alone, never the
// whole snapshot, so one bad container cannot freeze every route of its host.
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { checkDepth, NotJson, parseJsonSteps } from './json-steps.js';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_CIDRS,
  MAX_CONTAINERS,
  MAX_DIAGNOSTICS,
  MAX_EXEC_RULES,
  MAX_EXPLAINED_LABELS,
  MAX_HOSTS_PER_ROUTE,
  MAX_MESSAGE,
  MAX_ROUTES,
  MAX_STRING,
  MAX_SWARM_NODES,
  MAX_TCP_ROUTES,
} from './limits.js';
import { drain, inSlices } from './slices.js';
import { MAX_TUNNEL_STREAMS } from './tunnel.js';
import type { Diagnostic, Snapshot } from './types.js';
import { checkHostname, checkPath } from './validate.js';

// Defined with the agent's side of the protocol, which the agent loads without this file's Ajv.
export { AGENT_PATH } from './server-protocol.js';
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

export type AgentMessage =
  | SnapshotMessage
  | Heartbeat
  | ExecEvent
  /** The agent could not use something the server sent (newer agents only). */
  | { type: 'protocol.error'; message: string }
  | TunnelFailed;

/** Agent → server: stream `id` will not open (refused, upstream unreachable, over the limit). */
export interface TunnelFailed {
  type: 'tunnel.failed';
  id: number;
  code: 'REFUSED' | 'UNREACHABLE' | 'BUSY' | 'FAILED';
  message: string;
}

/** Server → agent: open stream `id` to `host:port` (one of the agent's own upstreams). */
export interface TunnelOpen {
  type: 'tunnel.open';
  id: number;
  host: string;
  port: number;
}

export interface SnapshotMessage {
  type: 'snapshot';
  snapshot: Snapshot;
  /**
   * Set by the server's validation: one error per container whose items it refused (they are
   * removed from the snapshot). Never sent by agents.
   */
  refused?: Diagnostic[];
}

export type ServerMessage =
  | {
      type: 'welcome';
      agentId: string;
      status: string;
      heartbeatMs: number;
      /** The largest message the server reads (newer servers); a bigger one closes the connection. */
      maxMessageBytes?: number;
      /** Servers that carry tunnels say so (and how many streams per agent they allow at most). */
      tunnel?: {
        maxStreams: number;
        /** The token the agent's data connections name (to agents that said they send it). */
        session?: string;
      };
    }
  | { type: 'resync' }
  | { type: 'error'; message: string }
  | ExecRequest
  | TunnelOpen
  /** Server → agent: stream `id` is given up (the front connection went, or it waited too long). */
  | { type: 'tunnel.cancel'; id: number };

const str = { type: 'string', maxLength: MAX_STRING };
const port = { type: 'integer', minimum: 1, maximum: 65535 };
/** Counters, generations and times: whole numbers that survive arithmetic (1e308 does not). */
const safe = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER };
/** Which container a route comes from, and whether it may serve yet. */
const owner = {
  lbGroup: str,
  containerId: { type: 'string', minLength: 1, maxLength: MAX_STRING },
  containerName: str,
  containerCreated: { type: 'integer', minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
  notReady: str,
};
/** Canonical CIDRs only: these reach Caddy's config and the TCP forwarder. */
const cidrList = {
  type: 'array',
  maxItems: MAX_CIDRS,
  items: { type: 'string', maxLength: 64, pattern: '^[0-9a-f:.]+/[0-9]{1,3}$' },
};

const containerSchema = {
  type: 'object',
  required: ['id', 'name', 'state', 'health', 'labelled'],
  properties: {
    id: { type: 'string', minLength: 1, maxLength: MAX_STRING },
    name: str,
    service: str,
    task: str,
    execRules: { type: 'array', maxItems: MAX_EXEC_RULES, items: str },
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
          maxItems: MAX_EXPLAINED_LABELS,
          items: {
            type: 'object',
            required: ['key', 'value', 'use'],
            properties: {
              key: str,
              value: { type: 'string', maxLength: MAX_MESSAGE },
              use: { enum: ['route', 'used', 'ignored', 'error'] },
              note: { type: 'string', maxLength: MAX_MESSAGE },
            },
          },
        },
      },
    },
  },
};

const routeSchema = {
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
    hosts: { type: 'array', minItems: 1, maxItems: MAX_HOSTS_PER_ROUTE, items: str },
    path: str,
    stripPath: { type: 'boolean' },
    upstream: {
      type: 'object',
      required: ['host', 'port', 'scheme'],
      properties: { host: str, port, scheme: { enum: ['http', 'https', 'h2c'] } },
    },
    allow: cidrList,
    ...owner,
    swarm: {
      type: 'object',
      required: ['serviceId', 'service'],
      properties: { serviceId: str, service: str, task: str, node: str },
    },
  },
};

const tcpSchema = {
  type: 'object',
  required: ['id', 'name', 'listen', 'upstream', 'allow', 'containerId', 'containerName', 'containerCreated'],
  properties: {
    id: str,
    name: str,
    listen: port,
    upstream: { type: 'object', required: ['host', 'port'], properties: { host: str, port } },
    allow: cidrList,
    ...owner,
  },
};

const diagnosticSchema = {
  type: 'object',
  required: ['severity', 'containerId', 'containerName', 'label', 'message'],
  properties: {
    severity: { enum: ['error', 'warning'] },
    containerId: str,
    containerName: str,
    label: str,
    value: { type: 'string', maxLength: MAX_MESSAGE },
    message: { type: 'string', maxLength: MAX_MESSAGE },
  },
};

const explainSchema = containerSchema.properties.explain;

const swarmNodeSchema = {
  type: 'object',
  required: ['id', 'hostname', 'addr', 'state'],
  properties: { id: str, hostname: str, addr: str, state: str },
};

const serviceSchema = {
  type: 'object',
  required: ['id', 'name', 'tasks', 'labelled'],
  properties: {
    id: { type: 'string', minLength: 1, maxLength: MAX_STRING },
    name: str,
    labelled: { type: 'boolean' },
    explain: explainSchema,
    tasks: {
      type: 'array',
      maxItems: MAX_CONTAINERS,
      items: {
        type: 'object',
        required: ['id', 'node', 'state'],
        properties: { id: str, slot: safe, node: str, state: str },
      },
    },
  },
};

/** A swarm leader's view: the envelope here; its nodes and services are checked one by one. */
const swarmSchema = {
  type: 'object',
  required: ['clusterId', 'nodeId', 'nodeName', 'manager', 'leader'],
  properties: {
    clusterId: str,
    nodeId: str,
    nodeName: str,
    manager: { type: 'boolean' },
    leader: { type: 'boolean' },
    nodes: { type: 'array', maxItems: MAX_SWARM_NODES, items: { type: 'object' } },
    services: { type: 'array', maxItems: MAX_CONTAINERS, items: { type: 'object' } },
  },
};

/** The envelope only: items are checked one by one, so that a bad one sinks only its container. */
const snapshotEnvelope = {
  type: 'object',
  required: ['agentId', 'generation', 'hostIp', 'takenAt', 'containers', 'routes', 'diagnostics'],
  properties: {
    agentId: str,
    generation: safe,
    hostIp: str,
    takenAt: safe,
    containers: { type: 'array', maxItems: MAX_CONTAINERS, items: { type: 'object' } },
    routes: { type: 'array', maxItems: MAX_ROUTES, items: { type: 'object' } },
    tcp: { type: 'array', maxItems: MAX_TCP_ROUTES, items: { type: 'object' } },
    diagnostics: { type: 'array', maxItems: MAX_DIAGNOSTICS, items: { type: 'object' } },
    swarm: swarmSchema,
    tunnel: {
      type: 'object',
      required: ['maxStreams'],
      properties: { maxStreams: { type: 'integer', minimum: 1, maximum: MAX_TUNNEL_STREAMS } },
    },
  },
};

const execId = { type: 'string', minLength: 1, maxLength: 64 };

/** One schema per message type: an error then names what is wrong with that type of message. */
const MESSAGE_SCHEMAS: Record<string, object> = {
  snapshot: {
    type: 'object',
    required: ['type', 'snapshot'],
    properties: { type: { const: 'snapshot' }, snapshot: snapshotEnvelope },
  },
  heartbeat: {
    type: 'object',
    required: ['type', 'version', 'dockerConnected', 'containers', 'routes', 'generation'],
    properties: {
      type: { const: 'heartbeat' },
      version: str,
      dockerVersion: str,
      dockerConnected: { type: 'boolean' },
      containers: safe,
      routes: safe,
      generation: safe,
      hostIp: str,
      intervalMs: { type: 'integer', minimum: 100, maximum: 86_400_000 },
      sentAt: { type: 'number' },
    },
  },
  'exec.started': {
    type: 'object',
    required: ['type', 'id', 'rule', 'container'],
    properties: { type: { const: 'exec.started' }, id: execId, rule: str, container: str },
  },
  'exec.denied': {
    type: 'object',
    required: ['type', 'id', 'reason', 'considered'],
    properties: {
      type: { const: 'exec.denied' },
      id: execId,
      reason: { type: 'string', maxLength: 8192 },
      considered: { type: 'array', maxItems: 1000, items: str },
    },
  },
  'exec.output': {
    type: 'object',
    required: ['type', 'id', 'stream', 'data'],
    properties: {
      type: { const: 'exec.output' },
      id: execId,
      stream: { enum: ['stdout', 'stderr'] },
      data: { type: 'string', maxLength: 1 << 22 },
    },
  },
  'exec.exit': {
    type: 'object',
    required: ['type', 'id', 'exitCode', 'durationMs', 'stdoutBytes', 'stderrBytes', 'truncated', 'timedOut'],
    properties: {
      type: { const: 'exec.exit' },
      id: execId,
      exitCode: {
        type: ['integer', 'null'],
        minimum: -Number.MAX_SAFE_INTEGER,
        maximum: Number.MAX_SAFE_INTEGER,
      },
      durationMs: safe,
      stdoutBytes: safe,
      stderrBytes: safe,
      truncated: { type: 'boolean' },
      timedOut: { type: 'boolean' },
    },
  },
  'exec.error': {
    type: 'object',
    required: ['type', 'id', 'code', 'message'],
    properties: {
      type: { const: 'exec.error' },
      id: execId,
      code: { enum: ['NOT_FOUND', 'BUSY', 'FAILED'] },
      message: { type: 'string', maxLength: 8192 },
    },
  },
  'tunnel.failed': {
    type: 'object',
    required: ['type', 'id', 'code', 'message'],
    properties: {
      type: { const: 'tunnel.failed' },
      id: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
      code: { enum: ['REFUSED', 'UNREACHABLE', 'BUSY', 'FAILED'] },
      message: { type: 'string', maxLength: MAX_MESSAGE },
    },
  },
  'protocol.error': {
    type: 'object',
    required: ['type', 'message'],
    properties: { type: { const: 'protocol.error' }, message: { type: 'string', maxLength: MAX_MESSAGE } },
  },
};

/**
 * Compiled on first use: only the server checks agent messages, and the agent, which imports this
 * file for the types and AGENT_PATH, should not carry the compiled schemas.
 */
let compiled:
  | { byType: Map<string, ValidateFunction>; items: Record<keyof typeof ITEM_SCHEMAS, ValidateFunction> }
  | undefined;
const ITEM_SCHEMAS = {
  swarmNode: swarmNodeSchema,
  service: serviceSchema,
  container: containerSchema,
  route: routeSchema,
  tcp: tcpSchema,
  diagnostic: diagnosticSchema,
};

function validators(): NonNullable<typeof compiled> {
  if (compiled) return compiled;
  const ajv = new Ajv({ allErrors: false, strict: false });
  compiled = {
    byType: new Map(Object.entries(MESSAGE_SCHEMAS).map(([t, s]) => [t, ajv.compile(s)])),
    items: Object.fromEntries(
      Object.entries(ITEM_SCHEMAS).map(([k, s]) => [k, ajv.compile(s)]),
    ) as NonNullable<typeof compiled>['items'],
  };
  return compiled;
}

/**
 * Compiles the checks now rather than on the first message: compiling takes tens of milliseconds,
 * which a server spends at start, not while an agent's first snapshot is waiting.
 */
export function compileAgentChecks(): void {
  validators();
}

// The upstream address must be an IP or hostname, never something Caddy would read as a placeholder.
const UPSTREAM_HOST_RE = /^[A-Za-z0-9.:-]{1,253}$/;
/** Messages longer than this (characters) are parsed in steps. */
const PARSE_IN_STEPS_FROM = 1 << 20;
/** Items checked between two pause points (where an asynchronous check may yield). */
const BATCH = 500;

function describeError(e: ErrorObject | undefined, root: string): string {
  if (!e) return `${root} does not match the protocol`;
  const where = `${root}${e.instancePath.replace(/\//g, '.')}`;
  const extra = e.params as { allowedValues?: unknown[]; limit?: number };
  const allowed = extra.allowedValues ? ` (${extra.allowedValues.join(', ')})` : '';
  return `${where} ${e.message ?? 'is invalid'}${allowed}`;
}

/**
 * Parses and checks one agent message. Throws an Error whose message says what is wrong with a
 * message that is unusable as a whole (not JSON, unknown type, a bad envelope). In a snapshot,
 * items that are wrong are removed and reported in `refused`, one error per container.
 */
export function parseAgentMessage(raw: string, maxBytes = DEFAULT_MAX_MESSAGE_BYTES): AgentMessage {
  return drain(checkMessage(raw, maxBytes));
}

/** As parseAgentMessage, yielding to the event loop between slices of a snapshot's items. */
export function parseAgentMessageAsync(
  raw: string,
  maxBytes = DEFAULT_MAX_MESSAGE_BYTES,
): Promise<AgentMessage> {
  return inSlices(checkMessage(raw, maxBytes));
}

function* checkMessage(raw: string, maxBytes: number): Generator<void, AgentMessage> {
  // Characters are at most as many as bytes: a cheap bound before the exact one.
  if (raw.length > maxBytes || Buffer.byteLength(raw) > maxBytes) {
    throw new Error(`message of ${Buffer.byteLength(raw)} bytes is over the limit of ${maxBytes}`);
  }
  let msg: unknown;
  try {
    // A big message is parsed in steps: one JSON.parse of 8 MiB holds the event loop ~80 ms.
    if (raw.length > PARSE_IN_STEPS_FROM) msg = yield* parseJsonSteps(raw);
    else {
      checkDepth(raw);
      msg = JSON.parse(raw);
    }
  } catch (err) {
    const deep = err instanceof NotJson && err.message.startsWith('nesting');
    throw new Error(deep ? `message is not JSON that Berth reads: ${err.message}` : 'message is not JSON');
  }
  return yield* checkValue(msg);
}

/**
 * Checks a message that is already a value (the in-process agent of `berth standalone` sends
 * values, not text): the same rules as for text from a remote agent. A snapshot is copied before
 * items are removed from it, so the sender's own value is never changed.
 */
export function checkAgentMessage(value: unknown): AgentMessage {
  return drain(checkValue(value));
}

function* checkValue(msg: unknown): Generator<void, AgentMessage> {
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    throw new Error('invalid message: not a JSON object');
  }
  const type = (msg as { type?: unknown }).type;
  if (typeof type !== 'string') throw new Error('invalid message: no "type"');
  const validate = validators().byType.get(type);
  if (!validate) throw new Error(`invalid message: unknown type "${type.slice(0, 64)}"`);
  if (!validate(msg)) throw new Error(`invalid message: ${describeError(validate.errors?.[0], type)}`);
  if (type !== 'snapshot') return msg as AgentMessage;
  const given = msg as SnapshotMessage;
  const { claims: _claims, ...snapshot } = given.snapshot; // the server's own record, never the agent's word
  if (snapshot.swarm) {
    const { leaderSince: _l, heldSince: _h, ...swarm } = snapshot.swarm; // the server's too
    snapshot.swarm = swarm;
  }
  const m: SnapshotMessage = { type: 'snapshot', snapshot }; // `refused` is the server's to set
  const refused = yield* checkSnapshotItems(m.snapshot);
  if (refused.length > 0) m.refused = refused;
  return m;
}

interface Refusal {
  name?: string;
  reasons: string[];
}

/** Removes the items that are wrong and every route of their containers; one error per container. */
function* checkSnapshotItems(s: Snapshot): Generator<void, Diagnostic[]> {
  const refusals = new Map<string, Refusal>();
  let checked = 0;
  const refuse = (item: unknown, what: string, reason: string) => {
    const o = item as { containerId?: unknown; id?: unknown; containerName?: unknown; name?: unknown };
    const cid = what === 'container' || what === 'service' || what === 'node' ? o.id : o.containerId;
    const id = typeof cid === 'string' && cid.length > 0 && cid.length <= MAX_STRING ? cid : '';
    const r = refusals.get(id) ?? { reasons: [] };
    const name = what === 'container' || what === 'service' || what === 'node' ? o.name : o.containerName;
    if (r.name === undefined && typeof name === 'string' && name.length <= MAX_STRING) r.name = name;
    if (r.reasons.length < 5) r.reasons.push(reason);
    else if (r.reasons.length === 5) r.reasons.push('…');
    refusals.set(id, r);
  };
  const keep = function* <T>(
    list: T[] | undefined,
    what: string,
    check: (item: T, i: number) => string | undefined,
  ): Generator<void, T[] | undefined> {
    if (!list) return list;
    const out: T[] = [];
    for (let i = 0; i < list.length; i++) {
      const why = check(list[i]!, i);
      if (why === undefined) out.push(list[i]!);
      else refuse(list[i], what, why);
      if (++checked % BATCH === 0) yield;
    }
    return out;
  };
  const schemaCheck = (v: ValidateFunction, root: string) => (item: unknown) =>
    v(item) ? undefined : describeError(v.errors?.[0], root);
  const { items } = validators();

  s.containers = (yield* keep(s.containers, 'container', schemaCheck(items.container, 'container')))!;
  s.routes = (yield* keep(s.routes, 'route', (r, i) => {
    const bad = schemaCheck(items.route, `route ${i}`)(r);
    if (bad) return bad;
    for (const h of r.hosts) {
      const c = checkHostname(h);
      if (!c.ok || c.value !== h) return `route ${r.id}: host "${h.slice(0, 256)}" is not a hostname`;
    }
    const p = checkPath(r.path);
    if (!p.ok || p.value !== r.path)
      return `route ${r.id}: path "${r.path.slice(0, 256)}" is not a path prefix`;
    if (!UPSTREAM_HOST_RE.test(r.upstream.host))
      return `route ${r.id}: upstream host "${r.upstream.host.slice(0, 256)}" is not an address`;
    // A service route's upstream is checked as its node's agent would be: only in a swarm.
    if (r.swarm && !s.swarm)
      return `route ${r.id}: names Swarm service ${r.swarm.service.slice(0, 64)}, but the agent reports no swarm`;
    return undefined;
  }))!;
  s.tcp = yield* keep(s.tcp, 'TCP route', (r, i) => {
    const bad = schemaCheck(items.tcp, `TCP route ${i}`)(r);
    if (bad) return bad;
    if (!UPSTREAM_HOST_RE.test(r.upstream.host))
      return `TCP route ${r.id}: upstream host "${r.upstream.host.slice(0, 256)}" is not an address`;
    return undefined;
  });
  if (s.tcp === undefined) delete s.tcp;
  s.diagnostics = (yield* keep(s.diagnostics, 'diagnostic', schemaCheck(items.diagnostic, 'diagnostic')))!;
  if (s.swarm) {
    // A bad node or service is refused alone (a service with its routes), like a container.
    if (s.swarm.nodes)
      s.swarm.nodes = (yield* keep(s.swarm.nodes, 'node', schemaCheck(items.swarmNode, 'swarm node')))!;
    if (s.swarm.services) {
      s.swarm.services = (yield* keep(
        s.swarm.services,
        'service',
        schemaCheck(items.service, 'swarm service'),
      ))!;
      const kept = new Set(s.swarm.services.map((x) => x.id));
      s.routes = s.routes.filter((r) => {
        if (!r.swarm || kept.has(r.swarm.serviceId)) return true;
        refuse(
          { containerId: r.containerId, containerName: r.containerName },
          'route',
          `route ${r.id}: its service ${r.swarm.serviceId.slice(0, 64)} is not in the snapshot or was refused`,
        );
        return false;
      });
    }
  }
  if (refusals.size === 0) return [];

  // A container with a refused item contributes no route at all, as with any label error.
  s.routes = s.routes.filter((r) => !refusals.has(r.containerId));
  if (s.tcp) s.tcp = s.tcp.filter((r) => !refusals.has(r.containerId));
  const names = new Map(s.containers.map((c) => [c.id, c.name]));
  return [...refusals].map(([id, r]) => ({
    severity: 'error' as const,
    containerId: id,
    containerName: (r.name ?? names.get(id) ?? (id ? id.slice(0, 12) : '(unknown container)')).slice(
      0,
      MAX_STRING,
    ),
    label: '',
    message: `refused by the server: ${r.reasons.join('; ')}`.slice(0, MAX_MESSAGE),
  }));
}
