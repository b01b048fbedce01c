// --ui-host: the API and web UI through Berth's own front door (its Caddy, its TLS), for operators
// elsewhere; the admin API keeps its loopback listener, agent links are refused at the front door.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { BERTH_BIN, startBerth } from './support/berth.js';
import { useCleanup } from './support/cleanup.js';
import { freePort } from './support/ports.js';
import { httpGet, httpsGet, waitUntil } from './support/proc.js';

useCleanup();

const run = promisify(execFile);
const UI = 'berth-ui.test';

describe('--ui-host', () => {
  it('serves the API and UI at the front door over TLS (internal CA), token still required', async () => {
    const httpsPort = await freePort();
    const b = await startBerth({
      command: 'server',
      args: ['--ui-host', UI, '--tls', 'internal', '--https-listen', `127.0.0.1:${httpsPort}`],
    });
    await waitUntil(async () => (await httpsGet(httpsPort, UI, '/healthz')).status === 200, {
      timeoutMs: 30_000,
      message: () => `the UI host never answered:\n${b.output()}`,
    });
    const ui = await httpsGet(httpsPort, UI, '/ui/');
    expect(ui.status).toBe(200);
    expect(ui.body).toMatch(/<html/i);
    // Everything under /api/ still needs the token or a session.
    expect((await httpsGet(httpsPort, UI, '/api/status')).status).toBe(401);
    // Agents never come through Caddy, which closes WebSockets on every config change.
    const agent = await httpsGet(httpsPort, UI, '/agent/v1/connect');
    expect(agent.status).toBe(404);
    expect(agent.body).toMatch(/agent listener \(--agent-listen/);
    // Another name is not the UI.
    expect((await httpsGet(httpsPort, 'other.test', '/healthz')).status).not.toBe(200);
    // The admin API's own listener is where it was, on loopback.
    expect((await httpGet(`${b.apiUrl}/healthz`)).status).toBe(200);
    await b.stop();
  });

  it('refuses a UI host that is not a DNS name, at start (exit 2)', async () => {
    const r = await run(process.execPath, [BERTH_BIN, 'server', '--ui-host', '10.0.0.1']).catch((e) => e);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--ui-host 10\.0\.0\.1: expected a DNS name/);
  });
});
