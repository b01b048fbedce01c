// A tiny authoritative DNS responder for Caddy's dynamic upstreams. Caddy asks, per request,
// for the SRV records of `<request host>.<zone>`; Berth answers from its route table, so a
// container starting, stopping or moving changes where traffic goes without touching Caddy's
// config (no re-provision, no closed WebSockets). SRV targets are names under the zone that
// this responder also answers with A/AAAA records, because Caddy dials them through the same
// resolver. An unknown host gets an answer naming the not-found listener: Caddy caches it for its
// refresh (1 s) like any answer, so a host nobody routes costs one query a second, not one per
// request. That listener (sidecar.ts) looks the host up again per request and forwards to the
// route that appeared meanwhile, so a route is live at once even for a host asked for before.
// UDP and TCP (RFC 1035 framing), questions of one name, no recursion, no EDNS beyond ignoring it.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { isIPv4, isIPv6, type Server, createServer as tcpServer } from 'node:net';
import { toBits } from '../../model/cidr.js';

const TYPE = { A: 1, AAAA: 28, SRV: 33, ANY: 255 } as const;
const RCODE = { OK: 0, FORMERR: 1, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

export interface SrvTarget {
  /** An IP address; the responder turns it into a name under the zone. */
  host: string;
  port: number;
}

/** Where each hostname goes; `*.example.com` entries match names below example.com. */
export type HostTable = Map<string, SrvTarget[]>;

export interface DnsResponderOptions {
  /** e.g. "berth.internal": Caddy asks for `<host>.berth.internal`. */
  zone: string;
  /** What unknown hosts resolve to (Berth's 404 listener). */
  notFound: SrvTarget;
  /**
   * Answer unknown hosts with `notFound` (cached by Caddy) instead of a name error (never cached,
   * asked again per request). Only when that listener forwards routes that appear meanwhile.
   */
  answerUnknown?: boolean;
  ttlSeconds?: number;
}

export class DnsResponder {
  private table: HostTable = new Map();
  private udp?: UdpSocket;
  private tcp?: Server;
  private readonly zone: string;
  readonly stats = { queries: 0, answered: 0, notFound: 0, errors: 0 };

  constructor(private readonly o: DnsResponderOptions) {
    this.zone = o.zone.toLowerCase().replace(/\.$/, '');
  }

  /** Replaces the whole table at once; answers after this call use the new one. */
  setTable(table: HostTable): void {
    this.table = table;
  }

  /** Listens on UDP and TCP at host:port (port 0: any free port, the same for both). */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const tcp = tcpServer((sock) => this.serveTcp(sock));
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen({ host, port, exclusive: true }, () => resolve());
    });
    const bound = (tcp.address() as { port: number }).port;
    const udp = createSocket(isIPv6(host) ? 'udp6' : 'udp4');
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind({ address: host, port: bound, exclusive: true }, () => resolve());
    });
    udp.on('message', (msg, rinfo) => {
      const reply = this.answer(msg, 512);
      if (reply) udp.send(reply, rinfo.port, rinfo.address);
    });
    udp.on('error', () => this.stats.errors++);
    this.udp = udp;
    this.tcp = tcp;
    return { host, port: bound };
  }

  async close(): Promise<void> {
    this.udp?.close();
    await new Promise<void>((r) => (this.tcp ? this.tcp.close(() => r()) : r()));
  }

  private serveTcp(sock: import('node:net').Socket): void {
    let buf = Buffer.alloc(0);
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const reply = this.answer(buf.subarray(2, 2 + len), 65_535);
        buf = buf.subarray(2 + len);
        if (!reply) continue;
        const framed = Buffer.alloc(2 + reply.length);
        framed.writeUInt16BE(reply.length, 0);
        reply.copy(framed, 2);
        sock.write(framed);
      }
    });
  }

  /** The whole query → response step; undefined for garbage that deserves no answer. */
  answer(query: Buffer, maxSize: number): Buffer | undefined {
    this.stats.queries++;
    const q = parseQuestion(query);
    if (!q) {
      this.stats.errors++;
      return query.length >= 12 ? header(query, RCODE.FORMERR, 0, 0) : undefined;
    }
    const name = q.name.toLowerCase();
    const suffix = `.${this.zone}`;
    if (!name.endsWith(suffix)) return respond(query, q, RCODE.REFUSED, []);
    const label = name.slice(0, -suffix.length);
    const notFoundBefore = this.stats.notFound;
    const records = this.records(label, q.type);
    if (!records) return respond(query, q, RCODE.NXDOMAIN, []);
    if (this.stats.notFound === notFoundBefore) this.stats.answered++;
    let reply = respond(query, q, RCODE.OK, records);
    // Too big for UDP: send what fits with TC set, so the client retries over TCP.
    if (reply.length > maxSize) reply = truncated(query, q);
    return reply;
  }

  private records(label: string, type: number): Buffer[] | undefined {
    const ttl = this.o.ttlSeconds ?? 1;
    // Address names: "ip-127-0-0-2" / "ip6-fd00--1" → the address itself.
    const addr = addressFromLabel(label);
    if (addr) {
      if (type === TYPE.A && isIPv4(addr)) return [rr(TYPE.A, ttl, ipv4(addr))];
      if (type === TYPE.AAAA && isIPv6(addr)) return [rr(TYPE.AAAA, ttl, ipv6(addr))];
      return [];
    }
    const targets = this.lookup(label);
    if (!targets) {
      this.stats.notFound++;
      // Without a listener that forwards late routes, an unknown host must be a name error:
      // Caddy caches answers for its refresh, and one for a host asked for just before its
      // route existed would keep the new route dark that long. An error is not cached.
      if (!this.o.answerUnknown || (type !== TYPE.SRV && type !== TYPE.ANY)) return undefined;
      return [rr(TYPE.SRV, ttl, srv(this.o.notFound.port, `${labelFor(this.o.notFound.host)}.${this.zone}`))];
    }
    if (type !== TYPE.SRV && type !== TYPE.ANY) return [];
    return targets.map((t) => rr(TYPE.SRV, ttl, srv(t.port, `${labelFor(t.host)}.${this.zone}`)));
  }

  /** Where `host` goes now (exact name, else the longest wildcard), if anywhere. */
  lookup(host: string): SrvTarget[] | undefined {
    const exact = this.table.get(host);
    if (exact) return exact;
    // The longest wildcard that covers the name: a.b.example.com → *.b.example.com, *.example.com.
    let dot = host.indexOf('.');
    while (dot >= 0) {
      const w = this.table.get(`*${host.slice(dot)}`);
      if (w) return w;
      dot = host.indexOf('.', dot + 1);
    }
    return undefined;
  }
}

