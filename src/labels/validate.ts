// Value checks shared by every label dialect. Each returns either the parsed value or an
// `expected` phrase that ends up in the diagnostic, so messages read the same everywhere.
import { isIP } from 'node:net';
import { parseCidrList } from '../model/cidr.js';
import { MAX_CIDRS, MAX_STRING } from '../model/limits.js';
import type { UpstreamScheme } from '../model/types.js';

export type Check<T> = { ok: true; value: T } | { ok: false; expected: string };

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const HOSTNAME_RE = new RegExp(`^(?:\\*\\.)?(?:${LABEL}\\.)*${LABEL}$`);
const IPV4_RE = /^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$/;

export function checkHostname(raw: string): Check<string> {
  const host = raw.trim().toLowerCase().replace(/\.$/, '');
  if (host.length > 0 && host.length <= 253 && (HOSTNAME_RE.test(host) || IPV4_RE.test(host))) {
    return { ok: true, value: host };
  }
  const v6 = ipv6Literal(host);
  if (v6) return { ok: true, value: v6 };
  return { ok: false, expected: 'a hostname such as app.example.com or *.example.com' };
}

/**
 * An IPv6 address, bare or in brackets, written the one way a Host header names it once its
 * brackets are off (compressed, lower case): `[0010::0010]` and `10::10` are both `10::10`.
 * Zone ids (`%eth0`) name an interface of one machine, never a site, so they are refused.
 */
function ipv6Literal(host: string): string | undefined {
  const inner = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (inner.length > 45 || !inner.includes(':') || inner.includes('%') || isIP(inner) !== 6) return undefined;
  return new URL(`http://[${inner}]/`).hostname.slice(1, -1);
}

export function checkHostList(raw: string): Check<string[]> {
  const parts = raw.split(',').map((p) => p.trim());
  if (parts.length === 0 || parts.some((p) => p === '')) {
    return { ok: false, expected: 'a comma-separated list of hostnames with no empty entries' };
  }
  const hosts = new Set<string>();
  for (const p of parts) {
    const c = checkHostname(p);
    if (!c.ok) return { ok: false, expected: `${c.expected} ("${p}" is not one)` };
    hosts.add(c.value);
  }
  return { ok: true, value: [...hosts] };
}

export function checkPort(raw: string): Check<number> {
  const s = raw.trim();
  if (/^\d{1,5}$/.test(s)) {
    const n = Number(s);
    if (n >= 1 && n <= 65535) return { ok: true, value: n };
  }
  return { ok: false, expected: 'a port number from 1 to 65535' };
}

// Caddy path matchers treat '*' specially and a query or fragment never reaches them.
const PATH_RE = /^\/[A-Za-z0-9._~!$&'()+,;=:@%/-]*$/;

export function checkPath(raw: string): Check<string> {
  const s = raw.trim();
  if (s.length > MAX_STRING)
    return { ok: false, expected: `a path prefix of at most ${MAX_STRING} characters` };
  if (!PATH_RE.test(s) || s.includes('//')) {
    return { ok: false, expected: 'a path prefix starting with "/" with no spaces, "*", "?" or "#"' };
  }
  const path = s.length > 1 ? s.replace(/\/+$/, '') : s;
  return { ok: true, value: path };
}

const TRUE = new Set(['true', '1', 'yes', 'on']);
const FALSE = new Set(['false', '0', 'no', 'off']);

export function checkBool(raw: string): Check<boolean> {
  const s = raw.trim().toLowerCase();
  if (TRUE.has(s)) return { ok: true, value: true };
  if (FALSE.has(s)) return { ok: true, value: false };
  return { ok: false, expected: 'true or false' };
}

export function checkScheme(raw: string): Check<'http' | 'https'> {
  const s = raw.trim().toLowerCase();
  if (s === 'http' || s === 'https') return { ok: true, value: s };
  return { ok: false, expected: 'http or https' };
}

export function checkName(raw: string): Check<string> {
  const s = raw.trim();
  if (/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(s)) return { ok: true, value: s };
  return { ok: false, expected: 'a name of letters, digits, "_", "." or "-"' };
}

export function checkCidrList(raw: string): Check<string[]> {
  const { cidrs, bad } = parseCidrList(raw);
  if (bad.length > 0 || cidrs.length === 0) {
    const which =
      bad.length > 0
        ? ` (${bad.map((b) => `"${b}"`).join(', ')} ${bad.length === 1 ? 'is' : 'are'} not)`
        : '';
    return {
      ok: false,
      expected: `a comma-separated list of networks such as 10.0.0.0/8, 100.64.0.0/10 or 127.0.0.1${which}`,
    };
  }
  const unique = [...new Set(cidrs.map((c) => c.text))];
  if (unique.length > MAX_CIDRS)
    return { ok: false, expected: `at most ${MAX_CIDRS} networks (${unique.length} are given)` };
  return { ok: true, value: unique };
}

/** `scheme://host:port/path`, each part optional but the host; parts are not checked here. */
export interface AddressParts {
  scheme?: string;
  host: string;
  port?: string;
  path?: string;
}

/**
 * Splits an address the way caddy-docker-proxy site addresses and DockFlare service URLs are
 * written: an optional `scheme://`, a host (or `[v6]`), an optional `:port`, an optional `/path`.
 */
export function splitAddress(raw: string): AddressParts | undefined {
  const m = /^(?:([A-Za-z][A-Za-z0-9+.-]*):\/\/)?(\[[^\]]*\]|[^:/]*)(?::([^/]*))?(\/.*)?$/.exec(raw.trim());
  if (!m) return undefined;
  const parts: AddressParts = { host: m[2]! };
  if (m[1] !== undefined) parts.scheme = m[1].toLowerCase();
  if (m[3] !== undefined) parts.port = m[3];
  if (m[4] !== undefined) parts.path = m[4];
  return parts;
}

/** The port an upstream URL means when it names none (h2c is plain HTTP/2, so 80). */
export function defaultPort(scheme: UpstreamScheme): number {
  return scheme === 'https' ? 443 : 80;
}

/** An upstream scheme the other tools' labels may name: http, https, or h2c (HTTP/2 without TLS). */
export function checkUpstreamScheme(raw: string): Check<UpstreamScheme> {
  const s = raw.trim().toLowerCase();
  if (s === 'http' || s === 'https' || s === 'h2c') return { ok: true, value: s };
  return { ok: false, expected: 'http, https or h2c' };
}
