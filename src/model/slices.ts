// Long pure computations written as generators that yield at pause points, run either at once
// or in slices between which the event loop serves requests and heartbeats.

/** Jobs waiting for their next slice, first come first served. */
const waiting: Array<() => void> = [];
let armed = false;

function dispatch(): void {
  armed = false;
  const next = waiting.shift();
  if (waiting.length > 0) arm();
  next?.();
}

function arm(): void {
  if (armed) return;
  armed = true;
  setImmediate(dispatch);
}

/**
 * Resolves at a later turn of the event loop, after pending I/O has been served. Every sliced job
 * waits here, and one turn resumes one of them: with a parse, an admission, a store write and a
 * scan all under way, a request waits for one slice, not for one slice of each (each of them
 * yielding with its own setImmediate would resume them all in the same turn, back to back).
 */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => {
    waiting.push(resolve);
    arm();
  });
}

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
      await nextTurn();
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
