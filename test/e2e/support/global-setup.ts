// Vitest global setup: gives this run an id that private daemons put in their directory names,
// so the teardown can reap whatever a crashed or timed-out worker could not stop itself, without
// touching daemons that other runs or benchmarks own.
import { randomBytes } from 'node:crypto';
import { dockerdPrefix, reapDockerds } from './dockerd.js';

export default function setup(): () => Promise<void> {
  const runId = randomBytes(3).toString('hex');
  process.env.BERTH_TEST_RUN = runId; // inherited by the forked workers
  return async () => {
    const killed = await reapDockerds(dockerdPrefix(runId));
    if (killed.length > 0) console.warn(`global teardown killed leftover processes:\n${killed.join('\n')}`);
  };
}
