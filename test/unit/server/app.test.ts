import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { buildApp } from '../../../src/server/app.js';
import { hashToken } from '../../../src/server/auth.js';
import { EventBus } from '../../../src/server/events.js';
import { UiAuth } from '../../../src/server/ui-auth.js';
import { SqliteStore } from '../../../src/store/sqlite.js';

const TOKEN = 'berth_admin_test_token';

function app() {
  const calls: boolean[] = [];
  const a = buildApp({
    logger: pino({ level: 'silent' }),
    tokenHash: hashToken(TOKEN),
    routes: () => [],
    status: () => ({
      version: 't',
      uptimeSeconds: 0,
      ready: false,
      notReady: ['no reconcile pass has completed yet'],
      agents: [],
      caddy: [],
      routes: { total: 0, applied: 0, pending: 0, error: 0 },
      reconcile: {},
    }),
    reconcile: async (force) => {
      calls.push(force);
      return { passes: calls.length };
    },
  });
  return { a, calls };
}

const auth = { authorization: `Bearer ${TOKEN}` };

describe('API', () => {
  it('answers health without a token and readiness with the reasons', async () => {
    const { a } = app();
    expect((await a.inject({ url: '/healthz' })).statusCode).toBe(200);
    const r = await a.inject({ url: '/readyz' });
    expect(r.statusCode).toBe(503);
    expect(r.json().notReady).toEqual(['no reconcile pass has completed yet']);
  });

  it('refuses /api/ without a token or with a wrong one', async () => {
    const { a } = app();
    const none = await a.inject({ url: '/api/routes' });
    expect(none.statusCode).toBe(401);
    expect(none.json().error.code).toBe('UNAUTHORIZED');
    const wrong = await a.inject({ url: '/api/routes', headers: { authorization: 'Bearer nope' } });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.body).not.toContain('nope');
    expect((await a.inject({ url: '/api/routes', headers: auth })).statusCode).toBe(200);
  });

  it('rejects malformed bodies with a message naming the field, and runs nothing', async () => {
    const { a, calls } = app();
    const bad = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: auth,
      payload: { force: 'yes', extra: 1 },
    });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.message).toBe(
      'invalid request: body: unknown field "extra"; body.force: must be boolean',
    );
    const notJson = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: { ...auth, 'content-type': 'application/json' },
      payload: '{bad',
    });
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json().error.message).toMatch(/not valid JSON/);
    const huge = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: { ...auth, 'content-type': 'application/json' },
      payload: `{"force":true,"pad":"${'x'.repeat(1 << 20)}"}`,
    });
    expect(huge.statusCode).toBe(413);
    expect(huge.json().error).toEqual({
      code: 'BODY_TOO_LARGE',
      message: "the request body is over 1048576 bytes, the API's limit",
    });
    const xml = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: { ...auth, 'content-type': 'application/xml' },
      payload: '<force>true</force>',
    });
    expect(xml.statusCode).toBe(415);
    expect(xml.json().error.code).toBe('UNSUPPORTED_MEDIA_TYPE');
    expect(xml.json().error.message).toMatch(/application\/xml/);
    expect(calls).toEqual([]);
    const ok = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: auth,
      payload: { force: true },
    });
    expect(ok.statusCode).toBe(200);
    expect(calls).toEqual([true]);
  });
});

describe('access by route', () => {
  it('refuses a route that declares no trust to everyone, the admin token included', async () => {
    const { a } = app();
    a.get('/api/forgotten', async () => ({ secret: 1 }));
    a.get('/also-forgotten', async () => ({ secret: 2 }));
    for (const url of ['/api/forgotten', '/also-forgotten']) {
      for (const headers of [{}, auth]) {
        const r = await a.inject({ url, headers });
        expect(r.statusCode).toBe(403);
        expect(r.json().error.message).toBe('this route declares no access rule, so it is refused');
      }
    }
  });

  it('checks the route Fastify matched, however its path is spelled', async () => {
    const { a } = app();
    for (const url of ['/%61pi/routes', '/ap%69/status', '/api/routes?x=/healthz', '/api/routes#/healthz']) {
      const r = await a.inject({ url });
      expect([401, 404], url).toContain(r.statusCode);
    }
  });
});

