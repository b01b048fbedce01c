// Server → agent messages, checked at the agent's boundary. The agent does not trust its server
// further than its own exec policy allows: a compromised or buggy server must not crash it, make
// it reach another Docker API endpoint, or make it resolve a name. Every message is bounded and
// checked against a schema here, before the agent acts on it; the shapes are those of
// protocol.ts, unchanged, and unknown fields and message types are tolerated (newer servers).
// The schemas are few and flat (strings, whole numbers, arrays of strings), so they are checked
// here by a small interpreter of that subset of JSON Schema, in the order and with the first
// error Ajv would give, rather than by Ajv: the agent then carries no schema compiler.
import { clip, DEFAULT_MAX_MESSAGE_BYTES, MAX_STRING } from './limits.js';
import type { ServerMessage } from './protocol.js';
import { MAX_TUNNEL_STREAMS, TUNNEL_SESSION_RE } from './tunnel.js';

/** Where agents connect (an upgrade to a WebSocket), on the API and on the agent listener. */
export const AGENT_PATH = '/agent/v1/connect';

/**
 * The largest server message the agent reads; larger frames are refused before they are buffered
 * (the connection closes and the agent reconnects). A real exec request is far smaller: the
 * server's API takes at most 1 MiB of request body.
 */
export const MAX_SERVER_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES;
export const MAX_EXEC_ARGS = 1_024;
export const MAX_EXEC_ARG_LENGTH = 65_536;
/** Rules a key may narrow exec to (the server's key API takes as many). */
export const MAX_SERVER_RULES = 1_000;

/**
 * A Docker container id (12 to 64 hex digits) or a Docker container name. Nothing else reaches a
 * Docker API call: docker.ts puts the reference into the request path as it is, so `/`, `..`,
 * `%`, `?` or `#` would address another endpoint (or, over TCP, another path of the proxy).
 */
const CONTAINER_ID = '[0-9a-f]{12,64}';
const CONTAINER_NAME = '[a-zA-Z0-9][a-zA-Z0-9_.-]*';
const CONTAINER_REF_RE = new RegExp(`^(?:${CONTAINER_ID}|${CONTAINER_NAME})$`);

/** Whether `ref` may be given to Docker as a container id or name. */
export function isContainerRef(ref: unknown): ref is string {
  return typeof ref === 'string' && ref.length <= MAX_STRING && CONTAINER_REF_RE.test(ref);
}

/** Ids the agent echoes back and writes to disk and headers: printable, no spaces, bounded. */
const EXEC_ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const AGENT_ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Whether an agent id (from a welcome, or the agent's data dir) is safe to keep and send. */
export function isAgentId(id: unknown): id is string {
  return typeof id === 'string' && AGENT_ID_RE.test(id);
}

/** The subset of JSON Schema the server's messages need. */
type FieldSchema =
  | { type: 'string'; maxLength?: number; pattern?: string }
  | { type: 'integer'; minimum: number; maximum: number }
  | { type: 'array'; minItems?: number; maxItems?: number; items: { type: 'string'; maxLength: number } }
  | {
      type: 'object';
      required: string[];
      properties: Record<
        string,
        { type: 'integer'; minimum: number; maximum: number } | { type: 'string'; pattern: string }
      >;
    };

/** The first problem found, shaped as Ajv reports one (keyword, JSON pointer, parameters). */
export interface Issue {
  keyword: string;
  instancePath: string;
  params?: { missingProperty?: string };
  message?: string;
}

const safeInt = (minimum: number): FieldSchema => ({
  type: 'integer',
  minimum,
  maximum: Number.MAX_SAFE_INTEGER,
});

interface MessageCheck {
  /** What the message is called in errors: "invalid exec request: …". */
  what: string;
  validate: (msg: Record<string, unknown>) => Issue | undefined;
  /** What each field must be, for the error that names it. */
  rules: Record<string, string>;
  /** The same rules as a JSON Schema (a test checks validate() against Ajv on it). */
  schema: { type: 'object'; required: string[]; properties: Record<string, FieldSchema> };
}

/** Length in code points, as JSON Schema counts it; the UTF-16 length bounds it from above. */
function longerThan(s: string, max: number): boolean {
  if (s.length <= max) return false;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) i++; // a surrogate pair is one code point
    if (++n > max) return true;
  }
  return false;
}

