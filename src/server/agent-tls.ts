// The agent channel's TLS: Berth's own CA (made once, kept in the store so that replicas sharing
// it present one CA) or the operator's chain, and the HTTPS listener on --agent-listen that
// serves only the agent WebSocket. Agent links never pass through Caddy, which closes proxied
// WebSockets on every config change.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { isIP } from 'node:net';
import { hostname, networkInterfaces } from 'node:os';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { Listen } from '../config.js';
import { errorMessage, UserError } from '../errors.js';
import type { Store } from '../store/store.js';
import {
  type CertKey,
  createCa,
  issueServerCert,
  showPin,
  spkiPin,
  splitPem,
  subjectAltNames,
} from '../tls/ca.js';
import { AGENT_LISTENER_TLS } from '../tls/ciphers.js';

/** Where the CA lives in the store's meta area: `{"cert": PEM, "key": PEM}`. */
export const CA_META_KEY = 'agent_tls_ca';
/** The server certificate is re-issued this often (valid four times as long), without a restart. */
const REISSUE_MS = 24 * 3_600_000;
const LEAF_DAYS = 4;

export interface AgentTlsOptions {
  /** undefined: `--agent-listen off`. */
  listen?: Listen;
  /** --public-name: names and addresses agents use to reach this server. */
  publicNames: string[];
  /** --agent-tls-cert / --agent-tls-key: the operator's chain instead of Berth's CA. */
  certFile?: string;
  keyFile?: string;
  /** How long a connection may take to send a request's head (tests shorten it). */
  headTimeoutMs?: number;
}

/**
 * A connection that has not sent its request head by then is closed (408), checked every
 * second: only agents' upgrades come here, each a few hundred bytes, and a connection that sends
 * nothing or a head a byte at a time holds a socket and a TLS session until then. (Node's own
 * defaults are 60 s, checked every 30 s.) The TLS handshake itself has as long.
 */
const AGENT_HEAD_TIMEOUT_MS = 10_000;

export interface AgentTlsInfo {
  /** SHA-256 of the CA's public key (base64url), as the key string carries it. */
  pin: string;
  /** URLs agents can use, for `keys create` and the UI. */
  urls: string[];
  /** 'berth': Berth's own CA; 'operator': --agent-tls-cert. */
  ca: 'berth' | 'operator';
  names: string[];
  /** The server certificate's expiry (ISO). */
  validTo: string;
}

export interface AgentTls {
  info: AgentTlsInfo;
  /** Starts the HTTPS listener; `attach` gets the server (the hub's upgrade handler). */
  listen(attach: (server: Server) => void): Promise<void>;
  close(): Promise<void>;
}

/** The listener's TLS settings (the same again when the certificate is re-issued). */
const tlsOf = (c: CertKey) => ({
  cert: c.cert,
  key: c.key,
  minVersion: 'TLSv1.2' as const,
  ...AGENT_LISTENER_TLS,
});