describe('UI sessions', () => {
  async function uiApp() {
    const dir = mkdtempSync(join(tmpdir(), 'bui-'));
    const store = SqliteStore.openDataDir(dir);
    const auth = new UiAuth(store, hashToken(TOKEN));
    const a = buildApp({
      logger: pino({ level: 'silent' }),
      tokenHash: hashToken(TOKEN),
      routes: () => [],
      status: () => ({}) as never,
      reconcile: async () => ({ passes: 1 }),
      ui: { auth, events: new EventBus() },
    });
    return { a, auth, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
  }
  const cookieOf = (r: { headers: Record<string, unknown> }) =>
    String(r.headers['set-cookie']).split(';')[0]!;

  it('signs in with the token into an HttpOnly, SameSite=Strict cookie, and changes need the CSRF header', async () => {
    const { a, cleanup } = await uiApp();
    const login = await a.inject({ method: 'POST', url: '/ui/login', payload: { token: TOKEN } });
    expect(login.statusCode).toBe(200);
    const setCookie = String(login.headers['set-cookie']);
    expect(setCookie).toMatch(
      /^berth_session=[\w-]{40,}; Path=\/; HttpOnly; SameSite=Strict; Max-Age=43200$/,
    );
    const behindTls = await a.inject({
      method: 'POST',
      url: '/ui/login',
      payload: { token: TOKEN },
      headers: { 'x-forwarded-proto': 'https' },
    });
    expect(String(behindTls.headers['set-cookie'])).toMatch(/; Secure$/);
    const cookie = cookieOf(login);
    const { csrf } = login.json();
    expect((await a.inject({ url: '/api/routes', headers: { cookie } })).statusCode).toBe(200);
    const forged = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: { cookie },
      payload: {},
    });
    expect(forged.statusCode).toBe(403);
    expect(forged.json().error.message).toMatch(/x-berth-csrf/);
    const wrong = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: { cookie, 'x-berth-csrf': 'guess' },
      payload: {},
    });
    expect(wrong.statusCode).toBe(403);
    // The right CSRF token from another site's page, or with no Origin at all, changes nothing.
    for (const origin of ['https://evil.example', 'null', undefined]) {
      const cross = await a.inject({
        method: 'POST',
        url: '/api/reconcile',
        headers: { cookie, 'x-berth-csrf': csrf, ...(origin ? { origin } : {}) },
        payload: {},
      });
      expect(cross.statusCode, String(origin)).toBe(403);
      expect(cross.json().error.message).toMatch(/Origin/);
    }
    const ok = await a.inject({
      method: 'POST',
      url: '/api/reconcile',
      headers: { cookie, 'x-berth-csrf': csrf, origin: 'http://localhost:80' },
      payload: {},
    });
    expect(ok.statusCode).toBe(200);
    await a.inject({ method: 'POST', url: '/ui/logout', headers: { cookie, 'x-berth-csrf': csrf } });
    expect((await a.inject({ url: '/api/routes', headers: { cookie } })).statusCode).toBe(401);
    cleanup();
  });

  it('takes a password set through the API, refuses short ones, and rate-limits failures', async () => {
    const { a, cleanup } = await uiApp();
    const short = await a.inject({
      method: 'POST',
      url: '/api/ui-password',
      headers: auth,
      payload: { password: 'short' },
    });
    expect(short.json().error.message).toBe('the password must have at least 12 characters');
    const set = await a.inject({
      method: 'POST',
      url: '/api/ui-password',
      headers: auth,
      payload: { password: 'correct horse battery' },
    });
    expect(set.statusCode).toBe(200);
    const good = await a.inject({
      method: 'POST',
      url: '/ui/login',
      payload: { password: 'correct horse battery' },
    });
    expect(good.statusCode).toBe(200);
    const both = await a.inject({ method: 'POST', url: '/ui/login', payload: { password: 'x', token: 'y' } });
    expect(both.statusCode).toBe(400);
    const login = (payload: object, remoteAddress = '10.0.0.7') =>
      a.inject({ method: 'POST', url: '/ui/login', payload, remoteAddress });
    for (let i = 0; i < 10; i++) {
      const bad = await login({ password: `wrong ${i}` });
      expect(bad.json().error.message).toBe('wrong token or password');
    }
    // That client's password attempts wait, even the right one...
    const limited = await login({ password: 'correct horse battery' });
    expect(limited.statusCode).toBe(429);
    expect(limited.json().error.message).toMatch(/admin token still signs in/);
    // ...but not its admin token, and not another client.
    expect((await login({ token: TOKEN })).statusCode).toBe(200);
    expect((await login({ password: 'correct horse battery' }, '10.0.0.8')).statusCode).toBe(200);
    // Guesses sent all at once meet the same limit: the checks take a while (scrypt), and each
    // counts from the moment it starts.
    const burst = await Promise.all(
      Array.from({ length: 20 }, (_, i) => login({ password: `burst ${i}` }, '10.0.0.9')),
    );
    const codes = burst.map((r) => r.statusCode);
    expect(codes.filter((c) => c === 401)).toHaveLength(10);
    expect(codes.filter((c) => c === 429)).toHaveLength(10);
    // A login form posted by another site is refused.
    const cross = await a.inject({
      method: 'POST',
      url: '/ui/login',
      payload: { token: TOKEN },
      headers: { origin: 'https://evil.example' },
    });
    expect(cross.statusCode).toBe(403);
    cleanup();
  });

  it('describes its API in OpenAPI, with the schemas the routes enforce', async () => {
    const { a, cleanup } = await uiApp();
    const doc = (await a.inject({ url: '/openapi.json' })).json();
    expect(doc.openapi).toBe('3.0.3');
    expect(
      doc.paths['/api/reconcile'].post.requestBody.content['application/json'].schema.properties.force,
    ).toEqual({
      type: 'boolean',
    });
    expect(doc.paths['/api/reconcile'].post.security).toEqual([{ bearer: [] }, { session: [] }]);
    expect(doc.paths['/healthz'].get.security).toBeUndefined();
    expect(doc.paths['/ui/login'].post).toBeDefined();
    // Every route says who may call it.
    const trusts = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.entries(ops as Record<string, { 'x-berth-trust': string }>).map(
        ([m, op]) => `${m} ${path} ${op['x-berth-trust']}`,
      ),
    );
    expect(trusts.filter((t) => !/ (open|admin)$/.test(t))).toEqual([]);
    expect(trusts).toContain('get /healthz open');
    expect(trusts).toContain('post /api/reconcile admin');
    cleanup();
  });
});
