// Where an agent's routes may send the front door's traffic. An upstream is the agent's word, so
// without a check any agent could point a hostname at the server's own admin API, at a cloud
// metadata service, or at another host on the server's network (SSRF). Pure. A Swarm leader's
// task routes are checked with the checker of the agent on the task's node (policy.ts, swarm.ts).
import { isIP } from 'node:net';
import { type Cidr, canonicalIp, cidrsContain, parseCidr } from '../model/cidr.js';
import { isTunnelAddress, TUNNEL_NET } from '../model/tunnel.js';

/** One of the server's own listeners: never an upstream. `host` undefined: any address of this machine. */
export interface ProtectedEndpoint {
  host?: string;
  port: number;
  what: string;
}

export interface UpstreamRules {
  protected: readonly ProtectedEndpoint[];
  /** The addresses of this machine (loopback, its interfaces): where "any address" listeners are. */
  localAddresses: ReadonlySet<string>;
}

/** What the server knows of an agent, for deciding where its routes may point. */
export interface UpstreamSubject {
  kind: 'local' | 'remote';
  /** The agent's address as the server saw its connection (through trusted proxies). */
  seenFrom?: string;
  /** The address the agent reports for its host (used only before the server has seen it connect). */
  hostIp?: string;
  /** Extra networks the agent's key allows (`--upstreams`). */
  upstreams?: readonly string[];
  /**
   * `berth agent --tunnel`: the agent itself dials its upstreams, from its own host, so they are
   * addresses on the agent's side, not this server's network.
   */
  tunnel?: boolean;
}

const cidrs = (list: string[]) => list.map((c) => parseCidr(c)!);
/** Never reachable through the front door: link-local (cloud metadata lives there), "this network", multicast, broadcast. */
const NEVER = cidrs([
  '0.0.0.0/8',
  '169.254.0.0/16',
  '100.100.100.200/32', // Alibaba Cloud metadata
  '224.0.0.0/4',
  '255.255.255.255/32',
  '::/128',
  'fe80::/10',
  'fd00:ec2::254/128', // AWS metadata over IPv6
  'ff00::/8',
]);
const LOOPBACK = cidrs(['127.0.0.0/8', '::1/128']);

const parsedLists = new Map<string, Cidr[]>();
function networks(list: readonly string[]): Cidr[] {
  const key = list.join(',');
  let c = parsedLists.get(key);
  if (!c) {
    c = list.map((x) => parseCidr(x)).filter((x): x is Cidr => x !== undefined);
    if (parsedLists.size > 1_000) parsedLists.clear();
    parsedLists.set(key, c);
  }
  return c;
}

/** An address in its one spelling (an IPv4-mapped one as IPv4), so that no other spelling slips past a check; a name as it is. */
const plain = (a: string) => canonicalIp(a) ?? a;

/** What is known of one upstream host, whatever the port: decided once per host. */
interface HostVerdict {
  host: string;
  /** Why no port of it may be used (a name, link-local, not the agent's), if so. */
  never?: (where: string) => string;
  /** It is an address of this machine (for listeners bound to every address). */
  local: boolean;
  loopback: boolean;
  /** Why a remote agent may not name it (another host), if so; the server's listeners come first. */
  notMine?: (where: string) => string;
  /** On another machine (a tunnel agent's side): this server's listeners are not there. */
  elsewhere?: boolean;
}

/**
 * A checker for one agent's upstreams: why the front door must not send a route's traffic to
 * host:port, or undefined when it may. Every agent: an IP address (a name could resolve
 * anywhere), never link-local or metadata, never one of the server's own listeners. A remote
 * agent also only its own host: the address it connected from (any loopback address when that
 * is loopback, i.e. it runs on this machine), or a network its key allows. The local agent of
 * `standalone` may use its containers' addresses. A host's verdict is worked out once per
 * checker, since an agent's routes mostly share one host.
 */
