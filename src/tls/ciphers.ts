// The cipher suites of the agent channel (the agent WebSocket and a --tunnel agent's data
// connections), shared by both ends. AES-128-GCM goes first: with AES instructions it costs about
// a fifth less CPU than AES-256-GCM (what Node puts first), which a tunnel pays per byte, and its
// security margin is ample. AES-256-GCM and ChaCha20-Poly1305 stay offered; TLS 1.2 only with
// ECDHE and an AEAD, for an RSA or an EC certificate (an operator's chain may be either).
import { constants } from 'node:crypto';

export const AGENT_CHANNEL_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * The listener's side. A Node server picks by its own order, not the client's, so the order above
 * takes effect here, for old agents too; a client that lists ChaCha20 first (one without AES
 * instructions, where it is the faster) still gets it.
 */
export const AGENT_LISTENER_TLS = Object.freeze({
  ciphers: AGENT_CHANNEL_CIPHERS,
  honorCipherOrder: true,
  secureOptions: constants.SSL_OP_PRIORITIZE_CHACHA,
});
