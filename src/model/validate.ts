// Value checks the whole system shares: the label parsers on the agent, and the server's checks
// of what agents send and of key settings. Each returns either the parsed value or an
// `expected` phrase that ends up in the error, so messages read the same everywhere.
import { isIP } from 'node:net';
import { parseCidrList } from './cidr.js';
import { MAX_CIDRS, MAX_STRING } from './limits.js';

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
