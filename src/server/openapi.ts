// An OpenAPI 3 description built from the routes Fastify actually has, with their JSON schemas,
// so the document cannot drift from the code.
import type { FastifyInstance, RouteOptions } from 'fastify';
import { VERSION } from '../version.js';
import { OPEN as OPEN_ROUTE, type Trust } from './trust.js';

interface Collected {
  method: string;
  url: string;
  schema?: RouteOptions['schema'];
  trust?: Trust;
}

/** Call before registering routes; serves the document at /openapi.json. */
export function openapi(app: FastifyInstance): void {
  const routes: Collected[] = [];
  app.addHook('onRoute', (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    for (const m of methods)
      if (m !== 'HEAD')
        routes.push({ method: m.toLowerCase(), url: r.url, schema: r.schema, trust: r.config?.trust });
  });
  app.get('/openapi.json', OPEN_ROUTE, async () => buildDocument(routes));
}

// biome-ignore lint/suspicious/noExplicitAny: OpenAPI documents are open-ended JSON.
function buildDocument(routes: Collected[]): Record<string, any> {
  // biome-ignore lint/suspicious/noExplicitAny: as above.
  const paths: Record<string, Record<string, any>> = {};
  for (const r of routes) {
    if (
      r.url.startsWith('/ui/') &&
      r.url !== '/ui/login' &&
      r.url !== '/ui/session' &&
      r.url !== '/ui/logout'
    )
      continue;
    if (r.url === '/' || r.url === '/ui/') continue;
    const path = r.url.replace(/:(\w+)/g, '{$1}');
    // biome-ignore lint/suspicious/noExplicitAny: schema pieces are plain JSON schema.
    const s = (r.schema ?? {}) as Record<string, any>;
    // biome-ignore lint/suspicious/noExplicitAny: as above.
    const op: Record<string, any> = {
      responses: { 200: { description: 'OK' }, 400: { description: 'invalid request' } },
    };
    const params = [
      ...Object.entries(s.params?.properties ?? {}).map(([name, schema]) => ({
        name,
        in: 'path',
        required: true,
        schema,
      })),
      ...Object.entries(s.querystring?.properties ?? {}).map(([name, schema]) => ({
        name,
        in: 'query',
        schema,
      })),
    ];
    if (params.length > 0) op.parameters = params;
    if (s.body) op.requestBody = { required: true, content: { 'application/json': { schema: s.body } } };
    // Who may call it, as the route declares (the hostile-client tests read this).
    op['x-berth-trust'] = r.trust ?? 'undeclared';
    if (r.trust !== 'open') {
      op.security = [{ bearer: [] }, { session: [] }];
      op.responses[401] = { description: 'missing or wrong credentials' };
    }
    paths[path] = { ...(paths[path] ?? {}), [r.method]: op };
  }
  return {
    openapi: '3.0.3',
    info: {
      title: 'Berth API',
      version: VERSION,
      description:
        'Errors are JSON: {"error": {"code": "...", "message": "..."}}. POST /api/exec streams application/x-ndjson once the command starts; GET /api/events is text/event-stream.',
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'the admin token' },
        session: {
          type: 'apiKey',
          in: 'cookie',
          name: 'berth_session',
          description: 'a UI session; changes also need the X-Berth-CSRF header',
        },
      },
    },
    paths,
  };
}
