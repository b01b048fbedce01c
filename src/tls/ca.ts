// Berth's own certificate authority for the agent channel: a P-256 CA made once and kept in the
// store, and a server certificate issued from it at every start. Agents pin the CA's public key
// (its SPKI SHA-256, carried in the key string), so no operator ever handles a certificate.
import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from 'node:crypto';
import { isIP } from 'node:net';
import { bits, bool, explicit, implicit, int, octets, oid, seq, set, time, uint, utf8 } from './der.js';

/** A certificate and its private key, both PEM (the key PKCS#8). */
export interface CertKey {
  cert: string;
  key: string;
}

const ECDSA_SHA256 = seq(oid('1.2.840.10045.4.3.2'));
const CN = '2.5.4.3';
const O = '2.5.4.10';
const DAY_MS = 86_400_000;

function name(commonName: string): Buffer {
  return seq(set(seq(oid(O), utf8('Berth'))), set(seq(oid(CN), utf8(commonName.slice(0, 64)))));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
}

/** RFC 7093 §2 method 1: the leftmost 160 bits of the SHA-256 of the subjectPublicKey. */
function keyId(spki: Buffer): Buffer {
  return createHash('sha256').update(spki).digest().subarray(0, 20);
}

function serial(): Buffer {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01; // positive, never a leading zero byte
  return b;
}

function pem(der: Buffer): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

function certificate(o: {
  subject: Buffer;
  issuer: Buffer;
  notBefore: Date;
  notAfter: Date;
  spki: Buffer;
  extensions: Buffer[];
  signingKey: string;
}): string {
  const tbs = seq(
    explicit(0, int(2)),
    uint(serial()),
    ECDSA_SHA256,
    o.issuer,
    seq(time(o.notBefore), time(o.notAfter)),
    o.subject,
    o.spki,
    explicit(3, seq(...o.extensions)),
  );
  const signature = sign('sha256', tbs, createPrivateKey(o.signingKey));
  return pem(seq(tbs, ECDSA_SHA256, bits(signature)));
}

function newKey(): { spki: Buffer; key: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return {
    spki: publicKey.export({ type: 'spki', format: 'der' }),
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

/** A new CA, valid from an hour ago (clock skew between machines) for `years`. */
export function createCa(o: { commonName?: string; now?: Date; years?: number } = {}): CertKey {
  const now = o.now ?? new Date();
  const { spki, key } = newKey();
  const subject = name(o.commonName ?? 'Berth agent CA');
  const notAfter = new Date(now);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + (o.years ?? 10));
  const cert = certificate({
    subject,
    issuer: subject,
    notBefore: new Date(now.getTime() - 3_600_000),
    notAfter,
    spki,
    extensions: [
      extension('2.5.29.19', true, seq(bool(true), int(0))), // basicConstraints: CA, pathLen 0
      extension('2.5.29.15', true, bits(Buffer.from([0x86]), 1)), // keyUsage: digitalSignature, keyCertSign, cRLSign
      extension('2.5.29.14', false, octets(keyId(spki))),
    ],
    signingKey: key,
  });
  return { cert, key };
}

/** What a server certificate must cover: DNS names and IP addresses, each checked. */
export function subjectAltNames(names: readonly string[]): Buffer {
  const general: Buffer[] = [];
  for (const n of names) {
    const v = n.replace(/^\[|\]$/g, '');
    if (isIP(v) === 4) general.push(implicit(7, Buffer.from(v.split('.').map(Number))));
    else if (isIP(v) === 6) general.push(implicit(7, ipv6Bytes(v)));
    else if (
      /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*\.?$/.test(v) &&
      v.length <= 253
    )
      general.push(implicit(2, Buffer.from(v.toLowerCase().replace(/\.$/, ''), 'ascii')));
    else throw new Error(`"${n}" is neither a DNS name nor an IP address`);
  }
  if (general.length === 0) throw new Error('a server certificate needs at least one name or address');
  return seq(...general);
}

function ipv6Bytes(v: string): Buffer {
  const [head, tail] = v.includes('::') ? v.split('::') : [v, undefined];
  const parse = (s: string | undefined): number[] => {
    if (!s) return [];
    return s.split(':').flatMap((g) => {
      if (g.includes('.')) {
        const b = g.split('.').map(Number);
        return [(b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!];
      }
      return [Number.parseInt(g, 16)];
    });
  };
  const h = parse(head);
  const t = parse(tail);
  const groups = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill(0), ...t];
  const out = Buffer.alloc(16);
  for (const [i, g] of groups.entries()) out.writeUInt16BE(g, i * 2);
  return out;
}

/**
 * A server certificate from the CA for `names` (DNS names and addresses), with the CA appended:
 * `cert` is the chain a TLS server presents.
 */
export function issueServerCert(
  ca: CertKey,
  o: { names: readonly string[]; now?: Date; days?: number },
): CertKey {
  const now = o.now ?? new Date();
  const caCert = new X509Certificate(ca.cert);
  const caSpki = caCert.publicKey.export({ type: 'spki', format: 'der' });
  const { spki, key } = newKey();
  const notAfter = new Date(
    Math.min(now.getTime() + (o.days ?? 365) * DAY_MS, new Date(caCert.validTo).getTime()),
  );
  const leaf = certificate({
    subject: name(o.names[0] ?? 'berth'),
    issuer: name(commonNameOf(caCert)),
    notBefore: new Date(now.getTime() - 3_600_000),
    notAfter,
    spki,
    extensions: [
      extension('2.5.29.19', true, seq()), // basicConstraints: not a CA
      extension('2.5.29.15', true, bits(Buffer.from([0x80]), 7)), // keyUsage: digitalSignature
      extension('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1'))), // extKeyUsage: serverAuth
      extension('2.5.29.17', false, subjectAltNames(o.names)),
      extension('2.5.29.14', false, octets(keyId(spki))),
      extension('2.5.29.35', false, seq(implicit(0, keyId(caSpki)))),
    ],
    signingKey: ca.key,
  });
  return { cert: leaf + ca.cert, key };
}

/** The issuer name must be the CA's subject byte for byte: ours are always O=Berth, CN=…. */
function commonNameOf(c: X509Certificate): string {
  const m = /(?:^|\n)CN=([^\n]*)/.exec(c.subject);
  return m?.[1] ?? 'Berth agent CA';
}

/** SHA-256 of a certificate's SubjectPublicKeyInfo, base64url (43 characters): what keys pin. */
export function spkiPin(cert: X509Certificate | string): string {
  const c = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  return createHash('sha256')
    .update(c.publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64url');
}

/** How a pin is shown to people: in errors, `berth keys show`, logs. */
export const showPin = (pin: string): string => `sha256:${pin}`;

/** Every certificate in a PEM bundle, in order. */
export function splitPem(bundle: string): string[] {
  return (
    bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)?.map((s) => `${s}\n`) ?? []
  );
}