const isInteger = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);

/** One value against its schema, keywords in Ajv's order: type, then limits, pattern, items. */
function checkField(v: unknown, schema: FieldSchema, path: string, re?: RegExp): Issue | undefined {
  const issue = (keyword: string, at = path): Issue => ({ keyword, instancePath: at });
  switch (schema.type) {
    case 'string':
      if (typeof v !== 'string') return issue('type');
      if (schema.maxLength !== undefined && longerThan(v, schema.maxLength)) return issue('maxLength');
      if (re && !re.test(v)) return issue('pattern');
      return undefined;
    case 'integer':
      if (!isInteger(v)) return issue('type');
      if (v > schema.maximum) return issue('maximum');
      if (v < schema.minimum) return issue('minimum');
      return undefined;
    case 'array': {
      if (!Array.isArray(v)) return issue('type');
      if (schema.maxItems !== undefined && v.length > schema.maxItems) return issue('maxItems');
      if (schema.minItems !== undefined && v.length < schema.minItems) return issue('minItems');
      for (let i = 0; i < v.length; i++) {
        const item = v[i];
        if (typeof item !== 'string') return issue('type', `${path}/${i}`);
        if (longerThan(item, schema.items.maxLength)) return issue('maxLength', `${path}/${i}`);
      }
      return undefined;
    }
    case 'object': {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return issue('type');
      const o = v as Record<string, unknown>;
      for (const name of schema.required)
        if (!Object.hasOwn(o, name))
          return { keyword: 'required', instancePath: path, params: { missingProperty: name } };
      for (const [name, p] of Object.entries(schema.properties))
        if (Object.hasOwn(o, name)) {
          const re = p.type === 'string' ? new RegExp(p.pattern, 'u') : undefined;
          const inner = checkField(o[name], p, `${path}/${name}`, re);
          if (inner) return inner;
        }
      return undefined;
    }
  }
}

function check(
  what: string,
  required: string[],
  fields: Record<string, { schema: FieldSchema; rule: string }>,
): MessageCheck {
  const rules = Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, f.rule]));
  const list = Object.entries(fields).map(([name, f]) => ({
    name,
    schema: f.schema,
    re: f.schema.type === 'string' && f.schema.pattern ? new RegExp(f.schema.pattern, 'u') : undefined,
  }));
  const validate = (msg: Record<string, unknown>): Issue | undefined => {
    for (const name of required)
      if (!Object.hasOwn(msg, name))
        return { keyword: 'required', instancePath: '', params: { missingProperty: name } };
    for (const f of list) {
      if (!Object.hasOwn(msg, f.name)) continue;
      const issue = checkField(msg[f.name], f.schema, `/${f.name}`, f.re);
      if (issue) return issue;
    }
    return undefined;
  };
  const properties = Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, f.schema]));
  return { what, validate, rules, schema: { type: 'object', required, properties } };
}

