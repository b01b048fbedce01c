// One Caddy instance that Berth drives. Applies are idempotent (skipped when nothing changed),
// a rejected config is bisected so only the offending sites are quarantined, and drift (Caddy
// restarted or edited) is found by comparing Berth's part of the live config with what was sent.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { errorMessage } from '../../errors.js';
import type { ApplyResult } from '../../model/data-plane.js';
import { type Site, type SiteChanges, siteSignature } from '../../model/desired.js';
import { inSlices } from '../../model/slices.js';
import { type CaddyAdminClient, CaddyRejectedError } from './admin.js';
import {
  type BerthCaddyParts,
  buildCaddyParts,
  type CaddyBuildOptions,
  canonicalJson,
  extractParts,
  mergeIntoConfig,
  SiteSplit,
} from './config.js';

/** Implements the reconciler's `HttpTarget` (reconcile/data-plane.ts) for one Caddy. */
export class CaddyTarget {
  /** What Caddy was last given: a key of the inputs, the version @id, and the parts themselves. */
  private sent?: { key: string; versionId: string; parts: BerthCaddyParts };
  private checks = 0;
  private served = new Set<string>();
  /** Sites Caddy accepted before: safe to keep while bisecting a rejected change. */
  private known = new Set<string>();
  private rejected = new Map<string, string>();
  stats = {
    loads: 0,
    failures: 0,
    lastApplyMs: 0,
    lastError: '' as string,
    lastAppliedAt: 0,
    reachable: false,
  };

  /**
   * @param split which sites Caddy's config names and which DNS serves (the dynamic layout), kept
   *   between passes; one split may serve every target and the DNS table of the same passes.
   */
  constructor(
    readonly admin: CaddyAdminClient,
    private readonly opts: CaddyBuildOptions,
    private readonly logger: Logger,
    private readonly split: SiteSplit = new SiteSplit(),
  ) {}

  get name(): string {
    return this.admin.display;
  }

  /** Forget what Caddy has, so the next apply sends everything (e.g. after a restart). */
  invalidate(): void {
    this.sent = undefined;
  }

  /** Quarantine decisions are deterministic for a given site, but a forced pass retries them. */
  forgetRejections(): void {
    this.rejected.clear();
  }

  async apply(all: Site[], changes?: SiteChanges): Promise<ApplyResult> {
    // In the dynamic layout, hosts served through DNS are not part of Caddy's config: changing
    // them costs no apply at all. They are served once the catch-all route is in place.
    if (this.opts.dynamic) await inSlices(this.split.updateSteps(all, changes));
    const sites = this.opts.dynamic ? this.split.explicit : all;
    let result: ApplyResult;
    try {
      result = await this.applyExplicit(sites);
    } catch (err) {
      this.stats.lastError = errorMessage(err);
      throw err;
    }
    if (this.opts.dynamic && this.sent) {
      // Hosts served through DNS are served once the catch-all is in place: asked of the split
      // (by the host a signature starts with), not copied into a set of 50k each pass.
      const explicit = result.served;
      const dynamic = this.split.dynamic;
      result.served = {
        has: (sig) => {
          if (explicit.has(sig)) return true;
          const site = dynamic.get(sig.slice(0, sig.indexOf(' ')));
          return site !== undefined && siteSignature(site) === sig;
        },
      };
    }
    return result;
  }

