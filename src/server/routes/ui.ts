// The web UI: static files built into dist/ui, sign-in/out with a session cookie, the live
// event stream (server-sent events), and the few API calls only the UI needs.
import { readFileSync } from 'node:fs';
import type { FastifyPluginAsyncJsonSchemaToTs } from '@fastify/type-provider-json-schema-to-ts';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ContainerListing } from '../../model/api.js';
import type { EventBus } from '../events.js';
import type { Registry } from '../registry.js';
import { ADMIN, checkOrigin, OPEN } from '../trust.js';
import { CSRF_HEADER, csrfMatches, readCookie, SESSION_COOKIE, type UiAuth } from '../ui-auth.js';

const UI_DIR = new URL('../../ui/', import.meta.url);
const ASSETS: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

function secure(req: FastifyRequest): boolean {
  return req.protocol === 'https' || req.headers['x-forwarded-proto'] === 'https';
}

function setSession(reply: FastifyReply, req: FastifyRequest, value: string, maxAgeS: number) {
  const attrs = [`${SESSION_COOKIE}=${value}`, 'Path=/', 'HttpOnly', 'SameSite=Strict', `Max-Age=${maxAgeS}`];
  if (secure(req)) attrs.push('Secure');
  reply.header('set-cookie', attrs.join('; '));
}

export interface UiOptions {
  auth: UiAuth;
  events: EventBus;
  registry?: Registry;
}

export const uiRoutes: FastifyPluginAsyncJsonSchemaToTs<{ Options: UiOptions }> = async (app, o) => {
  const cache = new Map<string, Buffer>();
  const asset = (name: string): Buffer | undefined => {
    if (!cache.has(name)) {
      try {
        cache.set(name, readFileSync(new URL(name, UI_DIR)));
      } catch {
        return undefined;
      }
    }
    return cache.get(name);
  };

  app.get('/', OPEN, async (_req, reply) => reply.redirect('/ui/'));
  app.get('/ui/', OPEN, async (_req, reply) => sendAsset(reply, 'index.html'));
  app.get(
    '/ui/:file',
    {
      ...OPEN,
      schema: {
        params: { type: 'object', required: ['file'], properties: { file: { type: 'string' } } },
      } as const,
    },
    async (req, reply) => sendAsset(reply, req.params.file),
  );
  function sendAsset(reply: FastifyReply, name: string) {
    const type = ASSETS[name];
    const body = type ? asset(name) : undefined;
    if (!type || !body)
      return reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no UI file ${name}` } });
    return reply
      .header('content-type', type)
      .header('content-security-policy', CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-cache')
      .send(body);
  }

  app.post(
    '/ui/login',
    {
      ...OPEN,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          minProperties: 1,
          maxProperties: 1,
          properties: {
            token: { type: 'string', minLength: 1, maxLength: 512 },
            password: { type: 'string', minLength: 1, maxLength: 512 },
          },
        },
      } as const,
    },
    async (req, reply) => {
      // A sign-in posted by another site's page is refused (login CSRF).
      checkOrigin(req, false);
      const s = await o.auth.signIn(req.ip, req.body);
      setSession(reply, req, s.id, 12 * 3600);
      return { signedIn: true, csrf: s.csrf };
    },
  );

  app.get('/ui/session', OPEN, async (req) => {
    const s = o.auth.lookup(readCookie(req.headers.cookie, SESSION_COOKIE));
    return s
      ? { signedIn: true, csrf: s.csrf, passwordSet: await o.auth.hasPassword() }
      : { signedIn: false, passwordSet: await o.auth.hasPassword() };
  });

  app.post('/ui/logout', OPEN, async (req, reply) => {
    const id = readCookie(req.headers.cookie, SESSION_COOKIE);
    const s = o.auth.lookup(id);
    // Signing out is a change: it needs the CSRF header like any other.
    if (s && csrfMatches(s, req.headers[CSRF_HEADER])) o.auth.signOut(id);
    setSession(reply, req, '', 0);
    return { signedIn: false };
  });

  app.post(
    '/api/ui-password',
    {
      ...ADMIN,
      schema: {
        body: {
          type: 'object',
          required: ['password'],
          additionalProperties: false,
          properties: { password: { type: 'string', maxLength: 512 } },
        },
      } as const,
    },
    async (req) => {
      await o.auth.setPassword(req.body.password);
      return { passwordSet: true };
    },
  );

  /** Server-sent events: recent events first (or those after Last-Event-ID), then live ones. */
  app.get('/api/events', ADMIN, async (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    const after = Number(req.headers['last-event-id'] ?? 0) || 0;
    const send = (e: { id: number }) => res.write(`id: ${e.id}\ndata: ${JSON.stringify(e)}\n\n`);
    for (const e of o.events.recent(after)) send(e);
    const unsubscribe = o.events.subscribe(send);
    const ping = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    req.raw.on('close', () => {
      clearInterval(ping);
      unsubscribe();
    });
  });

  /** Every container the agents report, with the exec rules that apply to it there. */
  if (o.registry) {
    const registry = o.registry;
    app.get('/api/containers', ADMIN, async () => ({
      containers: registry.listAgents().flatMap((a) =>
        (registry.snapshotOf(a.id)?.containers ?? []).map(
          (c): ContainerListing => ({
            agentId: a.id,
            agentName: a.name,
            agentStatus: a.status,
            ...c,
          }),
        ),
      ),
    }));
  }
};
