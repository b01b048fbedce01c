// Keys and agents: enrolment and approval. Every body has a schema; inner code trusts it.
import type { FastifyInstance } from 'fastify';
import { parseRule } from '../../agent/exec-policy.js';
import { parseDuration } from '../../config.js';
import { UserError } from '../../errors.js';
import { checkHostname } from '../../labels/validate.js';
import type { Registry } from '../registry.js';

const idParam = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
};

export function fleetRoutes(app: FastifyInstance, registry: Registry): void {
  app.get('/api/keys', async () => ({ keys: registry.listKeys() }));

  app.post(
    '/api/keys',
    {
      schema: {
        body: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$' },
            domains: {
              type: 'array',
              maxItems: 1000,
              items: { type: 'string', minLength: 1, maxLength: 253 },
            },
            autoApprove: { type: 'boolean' },
            execAllow: {
              type: 'array',
              maxItems: 1000,
              items: { type: 'string', minLength: 1, maxLength: 1024 },
            },
          },
        },
      },
    },
    async (req, reply) => {
      const body = req.body as {
        name: string;
        domains?: string[];
        autoApprove?: boolean;
        execAllow?: string[];
      };
      for (const r of body.execAllow ?? []) {
        if (!parseRule(r))
          throw new UserError('BAD_REQUEST', `invalid request: body.execAllow: "${r}" is not a rule`);
      }
      const domains: string[] = [];
      for (const d of body.domains ?? []) {
        const c = checkHostname(d);
        if (!c.ok)
          throw new UserError('BAD_REQUEST', `invalid request: body.domains: "${d}" is not ${c.expected}`);
        domains.push(c.value);
      }
      const created = await registry.createKey({
        name: body.name,
        domains,
        autoApprove: body.autoApprove ?? false,
        execAllow: body.execAllow,
      });
      return reply.status(201).send(created);
    },
  );

  app.post('/api/keys/:id/revoke', { schema: { params: idParam } }, async (req) => ({
    key: await registry.revokeKey((req.params as { id: string }).id),
  }));

  app.post(
    '/api/keys/:id/rotate',
    {
      schema: {
        params: idParam,
        body: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: { overlap: { type: 'string', maxLength: 32 } },
        },
      },
    },
    async (req) => {
      const overlap = (req.body as { overlap?: string } | null)?.overlap ?? '24h';
      const ms = parseDuration(overlap);
      if (ms === undefined)
        throw new UserError(
          'BAD_REQUEST',
          `invalid request: body.overlap: "${overlap}" is not a duration such as 24h`,
        );
      return registry.rotateKey((req.params as { id: string }).id, ms);
    },
  );

  app.get('/api/agents', async () => ({ agents: registry.listAgents() }));

  app.post('/api/agents/:id/approve', { schema: { params: idParam } }, async (req) => ({
    agent: await registry.approveAgent((req.params as { id: string }).id),
  }));

  app.delete('/api/agents/:id', { schema: { params: idParam } }, async (req) => ({
    agent: await registry.removeAgent((req.params as { id: string }).id),
  }));
}