/** Loads (or makes) the CA and the server certificate. Throws a UserError naming the problem. */
export async function prepareAgentTls(
  o: AgentTlsOptions,
  store: Store,
  logger: Logger,
): Promise<AgentTls | undefined> {
  if (!o.listen) return undefined;
  const listen = o.listen;
  const names = certificateNames(o.publicNames, listen.host);
  let issue: () => CertKey;
  let pin: string;
  let ca: AgentTlsInfo['ca'];
  if (o.certFile && o.keyFile) {
    const chain = readFileSync(o.certFile, 'utf8');
    const key = readFileSync(o.keyFile, 'utf8');
    const certs = splitPem(chain);
    if (certs.length === 0)
      throw new UserError('CONFIG_INVALID', `--agent-tls-cert ${o.certFile}: no PEM certificate in it`);
    try {
      createSecureContext({ cert: chain, key });
    } catch (err) {
      throw new UserError('CONFIG_INVALID', `--agent-tls-cert/--agent-tls-key: ${errorMessage(err)}`);
    }
    // The last certificate of the chain given is the one pinned: the CA (or intermediate) the
    // operator controls; agents may also trust it with --ca-file.
    pin = spkiPin(certs[certs.length - 1]!);
    issue = () => ({ cert: chain, key });
    ca = 'operator';
  } else {
    const own = await loadCa(store, logger);
    pin = spkiPin(own.cert);
    issue = () => issueServerCert(own, { names, days: LEAF_DAYS });
    ca = 'berth';
  }
  let current = issue();
  const validTo = () => new X509Certificate(current.cert).validTo;
  const info: AgentTlsInfo = {
    pin,
    urls: agentUrls(o.publicNames, listen),
    ca,
    names: ca === 'berth' ? names : [],
    validTo: validTo(),
  };
  let server: Server | undefined;
  let timer: NodeJS.Timeout | undefined;
  return {
    info,
    async listen(attach) {
      const head = o.headTimeoutMs ?? AGENT_HEAD_TIMEOUT_MS;
      const limits = {
        handshakeTimeout: AGENT_HEAD_TIMEOUT_MS,
        headersTimeout: head,
        requestTimeout: head,
        connectionsCheckingInterval: Math.min(1_000, head),
      };
      const s = createServer({ ...tlsOf(current), ...limits }, (_req, res) => {
        // Only the agent WebSocket lives here (its upgrade never reaches this handler).
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end('{"error":{"code":"NOT_FOUND","message":"this listener serves only the agent WebSocket"}}');
      });
      s.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'agent TLS handshake failed'));
      attach(s);
      await new Promise<void>((resolve, reject) => {
        s.once('error', (err) =>
          reject(
            new UserError('CONFIG_INVALID', `--agent-listen ${listen.host}:${listen.port}: ${err.message}`),
          ),
        );
        s.listen({ host: listen.host || '0.0.0.0', port: listen.port }, () => resolve());
      });
      server = s;
      if (ca === 'berth') {
        timer = setInterval(() => {
          current = issue();
          s.setSecureContext(tlsOf(current));
          info.validTo = validTo();
        }, REISSUE_MS);
        timer.unref();
      }
      logger.info(
        {
          agentListen: `${listen.host || '0.0.0.0'}:${listen.port}`,
          pin: showPin(pin),
          ca,
          names: info.names,
        },
        'agent TLS listener running',
      );
    },
    async close() {
      clearInterval(timer);
      if (!server) return;
      const s = server;
      s.closeAllConnections?.();
      // Agents were told to go (1001); one that does not answer must not hold the stop up.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 2_000);
        s.close(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

/** The CA from the store, or a new one claimed there (a replica starting at the same time may win). */
async function loadCa(store: Store, logger: Logger): Promise<CertKey> {
  let stored = await store.getMeta(CA_META_KEY);
  if (stored === undefined) {
    const made = createCa();
    stored = await store.claimMeta(CA_META_KEY, JSON.stringify(made));
    if (stored === JSON.stringify(made))
      logger.info({ pin: showPin(spkiPin(made.cert)) }, 'created the agent CA');
  }
  let ca: CertKey;
  try {
    ca = JSON.parse(stored);
    if (typeof ca.cert !== 'string' || typeof ca.key !== 'string') throw new Error('not {cert, key}');
    createSecureContext({ cert: ca.cert, key: ca.key });
  } catch (err) {
    // Never the value itself: it holds the CA's private key.
    throw new UserError(
      'CONFIG_INVALID',
      `the agent CA in the store is unreadable (${errorMessage(err).slice(0, 80)})`,
    );
  }
  const c = new X509Certificate(ca.cert);
  const left = new Date(c.validTo).getTime() - Date.now();
  if (left < 90 * 86_400_000)
    logger.warn(
      { validTo: c.validTo },
      left < 0
        ? 'the agent CA has expired: agents refuse this server; give --agent-tls-cert/--agent-tls-key'
        : 'the agent CA expires within 90 days',
    );
  return ca;
}

/** The names a server certificate covers: --public-name, the listen address (all of them for 0.0.0.0), loopback. */
export function certificateNames(publicNames: readonly string[], listenHost: string): string[] {
  const out = new Set<string>(publicNames.map((n) => n.replace(/^\[|\]$/g, '')));
  const wildcard = listenHost === '' || listenHost === '0.0.0.0' || listenHost === '::';
  if (!wildcard) out.add(listenHost);
  else {
    for (const list of Object.values(networkInterfaces()))
      for (const a of list ?? []) if (!a.address.startsWith('fe80:')) out.add(a.address);
    // The machine's name, when a certificate can carry it (found, not given: never fatal).
    const h = hostname();
    try {
      subjectAltNames([h]);
      out.add(h);
    } catch {
      // e.g. an underscore: agents use an address or --public-name
    }
  }
  out.add('localhost');
  out.add('127.0.0.1');
  out.add('::1');
  return [...out];
}

function agentUrls(publicNames: readonly string[], listen: Listen): string[] {
  const hostOf = (h: string) => (isIP(h) === 6 ? `[${h}]` : h);
  const hosts =
    publicNames.length > 0
      ? publicNames
      : listen.host && listen.host !== '0.0.0.0' && listen.host !== '::'
        ? [listen.host]
        : [hostname()];
  return hosts.map((h) => `https://${hostOf(h.replace(/^\[|\]$/g, ''))}:${listen.port}`);
}
