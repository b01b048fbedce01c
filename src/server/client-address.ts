// Who a request comes from. Behind a proxy every client has the proxy's address, so limits keyed
// on the socket would put everyone in one bucket; but X-Forwarded-For is only a claim, believed
// when the hop that added it is a proxy the operator trusts (`--trusted-proxies`).
import { type Cidr, cidrsContain, parseCidr } from '../model/cidr.js';

export type TrustedProxies = (address: string) => boolean;

/** Loopback: Berth's own Caddy, on this machine, is the proxy trusted by default. */
export const DEFAULT_TRUSTED_PROXIES = ['127.0.0.0/8', '::1/128'];

export function trustedProxies(list: readonly string[]): TrustedProxies {
  const cidrs: Cidr[] = [];
  for (const entry of list) {
    const c = parseCidr(entry);
    if (!c) throw new Error(`"${entry}" is not an IP address or CIDR`);
    cidrs.push(c);
  }
  return (address) => cidrsContain(cidrs, address);
}

/** `::ffff:10.0.0.5` → `10.0.0.5`, so one client has one spelling. */
export function normaliseAddress(address: string): string {
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/**
 * The client: the socket's peer, or, when that peer is a trusted proxy, the nearest address in
 * X-Forwarded-For that is not itself a trusted proxy (read from the right, as each proxy appends).
 */
export function clientAddress(
  peer: string | undefined,
  forwardedFor: string | string[] | undefined,
  trusted: TrustedProxies,
): string {
  let client = normaliseAddress(peer ?? '');
  if (!client || !trusted(client) || forwardedFor === undefined) return client || 'unknown';
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor)
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean)
    .slice(-32);
  for (let i = hops.length - 1; i >= 0; i--) {
    client = normaliseAddress(hops[i]!);
    if (!trusted(client)) break;
  }
  return client;
}
