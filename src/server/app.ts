// The HTTP API. buildApp takes its dependencies and does not listen, so tests use inject(). Each
// group of routes is a plugin under routes/, registered here with what it needs; every route
// declares who may call it (trust.ts), and request types come from the route's own schemas.
import type { JsonSchemaToTsProvider } from '@fastify/type-provider-json-schema-to-ts';
import Fastify, { type FastifyBaseLogger, type FastifyError } from 'fastify';
import type { Logger } from 'pino';
import { type ErrorCode, UserError } from '../errors.js';
import type { TrustedProxies } from './client-address.js';
import type { EventBus } from './events.js';
import { openapi } from './openapi.js';
import type { Registry } from './registry.js';
import { type ExecOptions, execRoutes } from './routes/exec.js';
import { explainRoutes } from './routes/explain.js';
import { type FleetOptions, fleetRoutes } from './routes/fleet.js';
import { type HealthOptions, healthRoutes } from './routes/health.js';
import { type StateOptions, stateRoutes } from './routes/state.js';
import { uiRoutes } from './routes/ui.js';
import { enforceTrust } from './trust.js';
import type { UiAuth } from './ui-auth.js';

export interface AppDeps extends StateOptions, Omit<HealthOptions, 'ready'> {
  logger: Logger;
  tokenHash: string;
  /** Whose X-Forwarded-For names the client (sign-in limits, audit); default none. */
  trustedProxies?: TrustedProxies;
  /** Keys and agents; absent in tests that exercise only the core routes. */
  registry?: Registry;
  exec?: Omit<ExecOptions, 'registry'>;
  /** The agent channel's pin and URLs (key strings carry the pin). */
  agentTls?: FleetOptions['agentTls'];
  /** The web UI: sign-in and live events. */
  ui?: { auth: UiAuth; events: EventBus };
}

/** The largest request body the API reads (JSON; the biggest real one is a few KiB). */
const BODY_LIMIT = 1 << 20;

/** Fastify's own client errors (body too large, wrong content type, …) under codes of ours. */
const CLIENT_ERROR_CODES: Record<number, ErrorCode> = {
  401: 'UNAUTHORIZED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  406: 'NOT_ACCEPTABLE',
  413: 'BODY_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  429: 'RATE_LIMITED',
};

export function buildApp(deps: AppDeps) {
  const app = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    disableRequestLogging: true,
    bodyLimit: BODY_LIMIT,
    // req.ip is the client as seen through trusted proxies only.
    ...(deps.trustedProxies ? { trustProxy: (address: string) => deps.trustedProxies!(address) } : {}),
    // Reject what does not fit the schema instead of coercing or silently dropping it.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
  }).withTypeProvider<JsonSchemaToTsProvider>();

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
        code: status >= 500 ? 'INTERNAL' : (CLIENT_ERROR_CODES[status] ?? 'BAD_REQUEST'),
        message:
          status >= 500
            ? 'internal error'
            : status === 413
              ? `the request body is over ${BODY_LIMIT} bytes, the API's limit`
              : status === 415
                ? `the API reads JSON bodies (content-type: application/json), not ${String(req.headers['content-type'] ?? 'an unnamed type').slice(0, 100)}`
                : err.message,
      },
    });
  });

  enforceTrust(app, { tokenHash: deps.tokenHash, ui: deps.ui?.auth });
  openapi(app);

  void app.register(healthRoutes, {
    health: deps.health,
    metrics: deps.metrics,
    askDomain: deps.askDomain,
    ready: () => {
      const s = deps.status();
      return { ready: s.ready, notReady: s.notReady };
    },
  });
  void app.register(stateRoutes, {
    routes: deps.routes,
    status: deps.status,
    reconcile: deps.reconcile,
    ...(deps.traffic ? { traffic: deps.traffic } : {}),
  });
  if (deps.ui) void app.register(uiRoutes, { ...deps.ui, registry: deps.registry });
  const registry = deps.registry;
  if (registry) {
    void app.register(fleetRoutes, { registry, ...(deps.agentTls ? { agentTls: deps.agentTls } : {}) });
    if (deps.exec) {
      void app.register(execRoutes, { ...deps.exec, registry });
      void app.register(explainRoutes, { broker: deps.exec.broker, registry, routeViews: deps.routes });
    }
  }
  return app;
}
