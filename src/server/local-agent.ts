// The agent of `berth standalone`: the same assembly as `berth agent` (agent/agent.ts), connected
// to the hub in-process instead of over a WebSocket. This is the one place that knows it is local.
import type { Logger } from 'pino';
import { Agent, defaultHostIp } from '../agent/agent.js';
import type { WatchConfig } from '../config.js';
import { errorMessage } from '../errors.js';
import type { ServerMessage } from '../model/protocol.js';
import { VERSION } from '../version.js';
import type { AgentHub, LocalConnection } from './agent-hub.js';
import type { Registry } from './registry.js';

/** Its id in the store, kept from the first version so an upgraded standalone is the same agent. */
const LOCAL_AGENT_ID = 'local';

export interface LocalAgent {
  readonly dockerConnected: boolean;
  stop(): void;
}

export async function connectLocalAgent(o: {
  hub: AgentHub;
  registry: Registry;
  watch: WatchConfig;
  logger: Logger;
  /** How often it heartbeats, as remote agents do with --report-interval. */
  heartbeatMs: number;
}): Promise<LocalAgent> {
  const logger = o.logger.child({ component: 'agent' });
  await o.registry.registerLocal(LOCAL_AGENT_ID, o.watch.name, VERSION);
  let conn: LocalConnection | undefined;
  let reported = false;
  const agent = new Agent({
    watch: o.watch,
    logger,
    output: {
      publish: (snapshot) => {
        conn?.receive({ type: 'snapshot', snapshot });
        // The first snapshot means Docker answered: say so now rather than at the next beat.
        if (!reported) {
          reported = true;
          beat();
        }
      },
      execEvent: (e) => conn?.receive(e),
    },
  });
  const deliver = (msg: ServerMessage) => {
    if (msg.type === 'exec')
      agent.handleExec(msg).catch((err) => logger.error({ err: errorMessage(err) }, 'exec handler failed'));
    else if (msg.type === 'resync') agent.resend();
  };
  conn = o.hub.attachLocal(LOCAL_AGENT_ID, { send: deliver, close: () => {} });
  const beat = () =>
    conn?.receive({
      type: 'heartbeat',
      version: VERSION,
      intervalMs: o.heartbeatMs,
      ...agent.heartbeat(),
      sentAt: Date.now(),
    });
  const timer = setInterval(beat, o.heartbeatMs);
  if (o.watch.hostIp) agent.setHostIp(o.watch.hostIp, 'flag');
  else
    agent.setHostIp(
      defaultHostIp(o.watch.docker),
      'auto (docker is local, so the front door reaches containers on loopback)',
    );
  beat();
  return {
    get dockerConnected() {
      return agent.dockerConnected;
    },
    stop() {
      clearInterval(timer);
      agent.stop();
      conn?.gone();
    },
  };
}
