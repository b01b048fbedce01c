// What the data plane reports back after the reconciler hands it the desired state: per HTTP
// target, the sites it serves and those it refused; per TCP port, the listener's state.

/** Which sites a target serves, by signature (at 50k, an index rather than a set made per pass). */
export interface ServedSites {
  has(signature: string): boolean;
}

/** One apply to an HTTP target. */
export interface ApplyResult {
  /** Whether a config was sent (false: the target already had it). */
  changed: boolean;
  /** Site signature → the target's error, for sites left out because the target rejected them. */
  quarantined: Map<string, string>;
  /** Signatures of the sites the target now serves. */
  served: ServedSites;
  /** Configs loaded to get there (more than one when a rejected config was bisected). */
  loads: number;
  /** How long the apply took, in ms (0 when nothing was sent). */
  ms: number;
}

/** One front-door TCP listener, as the forwarder reports it. */
export interface ListenerStatus {
  listen: number;
  address?: string;
  state: 'listening' | 'starting' | 'error';
  error?: string;
  upstreams: string[];
  allow: string[];
  active: number;
  routeKeys: string[];
}
