// Hostname claims: what a key's domains allow, and which wildcards are too wide for anyone.
import { parse } from 'tldts';

/** `*.example.com` covers every name below example.com (and the wildcard itself); others match exactly. */
export function domainAllowed(host: string, domains: readonly string[]): boolean {
  if (domains.length === 0) return true;
  return domains.some((d) => domainCovers(d, host));
}

/** Whether one domain entry (exact, or `*.` wildcard) covers a hostname. */
export function domainCovers(domain: string, host: string): boolean {
  if (domain === host) return true;
  if (!domain.startsWith('*.')) return false;
  const suffix = domain.slice(1); // ".example.com"
  return host.endsWith(suffix) && host.length > suffix.length;
}

/**
 * A wildcard whose base is a public suffix (`*.com`, `*.co.uk`, `*.github.io`) would catch every
 * site under it: nobody may claim one. The list is the Public Suffix List, as packaged by tldts
 * (its ICANN and private sections). Names under a suffix the list does not know (`*.test`,
 * `*.localhost`, `*.lan`) are private to a network and stay allowed. Returns the suffix, or undefined.
 */
export function publicSuffixWildcard(host: string): string | undefined {
  if (!host.startsWith('*.')) return undefined;
  const base = host.slice(2);
  const p = parse(base, { allowPrivateDomains: true });
  if (p.isIp) return undefined;
  if (p.publicSuffix === base && (p.isIcann === true || p.isPrivate === true)) return base;
  return undefined;
}

/**
 * Which hostnames a set of route hosts (exact, or `*.` wildcards) covers, answered in time
 * proportional to the name's labels rather than to the number of routes.
 */
export class HostIndex {
  private readonly hosts: Set<string>;

  constructor(hosts: Iterable<string>) {
    this.hosts = new Set(hosts);
  }

  covers(name: string): boolean {
    if (this.hosts.has(name)) return true;
    // A wildcard covers every name below its base: a.b.example.com → *.b.example.com, *.example.com.
    for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) {
      if (this.hosts.has(`*${name.slice(dot)}`)) return true;
    }
    return false;
  }
}
