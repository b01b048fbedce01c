// Which store a server uses: the SQLite file in its data dir, or the Redis that --store names.
import type { Logger } from 'pino';
import { SqliteStore } from './sqlite.js';
import type { Store } from './store.js';

export async function openStore(store: string | undefined, dataDir: string, logger: Logger): Promise<Store> {
  if (store === undefined || store === '') return SqliteStore.openDataDir(dataDir);
  // Loaded only when asked for: every CLI command imports the server code.
  const { parseRedisUrl, RedisStore } = await import('./redis.js');
  return RedisStore.open(parseRedisUrl(store), { logger: logger.child({ component: 'store' }) });
}
