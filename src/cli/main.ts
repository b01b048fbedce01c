#!/usr/bin/env node
// `berth <command> [flags]`. main() is testable in-process: it returns the exit code.
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import type { Logger as PinoLogger } from 'pino';
import { type AgentConfig, type ClientConfig, helpFor, loadConfig, type ServeConfig } from '../config.js';
import { errorMessage, UserError } from '../errors.js';
import type { Logger } from '../log.js';
import { VERSION } from '../version.js';
import { escapeLines, json, line, ours, stderr, stdout } from './format.js';

// Only what every command needs is imported here; the rest (the server, the agent, the logger,
// each client command) is loaded by the command that uses it, so that `berth agent` carries no
// server or CLI code and runs its own code with the V8 flags it sets (see agent()).

type Sidecar = (dataDir: string, logger: PinoLogger) => Promise<{ stop(): Promise<void> }>;

async function newLogger(level: string, cmd: string): Promise<PinoLogger> {
  const { default: pino } = await import('pino');
  return pino({ level, base: { cmd } }, pino.destination(2));
}

/**
 * Processes the server starts beside itself: `berth <name> --data-dir D`. Loaded on demand, like
 * the server and the agent, so that a sidecar carries only its own code.
 */
const SIDECARS: Record<string, () => Promise<Sidecar>> = {
  'dns-server': async () => (await import('../ingress/dns/sidecar.js')).runDnsServer,
  'tcp-server': async () => (await import('../ingress/tcp/sidecar.js')).runTcpServer,
};

const COMMANDS: Record<string, string> = {
  standalone: 'Run the server with an in-process agent for the local Docker (single host)',
  server: 'Run the server only (routes come from agents)',
  agent: "Watch this host's Docker and report to a server (--server, --key-file or BERTH_AGENT_KEY)",
  keys: 'Agent keys: create --name N [--domains …] [--auto-approve] | list | show ID | revoke ID | rotate ID',
  agents: 'Agents: list | approve ID | remove ID',
  exec: 'Run an allowed command in a container on any host: exec [--agent A] <container|service> -- <argv…>',
  audit: 'List exec requests, allowed or denied (--json)',
  password: 'Set the web UI password: password set (reads it from stdin, at least 12 characters)',
  routes: 'List every route with its owner and status (--json)',
  explain:
    "Show how a container's labels were read: dialect, each label's use, routes: explain [--agent A] <container>",
  status: 'Show server, agent and Caddy status (--json)',
  top: 'Live traffic per route: requests/s, 5xx, p50/p99, bytes, busiest first (--interval 2s, --json: one snapshot)',
  reconcile: 'Ask the server to reconcile now (--force re-sends everything)',
  version: 'Print the version',
  help: 'Show this help',
};

function usage(): string {
  const cmds = Object.entries(COMMANDS)
    .map(([c, d]) => `  ${c.padEnd(12)} ${d}`)
    .join('\n');
  return `berth ${VERSION}: Docker labels on any number of hosts become live routes at one front door.

Usage: berth <command> [flags]

Commands:
${cmds}

Run "berth <command> --help" for the command's flags. Every flag can also be set as BERTH_<FLAG>.`;
}

export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const out = stdout;
  const [command, ...args] = argv;
  if (!command || command === 'help' || command === '--help' || command === '-h') {
    out(ours(usage()));
    return 0;
  }
  if (command === 'version' || command === '--version') {
    out(ours(VERSION));
    return 0;
  }
  const loadSidecar = SIDECARS[command];
  if (loadSidecar) {
    // Internal: the DNS responder and the TCP forwarder the server runs (not listed in the help).
    const at = argv.indexOf('--data-dir');
    const dataDir = at >= 0 ? argv[at + 1] : undefined;
    if (!dataDir) throw new UserError('CONFIG_INVALID', `${command} needs --data-dir`);
    const logger = await newLogger('info', command);
    const running = await (await loadSidecar())(resolve(dataDir), logger);
    await untilSignal(logger, () => running.stop());
    return 0;
  }
  if (!COMMANDS[command]) {
    stderr(line`berth: unknown command "${command}"\n`);
    stderr(ours(usage()));
    return 2;
  }
  try {
    const loaded = loadConfig(command, args, env);
    if (loaded.config.help) {
      out(ours(`Usage: berth ${command} [flags]\n\n${COMMANDS[command]}\n\nFlags:\n${helpFor(command)}`));
      return 0;
    }
    if (loaded.kind === 'serve') return await serve(loaded.config, env);
    if (loaded.kind === 'agent') return await agent(loaded.config);
    return await clientCommand(command, loaded.config, loaded.rest);
  } catch (err) {
    if (err instanceof UserError) {
      stderr(escapeLines(`berth: ${err.message}`));
      return err.code === 'CONFIG_INVALID' ? 2 : 1;
    }
    throw err;
  }
}

