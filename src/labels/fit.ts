// What one container may add to a snapshot, kept inside the sizes the server's schema allows
// (model/limits.ts). An oversize label is refused before any parser reads it; what is shown
// (diagnostics, explanations) is clipped and, past a budget, summarised. So a hostile label set
// costs its own container its routes and never makes the snapshot of the whole host invalid.
import {
  clip,
  MAX_EXPLAINED_LABELS,
  MAX_LABEL_VALUE,
  MAX_LABELS_PER_CONTAINER,
  MAX_MESSAGE,
  MAX_REPORT_BYTES_PER_CONTAINER,
  MAX_ROUTE_BYTES_PER_CONTAINER,
  MAX_STRING,
} from '../model/limits.js';
import type {
  ContainerInfo,
  Diagnostic,
  Explanation,
  LabelExplanation,
  RouteSpec,
  TcpRouteSpec,
} from '../model/types.js';
import { shownValue } from './draft.js';

/** Shown label values and notes in an explanation: enough to recognise them, small per label. */
export const EXPLAINED_VALUE = 1_000;
export const EXPLAINED_NOTE = 2_000;

const KIB = (n: number) => `${Math.round(n / 1024)} KiB`;

/**
 * Labels too big or too many to read: each is an error on the container, and the dialect's
 * parser never sees them (so its time stays bounded by MAX_LABEL_VALUE × MAX_LABELS_PER_CONTAINER).
 */
export function oversizeLabels(c: ContainerInfo, keys: readonly string[], dialect: string): Diagnostic[] {
  const out: Diagnostic[] = [];
  const error = (label: string, value: string | undefined, message: string) => {
    const d: Diagnostic = {
      severity: 'error',
      containerId: c.id,
      containerName: c.name,
      label: clip(label, MAX_STRING),
      message,
    };
    if (value !== undefined) d.value = clip(shownValue(label, value), MAX_MESSAGE);
    out.push(d);
  };
  if (keys.length > MAX_LABELS_PER_CONTAINER) {
    error(
      '',
      undefined,
      `the container has ${keys.length} ${dialect} labels; at most ${MAX_LABELS_PER_CONTAINER} are read, so it is not routed`,
    );
    return out;
  }
  for (const key of keys) {
    const value = c.labels[key] ?? '';
    if (key.length > MAX_STRING) {
      error(
        key,
        value,
        `label key of ${key.length} characters; at most ${MAX_STRING} are read, so the container is not routed`,
      );
    } else if (value.length > MAX_LABEL_VALUE) {
      error(
        key,
        value,
        `label ${key} is ${value.length} characters (${KIB(value.length)}); at most ${MAX_LABEL_VALUE} (${KIB(MAX_LABEL_VALUE)}) are read, so it is not parsed and the container is not routed`,
      );
    }
  }
  return out;
}

/**
 * The container's routes as an error when they take more of the snapshot than one container
 * may (thousands of hostnames over many labels): none of them is sent.
 */
export function routesTooBig(
  c: ContainerInfo,
  routes: RouteSpec[],
  tcp: TcpRouteSpec[],
): Diagnostic | undefined {
  if (routes.length === 0 && tcp.length === 0) return undefined;
  const bytes = jsonBytes(routes) + jsonBytes(tcp);
  if (bytes <= MAX_ROUTE_BYTES_PER_CONTAINER) return undefined;
  return {
    severity: 'error',
    containerId: c.id,
    containerName: c.name,
    label: '',
    message: `the container's ${routes.length + tcp.length} routes take ${KIB(bytes)} of the snapshot; one container may add at most ${KIB(MAX_ROUTE_BYTES_PER_CONTAINER)}, so none is sent (use fewer hostnames or routes per container)`,
  };
}

/**
 * Diagnostics and explanation clipped field by field to the schema's sizes, then to one budget
 * (MAX_REPORT_BYTES_PER_CONTAINER): diagnostics first (errors are never lost: the summary of the
 * ones left out is an error when any of them costs the container its routes), the explanation
 * in what remains.
 */
export function fitReport(
  c: { id: string; name: string },
  diagnostics: Diagnostic[],
  explain: Explanation | undefined,
  /** Errors that cost one part (a router), not the container: left out, they do not make the summary an error. */
  scoped?: ReadonlySet<Diagnostic>,
): { diagnostics: Diagnostic[]; explain?: Explanation } {
  // Room kept for the summary lines, whatever the diagnostics before them take.
  const reserve = 2 * 1024;
  let budget = MAX_REPORT_BYTES_PER_CONTAINER - reserve;
  const diags: Diagnostic[] = [];
  let i = 0;
  for (; i < diagnostics.length; i++) {
    const d = fitDiagnostic(diagnostics[i]!);
    const cost = jsonBytes(d);
    if (cost > budget) break;
    budget -= cost;
    diags.push(d);
  }
  const summary = (severity: Diagnostic['severity'], message: string): Diagnostic => ({
    severity,
    containerId: clip(c.id, MAX_STRING),
    containerName: clip(c.name, MAX_STRING),
    label: '',
    message,
  });
  if (i < diagnostics.length) {
    const rest = diagnostics.slice(i);
    const errors = rest.filter((d) => d.severity === 'error').length;
    const sinking = rest.some((d) => d.severity === 'error' && !scoped?.has(d));
    diags.push(
      summary(
        sinking ? 'error' : 'warning',
        `${rest.length} more diagnostics (${errors} errors) are not reported: one container's diagnostics and explanation may take at most ${KIB(MAX_REPORT_BYTES_PER_CONTAINER)} of a snapshot; fix the ones shown first`,
      ),
    );
  }
  if (!explain) return { diagnostics: diags };
  const labels: LabelExplanation[] = [];
  let j = 0;
  for (; j < explain.labels.length && j < MAX_EXPLAINED_LABELS; j++) {
    const l = fitExplained(explain.labels[j]!);
    const cost = jsonBytes(l);
    if (cost > budget) break;
    budget -= cost;
    labels.push(l);
  }
  if (j < explain.labels.length) {
    diags.push(
      summary(
        'warning',
        `the explanation of ${explain.labels.length - j} more labels is left out: one container's diagnostics and explanation may take at most ${KIB(MAX_REPORT_BYTES_PER_CONTAINER)} of a snapshot`,
      ),
    );
  }
  return { diagnostics: diags, explain: { dialect: clip(explain.dialect, 32), labels } };
}

function fitDiagnostic(d: Diagnostic): Diagnostic {
  // A copy keeps the order of the fields (golden files and `berth explain` output show it).
  const out: Diagnostic = { ...d };
  out.containerId = clip(d.containerId, MAX_STRING);
  out.containerName = clip(d.containerName, MAX_STRING);
  out.label = clip(d.label, MAX_STRING);
  out.message = clip(d.message, MAX_MESSAGE);
  if (d.value !== undefined) out.value = clip(d.value, MAX_MESSAGE);
  return out;
}

function fitExplained(l: LabelExplanation): LabelExplanation {
  const out: LabelExplanation = { ...l };
  out.key = clip(l.key, MAX_STRING);
  out.value = clip(l.value, EXPLAINED_VALUE);
  if (l.note !== undefined) out.note = clip(l.note, EXPLAINED_NOTE);
  return out;
}

export function jsonBytes(x: unknown): number {
  return Buffer.byteLength(JSON.stringify(x));
}
