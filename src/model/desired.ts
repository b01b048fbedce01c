// What the front door should serve: the reconciler's merge produces these, and the data-plane
// adapters (Caddy, the DNS table, the TCP forwarder) consume them. Plain data, no behaviour.
import type { Upstream } from './types.js';

/** One (host, path) the front door serves, and the routes that put it there. */
export interface Site {
  host: string;
  path: string;
  stripPath: boolean;
  upstreams: Upstream[];
  /** Client networks allowed (the winning route's); absent means everyone. */
  allow?: string[];
  /** Global route keys (`agentId:routeId`) whose upstreams are in this unit. */
  routeKeys: string[];
}

/**
 * How a site list differs from an earlier one (`since`, by identity): sites are never changed in
 * place, so a site that changed is a removed object and an added one. Consumers that kept state
 * for `since` patch it; any other consumer reads the whole list.
 */
export interface SiteChanges {
  since: readonly Site[];
  added: readonly Site[];
  removed: readonly Site[];
}

/** One front-door TCP port and the containers behind it. */
export interface TcpListenerSite {
  listen: number;
  upstreams: { host: string; port: number }[];
  /** Networks whose clients may connect; empty means everyone. */
  allow: string[];
  routeKeys: string[];
}

/**
 * A site's identity by content: equal sites give equal strings, without hashing. What a target
 * serves or quarantined is reported by these, so route views and replicas compare by them too.
 */
export function siteSignature(s: Site): string {
  // Sites are never changed once made, and the desired state keeps those it did not touch: at
  // 50k sites, each pass would otherwise make every signature again.
  let sig = signatures.get(s);
  if (sig === undefined) {
    sig = `${s.host} ${s.path} ${s.stripPath ? 's' : '-'} ${s.upstreams.map((u) => `${u.scheme}://${u.host}:${u.port}`).join(',')}${s.allow ? ` allow=${s.allow.join(',')}` : ''}`;
    signatures.set(s, sig);
  }
  return sig;
}

const signatures = new WeakMap<Site, string>();