async function clientCommand(command: string, config: ClientConfig, rest: string[]): Promise<number> {
  const out = stdout;
  const api = (await import('./client.js')).apiClient(config);
  switch (command) {
    case 'keys':
      return await (await import('./fleet.js')).keysCommand(config, api, rest, out);
    case 'agents':
      return await (await import('./fleet.js')).agentsCommand(config, api, rest, out);
    case 'exec':
      return await (await import('./exec.js')).execCommand(config, api, rest);
    case 'audit':
      return await (await import('./exec.js')).auditCommand(config, api, out);
    case 'password': {
      if (rest[0] !== 'set')
        throw new UserError('CONFIG_INVALID', 'usage: echo "$PASSWORD" | berth password set');
      const password = (await readStdin()).replace(/\r?\n$/, '');
      await api.post('/api/ui-password', { password });
      out(ours('web UI password set; sign in at <server>/ui/'));
      return 0;
    }
    case 'routes':
      return await (await import('./routes.js')).routesCommand(config, api, out);
    case 'explain':
      return await (await import('./explain.js')).explainCommand(config, api, rest, out);
    case 'status':
      return await (await import('./status.js')).statusCommand(config, api, out);
    case 'top':
      return await (await import('./top.js')).topCommand(config, api, out);
    case 'reconcile': {
      const r = await api.post<{ passes: number }>('/api/reconcile', { force: config.force });
      out(config.json ? json(r) : line`reconciled (pass ${r.passes})`);
      return 0;
    }
  }
  return 2;
}

/**
 * How far past what the last full collection kept V8 lets the server's heap grow before the next
 * one, in percent. V8's own choice is up to 300 % for a process allocating as fast as a server
 * busy with agents: at 1,000 agents × 50 routes it held about 150 MiB and collected at 500 to
 * 700 MiB (bench/soak.ts). What it keeps grows slowly (a snapshot replaces the last; each pass's
 * lists and each message's parse die young), so collecting sooner keeps the RSS near what is held
 * (about 260 to 310 MiB there). What it costs is in proportion to the large objects that outlive a
 * young collection. There, 3-minute soaks of one build: 50 % gave an RSS median of 290 to 311 MiB
 * at 12 % of a core, 30 % 269 MiB at 12 %, 20 % 259 MiB at 15 % (and heartbeats waited longer:
 * p99 69 ms against 21). While each pass rendered the whole DNS table text, 20 % cost 8 % of a
 * core more; the table is patched now.
 * `BERTH_HEAP_GROWING_PERCENT=N` or `node --heap-growing-percent=N` sets another value (Node
 * refuses V8's flag in NODE_OPTIONS).
 */
export const SERVER_HEAP_GROWING_PERCENT = 30;

/** Set before the server loads: a flag of V8's that it reads at every collection. */
function serverHeapFlags(env: NodeJS.ProcessEnv): void {
  if (process.execArgv.some((a) => a.includes('heap-growing-percent'))) return;
  setFlagsFromString(`--heap-growing-percent=${heapGrowingPercent(env.BERTH_HEAP_GROWING_PERCENT)}`);
}

/** BERTH_HEAP_GROWING_PERCENT's value (a whole number, 1 to 1000), else the server's default. */
export function heapGrowingPercent(given: string | undefined): number {
  if (given === undefined || given === '') return SERVER_HEAP_GROWING_PERCENT;
  const n = Number(given);
  if (!/^\d+$/.test(given) || n < 1 || n > 1000)
    throw new UserError(
      'CONFIG_INVALID',
      `BERTH_HEAP_GROWING_PERCENT must be a whole number from 1 to 1000, not ${JSON.stringify(given)}`,
    );
  return n;
}

