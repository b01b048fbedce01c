// The server's side of the agent channel: the CA made once and kept in the store, the names its
// certificate covers, an operator chain, and a store whose CA cannot be read.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CA_META_KEY, certificateNames, prepareAgentTls } from '../../../src/server/agent-tls.js';
import { SqliteStore } from '../../../src/store/sqlite.js';
import { createCa, issueServerCert, spkiPin } from '../../../src/tls/ca.js';

const logger = pino({ level: 'silent' });
const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'batls-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const listen = { host: '127.0.0.1', port: 7443 };

describe('certificateNames', () => {
  it('covers the public names, a specific listen address and loopback', () => {
    expect(certificateNames(['berth.example.com', '[2001:db8::1]'], '10.0.0.1')).toEqual([
      'berth.example.com',
      '2001:db8::1',
      '10.0.0.1',
      'localhost',
      '127.0.0.1',
      '::1',
    ]);
  });

  it('covers every address of the machine when listening on all of them', () => {
    const names = certificateNames([], '0.0.0.0');
    expect(names).toContain('127.0.0.1');
    expect(names.some((n) => n.startsWith('fe80:'))).toBe(false);
  });
});

describe('prepareAgentTls', () => {
  it('makes the CA once: a second start (same store) has the same pin, and the key stays out of the info', async () => {
    const store = SqliteStore.openDataDir(tmp());
    const a = await prepareAgentTls({ listen, publicNames: [] }, store, logger);
    const b = await prepareAgentTls({ listen, publicNames: ['berth.example.com'] }, store, logger);
    expect(a!.info.pin).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(b!.info.pin).toBe(a!.info.pin);
    expect(b!.info).toMatchObject({ ca: 'berth', urls: ['https://berth.example.com:7443'] });
    expect(JSON.stringify(b!.info)).not.toMatch(/PRIVATE KEY/);
    expect(JSON.parse((await store.getMeta(CA_META_KEY))!).key).toMatch(/PRIVATE KEY/);
    await store.close();
  });

  it('is off with --agent-listen off', async () => {
    const store = SqliteStore.openDataDir(tmp());
    expect(await prepareAgentTls({ publicNames: [] }, store, logger)).toBeUndefined();
    await store.close();
  });

  it('says the stored CA is unreadable without printing any of it', async () => {
    const store = SqliteStore.openDataDir(tmp());
    await store.setMeta(
      CA_META_KEY,
      '{"cert":"-----BEGIN CERTIFICATE-----\\nxx","key":"SECRET-KEY-MATERIAL"}',
    );
    const err = await prepareAgentTls({ listen, publicNames: [] }, store, logger).catch((e) => e);
    expect(err.message).toMatch(/the agent CA in the store is unreadable/);
    expect(err.message).not.toContain('SECRET-KEY-MATERIAL');
    await store.close();
  });

  it("pins an operator chain's last certificate, and refuses a key that does not match", async () => {
    const dir = tmp();
    const ca = createCa();
    const leaf = issueServerCert(ca, { names: ['127.0.0.1'] });
    writeFileSync(join(dir, 'chain.pem'), leaf.cert);
    writeFileSync(join(dir, 'key.pem'), leaf.key);
    writeFileSync(join(dir, 'other.pem'), issueServerCert(ca, { names: ['x'] }).key);
    const store = SqliteStore.openDataDir(tmp());
    const t = await prepareAgentTls(
      { listen, publicNames: [], certFile: join(dir, 'chain.pem'), keyFile: join(dir, 'key.pem') },
      store,
      logger,
    );
    expect(t!.info).toMatchObject({ pin: spkiPin(ca.cert), ca: 'operator' });
    expect(await store.getMeta(CA_META_KEY)).toBeUndefined(); // no CA of Berth's own made
    await expect(
      prepareAgentTls(
        { listen, publicNames: [], certFile: join(dir, 'chain.pem'), keyFile: join(dir, 'other.pem') },
        store,
        logger,
      ),
    ).rejects.toThrow(/--agent-tls-cert\/--agent-tls-key: .*(key values mismatch|does not match)/i);
    await store.close();
  });

  it('picks AES-128-GCM for an agent of any version, ChaCha20 for one that lists it first', async () => {
    const store = SqliteStore.openDataDir(tmp());
    const t = await prepareAgentTls(
      { listen: { host: '127.0.0.1', port: 0 }, publicNames: [] },
      store,
      logger,
    );
    let port = 0;
    await t!.listen((s) => s.once('listening', () => (port = (s.address() as AddressInfo).port)));
    const cipherOf = (ciphers?: string) =>
      new Promise<string>((resolve, reject) => {
        const c = connect(
          { host: '127.0.0.1', port, rejectUnauthorized: false, ...(ciphers ? { ciphers } : {}) },
          () => {
            resolve(c.getCipher().standardName);
            c.destroy();
          },
        );
        c.once('error', reject);
      });
    // Node's own client order (an older agent) puts AES-256-GCM first; the listener's order decides.
    expect(await cipherOf()).toBe('TLS_AES_128_GCM_SHA256');
    expect(await cipherOf('TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256')).toBe(
      'TLS_CHACHA20_POLY1305_SHA256',
    );
    await t!.close();
    await store.close();
  });

  it('closes a connection that does not finish its request head in time, and still serves others', async () => {
    const store = SqliteStore.openDataDir(tmp());
    const t = await prepareAgentTls(
      { listen: { host: '127.0.0.1', port: 0 }, publicNames: [], headTimeoutMs: 300 },
      store,
      logger,
    );
    let port = 0;
    await t!.listen((s) => s.once('listening', () => (port = (s.address() as AddressInfo).port)));
    const exchange = (text: string) =>
      new Promise<string>((resolve, reject) => {
        let got = '';
        const c = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => c.write(text));
        c.on('data', (d) => {
          got += d;
        });
        c.once('close', () => resolve(got));
        c.once('error', reject);
        // The listener's bound is 300 ms here; Node's own (60 s) would leave it open far longer.
        setTimeout(() => {
          c.destroy();
          resolve('still open after 5 s');
        }, 5_000).unref();
      });
    // A slow head (never finished): answered 408 and closed, well before Node's own 60 s.
    expect(await exchange('GET /agent/v1 HTTP/1.1\r\nHost: berth\r\nX-Slow: ')).toMatch(/^HTTP\/1\.1 408 /);
    // A whole request on another connection is answered as ever.
    expect(await exchange('GET / HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n')).toMatch(
      /^HTTP\/1\.1 404 [\s\S]*only the agent WebSocket/,
    );
    await t!.close();
    await store.close();
  });
});
