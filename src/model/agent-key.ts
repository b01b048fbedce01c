// The agent key string: one copy-pasteable word that carries the secret the server knows (by
// its hash) and, after a dot, the SHA-256 of the server's CA public key, which the agent checks
// before it sends the secret, as kubeadm's join token pins the cluster CA.
//
//   berth_agent_<32 base64url characters>                                  (before pins; still works)
//   berth_agent_<32 base64url characters>.<43 base64url characters>        (pinned)
//
// Only the part before the dot is ever sent; the pin never leaves the agent.

export interface AgentKey {
  /** What the server authenticates (and stores only as a hash). */
  secret: string;
  /** SHA-256 of the server CA's SubjectPublicKeyInfo, base64url; absent for keys made before pins. */
  pin?: string;
}

/** What servers have always issued is `berth_agent_` and 32 of these; older or hand-set keys may differ. */
const SECRET = /^[A-Za-z0-9_-]{1,256}$/;
const PIN = /^[A-Za-z0-9_-]{43}$/;

export class AgentKeyError extends Error {}

/** Parses a key string; a malformed one is an error that says what is wrong, never echoing it. */
export function parseAgentKey(text: string): AgentKey {
  const s = text.trim();
  if (s === '') throw new AgentKeyError('the agent key is empty');
  if (/\s/.test(s)) throw new AgentKeyError('the agent key contains white space: paste it as one word');
  const parts = s.split('.');
  if (parts.length > 2)
    throw new AgentKeyError(
      `the agent key has ${parts.length - 1} dots, expected at most one (secret.pin): copy the whole key berth keys create printed`,
    );
  const [secret, pin] = parts as [string, string | undefined];
  if (!SECRET.test(secret)) {
    throw new AgentKeyError(
      secret === ''
        ? 'the agent key has nothing before the dot: expected berth_agent_….<pin>'
        : `the agent key's secret is malformed (${secret.length} characters; expected berth_agent_ and letters, digits, - or _)`,
    );
  }
  if (pin === undefined) return { secret };
  if (!PIN.test(pin)) {
    throw new AgentKeyError(
      `the agent key's pin (after the dot) is malformed: expected 43 letters, digits, - or _, got ${pin.length} characters`,
    );
  }
  return { secret, pin };
}

export function formatAgentKey(k: AgentKey): string {
  return k.pin ? `${k.secret}.${k.pin}` : k.secret;
}
