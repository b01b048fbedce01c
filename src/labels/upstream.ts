import type { ContainerInfo } from '../model/types.js';

export interface AddressContext {
  /** The address at which this host's containers (published or host-network ports) are reached. */
  hostIp: string;
  /** Default network for containers on several networks (`--network`). */
  network?: string;
}

export type Resolved = { ok: true; host: string; port: number } | { ok: false; message: string };

const WILDCARD = new Set(['', '0.0.0.0', '::']);

/**
 * Where the front door reaches a container port, in order of preference:
 * a published port (on the host IP, or the specific address it is bound to), the port itself on
 * the host IP for host-network containers, else the container's IP on the chosen network.
 */
export function resolveAddress(
  c: ContainerInfo,
  port: number,
  ctx: AddressContext,
  networkLabel?: string,
): Resolved {
  const bound = c.ports.find((p) => p.privatePort === port && p.type === 'tcp' && p.publicPort);
  if (bound?.publicPort) {
    const ip = bound.ip ?? '';
    return { ok: true, host: WILDCARD.has(ip) ? ctx.hostIp : ip, port: bound.publicPort };
  }
  if (c.networkMode === 'host') return { ok: true, host: ctx.hostIp, port };

  const names = Object.keys(c.networks).filter((n) => c.networks[n]);
  const wanted = networkLabel ?? ctx.network;
  let name: string | undefined;
  if (wanted) {
    name = wanted;
  } else if (names.length === 1) {
    name = names[0];
  } else if (names.length === 0) {
    return {
      ok: false,
      message: `port ${port} is not published and the container has no network address; publish it or use --network host`,
    };
  } else {
    return {
      ok: false,
      message: `port ${port} is not published and the container is on several networks (${names.join(', ')}); set the network label or --network`,
    };
  }
  // Its own networks only: berth.network=constructor must not find what every object has.
  const ip = name && Object.hasOwn(c.networks, name) ? c.networks[name] : undefined;
  if (!ip) {
    return {
      ok: false,
      message: `container has no address on network "${name}" (its networks: ${names.join(', ') || 'none'})`,
    };
  }
  return { ok: true, host: ip, port };
}

/** The container's only exposed TCP port, used when no port label is given. */
export function onlyExposedPort(
  c: ContainerInfo,
): { ok: true; port: number } | { ok: false; ports: number[] } {
  const list = exposedPorts(c);
  return list.length === 1 ? { ok: true, port: list[0]! } : { ok: false, ports: list };
}

/** Every exposed or published TCP container port, lowest first. */
export function exposedPorts(c: ContainerInfo): number[] {
  const ports = new Set<number>(c.exposed);
  for (const p of c.ports) if (p.type === 'tcp') ports.add(p.privatePort);
  return [...ports].sort((a, b) => a - b);
}
