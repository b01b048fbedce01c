import { describe, expect, it } from 'vitest';
import { canonicalIp, cidrsContain, parseCidr, parseCidrList } from '../../src/model/cidr.js';

describe('CIDR allow-lists', () => {
  it('parses networks and single addresses into canonical form', () => {
    expect(parseCidr('10.1.2.3/8')?.text).toBe('10.0.0.0/8');
    expect(parseCidr('127.0.0.5')?.text).toBe('127.0.0.5/32');
    expect(parseCidr('::1')?.text).toBe('0:0:0:0:0:0:0:1/128');
    for (const bad of ['10.0.0.0/33', '10.0.0/8', 'tailnet', '', '1.2.3.4/', '::/129']) {
      expect(parseCidr(bad), bad).toBeUndefined();
    }
    expect(parseCidrList('10.0.0.0/8, x ,127.0.0.1').bad).toEqual(['x']);
  });

  it('matches IPv4, IPv6 and IPv4-mapped clients', () => {
    const { cidrs } = parseCidrList('100.64.0.0/10,127.0.0.9,fd00::/8');
    expect(cidrsContain(cidrs, '100.100.1.1')).toBe(true);
    expect(cidrsContain(cidrs, '100.128.0.1')).toBe(false);
    expect(cidrsContain(cidrs, '::ffff:127.0.0.9')).toBe(true);
    expect(cidrsContain(cidrs, '127.0.0.1')).toBe(false);
    expect(cidrsContain(cidrs, 'fd12::1')).toBe(true);
    expect(cidrsContain(cidrs, 'fe80::1')).toBe(false);
    expect(cidrsContain(cidrs, 'not-an-ip')).toBe(false);
    expect(cidrsContain([parseCidr('0.0.0.0/0')!], '8.8.8.8')).toBe(true);
  });

  it('matches an IPv4-mapped client however it is spelled', () => {
    const { cidrs } = parseCidrList('169.254.0.0/16');
    for (const spelling of [
      '::ffff:169.254.169.254',
      '::FFFF:169.254.169.254',
      '::ffff:a9fe:a9fe',
      '0:0:0:0:0:ffff:a9fe:a9fe',
    ])
      expect(cidrsContain(cidrs, spelling), spelling).toBe(true);
  });

  it.each([
    ['1.2.3.4', '1.2.3.4'],
    ['::FFFF:169.254.169.254', '169.254.169.254'],
    ['::ffff:a9fe:a9fe', '169.254.169.254'],
    ['0:0:0:0:0:ffff:7f4d:1', '127.77.0.1'],
    ['[::1]', '::1'],
    ['0:0:0:0:0:0:0:0', '::'],
    ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['fe80::1%eth0', 'fe80::1%eth0'],
    ['127.1', undefined],
    ['cafe', undefined],
    ['db.internal', undefined],
  ])('writes %s one way: %s', (raw, want) => {
    expect(canonicalIp(raw)).toBe(want);
  });
});