/**
 * Last resort: every path catches its own errors, so an unhandled rejection is a bug; the process
 * logs it (a few lines, however many) and goes on serving its routes rather than exit.
 */
async function lastResort(logger: Logger, what: string): Promise<void> {
  const { LogGate } = await import('../log-gate.js');
  const gate = new LogGate(logger);
  process.on('unhandledRejection', (err) =>
    gate.log(
      'error',
      `unhandled:${errorMessage(err).slice(0, 120)}`,
      { err: err instanceof Error ? err.stack : String(err) },
      `unhandled rejection in the ${what} (a bug: please report it)`,
    ),
  );
}

async function serve(config: ServeConfig, env: NodeJS.ProcessEnv): Promise<number> {
  serverHeapFlags(env);
  const logger = await newLogger(config.logLevel, config.command);
  await lastResort(logger, config.command);
  const { runServer } = await import('../server/run.js');
  const server = await runServer(config, logger);
  await untilSignal(logger, () => server.stop());
  return 0;
}

/**
 * The agent's young generation stays at V8's starting size (1 MiB a semi-space), never grown: V8
 * grows it (up to 16 MiB a semi-space) after collections that find much alive, as a burst does
 * (100 streams opening at once, a pass over many containers), and keeps the pages. An agent's
 * allocations are small and few, so more frequent young collections cost it little: here 30
 * passes over 1,000 labelled containers took 90-94 ms each against 94-104 ms capped, but left
 * 101 MiB of RSS against 59-61; and the grown space was 3 MiB of a tunnel agent's RSS with 100
 * streams open (bench/tunnel.ts).
 * V8 reads the factor whenever it would grow the space, so it can be set once the process runs;
 * semi-space flags of node's own (command line or NODE_OPTIONS) win. Newer V8 releases than Node
 * 20's may hold the factor at 2 or more, and then this changes nothing;
 * `NODE_OPTIONS=--max-semi-space-size=1` does the same there.
 */
export const AGENT_HEAP_FLAGS = '--semi-space-growth-factor=1';

/**
 * What the agent sets for its heap, given node's own flags (its command line, NODE_OPTIONS):
 * nothing where they size the young generation.
 */
export function agentHeapFlags(execArgv: readonly string[], nodeOptions = ''): string | undefined {
  return [...execArgv, nodeOptions].some((a) => a.includes('semi-space')) ? undefined : AGENT_HEAP_FLAGS;
}

async function agent(config: AgentConfig): Promise<number> {
  const heap = agentHeapFlags(process.execArgv, process.env.NODE_OPTIONS);
  if (heap) setFlagsFromString(heap);
  // The interpreter alone until there is traffic to carry (see agent/jit.ts); --jit keeps V8's
  // compilers on from the start.
  if (!config.jit) (await import('../agent/jit.js')).startLean();
  // pino's own lines from a small writer: pino and its helpers are about 1 MiB of an idle agent.
  const { jsonLogger } = await import('../log.js');
  const logger = jsonLogger({ level: config.logLevel, base: { cmd: 'agent' }, fd: 2 });
  const { runAgent } = await import('../agent/run.js');
  await lastResort(logger, 'agent');
  const running = await runAgent(config, logger);
  await untilSignal(logger, () => running.stop());
  return 0;
}

function untilSignal(logger: Logger, stop: () => Promise<void>): Promise<void> {
  return new Promise<void>((resolveStop) => {
    let stopping = false;
    const onSignal = (sig: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal: sig }, 'stopping');
      stop().then(resolveStop, (err) => {
        logger.error({ err: (err as Error).message }, 'error while stopping');
        resolveStop();
      });
    };
    process.on('SIGINT', () => onSignal('SIGINT'));
    process.on('SIGTERM', () => onSignal('SIGTERM'));
  });
}

const isMain = (() => {
  try {
    return realpathSync(process.argv[1] ?? '') === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
})();

if (isMain) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      if (err instanceof UserError) {
        stderr(escapeLines(`berth: ${err.message}`));
        process.exit(err.code === 'CONFIG_INVALID' ? 2 : 1);
      }
      stderr(escapeLines(`berth: internal error: ${(err as Error).stack ?? err}`));
      process.exit(70);
    },
  );
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY)
    throw new UserError(
      'CONFIG_INVALID',
      'pipe the password on stdin: echo "$PASSWORD" | berth password set',
    );
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
