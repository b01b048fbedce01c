// Client allow-lists: CIDR parsing and matching, IPv4 and IPv6. Pure.
import { isIP } from 'node:net';

export interface Cidr {
  /** The network as written back canonically, e.g. "10.0.0.0/8". */
  text: string;
  family: 4 | 6;
  bits: bigint;
  prefix: number;
}

/** "10.0.0.0/8", "127.0.0.5" (a single address), "fd00::/8"; undefined when it is none of these. */
export function parseCidr(raw: string): Cidr | undefined {
  const s = raw.trim();
  const slash = s.indexOf('/');
  const addr = slash < 0 ? s : s.slice(0, slash);
  const family = isIP(addr);
  if (family !== 4 && family !== 6) return undefined;
  const width = family === 4 ? 32 : 128;
  let prefix = width;
  if (slash >= 0) {
    const p = s.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > width) return undefined;
    prefix = Number(p);
  }
  const bits = toBits(addr, family) & mask(prefix, width);
  return { text: `${fromBits(bits, family)}/${prefix}`, family, bits, prefix };
}

/** A comma-separated list; the entries that are not CIDRs are returned as `bad`. */
export function parseCidrList(raw: string): { cidrs: Cidr[]; bad: string[] } {
  const cidrs: Cidr[] = [];
  const bad: string[] = [];
  for (const part of raw.split(',')) {
    const c = parseCidr(part);
    if (c) cidrs.push(c);
    else bad.push(part.trim());
  }
  return { cidrs, bad };
}

/**
 * An IP address written one way, so that no other spelling of it passes a check that this one
 * fails: IPv4 as a.b.c.d, and so is an IPv4-mapped IPv6 address however it is written
 * (`::FFFF:a9fe:a9fe`, `0:0:0:0:0:ffff:169.254.169.254`), since a dial to it reaches the IPv4
 * address; other IPv6 in lower case with the longest run of zero groups as `::` (RFC 5952), a
 * zone kept as it is. Brackets are taken off. Undefined when it is not an IP address.
 */
export function canonicalIp(raw: string): string | undefined {
  const a = addressBits(raw);
  if (!a) return undefined;
  if (a.family === 4) return fromBits(a.bits, 4);
  const pct = raw.indexOf('%');
  const zone = pct < 0 ? '' : raw.slice(pct).replace(/\]$/, '');
  const bits = a.bits;
  const groups = fromBits(bits, 6).split(':');
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const text =
    best < 0
      ? groups.join(':')
      : `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
  return `${text}${zone}`;
}

/** Whether a client address (IPv4, IPv6 or IPv4-mapped IPv6, in any spelling) is inside any of the networks. */
export function cidrsContain(cidrs: readonly Cidr[], address: string): boolean {
  const a = addressBits(address);
  if (!a) return false;
  const { family, bits } = a;
  const width = family === 4 ? 32 : 128;
  return cidrs.some((c) => c.family === family && (bits & mask(c.prefix, width)) === c.bits);
}

/**
 * An address as its family and number, brackets taken off, an IPv4-mapped IPv6 address (in any
 * spelling) as the IPv4 address it reaches: what canonicalIp writes and cidrsContain matches.
 */
function addressBits(raw: string): { family: 4 | 6; bits: bigint } | undefined {
  const addr = raw.startsWith('[') && raw.endsWith(']') ? raw.slice(1, -1) : raw;
  const family = isIP(addr);
  if (family === 4) return { family, bits: toBits(addr, 4) };
  if (family !== 6) return undefined;
  const bits = toBits(addr, 6);
  return bits >> 32n === 0xffffn ? { family: 4, bits: bits & 0xffffffffn } : { family: 6, bits };
}

function mask(prefix: number, width: number): bigint {
  return prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(width - prefix);
}

/** An address as a number (32 bits for IPv4, 128 for IPv6). */
export function toBits(addr: string, family: 4 | 6): bigint {
  if (family === 4) return addr.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  let s = addr.split('%')[0]!;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hextets.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const n = toBits(v4[1]!, 4);
    s = `${s.slice(0, -v4[1]!.length)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(Number.parseInt(g || '0', 16)), 0n);
}

function fromBits(bits: bigint, family: 4 | 6): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((s) => String((bits >> s) & 255n)).join('.');
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((bits >> BigInt(i * 16)) & 0xffffn).toString(16));
  return groups.join(':');
}
