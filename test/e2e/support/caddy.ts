// An operator's own Caddy (what `--caddy-admin` drives): `caddy run` on a JSON config whose
// admin endpoint listens on a free loopback port, with its own data dirs; stopped by PID.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { registerCleanup } from './cleanup.js';
import { freePort } from './ports.js';
import { httpGet, type Logged, spawnLogged, waitUntil } from './proc.js';

export interface OperatorCaddy {
  adminUrl: string;
  readonly pid: number;
  output(): string;
  stop(): Promise<void>;
}

/** `apps` is the operator's own config beside the admin endpoint (none: an empty Caddy). */
export async function startOperatorCaddy(apps: Record<string, unknown> = {}): Promise<OperatorCaddy> {
  const adminPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'opcaddy-'));
  const config = { admin: { listen: `127.0.0.1:${adminPort}`, config: { persist: false } }, apps };
  writeFileSync(join(dir, 'caddy.json'), JSON.stringify(config));
  const proc: Logged = spawnLogged('caddy', ['run', '--config', join(dir, 'caddy.json')], {
    env: {
      ...process.env,
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_CONFIG_HOME: join(dir, 'config'),
      HOME: dir,
    },
    logFile: join(dir, 'caddy.log'),
  });
  let stopped = false;
  const c: OperatorCaddy = {
    adminUrl: `http://127.0.0.1:${adminPort}`,
    pid: proc.pid,
    output: () => proc.output(),
    async stop() {
      if (stopped) return;
      stopped = true;
      await proc.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  registerCleanup(() => c.stop());
  await waitUntil(async () => (await httpGet(`${c.adminUrl}/config/`)).status === 200, {
    timeoutMs: 15_000,
    message: () => `operator caddy did not start\n${proc.output()}`,
  });
  return c;
}
