import { describe, expect, it } from 'vitest';
import { parseRedisUrl } from '../../src/store/redis.js';

describe('--store redis URL', () => {
  it('reads host, port, database, password and prefix', () => {
    expect(parseRedisUrl('redis://127.0.0.1:6380/2')).toEqual({
      host: '127.0.0.1',
      port: 6380,
      db: 2,
      tls: false,
      prefix: 'berth:',
      display: 'redis://127.0.0.1:6380/2',
    });
    expect(parseRedisUrl('redis://:p%40ss@redis.internal?prefix=prod:berth:')).toEqual({
      host: 'redis.internal',
      port: 6379,
      db: 0,
      password: 'p@ss',
      tls: false,
      prefix: 'prod:berth:',
      display: 'redis://:***@redis.internal:6379/0?prefix=prod:berth:',
    });
    expect(parseRedisUrl('rediss://berth:pw@[::1]:6390/')).toMatchObject({
      host: '::1',
      username: 'berth',
      password: 'pw',
      tls: true,
      display: 'rediss://berth:***@[::1]:6390/0',
    });
  });

  it.each([
    ['http://127.0.0.1:6379', 'unsupported scheme "http:"'],
    ['127.0.0.1:6379', 'not a URL'],
    ['redis://:secret@127.0.0.1:6379/db1', 'the path must be a database number, got "/db1"'],
    ['redis://127.0.0.1:6379/0?db=1', 'unknown parameter "db"'],
    ['redis://127.0.0.1:6379/0?prefix=a b', 'prefix "a b" must be'],
    ['redis://:secret@127.0.0.1:99999', 'not a URL'],
  ])('refuses %s, naming what is wrong and never the password', (url, why) => {
    let message = '';
    try {
      parseRedisUrl(url);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain(`--store: ${why}`);
    expect(message).toContain('expected redis://[:password@]host:port[/db]');
    expect(message).not.toContain('secret');
  });
});
