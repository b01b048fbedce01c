// Berth's CA and the agent's chain check, against Node's own X.509 parser and a real TLS
// handshake: what a certificate says is read back by OpenSSL, not by our writer.
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type Server, type TLSSocket, type TlsOptions } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { DialError, secureDial } from '../../../src/agent/dial.js';
import { createCa, issueServerCert, spkiPin, splitPem, subjectAltNames } from '../../../src/tls/ca.js';
import { int, oid, time, uint } from '../../../src/tls/der.js';
import { ChainError, pinnedChainCheck, verifyPinnedChain } from '../../../src/tls/verify.js';

const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** A TLS server presenting `chain`; resolves with its port. Records whether any byte arrived. */
async function serve(
  chain: { cert: string; key: string },
  tls: TlsOptions = {},
  port = 0,
): Promise<{ port: number; received: () => number; close: () => Promise<void> }> {
  let received = 0;
  const s = createServer({ ...chain, ...tls }, (sock) => {
    sock.on('data', (d) => {
      received += d.length;
    });
    sock.on('error', () => {});
  });
  s.on('tlsClientError', () => {});
  servers.push(s);
  await new Promise<void>((r) => s.listen(port, '127.0.0.1', () => r()));
  const addr = s.address();
  return {
    port: typeof addr === 'object' && addr ? addr.port : 0,
    received: () => received,
    close: () => new Promise<void>((r) => s.close(() => r())),
  };
}

/** A dialed socket once the server's session tickets have come (they follow the handshake). */
async function withTickets(sock: TLSSocket): Promise<TLSSocket> {
  sock.resume();
  await new Promise((r) => setTimeout(r, 100));
  return sock;
}

describe('DER', () => {
  it('encodes integers, object identifiers and times as X.690 says', () => {
    expect(int(0).toString('hex')).toBe('020100');
    expect(int(127).toString('hex')).toBe('02017f');
    expect(int(128).toString('hex')).toBe('02020080');
    expect(uint(Buffer.from([0, 0, 5])).toString('hex')).toBe('020105');
    expect(oid('1.2.840.10045.4.3.2').toString('hex')).toBe('06082a8648ce3d040302');
    expect(oid('2.5.29.17').toString('hex')).toBe('0603551d11');
    expect(time(new Date('2026-12-02T01:02:03Z')).toString('ascii').slice(2)).toBe('261202010203Z');
    expect(time(new Date('2051-01-01T00:00:00Z')).toString('ascii').slice(2)).toBe('20510101000000Z');
    expect(() => oid('1')).toThrow(/bad object identifier/);
  });
});