const CHECKS = new Map<string, MessageCheck>([
  [
    'welcome',
    check('welcome', ['agentId', 'status'], {
      agentId: {
        schema: { type: 'string', pattern: AGENT_ID_RE.source },
        rule: 'must be 1 to 128 letters, digits or _ . : -',
      },
      status: {
        schema: { type: 'string', maxLength: 64 },
        rule: 'must be a string of at most 64 characters',
      },
      heartbeatMs: { schema: safeInt(0), rule: 'must be a whole number of milliseconds' },
      maxMessageBytes: { schema: safeInt(1024), rule: 'must be a whole number of bytes, at least 1024' },
      tunnel: {
        schema: {
          type: 'object',
          required: ['maxStreams'],
          properties: {
            maxStreams: { type: 'integer', minimum: 1, maximum: MAX_TUNNEL_STREAMS },
            session: { type: 'string', pattern: TUNNEL_SESSION_RE.source },
          },
        },
        rule: `must be an object with maxStreams (1 to ${MAX_TUNNEL_STREAMS}) and an optional session token (32 base64url characters)`,
      },
    }),
  ],
  [
    'tunnel.open',
    check('tunnel request', ['id', 'host', 'port'], {
      id: { schema: safeInt(1), rule: 'must be a positive whole number' },
      // An IP address only: the agent never resolves a name for the server.
      host: {
        schema: { type: 'string', maxLength: 64, pattern: '^[0-9A-Fa-f.:]{2,64}$' },
        rule: 'must be an IP address',
      },
      port: {
        schema: { type: 'integer', minimum: 1, maximum: 65535 },
        rule: 'must be a port number (1 to 65535)',
      },
    }),
  ],
  [
    'tunnel.cancel',
    check('tunnel cancel', ['id'], { id: { schema: safeInt(1), rule: 'must be a positive whole number' } }),
  ],
  ['resync', check('resync', [], {})],
  [
    'error',
    check('error message', ['message'], {
      message: {
        schema: { type: 'string', maxLength: 8192 },
        rule: 'must be a string of at most 8192 characters',
      },
    }),
  ],
  [
    'exec',
    check('exec request', ['id', 'container', 'argv', 'timeoutMs'], {
      id: {
        schema: { type: 'string', pattern: EXEC_ID_RE.source },
        rule: 'must be 1 to 64 letters, digits or _ . : -',
      },
      container: {
        schema: { type: 'string', maxLength: MAX_STRING, pattern: CONTAINER_REF_RE.source },
        rule: `must be a Docker container id or name (a letter or digit, then letters, digits, _ . -; at most ${MAX_STRING} characters)`,
      },
      argv: {
        schema: {
          type: 'array',
          minItems: 1,
          maxItems: MAX_EXEC_ARGS,
          items: { type: 'string', maxLength: MAX_EXEC_ARG_LENGTH },
        },
        rule: `must be an array of strings (1 to ${MAX_EXEC_ARGS}, each at most ${MAX_EXEC_ARG_LENGTH} characters)`,
      },
      timeoutMs: { schema: safeInt(1), rule: 'must be a positive whole number of milliseconds' },
      serverRules: {
        schema: {
          type: 'array',
          maxItems: MAX_SERVER_RULES,
          items: { type: 'string', maxLength: MAX_STRING },
        },
        rule: `must be an array of strings (at most ${MAX_SERVER_RULES}, each at most ${MAX_STRING} characters)`,
      },
    }),
  ],
]);

/** The JSON Schema of a server message type the agent checks, for tests; undefined if unknown. */
export function serverMessageSchema(type: string): MessageCheck['schema'] | undefined {
  return CHECKS.get(type)?.schema;
}

/** The first problem with a message of a known type, as Ajv would report it; for tests. */
export function firstIssue(type: string, msg: Record<string, unknown>): Issue | undefined {
  return CHECKS.get(type)?.validate(msg);
}

export type ServerMessageResult =
  | { kind: 'message'; message: ServerMessage }
  /** A type this agent does not know (a newer server): ignored. */
  | { kind: 'unknown'; type: string }
  | {
      kind: 'invalid';
      /** Says what is wrong, naming the field: `invalid exec request: argv must be …: got a string`. */
      error: string;
      /** A short stable name for the problem (a field, or binary/size/json/shape), to group log lines. */
      about: string;
      /** The message's type, when it has a known one. */
      type?: string;
      /** An exec request's id, when it is usable: the agent answers it with an exec.error. */
      execId?: string;
      /** A tunnel request's id, when it is usable: the agent answers it with a tunnel.failed. */
      tunnelId?: number;
    };

