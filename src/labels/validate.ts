// Value checks shared by every label dialect (the ones the server shares too are in model/validate.ts). Each returns either the parsed value or an
// `expected` phrase that ends up in the diagnostic, so messages read the same everywhere.
import type { UpstreamScheme } from '../model/types.js';
import { type Check, checkCidrList, checkHostname, checkPath } from '../model/validate.js';

export { type Check, checkCidrList, checkHostname, checkPath };

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
