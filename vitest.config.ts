import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // End-to-end files start daemons; on 2 cores they run one after another.
    fileParallelism: false,
    pool: 'forks',
    // Reaps daemons a crashed worker left behind (see the file).
    globalSetup: ['test/e2e/support/global-setup.ts'],
  },
});
