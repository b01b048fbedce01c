// The web UI in a real browser (Debian's Chromium through playwright-core) against a real
// server, agent, dockerd and Caddy: sign in, approve a pending agent, watch its route become
// applied, run an allowed command, revoke the key and watch the route leave. Screenshots of
// every page go to test-output/ui/.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { AGENT_PATH } from '../../src/model/protocol.js';
import type { Snapshot } from '../../src/model/types.js';
import { type AgentProcess, type BerthProcess, startAgent, startBerth } from './support/berth.js';
import { CHROMIUM_ARGS } from './support/browser.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { importBusybox, runHostContainer, startDockerd, type TestDockerd } from './support/dockerd.js';
import { freePort } from './support/ports.js';
import { httpGet, waitUntil } from './support/proc.js';

useCleanup();

const SHOTS = resolve(import.meta.dirname, '../../test-output/ui');
let server: BerthProcess;
let d: TestDockerd;
let agent: AgentProcess;
let browser: BrowserContext;
let page: Page;
let webPort: number;

async function shot(name: string) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

const agentRow = () => page.locator('#agents tr[data-agent="uihost"]');
const routeRow = () => page.locator('#routes tr[data-route="ui.test"]');

beforeAll(async () => {
  mkdirSync(SHOTS, { recursive: true });
  d = await startDockerd({ name: 'ui' });
  await importBusybox(d);
  webPort = await freePort('127.0.0.2');
  await runHostContainer(
    d,
    'uiweb',
    {
      'berth.host': 'ui.test',
      'berth.port': String(webPort),
      'berth.exec.allow': 'echo hello *',
      'berth.exec.allow.1': 'cat /etc/passwd',
    },
    [
      'sh',
      '-c',
      `mkdir -p /w && echo "ui page" > /w/index.html && exec httpd -f -p 127.0.0.2:${webPort} -h /w`,
    ],
  );
  server = await startBerth({ command: 'server' });
  const profile = mkdtempSync(join(tmpdir(), 'bchrome-'));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
  });
  registerCleanup(async () => {
    await browser?.close();
    rmSync(profile, { recursive: true, force: true });
  });
  page = await browser.newPage();
  page.on('dialog', (dlg) => void dlg.accept());
});

afterAll(async () => {
  await browser?.close();
  await agent?.stop();
  await server?.stop();
});

