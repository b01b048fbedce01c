// Figures for the image and the compose stacks: image size; build time cached (and cold with
// --cold: a fresh cache directory, so debootstrap, the bases and every layer are made anew); time
// from `docker run` to /readyz 200 (standalone and server) and to the first labelled container served
// through the front door; RSS of the server and agent containers at rest.
//   npx tsx bench/install.ts [--cold] [--rest-seconds 20] [--json]
// Runs on private dockerds (the build one on this machine's network, no bridge; two "hosts" in
// network namespaces of its own), like scripts/test-install; everything it starts is stopped.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCleanups } from '../test/e2e/support/cleanup.js';
import { importBusybox, type TestDockerd } from '../test/e2e/support/dockerd.js';
import {
  BUSYBOX,
  buildImage,
  compose,
  containerRss,
  copyImages,
  createAgentKey,
  ensureCompose,
  getFrom,
  type Host,
  runLabelledWeb,
  runStandalone,
  serviceContainer,
  startBuildDockerd,
  twoHosts,
  VERSION,
} from '../test/install/support.js';
import { flag, sleep } from './lib.js';

const json = process.argv.includes('--json');
const cold = process.argv.includes('--cold');
const restSeconds = flag('rest-seconds', 20);
const say = (s: string) => process.stderr.write(`${s}\n`);

/** ms from `since` until GET url (from inside the host's namespace) answers `ok`. */
async function until(
  h: Host,
  since: number,
  url: string,
  ok: (status: number, body: string) => boolean,
  headers = {},
) {
  for (;;) {
    const r = await getFrom(h.netns, url, headers);
    if (ok(r.status, r.body)) return Date.now() - since;
    if (Date.now() - since > 120_000) throw new Error(`${url} did not answer within 120 s`);
    await sleep(20);
  }
}

const mib = (xs: { mib: number }[]) => Math.round(xs.reduce((s, x) => s + x.mib, 0) * 10) / 10;
const pss = (xs: { pssMib: number }[]) => Math.round(xs.reduce((s, x) => s + x.pssMib, 0) * 10) / 10;

async function main() {
  ensureCompose();
  const out: Record<string, unknown> = {};
  let builder: TestDockerd;
  if (cold) {
    const cache = mkdtempSync(join(tmpdir(), 'berth-cold-'));
    builder = await startBuildDockerd(join(cache, 'dockerd'));
    say('cold build (fresh cache: debootstrap, bases, every layer)…');
    const c = await buildImage(builder, { BERTH_CACHE_DIR: cache });
    out.coldBuildSeconds = c.seconds;
    say(`  cold build: ${c.seconds} s`);
    await builder.stop();
    rmSync(cache, { recursive: true, force: true });
  }
  builder = await startBuildDockerd();
  await buildImage(builder); // warms the cache if --cold did not
  const built = await buildImage(builder);
  out.cachedBuildSeconds = built.seconds;
  out.imageBytes = built.bytes;
  say(`image berth:${VERSION}: ${(built.bytes / 1e6).toFixed(1)} MB; cached build ${built.seconds} s`);

  const [a, b] = await twoHosts();
  await copyImages(builder, [a.d, b.d], ['berth:latest', 'berth-socket-proxy:latest']);
  for (const h of [a, b]) {
    await importBusybox(h.d, BUSYBOX);
    await h.d.run(['network', 'create', 'apps']);
  }

  // docker run … standalone, with a labelled container already running on the host.
  await runLabelledWeb(a, 'hello', 8181, 'hello.test');
  const t0 = Date.now();
  await runStandalone(a, 'standalone', 8080, ['-p', '7081:7080', '-e', 'BERTH_API_LISTEN=0.0.0.0:7080']);
  const [readyMs, servedMs] = await Promise.all([
    until(a, t0, `http://${a.ip}:7081/readyz`, (s) => s === 200),
    until(a, t0, `http://${a.ip}:8080/`, (_s, body) => body.trim() === 'body of hello', {
      host: 'hello.test',
    }),
  ]);
  out.standaloneRunToReadyMs = readyMs;
  out.standaloneRunToServedMs = servedMs;
  say(`standalone: docker run → /readyz 200 in ${readyMs} ms; → labelled container served in ${servedMs} ms`);
  await a.d.run(['rm', '-f', 'standalone', 'hello']);

  // The compose stacks: server on host A, agent (+ socket proxy) on host B.
  const t1 = Date.now();
  await compose(a.d, 'berth-server', 'deploy/compose.server.yml', ['up', '-d'], {
    BERTH_TLS: 'off',
    BERTH_PUBLIC_NAME: a.ip,
  });
  out.serverComposeUpToReadyMs = await until(a, t1, `http://${a.ip}:7080/readyz`, (s) => s === 200);
  say(`server stack: docker-compose up → /readyz 200 in ${out.serverComposeUpToReadyMs} ms`);
  const server = await serviceContainer(a.d, 'berth-server', 'berth');
  const key = await createAgentKey(a, server, 'host-b');
  await runLabelledWeb(b, 'web', 8282, 'web.test');
  const agentEnv = {
    BERTH_SERVER: `https://${a.ip}:7443`,
    BERTH_AGENT_KEY: key,
    BERTH_HOST_IP: b.ip,
    DOCKER_SOCKET: b.d.socket,
  };
  const t2 = Date.now();
  await compose(b.d, 'berth-agent', 'deploy/compose.agent.yml', ['up', '-d'], agentEnv);
  out.agentComposeUpToServedMs = await until(
    a,
    t2,
    `http://${a.ip}/`,
    (_s, body) => body.trim() === 'body of web',
    {
      host: 'web.test',
    },
  );
  say(
    `agent stack: docker-compose up → its container served at the server's front door in ${out.agentComposeUpToServedMs} ms`,
  );

  say(`at rest for ${restSeconds} s…`);
  await sleep(restSeconds * 1000);
  const serverRss = await containerRss(a.d, server);
  const agentRss = await containerRss(b.d, await serviceContainer(b.d, 'berth-agent', 'berth-agent'));
  const proxyRss = await containerRss(b.d, await serviceContainer(b.d, 'berth-agent', 'docker-socket-proxy'));
  out.serverRssMiB = mib(serverRss);
  out.serverPssMiB = pss(serverRss);
  out.agentPssMiB = pss(agentRss);
  out.agentRssMiB = mib(agentRss);
  out.socketProxyRssMiB = mib(proxyRss);
  out.serverProcesses = serverRss;
  out.agentProcesses = agentRss;
  for (const [name, xs] of [
    ['server', serverRss],
    ['agent', agentRss],
    ['socket proxy', proxyRss],
  ] as const) {
    say(`at rest, ${name} container: RSS ${mib(xs)} MiB, PSS ${pss(xs)} MiB`);
    for (const p of xs)
      say(`  RSS ${p.mib.toFixed(1).padStart(6)}  PSS ${p.pssMib.toFixed(1).padStart(6)} MiB  ${p.command}`);
  }
  await compose(b.d, 'berth-agent', 'deploy/compose.agent.yml', ['down', '-v'], agentEnv);
  await compose(a.d, 'berth-server', 'deploy/compose.server.yml', ['down', '-v']);
  if (json) console.log(JSON.stringify(out));
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
