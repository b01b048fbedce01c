import { describe, expect, it } from 'vitest';
import {
  clientAddress,
  DEFAULT_TRUSTED_PROXIES,
  trustedProxies,
} from '../../../src/server/client-address.js';

const trusted = trustedProxies(DEFAULT_TRUSTED_PROXIES);

describe('clientAddress', () => {
  it('is the socket peer when it is no trusted proxy, whatever X-Forwarded-For says', () => {
    expect(clientAddress('203.0.113.9', '1.2.3.4', trusted)).toBe('203.0.113.9');
  });
  it('believes X-Forwarded-For from a trusted proxy, reading from the right', () => {
    expect(clientAddress('127.0.0.1', '1.2.3.4, 198.51.100.7', trusted)).toBe('198.51.100.7');
    expect(clientAddress('::ffff:127.0.0.1', '198.51.100.7, 127.0.0.1', trusted)).toBe('198.51.100.7');
  });
  it('is the proxy itself when it forwards nothing', () => {
    expect(clientAddress('127.0.0.1', undefined, trusted)).toBe('127.0.0.1');
  });
  it('refuses a trusted-proxies entry that is not an address', () => {
    expect(() => trustedProxies(['10.0.0.0/8', 'caddy'])).toThrowError(
      /"caddy" is not an IP address or CIDR/,
    );
  });
});
