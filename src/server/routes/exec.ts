// POST /api/exec streams a command's output as NDJSON; GET /api/audit lists every request.
import type { FastifyPluginAsyncJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import { parseDuration } from '../../config.js';
import { UserError } from '../../errors.js';
import type { ExecEvent } from '../../model/protocol.js';
import type { Store } from '../../store/store.js';
import type { ExecBroker } from '../exec.js';
import type { Registry } from '../registry.js';
import { ADMIN } from '../trust.js';

export interface ExecOptions {
  broker: ExecBroker;
  registry: Registry;
  store: Store;
}

export const execRoutes: FastifyPluginAsyncJsonSchemaToTs<{ Options: ExecOptions }> = async (
  app,
  { broker, registry, store },
) => {
  app.post(
    '/api/exec',
    {
      ...ADMIN,
      schema: {
        body: {
          type: 'object',
          required: ['target', 'argv'],
          additionalProperties: false,
          properties: {
            target: { type: 'string', minLength: 1, maxLength: 256 },
            agent: { type: 'string', minLength: 1, maxLength: 128 },
            node: { type: 'string', minLength: 1, maxLength: 256 },
            task: { type: 'integer', minimum: 0, maximum: 1_000_000 },
            argv: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', maxLength: 65536 } },
            timeout: { type: 'string', maxLength: 32 },
          },
        },
      } as const,
    },
    async (req, reply) => {
      const body = req.body;
      const timeoutMs = parseDuration(body.timeout ?? '60s');
      if (timeoutMs === undefined || timeoutMs <= 0) {
        throw new UserError(
          'BAD_REQUEST',
          `invalid request: body.timeout: "${body.timeout}" is not a duration such as 30s`,
        );
      }
      // Headers go out only once the agent has started the command, so a denial or a missing
      // container is an ordinary JSON error with its own status.
      let streaming = false;
      const write = (obj: unknown) => reply.raw.write(`${JSON.stringify(obj)}\n`);
      const onEvent = (e: ExecEvent) => {
        if (!streaming) {
          streaming = true;
          reply.hijack();
          reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
        }
        if (e.type === 'exec.started') write({ started: { container: e.container, rule: e.rule } });
        else if (e.type === 'exec.output') write({ stream: e.stream, data: e.data });
        else if (e.type === 'exec.exit') {
          const { type: _t, id: _i, ...result } = e;
          write({ exit: result });
        } else if (e.type === 'exec.error') write({ error: { code: e.code, message: e.message } });
      };
      const pick = { node: body.node, slot: body.task };
      // The target is resolved (and a missing one audited) inside run().
      const rules = (agentId: string) => registry.execRulesFor(agentId);
      await broker.run(
        {
          target: body.target,
          agent: body.agent,
          ...pick,
          argv: body.argv,
          timeoutMs,
          requester: `admin@${req.ip}`,
        },
        onEvent,
        rules,
      );
      if (streaming) reply.raw.end();
      return reply;
    },
  );

  app.get(
    '/api/audit',
    {
      ...ADMIN,
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { limit: { type: 'string', pattern: '^[0-9]{1,5}$' } },
        },
      } as const,
    },
    async (req) => {
      const limit = Number(req.query.limit ?? 100);
      return { entries: await store.listAudit(Math.min(limit, 10_000)) };
    },
  );
};
