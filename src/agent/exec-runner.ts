// Runs allowed commands for the server: policy first (on this host), then `docker exec` with
// the argv as given (never a shell), a timeout that kills, an output cap and a concurrency cap.
// Every request is logged here too, so the host keeps its own audit trail.
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { ExecEvent, ExecRequest } from '../model/protocol.js';
import type { DockerSource, ExecHandle } from './docker.js';
import { decide, type ExecPolicy } from './exec-policy.js';

export interface ExecRunnerOptions {
  source: DockerSource;
  policy: ExecPolicy;
  labelPrefix: string;
  logger: Logger;
  send: (e: ExecEvent) => void;
}

export class ExecRunner {
  private running = 0;
  /** Requests by what happened to them, for the agent's metrics. */
  readonly counters = { allowed: 0, denied: 0, busy: 0 };

  constructor(private readonly o: ExecRunnerOptions) {}

  async handle(req: ExecRequest): Promise<void> {
    const { logger, policy, send } = this.o;
    const log = logger.child({ execId: req.id, container: req.container, argv: req.argv });
    if (this.running >= policy.maxConcurrent) {
      this.counters.busy++;
      log.warn({ decision: 'busy' }, 'exec refused: too many running');
      return send({
        type: 'exec.error',
        id: req.id,
        code: 'BUSY',
        message: `${this.running} commands already running on this agent (limit ${policy.maxConcurrent})`,
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
      return send({ type: 'exec.denied', id: req.id, reason: d.reason, considered: d.considered });
    }
    this.counters.allowed++;
    log.info({ decision: 'allowed', rule: d.rule }, 'exec allowed');
    this.running++;
    try {
      await this.run(req, container.id, container.name, d.rule, log);
    } finally {
      this.running--;
    }
  }

  private async run(
    req: ExecRequest,
    containerId: string,
    name: string,
    rule: string,
    log: Logger,
  ): Promise<void> {
    const { policy, send } = this.o;
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
    send({ type: 'exec.started', id: req.id, rule, container: name });
    try {
      handle = await this.o.source.exec(containerId, req.argv, (stream, chunk) => {
        if (truncated) return;
        const room = policy.maxOutputBytes - bytes.stdout - bytes.stderr;
        const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
        bytes[stream] += part.length;
        if (part.length > 0) send({ type: 'exec.output', id: req.id, stream, data: part.toString('base64') });
        if (chunk.length > room) {
          truncated = true;
          void kill('output cap reached');
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
    const limit = Math.min(req.timeoutMs, policy.maxTimeoutMs);
    const timer = setTimeout(() => {
      timedOut = true;
      void kill(`timeout after ${limit} ms`);
    }, limit);
    const { exitCode } = await handle.done;
    clearTimeout(timer);
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