describe('the agent CA', () => {
  it('makes a self-signed P-256 CA that OpenSSL reads back', () => {
    const ca = createCa({ now: new Date('2026-01-01T00:00:00Z') });
    const x = new X509Certificate(ca.cert);
    expect(x.ca).toBe(true);
    expect(x.subject).toBe('O=Berth\nCN=Berth agent CA');
    expect(x.issuer).toBe(x.subject);
    expect(x.verify(x.publicKey)).toBe(true);
    expect(x.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(new Date(x.validTo).getUTCFullYear()).toBe(2036);
    expect(ca.key).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    // The openssl command line agrees on the extensions.
    const dir = mkdtempSync(join(tmpdir(), 'bca-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), ca.cert);
      const text = execFileSync('openssl', ['x509', '-in', join(dir, 'ca.pem'), '-noout', '-text'], {
        encoding: 'utf8',
      });
      expect(text).toMatch(/CA:TRUE, pathlen:0/);
      expect(text).toMatch(/Digital Signature, Certificate Sign, CRL Sign/);
      expect(text).toMatch(/ecdsa-with-SHA256/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('issues server certificates covering names and addresses, signed by the CA', () => {
    const ca = createCa();
    const s = issueServerCert(ca, {
      names: ['berth.example.com', '10.0.0.5', '::1', '*.agents.example.com'],
    });
    const [leafPem, caPem] = splitPem(s.cert);
    expect(caPem).toBe(ca.cert);
    const leaf = new X509Certificate(leafPem!);
    expect(leaf.ca).toBe(false);
    expect(leaf.checkIssued(new X509Certificate(ca.cert))).toBe(true);
    expect(leaf.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(leaf.checkHost('berth.example.com')).toBe('berth.example.com');
    expect(leaf.checkHost('a1.agents.example.com')).toBeDefined();
    expect(leaf.checkIP('10.0.0.5')).toBe('10.0.0.5');
    expect(leaf.checkIP('::1')).toBeDefined();
    expect(leaf.checkIP('10.0.0.6')).toBeUndefined();
    expect(leaf.checkHost('other.example.com')).toBeUndefined();
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
  });

  it('refuses names a certificate cannot carry', () => {
    expect(() => subjectAltNames(['bad name'])).toThrow(/"bad name" is neither a DNS name nor an IP address/);
    expect(() => subjectAltNames(['exa_mple.com'])).toThrow(/neither/);
    expect(() => subjectAltNames([])).toThrow(/at least one/);
  });

  it('pins the SPKI: the same for the CA and its key, different for another CA', () => {
    const ca = createCa();
    const pin = spkiPin(ca.cert);
    expect(pin).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(spkiPin(new X509Certificate(ca.cert))).toBe(pin);
    expect(spkiPin(createCa().cert)).not.toBe(pin);
  });
});

describe('verifyPinnedChain', () => {
  const ca = createCa();
  const pin = spkiPin(ca.cert);
  const chain = (pem: string) => splitPem(pem).map((c) => new X509Certificate(c));

  it('accepts a leaf from the pinned CA for a name it covers', () => {
    const s = issueServerCert(ca, { names: ['127.0.0.1', 'berth.example.com'] });
    expect(() => verifyPinnedChain(chain(s.cert), pin, '127.0.0.1')).not.toThrow();
    expect(() => verifyPinnedChain(chain(s.cert), pin, 'berth.example.com')).not.toThrow();
  });

  it('names both fingerprints when the chain is from another CA', () => {
    const other = createCa({ commonName: 'Someone else' });
    const s = issueServerCert(other, { names: ['127.0.0.1'] });
    let err: unknown;
    try {
      verifyPinnedChain(chain(s.cert), pin, '127.0.0.1');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ChainError);
    expect((err as ChainError).problem).toBe('pin-mismatch');
    expect((err as Error).message).toContain(`sha256:${pin}`);
    expect((err as Error).message).toContain(`sha256:${spkiPin(other.cert)}`);
    expect((err as Error).message).toContain('CN=Someone else');
  });

  it('refuses a leaf the pinned CA did not sign, even with the CA appended', () => {
    const other = createCa();
    const forged = issueServerCert(other, { names: ['127.0.0.1'] });
    const leafOnly = splitPem(forged.cert)[0]!;
    expect(() => verifyPinnedChain(chain(leafOnly + ca.cert), pin, '127.0.0.1')).toThrow(
      expect.objectContaining({ problem: 'bad-signature' }),
    );
  });

  it('refuses a certificate that does not cover the address dialled', () => {
    const s = issueServerCert(ca, { names: ['berth.example.com'] });
    expect(() => verifyPinnedChain(chain(s.cert), pin, '10.9.9.9')).toThrow(
      /does not cover 10\.9\.9\.9 \(it covers DNS:berth\.example\.com\).*--public-name 10\.9\.9\.9/,
    );
  });

  it('refuses an expired or not yet valid certificate and an expired CA', () => {
    const s = issueServerCert(ca, { names: ['127.0.0.1'], days: 1 });
    const later = new Date(Date.now() + 3 * 86_400_000);
    expect(() => verifyPinnedChain(chain(s.cert), pin, '127.0.0.1', later)).toThrow(
      expect.objectContaining({ problem: 'expired' }),
    );
    expect(() =>
      verifyPinnedChain(chain(s.cert), pin, '127.0.0.1', new Date(Date.now() - 86_400_000)),
    ).toThrow(expect.objectContaining({ problem: 'not-yet-valid' }));
    const old = createCa({ now: new Date('2010-01-01T00:00:00Z'), years: 1 });
    const stale = issueServerCert(old, { names: ['127.0.0.1'], now: new Date('2010-06-01T00:00:00Z') });
    expect(() => verifyPinnedChain(chain(stale.cert), spkiPin(old.cert), '127.0.0.1')).toThrow(/expired/);
  });

  it('refuses an empty chain', () => {
    expect(() => verifyPinnedChain([], pin, '127.0.0.1')).toThrow(/no certificate/);
  });
});

describe('pinnedChainCheck', () => {
  const ca = createCa();
  const pin = spkiPin(ca.cert);
  const chain = (pem: string) => splitPem(pem).map((c) => new X509Certificate(c));
  const s = issueServerCert(ca, { names: ['127.0.0.1'], days: 1 });

  it('checks a chain once, then passes the same certificates again without their signatures', () => {
    const check = pinnedChainCheck();
    const first = chain(s.cert);
    let verified = 0;
    const verify = first[0]!.verify.bind(first[0]);
    first[0]!.verify = (k) => {
      verified++;
      return verify(k);
    };
    check(first, pin, '127.0.0.1');
    check(first, pin, '127.0.0.1');
    check(chain(s.cert), pin, '127.0.0.1');
    expect(verified).toBe(1);
  });

  it('still refuses, after a pass, another pin, another host, another chain or a certificate past its time', () => {
    const check = pinnedChainCheck();
    check(chain(s.cert), pin, '127.0.0.1');
    expect(() => check(chain(s.cert), spkiPin(createCa().cert), '127.0.0.1')).toThrow(
      expect.objectContaining({ problem: 'pin-mismatch' }),
    );
    expect(() => check(chain(s.cert), pin, '10.9.9.9')).toThrow(
      expect.objectContaining({ problem: 'wrong-host' }),
    );
    const forged = splitPem(issueServerCert(createCa(), { names: ['127.0.0.1'] }).cert)[0]!;
    expect(() => check(chain(forged + ca.cert), pin, '127.0.0.1')).toThrow(
      expect.objectContaining({ problem: 'bad-signature' }),
    );
    const later = new Date(Date.now() + 3 * 86_400_000);
    expect(() => check(chain(s.cert), pin, '127.0.0.1', later)).toThrow(
      expect.objectContaining({ problem: 'expired' }),
    );
    const earlier = new Date(Date.now() - 86_400_000);
    expect(() => check(chain(s.cert), pin, '127.0.0.1', earlier)).toThrow(
      expect.objectContaining({ problem: 'not-yet-valid' }),
    );
  });
});

describe('secureDial (a real TLS handshake)', () => {
  const ca = createCa();
  const pin = spkiPin(ca.cert);

  it('connects to a server whose chain holds the pinned CA', async () => {
    const s = await serve(issueServerCert(ca, { names: ['127.0.0.1'] }));
    const sock = await secureDial(new URL(`wss://127.0.0.1:${s.port}/`), { pin });
    expect(sock.encrypted).toBe(true);
    sock.destroy();
  });

  it('refuses another CA before writing a byte', async () => {
    const s = await serve(issueServerCert(createCa(), { names: ['127.0.0.1'] }));
    const err = await secureDial(new URL(`wss://127.0.0.1:${s.port}/`), { pin }).catch((e) => e);
    expect(err).toBeInstanceOf(DialError);
    expect(err.problem).toBe('pin-mismatch');
    await new Promise((r) => setTimeout(r, 100));
    expect(s.received()).toBe(0);
  });

  it('checks against --ca-file instead of the pin, and refuses what does not chain to it', async () => {
    const s = await serve(issueServerCert(ca, { names: ['127.0.0.1'] }));
    const ok = await secureDial(new URL(`wss://127.0.0.1:${s.port}/`), { ca: ca.cert, caFile: '/x/ca.pem' });
    ok.destroy();
    const err = await secureDial(new URL(`wss://127.0.0.1:${s.port}/`), {
      ca: createCa().cert,
      caFile: '/x/other.pem',
    }).catch((e) => e);
    expect(err.problem).toBe('untrusted');
    expect(err.message).toMatch(/not trusted.*--ca-file \/x\/other\.pem/);
  });

  it('without pin or CA file, uses the system CAs (and says the key has no pin)', async () => {
    const s = await serve(issueServerCert(ca, { names: ['127.0.0.1'] }));
    const err = await secureDial(new URL(`wss://127.0.0.1:${s.port}/`), {}).catch((e) => e);
    expect(err.problem).toBe('untrusted');
    expect(err.message).toMatch(/this key has no pin/);
  });

  it('offers AES-128-GCM first; AES-256-GCM, ChaCha20 and TLS 1.2 ECDHE with an AEAD still agree', async () => {
    const chain = issueServerCert(ca, { names: ['127.0.0.1'] });
    const cipherWith = async (tls: TlsOptions) => {
      const s = await serve(chain, tls);
      const sock = await secureDial(new URL(`wss://127.0.0.1:${s.port}/`), { pin });
      const c = sock.getCipher();
      sock.destroy();
      return `${c.version} ${c.standardName}`;
    };
    // A server that goes by the client's order.
    expect(await cipherWith({ honorCipherOrder: false })).toBe('TLSv1.3 TLS_AES_128_GCM_SHA256');
    // An older Berth server: Node's own order, AES-256-GCM first, as before.
    expect(await cipherWith({})).toBe('TLSv1.3 TLS_AES_256_GCM_SHA384');
    expect(await cipherWith({ ciphers: 'TLS_CHACHA20_POLY1305_SHA256' })).toBe(
      'TLSv1.3 TLS_CHACHA20_POLY1305_SHA256',
    );
    expect(await cipherWith({ maxVersion: 'TLSv1.2', honorCipherOrder: false })).toBe(
      'TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
    );
  });

  it('agrees on nothing weaker: no TLS 1.2 CBC suite, no TLS 1.1', async () => {
    const chain = issueServerCert(ca, { names: ['127.0.0.1'] });
    const cbc = await serve(chain, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256' });
    const err = await secureDial(new URL(`wss://127.0.0.1:${cbc.port}/`), { pin }).catch((e) => e);
    expect(err).toBeInstanceOf(DialError);
    expect(err.message).toMatch(/handshake failure|no shared cipher|SSL alert/i);
    const old = await serve(chain, {
      minVersion: 'TLSv1.1',
      maxVersion: 'TLSv1.1',
      ciphers: 'DEFAULT@SECLEVEL=0',
    });
    expect(await secureDial(new URL(`wss://127.0.0.1:${old.port}/`), { pin }).catch((e) => e)).toBeInstanceOf(
      DialError,
    );
  });

  it("resumes a checked connection's session for a data connection, never for the link", async () => {
    const s = await serve(issueServerCert(ca, { names: ['127.0.0.1'] }));
    const url = new URL(`wss://127.0.0.1:${s.port}/`);
    const first = await withTickets(await secureDial(url, { pin }));
    expect(first.isSessionReused()).toBe(false);
    first.destroy();
    const data = await withTickets(await secureDial(url, { pin }, 10_000, undefined, true));
    expect(data.isSessionReused()).toBe(true);
    data.destroy();
    // The link (no resume), and a data connection under another trust, make a full handshake.
    const link = await secureDial(url, { pin });
    expect(link.isSessionReused()).toBe(false);
    link.destroy();
    const other = await secureDial(url, { ca: ca.cert }, 10_000, undefined, true);
    expect(other.isSessionReused()).toBe(false);
    other.destroy();
  });

  it('checks the chain again when the server cannot resume: another CA at the same address is refused', async () => {
    const s = await serve(issueServerCert(ca, { names: ['127.0.0.1'] }));
    const url = new URL(`wss://127.0.0.1:${s.port}/`);
    (await withTickets(await secureDial(url, { pin }, 10_000, undefined, true))).destroy();
    const resumed = await secureDial(url, { pin }, 10_000, undefined, true);
    expect(resumed.isSessionReused()).toBe(true);
    resumed.destroy();
    servers.pop();
    await s.close();
    const impostor = await serve(issueServerCert(createCa(), { names: ['127.0.0.1'] }), {}, s.port);
    const err = await secureDial(url, { pin }, 10_000, undefined, true).catch((e) => e);
    expect(err).toBeInstanceOf(DialError);
    expect(err.problem).toBe('pin-mismatch');
    await new Promise((r) => setTimeout(r, 100));
    expect(impostor.received()).toBe(0);
  });

  it('says when nothing answers', async () => {
    const s = await serve(issueServerCert(ca, { names: ['127.0.0.1'] }));
    const port = s.port;
    servers.pop()?.close();
    await new Promise((r) => setTimeout(r, 50));
    const err = await secureDial(new URL(`wss://127.0.0.1:${port}/`), { pin }).catch((e) => e);
    expect(err.problem).toBe('network');
    expect(err.message).toMatch(/cannot reach 127\.0\.0\.1/);
  });
});