/**
 * Parses and checks one message from the server. Never throws: whatever arrives is a message, an
 * unknown type to ignore, or an invalid message with an error that says what is wrong.
 */
export function parseServerMessage(raw: string | Buffer, binary = false): ServerMessageResult {
  if (binary)
    return { kind: 'invalid', about: 'binary', error: 'a binary frame; the protocol sends JSON text' };
  const bytes = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
  if (bytes > MAX_SERVER_MESSAGE_BYTES) {
    return {
      kind: 'invalid',
      about: 'size',
      error: `message of ${bytes} bytes is over the limit of ${MAX_SERVER_MESSAGE_BYTES}`,
    };
  }
  let msg: unknown;
  try {
    msg = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
  } catch {
    return { kind: 'invalid', about: 'json', error: 'message is not JSON' };
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    return { kind: 'invalid', about: 'shape', error: `message is ${kindOf(msg)}, not an object` };
  }
  const fields = msg as Record<string, unknown>;
  if (typeof fields.type !== 'string') {
    return { kind: 'invalid', about: 'shape', error: `message type is ${kindOf(fields.type)}, not a string` };
  }
  const type = fields.type;
  const c = CHECKS.get(type);
  if (!c) return { kind: 'unknown', type: clip(type, 64) };
  const e = c.validate(fields);
  if (!e) return { kind: 'message', message: msg as ServerMessage };
  const execId =
    type === 'exec' && typeof fields.id === 'string' && EXEC_ID_RE.test(fields.id) ? fields.id : undefined;
  const tunnelId =
    type === 'tunnel.open' && Number.isSafeInteger(fields.id) && (fields.id as number) > 0
      ? (fields.id as number)
      : undefined;
  const field = e && fieldOf(e);
  return {
    kind: 'invalid',
    type,
    about: field ?? 'shape',
    error: `invalid ${c.what}: ${describe(c, e, field, fields)}`,
    ...(execId ? { execId } : {}),
    ...(tunnelId ? { tunnelId } : {}),
  };
}

function fieldOf(e: Issue): string | undefined {
  if (e.keyword === 'required' && e.instancePath === '')
    return String((e.params as { missingProperty: string }).missingProperty);
  return e.instancePath.split('/')[1];
}

/** `argv must be an array of strings (…): item 3 is a number`, from Ajv's first error. */
function describe(
  c: MessageCheck,
  e: Issue | undefined,
  field: string | undefined,
  msg: Record<string, unknown>,
): string {
  if (!e) return 'does not match the protocol';
  const path = e.instancePath.split('/').slice(1);
  if (field === undefined) return e.message ?? 'does not match the protocol';
  const rule = `${field} ${c.rules[field] ?? 'is not valid'}`;
  if (e.keyword === 'required') return `${rule}: it is missing`;
  let value: unknown = msg[field];
  for (const p of path.slice(1)) value = (value as Record<string, unknown> | undefined)?.[p];
  const subject = path.length > 1 ? `item ${path.slice(1).join('/')} is` : 'got';
  switch (e.keyword) {
    case 'pattern':
      return `${rule}: ${subject} ${JSON.stringify(clip(String(value), 80))}`;
    case 'maxLength':
    case 'minLength':
      return `${rule}: ${subject} a string of ${String(value).length} characters`;
    case 'maxItems':
    case 'minItems':
      return `${rule}: ${subject} an array of ${(value as unknown[]).length} items`;
    case 'minimum':
    case 'maximum':
      return `${rule}: ${subject} ${String(value)}`;
    case 'type':
      return `${rule}: ${subject} ${typeof value === 'number' ? `the number ${value}` : kindOf(value)}`;
    default:
      return `${rule}: ${e.message ?? 'does not match'}`;
  }
}

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v === undefined) return 'missing';
  const t = typeof v;
  return t === 'object' ? 'an object' : `a ${t}`;
}
