// berth exec [--agent A] <container|service> -- <argv…>: the command's own output, live, and
// its exit code as ours. berth audit: every exec request the server has seen.
import type { ClientConfig } from '../config.js';
import { UserError } from '../errors.js';
import type { AuditEntry } from '../store/store.js';
import type { ApiClient } from './client.js';
import { json, line, type Out, type Printable, stderr, stdout, table } from './format.js';

/** Exit code when the command was killed by its timeout, as timeout(1) does. */
const TIMED_OUT = 124;

export async function execCommand(config: ClientConfig, api: ApiClient, rest: string[]): Promise<number> {
  const [target, ...argv] = rest;
  if (!target || argv.length === 0) {
    throw new UserError(
      'CONFIG_INVALID',
      'usage: berth exec [--agent ID] [--node NAME] [--task SLOT] [--timeout 60s] [--json] <container|service> -- <command> [args…]',
    );
  }
  const body: Record<string, unknown> = { target, argv, timeout: `${config.timeoutMs}ms` };
  if (config.agent) body.agent = config.agent;
  if (config.node) body.node = config.node;
  if (config.task !== undefined) body.task = config.task;
  const res = await api.stream('/api/exec', body);
  const asJson = config.json;
  const out: { stdout: string[]; stderr: string[] } = { stdout: [], stderr: [] };
  let exit: { exitCode: number | null; timedOut: boolean; truncated: boolean } | undefined;
  let error: { code: string; message: string } | undefined;
  let buf = '';
  const decoder = new TextDecoder();
  const handle = (line: string) => {
    if (!line.trim()) return;
    const m = JSON.parse(line);
    if (m.stream) {
      const data = Buffer.from(m.data, 'base64');
      if (asJson) out[m.stream as 'stdout' | 'stderr'].push(data.toString('utf8'));
      else (m.stream === 'stderr' ? process.stderr : process.stdout).write(data);
    } else if (m.exit) exit = m.exit;
    else if (m.error) error = m.error;
  };
  for await (const chunk of res) {
    buf += decoder.decode(chunk, { stream: true });
    let i = buf.indexOf('\n');
    while (i >= 0) {
      handle(buf.slice(0, i));
      buf = buf.slice(i + 1);
      i = buf.indexOf('\n');
    }
  }
  handle(buf);
  if (asJson) {
    stdout(
      json({
        target,
        argv,
        ...(exit ?? {}),
        error,
        stdout: out.stdout.join(''),
        stderr: out.stderr.join(''),
      }),
    );
  }
  // Berth's own lines go to stderr, escaped: the error text comes from the agent.
  const say = (s: Printable) => {
    if (!asJson) stderr(s);
  };
  if (error) {
    say(line`berth: ${error.message}`);
    return 1;
  }
  if (!exit) {
    say(line`berth: the server ended the stream without an exit status`);
    return 1;
  }
  if (exit.truncated) say(line`berth: output cap reached; the command was stopped`);
  if (exit.timedOut) {
    say(line`berth: timed out; the command was killed`);
    return TIMED_OUT;
  }
  return exit.exitCode ?? 1;
}

export async function auditCommand(config: ClientConfig, api: ApiClient, out: Out): Promise<number> {
  const { entries } = await api.get<{ entries: AuditEntry[] }>(`/api/audit?limit=${config.limit}`);
  if (config.json) {
    out(json(entries));
    return 0;
  }
  out(
    table(
      ['TIME', 'REQUESTER', 'AGENT', 'NODE', 'CONTAINER', 'COMMAND', 'DECISION', 'EXIT', 'MS', 'DETAIL'],
      entries.map((e) => [
        new Date(e.at).toISOString(),
        e.requester,
        e.agentName || '-',
        e.node || '-',
        e.container,
        e.argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' '),
        e.decision,
        e.exitCode === undefined || e.exitCode === null ? '-' : String(e.exitCode),
        e.durationMs === undefined ? '-' : String(e.durationMs),
        [e.timedOut ? 'timed out' : '', e.truncated ? 'truncated' : '', e.reason ?? '']
          .filter(Boolean)
          .join('; '),
      ]),
    ),
  );
  return 0;
}
