// net.ipv4.tcp_migrate_req, as the server finds it and leaves it: read from and written to a file
// of the test's own, never the kernel's.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureReloadQueue, isLocalCaddyAdmin } from '../../../src/ingress/caddy/reload-queue.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setting(value?: string) {
  const dir = mkdtempSync(join(tmpdir(), 'migrate-'));
  dirs.push(dir);
  const path = join(dir, 'tcp_migrate_req');
  if (value !== undefined) writeFileSync(path, `${value}\n`);
  const logs: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l)) });
  return { path, logs, logger, read: () => readFileSync(path, 'utf8').trim() };
}

describe('ensureReloadQueue', () => {
  it('sets 0 to 1, and says so once', () => {
    const s = setting('0');
    expect(ensureReloadQueue({ change: true, logger: s.logger, path: s.path })).toBe('set');
    expect(s.read()).toBe('1');
    expect(s.logs).toHaveLength(1);
    expect(s.logs[0]!.level).toBe(30);
    expect(s.logs[0]!.msg).toMatch(/set net\.ipv4\.tcp_migrate_req to 1 .*--keep-sysctls/);
  });

  it('leaves 1 alone, without a word', () => {
    const s = setting('1');
    let writes = 0;
    const write = () => void writes++;
    expect(ensureReloadQueue({ change: true, logger: s.logger, path: s.path, write })).toBe('on');
    expect(writes).toBe(0);
    expect(s.logs).toEqual([]);
  });

  it('with --keep-sysctls changes nothing and warns, naming the fix', () => {
    const s = setting('0');
    expect(ensureReloadQueue({ change: false, logger: s.logger, path: s.path })).toBe('off');
    expect(s.read()).toBe('0');
    expect(s.logs).toHaveLength(1);
    expect(s.logs[0]!.level).toBe(40);
    expect(s.logs[0]!.msg).toMatch(/--keep-sysctls is set: each Caddy reload resets/);
    expect(s.logs[0]!.msg).toContain('sysctl -w net.ipv4.tcp_migrate_req=1');
  });

  it('warns with the reason and the fix when it may not write (a read-only /proc/sys in a container)', () => {
    const s = setting('0');
    const write = () => {
      throw Object.assign(new Error('EROFS: read-only file system'), { code: 'EROFS' });
    };
    expect(ensureReloadQueue({ change: true, logger: s.logger, path: s.path, write })).toBe('off');
    expect(s.read()).toBe('0');
    expect(s.logs[0]!.level).toBe(40);
    expect(s.logs[0]!.msg).toMatch(/Berth may not change it/);
    expect(s.logs[0]!.msg).toContain('docker run --sysctl net.ipv4.tcp_migrate_req=1');
    expect(JSON.stringify(s.logs[0])).toContain('EROFS');
  });

  it('reports a kernel without the setting as unsupported', () => {
    const s = setting();
    expect(ensureReloadQueue({ change: true, logger: s.logger, path: s.path })).toBe('unsupported');
    if (process.platform === 'linux') expect(s.logs[0]!.msg).toMatch(/Linux 5\.14\+/);
  });
});

describe('isLocalCaddyAdmin', () => {
  it('knows loopback and unix sockets from other machines', () => {
    for (const url of [
      'unix:/run/caddy.sock',
      'http://127.0.0.1:2019',
      'http://localhost:2019',
      'http://[::1]:2019',
    ])
      expect(isLocalCaddyAdmin(url), url).toBe(true);
    for (const url of [
      'http://10.0.0.5:2019',
      'http://127.0.0.1.example.com:2019',
      'http://localhost.evil:2019',
    ])
      expect(isLocalCaddyAdmin(url), url).toBe(false);
  });
});
