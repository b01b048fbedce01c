import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { buildApp } from '../../../src/server/app.js';
import { hashToken } from '../../../src/server/auth.js';

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
