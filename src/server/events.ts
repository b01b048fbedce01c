// What happened, for people watching: agents connecting, routes applied or rejected, Caddy
// applies, exec requests. A bounded ring of recent events plus live subscribers (the UI's
// server-sent events). Messages never carry secrets.

import type { BerthEvent } from '../model/api.js';

export type { BerthEvent };

export class EventBus {
  private seq = 0;
  private readonly ring: BerthEvent[] = [];
  private readonly subscribers = new Set<(e: BerthEvent) => void>();

  constructor(private readonly keep = 500) {}

  emit(type: string, message: string, data?: Record<string, unknown>): void {
    const e: BerthEvent = { id: ++this.seq, at: Date.now(), type, message };
    if (data) e.data = data;
    this.ring.push(e);
    if (this.ring.length > this.keep) this.ring.shift();
    for (const fn of this.subscribers) fn(e);
  }

  /** Events after `afterId` (all kept ones by default), oldest first. */
  recent(afterId = 0): BerthEvent[] {
    return this.ring.filter((e) => e.id > afterId);
  }

  subscribe(fn: (e: BerthEvent) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }
}
