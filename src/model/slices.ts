// Long pure computations written as generators that yield at pause points, run either at once
// or in slices between which the event loop serves requests and heartbeats.

/** Runs the steps to the end at once. */
export function drain<T>(steps: Generator<void, T>): T {
  let r = steps.next();
  while (!r.done) r = steps.next();
  return r.value;
}

/**
 * Runs the steps to the end, yielding to the event loop whenever they have run for `sliceMs`:
 * work over tens of thousands of items is then many short tasks, not one that holds every
 * request for a tenth of a second.
 */
export async function inSlices<T>(steps: Generator<void, T>, sliceMs = 10): Promise<T> {
  let from = performance.now();
  let r = steps.next();
  while (!r.done) {
    if (performance.now() - from >= sliceMs) {
      await new Promise((resolve) => setImmediate(resolve));
      from = performance.now();
    }
    r = steps.next();
  }
  return r.value;
}

/** A pause point every `every` calls: `if (pause()) yield;` in a loop over many items. */
export function pauseEvery(every = 256): () => boolean {
  let n = 0;
  return () => ++n % every === 0;
}