/** "127.0.0.2" → "ip-127-0-0-2"; "fd00::1" → "ip6-fd00--1" (DNS labels cannot hold dots or colons). */
export function labelFor(ip: string): string {
  return isIPv4(ip) ? `ip-${ip.replace(/\./g, '-')}` : `ip6-${ip.toLowerCase().replace(/:/g, '-')}`;
}

export function addressFromLabel(label: string): string | undefined {
  if (label.startsWith('ip-')) {
    const ip = label.slice(3).replace(/-/g, '.');
    return isIPv4(ip) ? ip : undefined;
  }
  if (label.startsWith('ip6-')) {
    const ip = label.slice(4).replace(/-/g, ':');
    return isIPv6(ip) ? ip : undefined;
  }
  return undefined;
}

// ---- wire format

interface Question {
  name: string;
  type: number;
  /** Bytes of the question section, copied into the response. */
  raw: Buffer;
}

function parseQuestion(msg: Buffer): Question | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1 || (msg[2]! & 0x80) !== 0) return undefined;
  const labels: string[] = [];
  let i = 12;
  for (;;) {
    if (i >= msg.length) return undefined;
    const len = msg[i]!;
    if (len === 0) break;
    if (len > 63 || i + 1 + len > msg.length) return undefined; // no compression in questions
    labels.push(msg.toString('latin1', i + 1, i + 1 + len));
    i += 1 + len;
  }
  i++;
  if (i + 4 > msg.length) return undefined;
  const type = msg.readUInt16BE(i);
  return { name: labels.join('.'), type, raw: msg.subarray(12, i + 4) };
}

function header(query: Buffer, rcode: number, qd: number, an: number, tc = false): Buffer {
  const h = Buffer.alloc(12);
  query.copy(h, 0, 0, 2); // id
  // QR=1, opcode from the query, AA=1, TC, RD copied; RA=0.
  h[2] = 0x80 | (query[2]! & 0x78) | 0x04 | (tc ? 0x02 : 0) | (query[2]! & 0x01);
  h[3] = rcode & 0x0f;
  h.writeUInt16BE(qd, 4);
  h.writeUInt16BE(an, 6);
  return h;
}

function respond(query: Buffer, q: Question, rcode: number, answers: Buffer[]): Buffer {
  return Buffer.concat([header(query, rcode, 1, answers.length), q.raw, ...answers]);
}

function truncated(query: Buffer, q: Question): Buffer {
  return Buffer.concat([header(query, RCODE.OK, 1, 0, true), q.raw]);
}

/** A resource record whose name points back at the question (offset 12). */
function rr(type: number, ttl: number, rdata: Buffer): Buffer {
  const b = Buffer.alloc(12 + rdata.length);
  b.writeUInt16BE(0xc00c, 0);
  b.writeUInt16BE(type, 2);
  b.writeUInt16BE(1, 4); // IN
  b.writeUInt32BE(ttl, 6);
  b.writeUInt16BE(rdata.length, 10);
  rdata.copy(b, 12);
  return b;
}

function srv(port: number, target: string): Buffer {
  const name = encodeName(target);
  const b = Buffer.alloc(6 + name.length);
  b.writeUInt16BE(10, 0); // priority
  b.writeUInt16BE(10, 2); // weight
  b.writeUInt16BE(port, 4);
  name.copy(b, 6);
  return b;
}

function encodeName(name: string): Buffer {
  const parts = name.split('.').filter(Boolean);
  return Buffer.concat([
    ...parts.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, 'latin1')])),
    Buffer.from([0]),
  ]);
}

function ipv4(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

function ipv6(ip: string): Buffer {
  const bits = toBits(ip, 6);
  const b = Buffer.alloc(16);
  for (let i = 0; i < 16; i++) b[i] = Number((bits >> BigInt((15 - i) * 8)) & 0xffn);
  return b;
}
