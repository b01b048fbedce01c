// The HTTP API. buildApp takes its dependencies and does not listen, so tests use inject().
import Fastify, { type FastifyBaseLogger, type FastifyError } from 'fastify';
import type { Logger } from 'pino';
import { UserError } from '../errors.js';
import { type MetricFamily, renderMetrics } from '../metrics.js';
import type { RouteView } from '../model/types.js';
import type { Store } from '../store/store.js';
import type { TrustedProxies } from './client-address.js';
import type { EventBus } from './events.js';
import type { ExecBroker } from './exec.js';
import { openapi } from './openapi.js';
import type { Registry } from './registry.js';
import { execRoutes } from './routes/exec.js';
import { explainRoutes } from './routes/explain.js';
import { fleetRoutes } from './routes/fleet.js';
import { uiRoutes } from './routes/ui.js';
import { ADMIN, enforceTrust, OPEN } from './trust.js';
import type { UiAuth } from './ui-auth.js';

export interface StatusReport {
  version: string;
  uptimeSeconds: number;
  ready: boolean;
  notReady: string[];
  agents: unknown[];
  caddy: unknown[];
  routes: { total: number; applied: number; pending: number; error: number };
  reconcile: unknown;
}

export interface AppDeps {
  logger: Logger;
  tokenHash: string;
  /** Whose X-Forwarded-For names the client (sign-in limits, audit); default none. */
  trustedProxies?: TrustedProxies;
  /** Keys, agents and exec; absent in tests that exercise only the core routes. */
  registry?: Registry;
  exec?: { broker: ExecBroker; store: Store };
  routes: () => RouteView[];
  status: () => StatusReport;
  /** Extra detail for /healthz (TCP listeners). */
  health?: () => Record<string, unknown> | Promise<Record<string, unknown>>;
  /** Metric families for /metrics. */
  metrics?: () => MetricFamily[] | Promise<MetricFamily[]>;
  reconcile: (force: boolean) => Promise<{ passes: number }>;
  /** The web UI: sign-in and live events. */
  ui?: { auth: UiAuth; events: EventBus };
  /** Caddy's on-demand TLS "ask": may this hostname get a certificate? */
  askDomain?: (domain: string) => boolean;
}

export function buildApp(deps: AppDeps) {
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    disableRequestLogging: true,
    bodyLimit: 1 << 20,
    // req.ip is the client as seen through trusted proxies only.
    ...(deps.trustedProxies ? { trustProxy: (address: string) => deps.trustedProxies!(address) } : {}),
    // Reject what does not fit the schema instead of coercing or silently dropping it.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
  });

  app.setErrorHandler((err: FastifyError | UserError, req, reply) => {
    if (err instanceof UserError) {
      const details = err.details === undefined ? {} : { details: err.details };
      return reply.status(err.status).send({ error: { code: err.code, message: err.message, ...details } });
    }
    const validation = (err as FastifyError).validation;
    if (validation) {
      const where = (err as FastifyError).validationContext ?? 'body';
      const problems = validation.map((v) => {
        const field = `${where}${v.instancePath.replace(/\//g, '.')}`;
        const extra = (v.params as { additionalProperty?: string }).additionalProperty;
        return extra ? `${field}: unknown field "${extra}"` : `${field}: ${v.message}`;
      });
      return reply
        .status(400)
        .send({ error: { code: 'BAD_REQUEST', message: `invalid request: ${problems.join('; ')}` } });
    }
    const status = (err as FastifyError).statusCode ?? 500;
    if (status >= 500) req.log.error({ err }, 'request failed');
    return reply.status(status).send({
      error: {
        code: status === 400 ? 'BAD_REQUEST' : 'INTERNAL',
        message: status >= 500 ? 'internal error' : err.message,
      },
    });
  });

  enforceTrust(app, { tokenHash: deps.tokenHash, ui: deps.ui?.auth });
  openapi(app);

  // Liveness plus each TCP listener's state; unauthenticated, so it names no upstream or client.
  app.get('/healthz', OPEN, async () => {
    const extra = (await deps.health?.()) ?? {};
    return { status: 'ok', ...extra };
  });

  app.get('/metrics', OPEN, async (_req, reply) =>
    reply.type('text/plain; version=0.0.4').send(renderMetrics((await deps.metrics?.()) ?? [])),
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
      },
    },
    async (req, reply) => {
      const domain = (req.query as { domain: string }).domain.toLowerCase();
      const ok = deps.askDomain?.(domain) ?? false;
      return reply.status(ok ? 200 : 404).send(ok ? 'ok\n' : 'no route for this hostname\n');
    },
  );

  app.get('/readyz', OPEN, async (_req, reply) => {
    const s = deps.status();
    return reply.status(s.ready ? 200 : 503).send({ ready: s.ready, notReady: s.notReady });
  });

  app.get('/api/routes', ADMIN, async () => ({ routes: deps.routes() }));

  app.get('/api/status', ADMIN, async () => deps.status());

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
      },
    },
    async (req) => {
      const body = (req.body ?? {}) as { force?: boolean };
      return deps.reconcile(body.force ?? false);
    },
  );

  if (deps.ui) uiRoutes(app, { ...deps.ui, registry: deps.registry });
  if (deps.registry) fleetRoutes(app, deps.registry);
  if (deps.registry && deps.exec) execRoutes(app, deps.exec.broker, deps.registry, deps.exec.store);
  if (deps.registry && deps.exec) explainRoutes(app, deps.exec.broker, deps.registry, deps.routes);

  return app;
}
