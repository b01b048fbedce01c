// Berth driving an operator's own Caddy (--caddy-admin): the operator's config survives, and a
// route Caddy refuses is quarantined while the rest is applied.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BerthProcess, startBerth } from './support/berth.js';
import { startOperatorCaddy } from './support/caddy.js';
import { useCleanup } from './support/cleanup.js';
import { importBusybox, runWebContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, httpsGet as httpsGetAt, waitUntil } from './support/proc.js';

useCleanup();

const IMAGE = 'berth-test/busybox:latest';
let d: TestDockerd;
let berth: BerthProcess;
let adminUrl: string;
let operatorPort: number;
let httpsPort: number;

const httpsGet = (host: string, path = '/') => httpsGetAt(httpsPort, host, path);

beforeAll(async () => {
  d = await startDockerd({ name: 'extcaddy' });
  await importBusybox(d, IMAGE);
  operatorPort = await freePort();
  httpsPort = await freePort();
  const caddy = await startOperatorCaddy({
    http: {
      servers: {
        operator: {
          listen: [`127.0.0.1:${operatorPort}`],
          automatic_https: { disable: true },
          routes: [{ handle: [{ handler: 'static_response', body: 'operator base route' }] }],
        },
      },
    },
    // The operator already has a TLS policy for taken.test: Caddy refuses a second one.
    tls: { automation: { policies: [{ subjects: ['taken.test'], issuers: [{ module: 'internal' }] }] } },
    pki: { certificate_authorities: { local: { install_trust: false } } },
  });
  adminUrl = caddy.adminUrl;
  berth = await startBerth({
    docker: d.dockerHost,
    args: [
      '--caddy-admin',
      adminUrl,
      '--tls',
      'internal',
      '--https-listen',
      `127.0.0.1:${httpsPort}`,
      // Every host written into the config, so that a route can collide with the operator's own
      // TLS policy and be quarantined (the dynamic layout is covered in dynamic-layout.test.ts).
      '--caddy-layout',
      'static',
    ],
  });
});

afterAll(async () => {
  await berth?.stop();
});

const web = (name: string, host: string) => runWebContainer(d, name, { 'berth.host': host });

describe('berth with an existing Caddy', () => {
  it("keeps the operator's servers and routes through its own applies", async () => {
    // The operator adds a route by hand after Berth has taken over.
    await waitUntil(async () => (await berth.status()).reconcile.applies > 0, {
      timeoutMs: 10_000,
      message: 'no apply',
    });
    const add = await fetch(`${adminUrl}/config/apps/http/servers/operator/routes/0`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        match: [{ host: ['added.test'] }],
        handle: [{ handler: 'static_response', body: 'added by operator' }],
      }),
    });
    expect(add.status).toBe(200);

    await web('free', 'free.test');
    await waitUntil(async () => (await httpsGet('free.test')).body.includes('body of free'), {
      timeoutMs: 20_000,
      message: async () =>
        `free.test not served over https: ${JSON.stringify(await httpsGet('free.test'))}\n${berth.output()}`,
    });
    expect((await httpGet(`http://127.0.0.1:${operatorPort}/`, { host: 'added.test' })).body).toBe(
      'added by operator',
    );
    expect((await httpGet(`http://127.0.0.1:${operatorPort}/`, { host: 'other.test' })).body).toBe(
      'operator base route',
    );
    // Plain HTTP on Berth's listener redirects to HTTPS.
    const plain = await httpGet(`http://127.0.0.1:${berth.httpPort}/x?y=1`, { host: 'free.test' });
    expect(plain.status).toBe(308);
    expect(plain.headers.location).toBe(`https://free.test:${httpsPort}/x?y=1`);
  });

  it('quarantines a route Caddy rejects, with Caddy’s error, and applies the rest', async () => {
    await web('taker', 'taken.test');
    await web('bystander', 'bystander.test');
    await waitUntil(
      async () => (await berth.routes()).find((r) => r.container.name === 'taker')?.status === 'error',
      {
        timeoutMs: 20_000,
        message: async () =>
          `taker never quarantined: ${JSON.stringify(await berth.routes())}\n${berth.output()}`,
      },
    );
    const taker = (await berth.routes()).find((r) => r.container.name === 'taker')!;
    expect(taker.errors.join('\n')).toMatch(
      /Caddy rejected this route: .*more than one automation policy to host: taken\.test/,
    );
    await waitUntil(async () => (await httpsGet('bystander.test')).body.includes('body of bystander'), {
      timeoutMs: 20_000,
      message: 'bystander not served',
    });
    expect((await httpsGet('free.test')).body).toContain('body of free');
    expect((await httpGet(`http://127.0.0.1:${operatorPort}/`, { host: 'added.test' })).body).toBe(
      'added by operator',
    );
    // Caddy may serve it during the bisection, before the pass ends and the status is written.
    await waitUntil(
      async () => (await berth.routes()).find((r) => r.container.name === 'bystander')?.status === 'applied',
      {
        timeoutMs: 10_000,
        message: async () => `bystander not applied: ${JSON.stringify(await berth.routes())}`,
      },
    );
  });
});
