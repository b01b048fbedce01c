import { describe, expect, it } from 'vitest';
import { heapGrowingPercent, SERVER_HEAP_GROWING_PERCENT } from '../../src/cli/main.js';
import { UserError } from '../../src/errors.js';

describe('BERTH_HEAP_GROWING_PERCENT', () => {
  it("is the server's default when unset or empty, and the number given otherwise", () => {
    expect(heapGrowingPercent(undefined)).toBe(SERVER_HEAP_GROWING_PERCENT);
    expect(heapGrowingPercent('')).toBe(SERVER_HEAP_GROWING_PERCENT);
    expect(heapGrowingPercent('30')).toBe(30);
    expect(heapGrowingPercent('1000')).toBe(1000);
  });

  it('refuses anything but a whole number from 1 to 1000, naming the variable and the value', () => {
    for (const bad of ['0', '1001', '-5', '2.5', '30%', ' 30', '0x20', '1e2', 'fifty', '30 --expose-gc']) {
      expect(() => heapGrowingPercent(bad)).toThrow(UserError);
      expect(() => heapGrowingPercent(bad)).toThrow(
        `BERTH_HEAP_GROWING_PERCENT must be a whole number from 1 to 1000, not ${JSON.stringify(bad)}`,
      );
    }
  });
});