  private async applyExplicit(sites: Site[]): Promise<ApplyResult> {
    const sigs = new Map(sites.map((s) => [siteSignature(s), s] as const));
    const quarantined = new Map<string, string>();
    const candidate: Site[] = [];
    for (const [sig, s] of sigs) {
      const why = this.rejected.get(sig);
      if (why) quarantined.set(sig, why);
      else candidate.push(s);
    }
    if (this.inputKey(candidate) === this.sent?.key) {
      return { changed: false, quarantined, served: new Set(this.served), loads: 0, ms: 0 };
    }
    const started = performance.now();
    let loads = 0;
    const tryLoad = async (subset: Site[]): Promise<string | undefined> => {
      loads++;
      try {
        await this.load(subset);
        return undefined;
      } catch (err) {
        if (err instanceof CaddyRejectedError) return err.message;
        throw err;
      }
    };

    let error = await tryLoad(candidate);
    let good = candidate;
    if (error !== undefined) {
      // Keep what Caddy accepted before, then add the new sites back in halves; only the
      // sites that still fail alone are left out. Caddy keeps its old config on a rejection,
      // so no step here ever serves less than before.
      good = candidate.filter((s) => this.known.has(siteSignature(s)));
      const fresh = candidate.filter((s) => !this.known.has(siteSignature(s)));
      const baseError = await tryLoad(good);
      if (baseError !== undefined) {
        this.stats.failures++;
        this.stats.lastError = baseError;
        throw new CaddyRejectedError(
          400,
          `Caddy rejects Berth's config even without new routes: ${baseError}`,
        );
      }
      const bisect = async (group: Site[]): Promise<void> => {
        if (group.length === 0) return;
        const err = await tryLoad([...good, ...group]);
        if (err === undefined) {
          good = [...good, ...group];
          return;
        }
        if (group.length === 1) {
          const sig = siteSignature(group[0]!);
          this.rejected.set(sig, err);
          quarantined.set(sig, err);
          return;
        }
        const mid = Math.ceil(group.length / 2);
        await bisect(group.slice(0, mid));
        await bisect(group.slice(mid));
      };
      await bisect(fresh);
      error = undefined;
      // The last load may have been a failed probe; make sure Caddy holds exactly `good`.
      await this.load(good);
      loads++;
      this.logger.warn(
        { admin: this.admin.display, quarantined: quarantined.size, loads },
        'Caddy rejected some routes; applied the rest',
      );
    }
    this.served = new Set(good.map(siteSignature));
    for (const sig of this.served) this.known.add(sig);
    this.stats.loads += loads;
    this.stats.lastApplyMs = Math.round(performance.now() - started);
    this.stats.lastAppliedAt = Date.now();
    this.stats.lastError = '';
    return { changed: true, quarantined, served: new Set(this.served), loads, ms: this.stats.lastApplyMs };
  }

  /** Sites are identified by content signatures, so equal inputs give equal keys. */
  private inputKey(sites: Site[]): string {
    const h = createHash('sha256').update(JSON.stringify(this.opts));
    for (const sig of sites.map(siteSignature).sort()) h.update(sig);
    return h.digest('hex');
  }

  private async load(sites: Site[]): Promise<void> {
    const key = this.inputKey(sites);
    const versionId = `berth_version_${key.slice(0, 16)}`;
    const parts = buildCaddyParts(sites, this.opts, versionId);
    this.logger.debug({ admin: this.admin.display, sites: sites.length }, 'applying routes to caddy');
    // Merge into the live config so the operator's own servers and edits are kept.
    const current = await this.admin.getConfig('/config/');
    this.stats.reachable = true;
    await this.admin.load(mergeIntoConfig(current ?? {}, parts));
    this.sent = { key, versionId, parts };
  }

  /**
   * True when Caddy no longer holds what Berth last sent (restarted, replaced, edited, or
   * unreachable). Every check asks for the version @id, which costs Caddy almost nothing;
   * every `fullEvery`-th check compares Berth's whole part of the config.
   */
  async drifted(fullEvery = 30): Promise<boolean> {
    const sent = this.sent;
    if (sent === undefined) return true;
    try {
      let drift: boolean;
      if (++this.checks % fullEvery === 0) {
        const live = await this.admin.getConfig('/config/');
        drift = canonicalJson(extractParts(live)) !== canonicalJson(sent.parts);
      } else {
        drift = (await this.admin.request('GET', `/id/${sent.versionId}`)).status !== 200;
      }
      this.stats.reachable = true;
      if (drift) {
        this.logger.warn({ admin: this.admin.display }, "Caddy's config differs from Berth's; repairing");
        if (this.sent === sent) this.sent = undefined;
      }
      return drift;
    } catch (err) {
      if (this.stats.reachable)
        this.logger.warn({ admin: this.admin.display, err: errorMessage(err) }, 'Caddy unreachable');
      this.stats.reachable = false;
      this.stats.lastError = errorMessage(err);
      if (this.sent === sent) this.sent = undefined;
      return true;
    }
  }
}
