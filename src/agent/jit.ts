// V8's compilers for `berth agent`. An agent is idle nearly always, and its work per change
// (labels of its containers, one snapshot) is small: the interpreter does it in about the same
// time, while V8's baseline and optimizing compilers, their code and their memory are about
// 9 MiB of an idle agent's RSS (bench/agent-idle.ts, bench/tunnel.ts). So an agent starts on the
// interpreter alone (set before its modules load, so none of its start-up code is compiled). A
// --tunnel agent carries its routes' bytes through its own code: it turns the compilers on when it
// opens its first stream, so they compile the few functions that carry traffic (relays, writes),
// not the start-up code, and an idle tunnel agent stays as small as any.
import { setFlagsFromString } from 'node:v8';

let lean = false;

/** Interpreter only, from now on (before the agent's modules load). */
export function startLean(): void {
  setFlagsFromString('--no-opt --no-sparkplug --no-maglev');
  lean = true;
}

/** The compilers back on (V8 reads these flags whenever it decides to compile), once. */
export function compileFromNow(): void {
  if (!lean) return;
  lean = false;
  setFlagsFromString('--opt --sparkplug --maglev');
}
