// Everything a test starts registers how to stop it; cleanups run in reverse order even when
// a test fails, so no dockerd, Caddy or Berth outlives its test file.
import { afterAll } from 'vitest';

const cleanups: (() => Promise<unknown> | unknown)[] = [];

export function registerCleanup(fn: () => Promise<unknown> | unknown): void {
  cleanups.push(fn);
}

export async function runCleanups(): Promise<void> {
  while (cleanups.length > 0) {
    const fn = cleanups.pop()!;
    try {
      await fn();
    } catch (err) {
      console.error('cleanup failed:', err);
    }
  }
}

export function useCleanup(): void {
  afterAll(runCleanups, 120_000);
}
