// Runs allowed commands for the server: policy first (on this host), then `docker exec` with
// the argv as given (never a shell), a timeout that kills, an output cap and a concurrency cap.
// Every request is logged here too, so the host keeps its own audit trail.
//
// handle() never rejects and answers every request exactly once with a final event (exit,
// denied or error): whatever fails inside, the server hears about it and the agent keeps running.

import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { clip, MAX_STRING } from '../model/limits.js';
import type { ExecEvent, ExecRequest } from '../model/protocol.js';
import { isContainerRef } from '../model/server-protocol.js';
import type { DockerSource, ExecHandle } from './docker.js';
import { decide, type ExecPolicy } from './exec-policy.js';

export interface ExecRunnerOptions {
  source: DockerSource;
  policy: ExecPolicy;
  labelPrefix: string;
  logger: Logger;
  send: (e: ExecEvent) => void;
  /** How long a killed command may take to end (tests shorten it). */
  killGraceMs?: number;
}

/** setTimeout fires at once for longer delays (and warns): clamp to what it can wait. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** How long a killed command may take to end before the request gives up on it. */
const KILL_GRACE_MS = 30_000;
/** protocol.ts bounds these in agent messages: a longer reply would be refused by the server. */
const MAX_REPLY_TEXT = 8_192;
const MAX_CONSIDERED = 1_000;
/** What of argv goes into each log line: the policy never allows more, so nothing allowed is cut. */
const LOGGED_ARGS = 64;
const LOGGED_ARG_LENGTH = 256;

export class ExecRunner {
  private running = 0;
  /**
   * Commands whose request was given up after their kill failed (no host PID namespace, a hung
   * Docker), still running: they keep their slot until they end, so maxConcurrent bounds the
   * processes, not just the requests.
   */
  private lingering = 0;
  /** Requests by what happened to them, for the agent's metrics. */
  readonly counters = { allowed: 0, denied: 0, busy: 0 };

  constructor(private readonly o: ExecRunnerOptions) {}

  async handle(req: ExecRequest): Promise<void> {
    const { logger, policy } = this.o;
    const argv = Array.isArray(req.argv) ? req.argv : [];
    const log = logger.child({
      execId: req.id,
      container: req.container,
      argv: argv.slice(0, LOGGED_ARGS).map((a) => clip(String(a), LOGGED_ARG_LENGTH)),
      ...(argv.length > LOGGED_ARGS ? { argvCount: argv.length } : {}),
    });
    let answered = false;
    const send = (e: ExecEvent) => {
      if (e.type === 'exec.exit' || e.type === 'exec.denied' || e.type === 'exec.error') {
        if (answered) return;
        answered = true;
      }
      if (e.type === 'exec.error') e.message = clip(e.message, MAX_REPLY_TEXT);
      try {
        this.o.send(e);
      } catch (err) {
        // The link is gone or broken: the server reports the loss on its side.
        log.debug({ err: errorMessage(err), event: e.type }, 'cannot send an exec event');
      }
    };
    if (this.running + this.lingering >= policy.maxConcurrent) {
      this.counters.busy++;
      log.warn({ decision: 'busy' }, 'exec refused: too many running');
      const stuck =
        this.lingering > 0 ? `, ${this.lingering} of them still running after their kill failed` : '';
      return send({
        type: 'exec.error',
        id: req.id,
        code: 'BUSY',
        message: `${this.running + this.lingering} commands already running on this agent${stuck} (limit ${policy.maxConcurrent})`,
      });
    }
    // The slot is taken before the first await, so requests arriving together cannot all pass.
    this.running++;
    try {
      await this.decideAndRun(req, log, send);
    } catch (err) {
      log.error({ err: errorMessage(err) }, 'exec failed inside the agent');
      send({ type: 'exec.error', id: req.id, code: 'FAILED', message: `agent error: ${errorMessage(err)}` });
    } finally {
      this.running--;
      // Whatever path was taken, the server gets a final answer.
      send({
        type: 'exec.error',
        id: req.id,
        code: 'FAILED',
        message: 'the agent ended the request without a result',
      });
    }
  }

