// The agent's check of the server it reached, before anything is sent: the chain must contain
// the certificate whose public key the agent key pins, the leaf must be signed by it (through
// any intermediates presented), every certificate on that path must be valid now, and the leaf
// must cover the name or address the agent dialled.
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { showPin, spkiPin } from './ca.js';

export type ChainProblem =
  /** No certificate in the chain has the pinned key: another server, or someone in between. */
  'pin-mismatch' | 'expired' | 'not-yet-valid' | 'bad-signature' | 'wrong-host' | 'no-certificate';

export class ChainError extends Error {
  constructor(
    readonly problem: ChainProblem,
    message: string,
  ) {
    super(message);
  }
}

/** The peer's chain as presented, leaf first (node links each certificate to its issuer). */
export function peerChain(peer: PeerCertificate | undefined): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  let c = peer as (PeerCertificate & { issuerCertificate?: PeerCertificate }) | undefined;
  while (c?.raw && out.length < 10) {
    const fp = c.fingerprint256;
    if (seen.has(fp)) break; // a self-signed root is its own issuer
    seen.add(fp);
    out.push(new X509Certificate(c.raw));
    c = c.issuerCertificate as typeof c;
  }
  return out;
}

/** The chain a TLS socket's peer presented, leaf first, as Node's own certificate objects. */
export function peerX509Chain(sock: TLSSocket): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  let c = sock.getPeerX509Certificate();
  while (c && out.length < 10) {
    const fp = c.fingerprint256;
    if (seen.has(fp)) break; // a self-signed root is its own issuer
    seen.add(fp);
    out.push(c);
    c = c.issuerCertificate;
  }
  return out;
}

/** When the certificates a passed check relied on are all valid (ms since the epoch). */
export interface Validity {
  from: number;
  to: number;
}

/**
 * Throws a ChainError naming what is wrong (and both fingerprints on a mismatch); returns when the
 * certificates it checked (the leaf up to the pinned one) are all valid.
 */
export function verifyPinnedChain(
  chain: X509Certificate[],
  pin: string,
  host: string,
  now = new Date(),
): Validity {
  if (chain.length === 0) throw new ChainError('no-certificate', 'the server presented no certificate');
  const pins = chain.map((c) => spkiPin(c));
  const at = pins.indexOf(pin);
  if (at < 0) {
    throw new ChainError(
      'pin-mismatch',
      `the server's certificate is not from the CA this key pins: the key pins ${showPin(pin)}, the server presented ${showPin(pins[pins.length - 1]!)} (${chain[chain.length - 1]!.subject.replace(/\n/g, ', ')}); nothing was sent. Another server, or something in between: check --server, or get this server's key (berth keys show)`,
    );
  }
  for (let i = 0; i <= at; i++) {
    const c = chain[i]!;
    if (new Date(c.validTo).getTime() < now.getTime())
      throw new ChainError('expired', `the server's certificate ${describe(c)} expired on ${c.validTo}`);
    if (new Date(c.validFrom).getTime() > now.getTime())
      throw new ChainError(
        'not-yet-valid',
        `the server's certificate ${describe(c)} is valid only from ${c.validFrom} (check this machine's clock)`,
      );
    if (i < at) {
      const issuer = chain[i + 1]!;
      if (!issuer.ca || !c.checkIssued(issuer) || !c.verify(issuer.publicKey))
        throw new ChainError(
          'bad-signature',
          `the server's certificate ${describe(c)} is not signed by ${describe(issuer)}`,
        );
    }
  }
  const checked = chain.slice(0, at + 1);
  const validity = {
    from: Math.max(...checked.map((c) => new Date(c.validFrom).getTime())),
    to: Math.min(...checked.map((c) => new Date(c.validTo).getTime())),
  };
  const leaf = chain[0]!;
  const h = host.replace(/^\[|\]$/g, '');
  const covered = isIP(h) ? leaf.checkIP(h) !== undefined : leaf.checkHost(h) !== undefined;
  if (!covered) {
    throw new ChainError(
      'wrong-host',
      `the server's certificate does not cover ${h} (it covers ${leaf.subjectAltName ?? 'no names'}); connect by one of those, or give the server --public-name ${h}`,
    );
  }
  return validity;
}

/**
 * verifyPinnedChain() for a server that presents the same chain on every connection, as it does to
 * a --tunnel agent's data connections (one per stream; the full check, a public key export and a
 * signature check per certificate, was about a fifth of the agent's CPU while opening streams):
 * a chain that passed, the same certificates (by SHA-256) for the same pin and host, passes again
 * while every certificate that check relied on is still valid. Anything else is checked in full.
 */
export function pinnedChainCheck(
  max = 16,
): (chain: X509Certificate[], pin: string, host: string, now?: Date) => void {
  const passed = new Map<string, Validity>();
  return (chain, pin, host, now = new Date()) => {
    const key = `${pin} ${host} ${chain.map((c) => c.fingerprint256).join(' ')}`;
    const v = passed.get(key);
    const t = now.getTime();
    if (v && v.from <= t && t <= v.to) return;
    passed.delete(key);
    const validity = verifyPinnedChain(chain, pin, host, now);
    if (passed.size >= max) passed.clear();
    passed.set(key, validity);
  };
}

function describe(c: X509Certificate): string {
  return `"${c.subject.replace(/\n/g, ', ')}"`;
}
