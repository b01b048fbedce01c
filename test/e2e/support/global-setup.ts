// Vitest global setup: gives this run an id that private daemons put in their directory names,
// so the teardown can reap whatever a crashed or timed-out worker could not stop itself, without
// touching daemons that other runs or benchmarks own. Servers running as root set
// net.ipv4.tcp_migrate_req (see src/ingress/caddy/reload-queue.ts) in this network namespace: the
// teardown puts back the value the run found.
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { TCP_MIGRATE_REQ } from '../../../src/ingress/caddy/reload-queue.js';
import { dockerdPrefix, reapDockerds } from './dockerd.js';

function readSetting(): string | undefined {
  try {
    return readFileSync(TCP_MIGRATE_REQ, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export default function setup(): () => Promise<void> {
  const runId = randomBytes(3).toString('hex');
  process.env.BERTH_TEST_RUN = runId; // inherited by the forked workers
  const migrate = readSetting();
  return async () => {
    if (migrate !== undefined && readSetting() !== migrate) writeFileSync(TCP_MIGRATE_REQ, `${migrate}\n`);
    const killed = await reapDockerds(dockerdPrefix(runId));
    if (killed.length > 0) console.warn(`global teardown killed leftover processes:\n${killed.join('\n')}`);
  };
}
