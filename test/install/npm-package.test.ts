// The npm package as a user gets it: `npm pack`, then `npm install -g` of the tarball into an empty
// prefix (no dev dependencies, nothing from this repository), and the installed `berth` run for
// real: --help, standalone with its web UI and a route, and an agent reporting to it.
// Run by scripts/test-install, not by the main suite.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { startAgent, startBerth } from '../e2e/support/berth.js';
import { registerCleanup, useCleanup } from '../e2e/support/cleanup.js';
import { importBusybox, runWebContainer, startDockerd } from '../e2e/support/dockerd.js';
import { httpGet, waitUntil } from '../e2e/support/proc.js';
import { ROOT, VERSION } from './support.js';

useCleanup();
const run = promisify(execFile);

/** The install command the README gives (see "Install" there for why it is named). */
const ALLOW_SCRIPTS = 'better-sqlite3';

let dir: string;
let tarball: string;
let prefix: string;
let installOutput = '';
let pkgDir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'berth-npm-'));
  registerCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const packed = await run('npm', ['pack', '--silent', '--pack-destination', dir], {
    cwd: ROOT,
    maxBuffer: 16 << 20,
  });
  tarball = join(dir, packed.stdout.trim().split('\n').pop()!);
  prefix = join(dir, 'prefix');
  pkgDir = join(prefix, 'lib', 'node_modules', 'berth');
  // An empty user config too: only what the command line says applies.
  const r = await run(
    'npm',
    [
      'install',
      '-g',
      '--prefix',
      prefix,
      `--allow-scripts=${ALLOW_SCRIPTS}`,
      '--no-audit',
      '--no-fund',
      tarball,
    ],
    {
      cwd: dir,
      env: { ...process.env, npm_config_userconfig: join(dir, 'npmrc') },
      maxBuffer: 16 << 20,
      timeout: 15 * 60_000,
    },
  );
  installOutput = r.stdout + r.stderr;
}, 16 * 60_000);

describe('the npm package', () => {
  it('packs the built CLI and web UI, and no sources, tests or source maps', async () => {
    const { stdout } = await run('tar', ['-tzf', tarball]);
    const files = stdout.trim().split('\n');
    expect(files).toContain('package/dist/cli/main.js');
    for (const ui of ['index.html', 'app.js', 'style.css']) expect(files).toContain(`package/dist/ui/${ui}`);
    expect(files.filter((f) => /^package\/(src|test|bench|deploy|scripts)\//.test(f))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
  });

  it('installs with npm install -g into an empty prefix quietly: no warnings, no dev dependencies', () => {
    expect(installOutput).not.toMatch(/warn|EBADENGINE|allowScripts/i);
    expect(installOutput).toMatch(/added \d+ packages/);
    const deps = readdirSync(join(pkgDir, 'node_modules'));
    for (const dev of ['typescript', 'vitest', '@biomejs', 'tsx', 'playwright-core'])
      expect(deps).not.toContain(dev);
    expect(
      existsSync(join(pkgDir, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node')),
    ).toBe(true);
  });

  it('runs `berth --help` and `berth --version` from the prefix', async () => {
    const help = await run(join(prefix, 'bin', 'berth'), ['--help']);
    expect(help.stdout).toMatch(/Usage: berth <command>/);
    expect((await run(join(prefix, 'bin', 'berth'), ['--version'])).stdout.trim()).toBe(VERSION);
  });

  it('runs `berth standalone` with its web UI, and `berth agent` reporting to it', async () => {
    const bin = join(pkgDir, 'dist', 'cli', 'main.js');
    const local = await startDockerd({ name: 'npm-a' });
    const remote = await startDockerd({ name: 'npm-b' });
    await importBusybox(remote);
    const berth = await startBerth({ bin, docker: local.dockerHost });
    const ui = await fetch(`${berth.apiUrl}/ui/`);
    expect(ui.status).toBe(200);
    expect(await ui.text()).toMatch(/<script[^>]+app\.js/);
    expect((await fetch(`${berth.apiUrl}/ui/app.js`)).status).toBe(200);
    await waitUntil(async () => (await fetch(`${berth.apiUrl}/readyz`)).status === 200, {
      timeoutMs: 30_000,
      message: () => `standalone never became ready\n${berth.output()}`,
    });

    const key = JSON.parse(
      (await berth.cli(['keys', 'create', '--name', 'npm-agent', '--auto-approve', '--json'])).stdout,
    ).secret as string;
    const port = await runWebContainer(remote, 'npm-web', { 'berth.host': 'npm-web.test' });
    const agent = await startAgent({
      bin,
      server: berth.apiUrl,
      key,
      docker: remote.dockerHost,
      hostIp: '127.0.0.1',
      name: 'npm-agent',
    });
    await waitUntil(
      async () =>
        (await httpGet(`http://127.0.0.1:${berth.httpPort}/`, { host: 'npm-web.test' })).body.trim() ===
        'body of npm-web',
      {
        timeoutMs: 30_000,
        message: async () =>
          `npm-web.test (port ${port}) was never served\n${JSON.stringify(await berth.routes())}\n${agent.output()}`,
      },
    );
  });
});
