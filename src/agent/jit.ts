// V8's compilers for `berth agent`. An agent is idle nearly always, and its work per change
// (labels of its containers, one snapshot) is small: the interpreter does it in about the same
// time, while V8's baseline and optimizing compilers, their code and their memory are about
// 9 MiB of an idle agent's RSS (bench/agent-idle.ts, bench/tunnel.ts). So an agent starts on the
// interpreter alone (set before its modules load, so none of its start-up code is compiled). A
// --tunnel agent carries its routes' bytes through its own code: when it opens its first stream
// it turns on Sparkplug, V8's baseline compiler (no optimizer), so the few functions that carry
// traffic (relays, writes) run as machine code, not the start-up code. The optimizers stay off:
// the relay's JavaScript is a few calls per read while the bytes move in native code, and in
// bench/tunnel.ts the interpreter alone added 20–30 µs to a round trip's p50, Sparkplug none,
// and TurboFan on top bought no throughput or latency while costing 4–5 MiB of the agent's RSS
// with 100 open streams. --jit keeps all of V8's compilers on from the start.
import { setFlagsFromString } from 'node:v8';

let lean = false;

/** The flags startLean() sets: no compiler but the interpreter. */
export const LEAN_FLAGS = '--no-opt --no-sparkplug --no-maglev';

/** Interpreter only, from now on (before the agent's modules load). */
export function startLean(): void {
  setFlagsFromString(LEAN_FLAGS);
  lean = true;
}

/** The flags compileFromNow() sets: the baseline compiler only, neither TurboFan (`--opt`) nor Maglev. */
export const STREAM_COMPILERS = '--sparkplug';

/** The compiler a tunnel's traffic needs, on (V8 reads the flag whenever it decides to compile), once. */
export function compileFromNow(): void {
  if (!lean) return;
  lean = false;
  setFlagsFromString(STREAM_COMPILERS);
}
