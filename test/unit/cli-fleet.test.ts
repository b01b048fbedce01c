import { describe, expect, it } from 'vitest';
import type { ApiClient } from '../../src/cli/client.js';
import { keysCommand } from '../../src/cli/fleet.js';
import { loadConfig } from '../../src/config.js';

const SECRET = 'berth_agent_s3cr3t';

/** The API's answer to POST /api/keys; nothing else is asked. */
const api: ApiClient = {
  baseUrl: 'https://berth.example.com',
  post: async <T>() => ({ key: { id: 'key_1', name: 'web\u001b[2J' }, secret: SECRET }) as T,
  get: async () => {
    throw new Error('not used');
  },
  del: async () => {
    throw new Error('not used');
  },
  stream: async () => {
    throw new Error('not used');
  },
};

async function create(): Promise<string> {
  const lines: string[] = [];
  const { config } = loadConfig('keys', ['--name', 'web'], {});
  expect(await keysCommand(config, api, ['create'], (s) => lines.push(s))).toBe(0);
  return lines.join('\n');
}

describe('berth keys create', () => {
  it('shows the key once and suggests --key-file or BERTH_AGENT_KEY, never --key on a command line', async () => {
    const out = await create();
    expect(out.split(SECRET)).toHaveLength(2); // shown exactly once
    expect(out).toContain('berth agent --server https://berth.example.com --key-file /etc/berth/agent.key');
    expect(out).toMatch(/BERTH_AGENT_KEY/);
    expect(out).not.toMatch(/--key\s+berth_agent_/);
    expect(out).toContain('created key web\\x1b[2J (key_1)'); // a name is shown escaped
  });
});
