// What the reconciler needs from the data plane, declared here so that it depends on no adapter:
// `ingress/caddy` (CaddyTarget), `ingress/tcp` (TcpSidecar) and `ingress/dns` (DnsSidecar)
// implement these, and the server hands them in. Unit tests hand in fakes.
import type { ApplyResult, ListenerStatus } from '../model/data-plane.js';
import type { Site, SiteChanges, TcpListenerSite } from '../model/desired.js';

/** One HTTP front door (a Caddy instance). */
export interface HttpTarget {
  /** Names the target in logs (Caddy's admin address). */
  readonly name: string;
  /**
   * Makes the target serve `sites`; cheap when it already does (`changed: false`). Sites it
   * rejects are quarantined, the rest applied; a throw means nothing is known and the pass retries.
   * `changes` (since the list of the previous call, by identity) lets it look at those alone.
   */
  apply(sites: Site[], changes?: SiteChanges): Promise<ApplyResult>;
  /** Forget what the target holds, so the next apply sends everything. */
  invalidate(): void;
  /** Let the next apply try the sites the target rejected before. */
  forgetRejections(): void;
  /** Whether the target no longer holds what was last applied (then the next apply resends). */
  drifted(): Promise<boolean>;
}

/** Berth's TCP forwarder: one listener per front-door port. */
export interface TcpListenerSync {
  /** Makes the listeners match; resolves once new ones are bound or have failed. */
  sync(listeners: TcpListenerSite[]): Promise<void>;
  status(): ListenerStatus[];
}

/** The dynamic layout's DNS table: hosts Caddy serves without a config change. */
export interface DnsTableSync {
  /**
   * Publishes the table for `sites`. With `transition` (before an apply), hosts that move from the
   * table into Caddy's config keep their entries, so they are served until that apply has landed.
   */
  publish(sites: Site[], o?: { transition?: boolean }, changes?: SiteChanges): void | Promise<void>;
}