export function upstreamChecker(
  agent: UpstreamSubject,
  rules: UpstreamRules,
): (host: string, port: number) => string | undefined {
  const verdicts = new Map<string, HostVerdict>();
  const localAddresses = rules.localAddresses;
  const from = agent.seenFrom ? plain(agent.seenFrom) : undefined;
  const onThisMachine = from !== undefined && (cidrsContain(LOOPBACK, from) || localAddresses.has(from));
  const judge = (hostRaw: string): HostVerdict => {
    const host = plain(hostRaw);
    if (isIP(host) === 0) {
      return {
        host,
        local: false,
        loopback: false,
        never: () =>
          `upstream ${host} is a name, not an IP address; the front door sends traffic only to addresses (a name could resolve anywhere)`,
      };
    }
    const loopback = cidrsContain(LOOPBACK, host);
    const v: HostVerdict = { host, loopback, local: loopback || localAddresses.has(host) };
    if (cidrsContain(NEVER, host)) {
      v.never = (where) =>
        `upstream ${where} is a link-local, metadata or broadcast address; the front door never sends traffic there`;
    } else if (isTunnelAddress(host)) {
      v.never = (where) =>
        `upstream ${where} is in ${TUNNEL_NET}, where this server keeps its tunnel endpoints; no route may point there`;
    } else if (agent.tunnel) {
      // Dialed by the agent on its host: the server's own listeners are in reach only when the
      // agent runs on this machine.
      if (!onThisMachine) v.elsewhere = true;
    } else if (agent.kind !== 'local' && !agentMay(agent, host, loopback)) {
      const from = agent.seenFrom ? plain(agent.seenFrom) : undefined;
      const allowed = [from ?? agent.hostIp, ...(agent.upstreams ?? [])].filter(Boolean).join(', ');
      v.notMine = (where: string) =>
        `upstream ${where} is not this agent's host (the agent connects from ${from ?? 'an unknown address'}); its key allows ${allowed || 'no other address'} (berth keys update <key> --upstreams <networks> allows more)`;
    }
    return v;
  };
  return (hostRaw, port) => {
    let v = verdicts.get(hostRaw);
    if (!v) {
      v = judge(hostRaw);
      verdicts.set(hostRaw, v);
    }
    const where = `${v.host.includes(':') ? `[${v.host}]` : v.host}:${port}`;
    if (v.never) return v.never(where);
    if (v.elsewhere) return undefined;
    for (const p of rules.protected) {
      if (p.port !== port) continue;
      const anyAddress = p.host === undefined || isUnspecified(p.host);
      const hit = anyAddress ? v.local : p.host === 'localhost' ? v.loopback : plain(p.host ?? '') === v.host;
      if (hit) return `upstream ${where} is this server's own ${p.what}; no route may point there`;
    }
    return v.notMine?.(where);
  };
}

/**
 * Why a TCP route may not listen on `port` of this machine: one of the server's own listeners is
 * there (the front door, the API, the agent listener, DNS, a local store or Caddy admin API).
 * Bound first (after a restart, or while Caddy is down), the route's listener would take that
 * port from its owner, and with it, say, every HTTPS site. Listeners on other machines (a remote
 * Redis) are no conflict.
 */
export function listenRefusal(port: number, rules: UpstreamRules): string | undefined {
  for (const p of rules.protected) {
    if (p.port !== port) continue;
    const host = p.host === undefined ? undefined : plain(p.host);
    const here =
      host === undefined ||
      isUnspecified(host) ||
      host === 'localhost' ||
      cidrsContain(LOOPBACK, host) ||
      rules.localAddresses.has(host);
    if (here) return `TCP port ${port} is this server's own ${p.what}; no TCP route may listen there`;
  }
  return undefined;
}

/** One upstream, checked on its own (tests, one-off checks). */
export function upstreamRefusal(
  host: string,
  port: number,
  agent: UpstreamSubject,
  rules: UpstreamRules,
): string | undefined {
  return upstreamChecker(agent, rules)(host, port);
}

/** Whether a remote agent may name this host at all (its own address, or a network its key allows). */
function agentMay(agent: UpstreamSubject, host: string, loopback: boolean): boolean {
  if (agent.upstreams && cidrsContain(networks(agent.upstreams), host)) return true;
  const from = agent.seenFrom ? plain(agent.seenFrom) : undefined;
  // Recorded before the server kept the agent's address: its reported host IP, until it reconnects.
  if (from === undefined) return agent.hostIp !== undefined && plain(agent.hostIp) === host;
  return from === host || (loopback && cidrsContain(LOOPBACK, from));
}

function isUnspecified(h: string): boolean {
  const c = plain(h);
  return h === '' || c === '0.0.0.0' || c === '::';
}
