import { describe, expect, it } from 'vitest';
import { fitSnapshot } from '../../src/agent/fit.js';
import type { Snapshot } from '../../src/model/types.js';

function snapshot(containers: number, explainChars = 0): Snapshot {
  const ids = Array.from({ length: containers }, (_, i) => `c${String(i).padStart(5, '0')}`);
  return {
    agentId: 'a',
    generation: 1,
    hostIp: '10.0.0.5',
    takenAt: 1,
    containers: ids.map((id) => ({
      id,
      name: id,
      state: 'running',
      health: 'none',
      labelled: true,
      ...(explainChars
        ? {
            explain: {
              dialect: 'berth',
              labels: [{ key: 'berth.host', value: 'x'.repeat(explainChars), use: 'route' as const }],
            },
          }
        : {}),
    })),
    routes: ids.map((id, i) => ({
      id: `${id}/default`,
      group: 'default',
      hosts: [`${id}.example.com`],
      path: '/',
      stripPath: false,
      upstream: { host: '10.0.0.5', port: 10_000 + i, scheme: 'http' as const },
      containerId: id,
      containerName: id,
      containerCreated: 1,
    })),
    diagnostics: ids.map((id) => ({
      severity: 'warning' as const,
      containerId: id,
      containerName: id,
      label: 'berth.x',
      message: 'w'.repeat(100),
    })),
  };
}

const bytes = (s: Snapshot) => Buffer.byteLength(JSON.stringify({ type: 'snapshot', snapshot: s }));

describe('fitSnapshot', () => {
  it('leaves a snapshot that fits alone', () => {
    const s = snapshot(10, 100);
    expect(fitSnapshot(s, 1 << 20)).toEqual({ snapshot: s, left: [], bytes: bytes(s) });
  });

  it('gives up explanations first, then warnings, and keeps every route', () => {
    const s = snapshot(1_000, 2_000);
    const withoutExplain = bytes({ ...s, containers: s.containers.map(({ explain: _e, ...c }) => c) });
    const f = fitSnapshot(s, withoutExplain + 10);
    expect(f.left).toEqual(['label explanations (berth explain)']);
    expect(f.snapshot.routes).toHaveLength(1_000);
    expect(f.snapshot.diagnostics).toHaveLength(1_000);
    const g = fitSnapshot(s, withoutExplain - 1_000);
    expect(g.left).toEqual(['label explanations (berth explain)', 'warnings']);
    expect(g.snapshot.routes).toHaveLength(1_000);
  });

  it('then leaves out whole containers from the end, says so, and fits', () => {
    const s = snapshot(5_000);
    const max = 500_000;
    const f = fitSnapshot(s, max);
    expect(f.bytes).toBeLessThanOrEqual(max);
    expect(bytes(f.snapshot)).toBe(f.bytes);
    const kept = new Set(f.snapshot.containers.map((c) => c.id));
    expect(f.snapshot.routes.every((r) => kept.has(r.containerId))).toBe(true);
    expect(f.snapshot.containers[0]!.id).toBe('c00000');
    const note = f.snapshot.diagnostics.filter((d) => d.containerName === '(agent)');
    expect(note).toHaveLength(1);
    expect(note[0]!.message).toMatch(
      /over the server's message limit \(500000 bytes\): \d+ containers are not reported/,
    );
    expect(f.left.at(-1)).toMatch(/^\d+ containers$/);
  });
});
