// `berth agent --key` on the command line still works (upgrades must not break), but any local
// user can read it in /proc/PID/cmdline: the agent says so once at start, naming the ways that
// keep it private. A key from --key-file or BERTH_AGENT_KEY draws no warning.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BERTH_BIN } from './support/berth.js';
import { registerCleanup, useCleanup } from './support/cleanup.js';
import { startFakeServer } from './support/fake-server.js';
import { spawnLogged, waitUntil } from './support/proc.js';

useCleanup();

const KEY = 'berth_agent_key-flag-test';
const WARNING = /the agent key was given with --key on the command line, where any local user can read it/;

/** Starts `berth agent` with the key given one way; resolves once the fake server has it connected. */
async function connectWith(how: 'flag' | 'env' | 'file') {
  const server = await startFakeServer(KEY);
  const dir = mkdtempSync(join(tmpdir(), 'bak-'));
  registerCleanup(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'key'), `${KEY}\n`, { mode: 0o600 });
  const keyArgs = how === 'flag' ? ['--key', KEY] : how === 'file' ? ['--key-file', join(dir, 'key')] : [];
  const proc = spawnLogged(
    process.execPath,
    [
      BERTH_BIN,
      'agent',
      '--server',
      `http://127.0.0.1:${server.port}`,
      '--data-dir',
      dir,
      // No Docker is needed to connect; a socket that does not exist keeps the machine's own away.
      '--docker',
      `unix://${join(dir, 'no-docker.sock')}`,
      ...keyArgs,
    ],
    { env: { ...process.env, ...(how === 'env' ? { BERTH_AGENT_KEY: KEY } : {}) } },
  );
  registerCleanup(() => proc.stop('SIGTERM', 10_000));
  await waitUntil(() => server.conns.length > 0, {
    timeoutMs: 20_000,
    message: () => `the agent never connected:\n${proc.output()}`,
  });
  await proc.waitFor(/registered with server/);
  const cmdline = readFileSync(`/proc/${proc.pid}/cmdline`, 'utf8');
  await proc.stop('SIGTERM', 10_000);
  return { output: proc.output(), cmdline };
}

describe('berth agent key sources', () => {
  it('--key on the command line works and warns once, naming --key-file and BERTH_AGENT_KEY', async () => {
    const { output, cmdline } = await connectWith('flag');
    expect(cmdline).toContain(KEY); // why the warning exists
    const warnings = output.split('\n').filter((l) => WARNING.test(l));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/use --key-file FILE or the BERTH_AGENT_KEY environment variable/);
    expect(warnings[0]).not.toContain(KEY);
    expect(output).not.toContain(KEY);
  });

  it.each(['env', 'file'] as const)(
    'a key from %s connects without a warning, off the command line',
    async (how) => {
      const { output, cmdline } = await connectWith(how);
      expect(output).not.toMatch(WARNING);
      expect(cmdline).not.toContain(KEY);
      expect(output).not.toContain(KEY);
    },
  );
});
