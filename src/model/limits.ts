// Sizes every part of Berth agrees on. The agent's label parser keeps what it reports inside
// these, and the server's schemas refuse what is outside them, so a snapshot an honest agent
// builds is never refused, and a bad container is reported on that container alone.

/** A label value longer than this is an error on its container, never parsed. */
export const MAX_LABEL_VALUE = 64 * 1024;
/** Labels on one container that are read at all (Docker allows more; routing never needs them). */
export const MAX_LABELS_PER_CONTAINER = 1_000;
/** Ids, names, hostnames, upstream hosts and other short strings. */
export const MAX_STRING = 1_024;
/** Hostnames one route may serve. */
export const MAX_HOSTS_PER_ROUTE = 100;
/** A diagnostic's message, and the label value shown beside it. */
export const MAX_MESSAGE = 4_096;
/** Exec rules reported per container (each at most MAX_STRING). */
export const MAX_EXEC_RULES = 64;
/** Label explanations per container in a snapshot. */
export const MAX_EXPLAINED_LABELS = 1_000;
/** Client networks in one allow-list. */
export const MAX_CIDRS = 256;
/**
 * Bytes (as JSON) of the routes one container adds to a snapshot: beyond it the container is an
 * error. Together with the next one this bounds what one container can add to a snapshot.
 */
export const MAX_ROUTE_BYTES_PER_CONTAINER = 192 * 1024;
/** Bytes (as JSON) of one container's diagnostics and explanation; beyond it the rest is summarised. */
export const MAX_REPORT_BYTES_PER_CONTAINER = 64 * 1024;

/** Whole-snapshot bounds. */
export const MAX_CONTAINERS = 100_000;
export const MAX_ROUTES = 100_000;
export const MAX_TCP_ROUTES = 10_000;
export const MAX_DIAGNOSTICS = 100_000;
/** Nodes of one swarm a leader's agent may report. */
export const MAX_SWARM_NODES = 10_000;

/** One agent message, checked before it is parsed (`--agent-max-message` on the server). */
export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

/** Clips text to at most `max` characters, marking the cut (never inside a surrogate pair). */
export function clip(s: string, max: number): string {
  if (s.length <= max) return s;
  let end = max - 1;
  const last = s.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${s.slice(0, end)}…`;
}
