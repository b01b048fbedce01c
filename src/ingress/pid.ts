import { readFileSync } from 'node:fs';
// The sidecars Berth starts (DNS responder, TCP forwarder) outlive a crashed server on purpose,
// so a restarted one finds them by the PID file each writes.

export function readPid(file: string): number | undefined {
  try {
    const n = Number(readFileSync(file, 'utf8'));
    return n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if it is still there after `graceMs`. */
export async function stopPid(pid: number, graceMs = 5_000): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let waited = 0; waited < graceMs && alive(pid); waited += 100)
    await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}
