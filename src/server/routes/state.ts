// What the server serves and how it is doing: routes, status, and a reconcile on demand.
import type { FastifyPluginAsyncJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import type { RouteView, StatusReport, TrafficReport } from '../../model/api.js';
import { ADMIN } from '../trust.js';

export interface StateOptions {
  routes: () => RouteView[];
  status: () => StatusReport;
  reconcile: (force: boolean) => Promise<{ passes: number }>;
  /** The front door's traffic, every replica's summed (the Traffic page, `berth top`). */
  traffic?: () => TrafficReport | Promise<TrafficReport>;
}

export const stateRoutes: FastifyPluginAsyncJsonSchemaToTs<{ Options: StateOptions }> = async (app, o) => {
  app.get('/api/routes', ADMIN, async () => ({ routes: o.routes() }));

  app.get('/api/status', ADMIN, async () => o.status());

  const traffic = o.traffic;
  if (traffic) app.get('/api/traffic', ADMIN, async () => traffic());

  app.post(
    '/api/reconcile',
    {
      ...ADMIN,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          properties: { force: { type: 'boolean' } },
        },
      } as const,
    },
    async (req) => o.reconcile(req.body?.force ?? false),
  );
};
