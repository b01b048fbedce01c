// The agent's check of the server it reached, before anything is sent: the chain must contain
// the certificate whose public key the agent key pins, the leaf must be signed by it (through
// any intermediates presented), every certificate on that path must be valid now, and the leaf
// must cover the name or address the agent dialled.
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
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

/** Throws a ChainError naming what is wrong (and both fingerprints on a mismatch). */
export function verifyPinnedChain(
  chain: X509Certificate[],
  pin: string,
  host: string,
  now = new Date(),
): void {
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
  const leaf = chain[0]!;
  const h = host.replace(/^\[|\]$/g, '');
  const covered = isIP(h) ? leaf.checkIP(h) !== undefined : leaf.checkHost(h) !== undefined;
  if (!covered) {
    throw new ChainError(
      'wrong-host',
      `the server's certificate does not cover ${h} (it covers ${leaf.subjectAltName ?? 'no names'}); connect by one of those, or give the server --public-name ${h}`,
    );
  }
}

function describe(c: X509Certificate): string {
  return `"${c.subject.replace(/\n/g, ', ')}"`;
}
