// The agent's TLS connection to the server, made and checked before the WebSocket handshake
// (which carries the key) is written: with a pin, the chain must hold the pinned CA; with
// --ca-file, it must chain to that CA; otherwise to the system's CAs. Only a socket that passed
// is handed to the WebSocket.
import { isIP, type OnReadOpts } from 'node:net';
import { connect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { AGENT_CHANNEL_CIPHERS } from '../tls/ciphers.js';
import { ChainError, type ChainProblem, peerX509Chain, pinnedChainCheck } from '../tls/verify.js';

export interface ServerTrust {
  pin?: string;
  ca?: string;
  caFile?: string;
}

export class DialError extends Error {
  constructor(
    readonly problem: ChainProblem | 'untrusted' | 'network',
    message: string,
  ) {
    super(message);
  }
}

/**
 * The TLS settings every connection to the server shares (the trusted CAs, the suites in the
 * agent's order: tls/ciphers.ts), made once: a context
 * per connection is memory and handshake time that a --tunnel agent, which opens one connection
 * per stream, pays for every stream. One entry: an agent trusts one server's CA at a time.
 */
let shared: { ca: string | undefined; context: SecureContext } | undefined;
function secureContextFor(ca: string | undefined): SecureContext {
  if (shared && shared.ca === ca) return shared.context;
  const context = createSecureContext({ ...(ca ? { ca } : {}), ciphers: AGENT_CHANNEL_CIPHERS });
  shared = { ca, context };
  return context;
}

/** The pinned check of every connection to the server (the same chain each time, checked once). */
const checkPinned = pinnedChainCheck();

/**
 * The TLS session a tunnel's data connection resumes: the latest ticket from a connection that
 * passed the check below, to the same server under the same trust. Only the server that issued it
 * can complete a resumed handshake (it must hold the ticket's key to learn the session's secret,
 * RFC 8446 §2.2), so a resumed connection is the checked server's and is not checked again (it
 * carries no certificates to check). It skips the certificate, its check and the signatures: less
 * CPU and transient memory per stream. The agent link always makes a full handshake, so the
 * chain (and its validity) is checked at every connect; a server that cannot resume (restarted,
 * another replica) makes a full one too, checked as ever.
 */
let resumable: { id: string; session: Buffer } | undefined;
const sessionKey = (host: string, port: number, trust: ServerTrust) =>
  JSON.stringify([host, port, trust.pin ?? null, trust.ca ?? null]);

/**
 * A TLS socket to `url`'s host and port whose certificate passed the agent's check; with `onread`,
 * its decrypted reads go to that instead of 'data' events (a tunnel's data connection). With
 * `resume`, it resumes the session of an earlier checked connection where the server agrees.
 */
export function secureDial(
  url: URL,
  trust: ServerTrust,
  timeoutMs = 10_000,
  onread?: OnReadOpts,
  resume = false,
): Promise<TLSSocket> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 443);
  const pinned = trust.pin !== undefined && trust.ca === undefined;
  const id = sessionKey(host, port, trust);
  const session = resume && resumable?.id === id ? resumable.session : undefined;
  return new Promise((resolve, reject) => {
    const socket = connect({
      host,
      port,
      ...(isIP(host) ? {} : { servername: host }),
      ALPNProtocols: ['http/1.1'],
      // With a pin the chain is checked below, against the pin, before anything is written.
      rejectUnauthorized: !pinned,
      secureContext: secureContextFor(trust.ca),
      ...(onread ? { onread } : {}),
      ...(session ? { session } : {}),
    });
    // Tickets are kept only from a connection that passed the check (one may come before it ends).
    let passed = false;
    let ticket: Buffer | undefined;
    socket.on('session', (s: Buffer) => {
      if (passed) resumable = { id, session: s };
      else ticket = s;
    });
    const timer = setTimeout(
      () => fail(new DialError('network', `TLS handshake with ${host}:${port} timed out`)),
      timeoutMs,
    );
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', (err: Error & { code?: string }) => {
      if (err instanceof DialError) return fail(err);
      const tlsProblem = err.code && /CERT|SELF_SIGNED|UNABLE_TO|HOSTNAME|ERR_TLS/.test(err.code);
      fail(
        tlsProblem
          ? new DialError(
              'untrusted',
              `the server's certificate is not trusted: ${err.message}${trust.caFile ? ` (checked against --ca-file ${trust.caFile})` : trust.pin ? '' : " (checked against the system's CAs: this key has no pin; use a key from berth keys create or berth keys show, or --ca-file)"}`,
            )
          : new DialError('network', `cannot reach ${host}:${port}: ${err.message}`),
      );
    });
    socket.once('secureConnect', () => {
      // A resumed session was the checked server's (see `resumable`), and shows no chain.
      if (pinned && !(session && socket.isSessionReused())) {
        try {
          checkPinned(peerX509Chain(socket), trust.pin!, host);
        } catch (err) {
          if (err instanceof ChainError) return fail(new DialError(err.problem, err.message));
          return fail(err as Error);
        }
      }
      clearTimeout(timer);
      passed = true;
      if (ticket) resumable = { id, session: ticket };
      socket.removeAllListeners('error');
      socket.on('error', () => {}); // the WebSocket's own handler reports what follows
      resolve(socket);
    });
  });
}
