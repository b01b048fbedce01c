// Who may call a route is declared on the route, never inferred from the URL's text: Fastify
// routes on the decoded, normalised path, so any check of `req.url` can be spelled around
// (`/%61pi/keys` once reached every admin route with no credentials). Every route says `open`
// or `admin` in its config; a route that says nothing is refused to everyone.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { UserError } from '../errors.js';
import { tokenMatches } from './auth.js';
import { CSRF_HEADER, csrfMatches, readCookie, SESSION_COOKIE, type UiAuth } from './ui-auth.js';

/** `open`: anyone (health, metrics, the UI's files, sign-in, Caddy's ask). `admin`: the admin token or a UI session. */
export type Trust = 'open' | 'admin';

declare module 'fastify' {
  interface FastifyContextConfig {
    trust?: Trust;
  }
}

export const OPEN = { config: { trust: 'open' as Trust } };
export const ADMIN = { config: { trust: 'admin' as Trust } };

export interface TrustOptions {
  tokenHash: string;
  ui?: UiAuth;
}

/** Installs the one access check every request passes, keyed on the matched route's declaration. */
export function enforceTrust(app: FastifyInstance, o: TrustOptions): void {
  app.addHook('onRequest', async (req) => {
    // No route matched: the not-found handler answers 404 and runs nothing.
    if (req.is404) return;
    const trust = req.routeOptions.config?.trust;
    if (trust === 'open') return;
    if (trust === 'admin') return requireAdmin(req, o);
    req.log.error({ route: req.routeOptions.url, method: req.method }, 'route declares no trust: refused');
    throw new UserError('FORBIDDEN', 'this route declares no access rule, so it is refused');
  });
}

function requireAdmin(req: FastifyRequest, o: TrustOptions): void {
  const h = req.headers.authorization;
  if (h !== undefined) {
    const m = /^Bearer (.+)$/.exec(h);
    if (!m || !tokenMatches(m[1]!.trim(), o.tokenHash)) throw new UserError('UNAUTHORIZED', 'invalid token');
    return;
  }
  // A UI session: reads need the cookie; changes also need the page's CSRF token and its own origin.
  const session = o.ui?.lookup(readCookie(req.headers.cookie, SESSION_COOKIE));
  if (!session) {
    throw new UserError('UNAUTHORIZED', 'missing bearer token (Authorization: Bearer <admin token>)');
  }
  if (req.method === 'GET' || req.method === 'HEAD') return;
  if (!csrfMatches(session, req.headers[CSRF_HEADER])) {
    throw new UserError('FORBIDDEN', `missing or wrong ${CSRF_HEADER} header for a signed-in change`);
  }
  checkOrigin(req, true);
}

/**
 * A browser says where a request comes from in `Origin`. A signed-in change must come from a
 * page of this server (`required`); sign-in itself is refused only when another site sends it.
 */
export function checkOrigin(req: FastifyRequest, required: boolean): void {
  const origin = req.headers.origin;
  if (origin === undefined) {
    if (required) throw new UserError('FORBIDDEN', 'a signed-in change needs an Origin header');
    return;
  }
  let same = false;
  try {
    const o = new URL(origin);
    // Spelled alike (default ports dropped) before comparing with the Host header.
    same = o.host !== '' && new URL(`${o.protocol}//${req.headers.host ?? ''}`).host === o.host;
  } catch {
    same = false;
  }
  if (!same) {
    throw new UserError('FORBIDDEN', `Origin ${JSON.stringify(origin)} is not this server`);
  }
}
