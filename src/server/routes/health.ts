// Open to anyone: liveness, readiness, metrics, and Caddy's on-demand TLS "ask". None names an
// upstream, a client or a secret.
import type { FastifyPluginAsyncJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import { type MetricFamily, renderMetrics } from '../../metrics.js';
import { OPEN } from '../trust.js';

export interface HealthOptions {
  /** Extra detail for /healthz (TCP listeners, the forwarder). */
  health?: () => Record<string, unknown> | Promise<Record<string, unknown>>;
  ready: () => { ready: boolean; notReady: string[] };
  metrics?: () => MetricFamily[] | Promise<MetricFamily[]>;
  /** May this hostname get a certificate? Only names some route serves. */
  askDomain?: (domain: string) => boolean;
}

export const healthRoutes: FastifyPluginAsyncJsonSchemaToTs<{ Options: HealthOptions }> = async (app, o) => {
  app.get('/healthz', OPEN, async () => ({ status: 'ok', ...((await o.health?.()) ?? {}) }));

  app.get('/readyz', OPEN, async (_req, reply) => {
    const s = o.ready();
    return reply.status(s.ready ? 200 : 503).send({ ready: s.ready, notReady: s.notReady });
  });

  app.get('/metrics', OPEN, async (_req, reply) =>
    reply.type('text/plain; version=0.0.4').send(renderMetrics((await o.metrics?.()) ?? [])),
  );

  app.get(
    '/caddy/ask',
    {
      ...OPEN,
      schema: {
        querystring: {
          type: 'object',
          required: ['domain'],
          properties: { domain: { type: 'string', minLength: 1, maxLength: 253 } },
        },
      } as const,
    },
    async (req, reply) => {
      const ok = o.askDomain?.(req.query.domain.toLowerCase()) ?? false;
      return reply.status(ok ? 200 : 404).send(ok ? 'ok\n' : 'no route for this hostname\n');
    },
  );
};
