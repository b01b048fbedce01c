// The admin token. Only its SHA-256 is stored; the token itself is shown once and written to a
// 0600 file in the data dir for the local CLI.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Store } from '../store/store.js';

export const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex');

export function tokenMatches(presented: string, hashHex: string): boolean {
  const a = Buffer.from(hashToken(presented), 'hex');
  const b = Buffer.from(hashHex, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

export interface AdminTokenResult {
  hash: string;
  /** Set only when a token was generated now: the one time it can be shown. */
  generated?: string;
}

export async function ensureAdminToken(
  store: Store,
  dataDir: string,
  fromEnv?: string,
): Promise<AdminTokenResult> {
  if (fromEnv) return { hash: hashToken(fromEnv) };
  const existing = await store.getMeta('admin_token_sha256');
  if (existing) return { hash: existing };
  const token = `berth_admin_${randomBytes(24).toString('base64url')}`;
  const hash = hashToken(token);
  writeFileSync(join(dataDir, 'admin.token'), `${token}\n`, { mode: 0o600 });
  await store.setMeta('admin_token_sha256', hash);
  return { hash, generated: token };
}
