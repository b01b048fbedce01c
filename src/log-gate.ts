// Flood control for warnings a peer can trigger at will (invalid messages, refused keys, bad
// requests). The first of a kind is logged at once; repeats within the window are only counted,
// and one summary line says how many there were. A hostile peer sending 100k bad messages
// writes a handful of lines, not 100k.
import type { Logger } from './log.js';

type Level = 'warn' | 'info' | 'error' | 'debug';

interface Entry {
  level: Level;
  msg: string;
  fields: Record<string, unknown>;
  suppressed: number;
  openedAt: number;
}

export class LogGate {
  private readonly open = new Map<string, Entry>();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly logger: Logger,
    private readonly windowMs = 60_000,
    /** Distinct kinds tracked at once; beyond it, new kinds are counted under one overflow key. */
    private readonly maxKinds = 1_000,
    private readonly clock: () => number = Date.now,
  ) {}

  warn(kind: string, fields: Record<string, unknown>, msg: string): void {
    this.log('warn', kind, fields, msg);
  }

  info(kind: string, fields: Record<string, unknown>, msg: string): void {
    this.log('info', kind, fields, msg);
  }

  /** `kind` says which lines are "the same": e.g. `invalid-message:<agentId>:<error>`. */
  log(level: Level, kind: string, fields: Record<string, unknown>, msg: string): void {
    const now = this.clock();
    let e = this.open.get(kind);
    if (e && now - e.openedAt >= this.windowMs) {
      this.flush(kind, e);
      e = undefined;
    }
    if (e) {
      e.suppressed++;
      return;
    }
    if (this.open.size >= this.maxKinds) {
      const overflow = '\u0000overflow';
      const o = this.open.get(overflow);
      if (o) o.suppressed++;
      else
        this.open.set(overflow, {
          level,
          msg: 'more kinds of repeated warnings than are tracked',
          fields: {},
          suppressed: 1,
          openedAt: now,
        });
      return;
    }
    this.logger[level](fields, msg);
    this.open.set(kind, { level, msg, fields, suppressed: 0, openedAt: now });
    this.schedule();
  }

  /** Writes the summaries now (on shutdown, and in tests). */
  flushAll(): void {
    for (const [kind, e] of this.open) this.flush(kind, e);
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  close(): void {
    this.flushAll();
  }

  private flush(kind: string, e: Entry): void {
    this.open.delete(kind);
    if (e.suppressed === 0) return;
    const seconds = Math.round((this.clock() - e.openedAt) / 1000);
    this.logger[e.level](
      { ...e.fields, repeated: e.suppressed, windowSeconds: seconds },
      `${e.msg} (repeated ${e.suppressed} more time${e.suppressed === 1 ? '' : 's'} in ${seconds} s)`,
    );
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = this.clock();
      for (const [kind, e] of this.open) if (now - e.openedAt >= this.windowMs) this.flush(kind, e);
      if (this.open.size > 0) this.schedule();
    }, this.windowMs);
    this.timer.unref?.();
  }
}