  private async decideAndRun(req: ExecRequest, log: Logger, send: (e: ExecEvent) => void): Promise<void> {
    const { policy } = this.o;
    // The server's message was checked on arrival; this guards callers that bypass the link.
    if (
      !isContainerRef(req.container) ||
      !Array.isArray(req.argv) ||
      req.argv.some((a) => typeof a !== 'string')
    ) {
      return send({
        type: 'exec.error',
        id: req.id,
        code: 'FAILED',
        message: 'invalid exec request: container must be a Docker id or name and argv an array of strings',
      });
    }
    let container: Awaited<ReturnType<DockerSource['inspect']>>;
    try {
      container = await this.o.source.inspect(req.container);
    } catch (err) {
      return send({
        type: 'exec.error',
        id: req.id,
        code: 'FAILED',
        message: `cannot inspect the container: ${errorMessage(err)}`,
      });
    }
    if (!container?.running) {
      log.info({ decision: 'not-found' }, 'exec refused: no such running container');
      return send({
        type: 'exec.error',
        id: req.id,
        code: 'NOT_FOUND',
        message: `no running container "${req.container}" on this host`,
      });
    }
    const d = decide(req.argv, container, policy, this.o.labelPrefix, req.serverRules);
    if (!d.allowed) {
      this.counters.denied++;
      log.info({ decision: 'denied', reason: d.reason }, 'exec denied');
      return send({
        type: 'exec.denied',
        id: req.id,
        reason: clip(d.reason, MAX_REPLY_TEXT),
        considered: d.considered.slice(0, MAX_CONSIDERED).map((r) => clip(r, MAX_STRING)),
      });
    }
    this.counters.allowed++;
    log.info({ decision: 'allowed', rule: d.rule }, 'exec allowed');
    await this.run(req, container.id, container.name, d.rule, log, send);
  }

  private async run(
    req: ExecRequest,
    containerId: string,
    name: string,
    rule: string,
    log: Logger,
    send: (e: ExecEvent) => void,
  ): Promise<void> {
    const { policy } = this.o;
    const started = performance.now();
    const bytes = { stdout: 0, stderr: 0 };
    let truncated = false;
    let timedOut = false;
    let handle: ExecHandle | undefined;
    const kill = async (why: string) => {
      const pid = await handle?.hostPid();
      if (!pid) return log.warn({ why }, 'cannot kill the command: Docker reports no PID');
      try {
        process.kill(pid, 'SIGKILL');
        log.info({ why, pid }, 'killed the command');
      } catch (err) {
        log.warn(
          { why, pid, err: errorMessage(err) },
          'cannot kill the command (does the agent share the host PID namespace?)',
        );
      }
    };
    const killSoon = (why: string) =>
      void kill(why).catch((err) => log.warn({ why, err: errorMessage(err) }, 'cannot kill the command'));
    send({
      type: 'exec.started',
      id: req.id,
      rule: clip(rule, MAX_STRING),
      container: clip(name, MAX_STRING),
    });
    try {
      handle = await this.o.source.exec(containerId, req.argv, (stream, chunk) => {
        // Called from Docker's stream: a throw here would be an unhandled stream error.
        try {
          if (truncated) return;
          const room = policy.maxOutputBytes - bytes.stdout - bytes.stderr;
          const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
          bytes[stream] += part.length;
          if (part.length > 0)
            send({ type: 'exec.output', id: req.id, stream, data: part.toString('base64') });
          if (chunk.length > room) {
            truncated = true;
            killSoon('output cap reached');
          }
        } catch (err) {
          log.warn({ err: errorMessage(err) }, 'cannot forward exec output');
        }
      });
    } catch (err) {
      return send({
        type: 'exec.error',
        id: req.id,
        code: 'FAILED',
        message: `docker exec failed: ${errorMessage(err)}`,
      });
    }
    const limit = Math.min(req.timeoutMs, policy.maxTimeoutMs, MAX_TIMER_MS);
    // A command that outlives its kill (no PID namespace, a hung Docker) must not hold its slot
    // for ever: some time after the kill, the request ends without an exit code.
    let giveUp: NodeJS.Timeout | undefined;
    const abandoned = new Promise<{ exitCode: null }>((resolve) => {
      const timer = setTimeout(() => {
        timedOut = true;
        killSoon(`timeout after ${limit} ms`);
        const graceMs = this.o.killGraceMs ?? KILL_GRACE_MS;
        giveUp = setTimeout(() => {
          log.warn(
            { graceMs },
            'the command did not end after its kill; giving up on it (it keeps its slot until it ends)',
          );
          this.lingering++;
          const release = () => {
            this.lingering--;
          };
          handle!.done.then(release, release);
          resolve({ exitCode: null });
        }, graceMs);
      }, limit);
      void handle!.done.finally(() => clearTimeout(timer));
    });
    let exitCode: number | null;
    try {
      ({ exitCode } = await Promise.race([handle.done, abandoned]));
    } finally {
      clearTimeout(giveUp);
    }
    const result = {
      exitCode,
      durationMs: Math.round(performance.now() - started),
      stdoutBytes: bytes.stdout,
      stderrBytes: bytes.stderr,
      truncated,
      timedOut,
    };
    log.info(result, 'exec finished');
    send({ type: 'exec.exit', id: req.id, ...result });
  }
}
