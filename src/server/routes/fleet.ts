// Keys and agents: enrolment and approval. Every body has a schema; inner code trusts it.
import type { FastifyPluginAsyncJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import { parseRule } from '../../agent/exec-policy.js';
import { parseDuration } from '../../config.js';
import { UserError } from '../../errors.js';
import { formatAgentKey } from '../../model/agent-key.js';
import { publicSuffixWildcard } from '../../model/domains.js';
import { checkCidrList, checkHostname } from '../../model/validate.js';
import type { AgentTlsInfo } from '../agent-tls.js';
import type { Registry } from '../registry.js';
import { ADMIN } from '../trust.js';

const idParam = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
} as const;

/** What a key allows, as create and update take it. */
const keyLimits = {
  domains: { type: 'array', maxItems: 1000, items: { type: 'string', minLength: 1, maxLength: 253 } },
  upstreams: { type: 'array', maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 64 } },
  maxRoutes: { type: 'integer', minimum: 0, maximum: 1_000_000 },
  maxPending: { type: 'integer', minimum: 0, maximum: 100_000 },
  autoApprove: { type: 'boolean' },
} as const;

/** Canonical domains; a wildcard over a public suffix (`*.com`) is not a limit and is refused. */
function checkDomains(list: readonly string[] | undefined): string[] | undefined {
  if (list === undefined) return undefined;
  return list.map((d) => {
    const c = checkHostname(d);
    if (!c.ok)
      throw new UserError('BAD_REQUEST', `invalid request: body.domains: "${d}" is not ${c.expected}`);
    const suffix = publicSuffixWildcard(c.value);
    if (suffix)
      throw new UserError(
        'BAD_REQUEST',
        `invalid request: body.domains: "${d}" covers every name under the public suffix ${suffix}; name your own domain, e.g. *.example.${suffix}`,
      );
    return c.value;
  });
}

function checkUpstreams(list: readonly string[] | undefined): string[] | undefined {
  if (list === undefined) return undefined;
  if (list.length === 0) return [];
  const c = checkCidrList(list.join(','));
  if (!c.ok) throw new UserError('BAD_REQUEST', `invalid request: body.upstreams: expected ${c.expected}`);
  return c.value;
}

export interface FleetOptions {
  registry: Registry;
  /** The agent channel's CA pin and URLs; undefined with `--agent-listen off`. */
  agentTls?: () => AgentTlsInfo | undefined;
}

export const fleetRoutes: FastifyPluginAsyncJsonSchemaToTs<{ Options: FleetOptions }> = async (
  app,
  { registry, agentTls },
) => {
  /**
   * A new secret as the key string agents take: with the CA pin when agents have a TLS listener.
   * `secret` keeps its name (older CLIs and UIs print it as the key).
   */
  const issued = (r: { key: unknown; secret: string }) => {
    const tls = agentTls?.();
    return {
      ...r,
      secret: formatAgentKey({ secret: r.secret, ...(tls ? { pin: tls.pin } : {}) }),
      ...(tls ? { pin: tls.pin, agentUrls: tls.urls } : {}),
    };
  };

  app.get('/api/keys', ADMIN, async () => ({ keys: registry.listKeys() }));

  // The key itself cannot be shown (only its hash is kept); its pin and where agents connect can.
  app.get('/api/keys/:id', { ...ADMIN, schema: { params: idParam } as const }, async (req) => {
    const tls = agentTls?.();
    return {
      key: registry.showKey(req.params.id),
      ...(tls
        ? {
            pin: tls.pin,
            agentUrls: tls.urls,
            ca: tls.ca,
            certificateNames: tls.names,
            certificateValidTo: tls.validTo,
          }
        : {}),
    };
  });

  app.post(
    '/api/keys',
    {
      ...ADMIN,
      schema: {
        body: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$' },
            ...keyLimits,
            execAllow: {
              type: 'array',
              maxItems: 1000,
              items: { type: 'string', minLength: 1, maxLength: 1024 },
            },
          },
        },
      } as const,
    },
    async (req, reply) => {
      const body = req.body;
      for (const r of body.execAllow ?? []) {
        if (!parseRule(r))
          throw new UserError('BAD_REQUEST', `invalid request: body.execAllow: "${r}" is not a rule`);
      }
      const created = await registry.createKey({
        name: body.name,
        domains: checkDomains(body.domains) ?? [],
        autoApprove: body.autoApprove ?? false,
        execAllow: body.execAllow,
        upstreams: checkUpstreams(body.upstreams),
        maxRoutes: body.maxRoutes,
        maxPending: body.maxPending,
      });
      return reply.status(201).send(issued(created));
    },
  );

  app.patch(
    '/api/keys/:id',
    {
      ...ADMIN,
      schema: {
        params: idParam,
        body: { type: 'object', additionalProperties: false, minProperties: 1, properties: keyLimits },
      } as const,
    },
    async (req) => {
      const body = req.body;
      return {
        key: await registry.updateKey(req.params.id, {
          domains: checkDomains(body.domains),
          upstreams: checkUpstreams(body.upstreams),
          maxRoutes: body.maxRoutes,
          maxPending: body.maxPending,
          autoApprove: body.autoApprove,
        }),
      };
    },
  );

  app.post('/api/keys/:id/revoke', { ...ADMIN, schema: { params: idParam } as const }, async (req) => ({
    key: await registry.revokeKey(req.params.id),
  }));

  app.post(
    '/api/keys/:id/rotate',
    {
      ...ADMIN,
      schema: {
        params: idParam,
        body: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: { overlap: { type: 'string', maxLength: 32 } },
        },
      } as const,
    },
    async (req) => {
      const overlap = req.body?.overlap ?? '24h';
      const ms = parseDuration(overlap);
      if (ms === undefined)
        throw new UserError(
          'BAD_REQUEST',
          `invalid request: body.overlap: "${overlap}" is not a duration such as 24h`,
        );
      return issued(await registry.rotateKey(req.params.id, ms));
    },
  );

  app.get('/api/agents', ADMIN, async () => ({ agents: registry.listAgents() }));

  app.post('/api/agents/:id/approve', { ...ADMIN, schema: { params: idParam } as const }, async (req) => ({
    agent: await registry.approveAgent(req.params.id),
  }));

  app.delete('/api/agents/:id', { ...ADMIN, schema: { params: idParam } as const }, async (req) => ({
    agent: await registry.removeAgent(req.params.id),
  }));
};