describe('web UI', () => {
  it('refuses a wrong token, then signs in with the admin token', async () => {
    await page.goto(`${server.apiUrl}/ui/`);
    await page.locator('#login input[name=token]').fill('wrong');
    await page.locator('#login button[type=submit]').click();
    await expect.poll(() => page.locator('[role=alert]').textContent()).toBe('wrong token or password');
    await shot('01-sign-in');
    await page.locator('#login input[name=token]').fill(server.token);
    await page.locator('#login button[type=submit]').click();
    await page.locator('#agents').waitFor();
    const cookies = await browser.cookies();
    const session = cookies.find((c) => c.name === 'berth_session');
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict' });
    // The cookie alone cannot change anything: a change without the page's CSRF header is refused.
    const forged = await page.evaluate(async () => {
      const r = await fetch('/api/keys', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'forged' }),
      });
      return r.status;
    });
    expect(forged).toBe(403);
  });

  it('shows a new agent as pending, approves it, and its route becomes applied', async () => {
    const key = JSON.parse((await server.cli(['keys', 'create', '--name', 'ui-key', '--json'])).stdout);
    agent = await startAgent({
      server: server.apiUrl,
      key: key.secret,
      docker: d.dockerHost,
      hostIp: '127.0.0.2',
      name: 'uihost',
    });
    // No reload: the page updates from the live event stream.
    await expect
      .poll(() => agentRow().locator('[data-status]').textContent(), { timeout: 20_000 })
      .toBe('pending');
    await shot('02-agents-pending');
    await agentRow().getByRole('button', { name: 'Approve' }).click();
    await expect
      .poll(() => agentRow().locator('[data-status]').textContent(), { timeout: 20_000 })
      .toBe('online');
    await shot('03-agents-approved');

    await page.locator('nav a[data-page=routes]').click();
    await expect
      .poll(() => routeRow().locator('[data-status]').textContent(), { timeout: 20_000 })
      .toBe('applied');
    await page.locator('#route-filter').fill('nothing-matches-this');
    await expect.poll(() => page.locator('#routes tbody tr').count()).toBe(0);
    await page.locator('#route-filter').fill('ui.test');
    await expect.poll(() => page.locator('#routes tbody tr').count()).toBe(1);
    await shot('04-routes');
    expect((await httpGet(`http://127.0.0.1:${server.httpPort}/`, { host: 'ui.test' })).body).toBe(
      'ui page\n',
    );
  });

  it('runs an allowed command and streams its output', async () => {
    await page.locator('nav a[data-page=exec]').click();
    await page.locator('#exec-form').waitFor();
    await page.locator('.rules button', { hasText: 'echo hello *' }).click();
    await page.locator('#exec-argv').fill('echo hello browser');
    await page.locator('#exec-run').click();
    await expect
      .poll(() => page.locator('#exec-result').getAttribute('data-exit-code'), { timeout: 20_000 })
      .toBe('0');
    expect(await page.locator('#exec-output').textContent()).toBe('hello browser\n');
    await shot('05-exec');
    // A command no rule allows: the agent's refusal is shown and nothing runs.
    await page.locator('#exec-argv').fill('touch /tmp/x');
    await page.locator('#exec-run').click();
    await expect.poll(() => page.locator('#exec-result').textContent()).toMatch(/denied by agent uihost/);

    await page.locator('nav a[data-page=audit]').click();
    await expect.poll(() => page.locator('#audit tbody tr').count()).toBeGreaterThanOrEqual(2);
    await shot('06-audit');
  });

  it('creates a key shown once with copy buttons', async () => {
    await page.locator('nav a[data-page=agents]').click();
    await page.locator('#create-key input[name=name]').fill('second-host');
    await page.locator('#create-key button[type=submit]').click();
    await expect.poll(() => page.locator('#key-secret').textContent()).toMatch(/^berth_agent_/);
    for (const label of ['Copy key', 'Copy env file', 'Copy docker run', 'Copy compose file'])
      expect(await page.getByRole('button', { name: label }).count()).toBe(1);
    // The suggested commands keep the key off the command line: it goes in an env file.
    const secret = (await page.locator('#key-secret').textContent()) ?? '';
    expect(await page.locator('#key-env-file').textContent()).toBe(`BERTH_AGENT_KEY=${secret}\n`);
    const run = (await page.locator('#key-docker-run').textContent()) ?? '';
    expect(run).toContain('--env-file /etc/berth/agent.env');
    expect(run).not.toContain(secret);
    await shot('07-new-key');
  });

  it('keeps what is typed in the key form, and the key just shown, through a live refresh', async () => {
    await page.locator('#create-key input[name=name]').fill('typed-not-sent');
    const secret = await page.locator('#key-secret').textContent();
    // Mark the table, then make the server emit an event: the page re-renders with a new table.
    await page.evaluate(() => {
      (document.getElementById('agents') as HTMLElement).dataset.old = '1';
    });
    const res = await fetch(`${server.apiUrl}/api/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'made-elsewhere' }),
    });
    expect(res.status).toBe(201);
    await page.locator('#agents:not([data-old])').waitFor();
    expect(await page.locator('#create-key input[name=name]').inputValue()).toBe('typed-not-sent');
    expect(await page.locator('#key-secret').textContent()).toBe(secret);
  });

  it('shows the page chosen last, not one whose fetch came back after it was chosen', async () => {
    await page.locator('nav a[data-page=routes]').click();
    await routeRow().waitFor();
    // The routes page renders again (as a live update does) and its fetch is held back.
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let asked!: () => void;
    const requested = new Promise<void>((r) => {
      asked = r;
    });
    await page.route('**/api/routes**', async (route) => {
      asked();
      await held;
      await route.continue();
    });
    try {
      await page.evaluate(() => window.dispatchEvent(new HashChangeEvent('hashchange')));
      await requested;
      await page.locator('nav a[data-page=events]').click();
      await page.locator('#events').waitFor();
      const answered = page.waitForResponse('**/api/routes**');
      release();
      await answered;
      // The late answer must not put the routes page back over the events page.
      const back = await page
        .waitForFunction(() => document.getElementById('routes') !== null, undefined, { timeout: 2_000 })
        .then(
          () => true,
          () => false,
        );
      expect(back).toBe(false);
      expect(await page.locator('#events').count()).toBe(1);
    } finally {
      release();
      await page.unroute('**/api/routes**');
    }
    // Back where the next test starts.
    await page.locator('nav a[data-page=agents]').click();
    await agentRow().waitFor();
  });

  it('revokes the key and the route leaves the front door; events show it all', async () => {
    await agentRow().getByRole('button', { name: 'Revoke key' }).click();
    await expect
      .poll(() => agentRow().locator('[data-status]').textContent(), { timeout: 20_000 })
      .toBe('revoked');
    await page.locator('nav a[data-page=routes]').click();
    await page.locator('#route-filter').fill('ui.test');
    await expect
      .poll(() => routeRow().locator('[data-status]').textContent(), { timeout: 20_000 })
      .not.toBe('applied');
    expect(await routeRow().textContent()).toMatch(/not served: its key is revoked/);
    await waitUntil(
      async () => (await httpGet(`http://127.0.0.1:${server.httpPort}/`, { host: 'ui.test' })).status === 404,
      {
        timeoutMs: 20_000,
      },
    );
    await shot('08-routes-revoked');
    await page.locator('nav a[data-page=events]').click();
    // The page renders its table after the click returns: poll until every type is shown.
    const wanted = ['agent.connected', 'agent.approved', 'caddy.applied', 'exec', 'key.revoked'];
    await expect
      .poll(
        async () => {
          const types = await page
            .locator('#events tbody tr')
            .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-type')));
          return wanted.filter((t) => !types.includes(t));
        },
        { timeout: 10_000 },
      )
      .toEqual([]);
    await shot('09-events');
  });

  it('stays usable at 5,000 routes: pages, filters, and renders a page quickly', async () => {
    // A simulated agent speaking the real protocol reports 5,000 containers with a route each.
    const r = await server.cli(['keys', 'create', '--name', 'bulk', '--auto-approve', '--json']);
    const { secret } = JSON.parse(r.stdout);
    const ws = new WebSocket(`${server.apiUrl.replace(/^http/, 'ws')}${AGENT_PATH}`, {
      headers: { authorization: `Bearer ${secret}`, 'x-berth-agent-name': 'bulkhost' },
    });
    registerCleanup(() => ws.close());
    const created = Math.floor(Date.now() / 1000);
    const ids = Array.from({ length: 5000 }, (_, i) => `${i.toString(16).padStart(8, '0')}${'b'.repeat(56)}`);
    await new Promise<void>((done, fail) => {
      ws.once('error', fail);
      ws.on('message', (raw) => {
        const msg = JSON.parse(raw.toString());
        if (msg.type !== 'welcome') return;
        const snapshot: Snapshot = {
          agentId: msg.agentId,
          generation: 1,
          takenAt: Date.now(),
          hostIp: '127.0.0.9',
          containers: ids.map((id, i) => ({
            id,
            name: `bulk${i}`,
            state: 'running',
            health: 'none',
            labelled: true,
          })),
          routes: ids.map((id, i) => ({
            id: `${id}/default`,
            group: 'default',
            hosts: [`r${i}.bulk.test`],
            path: '/',
            stripPath: false,
            upstream: { host: '127.0.0.9', port: 10_000 + i, scheme: 'http' },
            containerId: id,
            containerName: `bulk${i}`,
            containerCreated: created,
          })),
          diagnostics: [],
        };
        ws.send(JSON.stringify({ type: 'snapshot', snapshot }));
        done();
      });
    });
    await page.locator('nav a[data-page=routes]').click();
    // The filter an earlier test typed is kept across pages; a render that was under way when it
    // was cleared can show it again, so it is cleared until the whole list shows.
    await expect
      .poll(
        async () => {
          const filter = page.locator('#route-filter');
          if ((await filter.count()) > 0 && (await filter.inputValue()) !== '') await filter.fill('');
          return page.locator('h2').textContent();
        },
        { timeout: 30_000 },
      )
      .toMatch(/^Routes \((500[0-9]) of \1\)$/);
    // One page at a time: 100 rows of 5,000+, and a pager.
    expect(await page.locator('#routes tbody tr').count()).toBe(100);
    expect(await page.locator('#route-page').textContent()).toMatch(/^page 1 of 5[01]$/);
    let t0 = Date.now();
    await page.getByRole('button', { name: 'Next ›' }).click();
    await expect.poll(() => page.locator('#route-page').textContent()).toMatch(/^page 2 of/);
    console.log(`[figure] UI at 5,000 routes: next page rendered in ${Date.now() - t0} ms`);
    t0 = Date.now();
    await page.locator('#route-filter').fill('r4999.bulk.test');
    await expect.poll(() => page.locator('#routes tbody tr').count()).toBe(1);
    console.log(`[figure] UI at 5,000 routes: filter to one route in ${Date.now() - t0} ms`);
    expect(await page.locator('#routes tbody tr').textContent()).toContain('127.0.0.9:14999');
    await shot('10-routes-5000');
    await page.locator('#route-filter').fill('');
  });

  it('signs out', async () => {
    await page.locator('#signout').click();
    await page.locator('#login').waitFor();
    const status = await page.evaluate(async () => (await fetch('/api/agents')).status);
    expect(status).toBe(401);
  });
});
