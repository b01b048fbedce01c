// Caddy 2.6 opens a new listening socket (SO_REUSEPORT) for every config it loads, then closes
// the old one. Linux resets the connections still waiting in the old socket's accept queue,
// unless net.ipv4.tcp_migrate_req is 1 (Linux 5.14+), which hands them to the new socket. Measured
// here, 4 clients on fresh connections through 200 loads: 84–151 of 3,000–9,300 requests reset
// with it off, 0–1 with it on. The setting belongs to a network namespace, and a Caddy whose admin
// API Berth reaches on loopback or a unix socket shares Berth's.
import { readFileSync, writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { errorMessage } from '../../errors.js';

export const TCP_MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';
const SETTING = 'net.ipv4.tcp_migrate_req';

/**
 * on: already 1; set: Berth made it 1; off: it is 0 (not allowed, or --keep-sysctls);
 * unsupported: the kernel has no such setting (older than 5.14, or not Linux).
 */
export type ReloadQueue = 'on' | 'set' | 'off' | 'unsupported';

/** Whether Caddy at this admin address shares this process's network namespace. */
export function isLocalCaddyAdmin(url: string): boolean {
  return /^unix:|^https?:\/\/(127\.[\d.]+|localhost|\[::1\])(:|\/|$)/.test(url);
}

/**
 * Makes Caddy's reloads keep the connections waiting to be accepted: sets net.ipv4.tcp_migrate_req
 * to 1 unless told to change nothing (or not allowed), and warns, naming the fix, when it stays 0.
 */
export function ensureReloadQueue(o: {
  change: boolean;
  logger: Logger;
  /** Another file than the kernel's, and how it is written: for tests. */
  path?: string;
  write?: (path: string, text: string) => void;
}): ReloadQueue {
  const path = o.path ?? TCP_MIGRATE_REQ;
  let value: string;
  try {
    value = readFileSync(path, 'utf8').trim();
  } catch {
    if (process.platform === 'linux') {
      o.logger.warn(
        { setting: SETTING },
        `this kernel has no ${SETTING} (Linux 5.14+): each Caddy reload resets the connections waiting to be accepted`,
      );
    }
    return 'unsupported';
  }
  if (value !== '0') return 'on';
  const fix = `set ${SETTING}=1 (sysctl -w ${SETTING}=1, or docker run --sysctl ${SETTING}=1)`;
  if (!o.change) {
    o.logger.warn(
      { setting: SETTING, value },
      `${SETTING} is 0 and --keep-sysctls is set: each Caddy reload resets the connections waiting to be accepted; ${fix}`,
    );
    return 'off';
  }
  try {
    (o.write ?? writeFileSync)(path, '1\n');
  } catch (err) {
    o.logger.warn(
      { setting: SETTING, value, err: errorMessage(err) },
      `${SETTING} is 0 and Berth may not change it: each Caddy reload resets the connections waiting to be accepted; ${fix}`,
    );
    return 'off';
  }
  o.logger.info(
    { setting: SETTING, was: value, now: '1' },
    `set ${SETTING} to 1 in this network namespace, so that Caddy's reloads hand waiting connections to the new listener instead of resetting them (--keep-sysctls leaves it alone)`,
  );
  return 'set';
}
