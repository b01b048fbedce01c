import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DnsSidecar, tableFromSites } from '../../src/ingress/dns/sidecar.js';
import { frame, LOG_MAGIC, TableLogReader, TableLogWriter } from '../../src/ingress/dns/table-log.js';
import type { Site } from '../../src/model/desired.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'berth-dnslog-'));
  dirs.push(d);
  return d;
}

const e = (host: string, ip = '127.0.0.2', port = 80) =>
  `${JSON.stringify(host)}:${JSON.stringify([[ip, port]])}`;
const hosts = (r: TableLogReader) =>
  Object.fromEntries([...r.table].map(([h, ts]) => [h, ts.map((t) => `${t.host}:${t.port}`).join(',')]));

describe('DNS table log', () => {
  it('hands the reader the whole table, then only what each patch changes', () => {
    const file = join(tmp(), 'table.log');
    const w = new TableLogWriter(file);
    w.writeFull([e('a.test'), e('b.test')]);
    const r = new TableLogReader(file);
    expect(r.poll()).toEqual({ changed: true });
    expect(hosts(r)).toEqual({ 'a.test': '127.0.0.2:80', 'b.test': '127.0.0.2:80' });
    const live = r.table;
    expect(w.append([e('c.test', '10.0.0.1', 8080), e('a.test', '127.0.0.3')], ['b.test'])).toBe(true);
    expect(r.poll()).toEqual({ changed: true });
    expect(r.table).toBe(live); // patched in place, not rebuilt
    expect(hosts(r)).toEqual({ 'a.test': '127.0.0.3:80', 'c.test': '10.0.0.1:8080' });
    expect(r.poll()).toEqual({ changed: false });
    // A responder started now reads the same state.
    const again = new TableLogReader(file);
    again.poll();
    expect(hosts(again)).toEqual(hosts(r));
    for (const x of [r, again]) x.close();
    w.close();
  });

  it('waits past a record still being written (or cut short by a crash), never applying part of one', () => {
    const file = join(tmp(), 'table.log');
    const w = new TableLogWriter(file);
    w.writeFull([e('a.test')]);
    const r = new TableLogReader(file);
    r.poll();
    const rec = frame(`{"set":{${e('b.test')}},"del":["a.test"]}`);
    for (const cut of [3, 8, rec.length - 1]) {
      const d = tmp();
      const f = join(d, 'table.log');
      const w2 = new TableLogWriter(f);
      w2.writeFull([e('a.test')]);
      const r2 = new TableLogReader(f);
      r2.poll();
      appendFileSync(f, rec.subarray(0, cut));
      expect(r2.poll()).toEqual({ changed: false });
      expect(hosts(r2)).toEqual({ 'a.test': '127.0.0.2:80' });
      appendFileSync(f, rec.subarray(cut));
      expect(r2.poll()).toEqual({ changed: true });
      expect(hosts(r2)).toEqual({ 'b.test': '127.0.0.2:80' });
      r2.close();
      w2.close();
    }
    r.close();
    w.close();
  });

  it.each([
    [
      'a bad checksum',
      () => Buffer.from(frame(`{"set":{${e('x.test')}},"del":[]}`).map((b, i) => (i === 12 ? b ^ 1 : b))),
    ],
    ['a length beyond any record', () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])],
    ['a payload that is not JSON', () => frame('{"set":')],
    ['a port out of range', () => frame('{"set":{"x.test":[["127.0.0.2",70000]]},"del":[]}')],
    ['an address that is not a string', () => frame('{"set":{"x.test":[[1,80]]},"del":[]}')],
    ['"del" that is not a list of hosts', () => frame('{"set":{},"del":[1]}')],
    ['a second whole table', () => frame('{"full":{}}')],
    ['a list instead of a record', () => frame('[1,2]')],
  ])('stops at %s with a clear error, keeping the table as of the last good record', (_what, bad) => {
    const file = join(tmp(), 'table.log');
    const w = new TableLogWriter(file);
    w.writeFull([e('a.test')]);
    w.append([e('b.test')], []);
    const r = new TableLogReader(file);
    r.poll();
    appendFileSync(file, bad());
    const res = r.poll();
    expect(res.changed).toBe(false);
    expect(res.error).toMatch(/table\.log: record at byte \d+/);
    expect(hosts(r)).toEqual({ 'a.test': '127.0.0.2:80', 'b.test': '127.0.0.2:80' });
    // Nothing after the damage is read, even if valid; a new whole file is.
    w.append([e('c.test')], []);
    expect(r.poll()).toEqual({ changed: false });
    expect(hosts(r)).not.toHaveProperty('c.test');
    w.writeFull([e('d.test')]);
    expect(r.poll()).toEqual({ changed: true });
    expect(hosts(r)).toEqual({ 'd.test': '127.0.0.2:80' });
    r.close();
    w.close();
  });

  it('keeps the last good table when a new file is not a table or its base is cut short', () => {
    const d = tmp();
    const file = join(d, 'table.log');
    const w = new TableLogWriter(file);
    w.writeFull([e('a.test')]);
    const r = new TableLogReader(file);
    r.poll();
    const full = frame(`{"full":{${e('b.test')}}}`);
    for (const [content, msg] of [
      [Buffer.from('{"b.test":[["127.0.0.2",80]]}'), /bad header/],
      [Buffer.concat([LOG_MAGIC, full.subarray(0, full.length - 2)]), /cut short/],
      [Buffer.concat([LOG_MAGIC, frame('{"set":{},"del":[]}')]), /first record is not the whole table/],
    ] as const) {
      // A new file in place, as a rename would leave it.
      rmSync(file);
      writeFileSync(file, content);
      const res = r.poll();
      expect(res.changed).toBe(false);
      expect(res.error).toMatch(msg);
      expect(hosts(r)).toEqual({ 'a.test': '127.0.0.2:80' });
      expect(r.poll()).toEqual({ changed: false }); // reported once
    }
    w.writeFull([e('c.test')]);
    expect(r.poll().changed).toBe(true);
    expect(hosts(r)).toEqual({ 'c.test': '127.0.0.2:80' });
    r.close();
    w.close();
  });

  it('compacts once the patches outgrow the base; the reader follows to the new file', () => {
    const file = join(tmp(), 'table.log');
    const w = new TableLogWriter(file, { factor: 1, minBytes: 1_000 });
    w.writeFull([e('a.test')]);
    const r = new TableLogReader(file);
    r.poll();
    const ino = statSync(file).ino;
    let i = 0;
    while (w.append([e(`h${i}.test`)], [])) i++;
    expect(i).toBeGreaterThan(10);
    expect(statSync(file).size).toBeLessThan(2_000);
    r.poll();
    w.writeFull([...Array.from({ length: i }, (_, k) => e(`h${k}.test`)), e('a.test')]);
    expect(statSync(file).ino).not.toBe(ino);
    expect(r.poll().changed).toBe(true);
    expect(r.table.size).toBe(i + 1);
    r.close();
    w.close();
  });
});

describe('DnsSidecar.publish', () => {
  const site = (host: string, port: number, path = '/'): Site => ({
    host,
    path,
    stripPath: false,
    upstreams: [{ host: '127.0.0.2', port, scheme: 'http' }],
    routeKeys: [`${host}${path}`],
  });

  it('leaves in table.log what tableFromSites computes, through random changes, compactions and restarts', async () => {
    const dataDir = tmp();
    mkdirSync(join(dataDir, 'dns'));
    // An older server's table.json: the first whole table written replaces it.
    writeFileSync(join(dataDir, 'dns', 'table.json'), '{}');
    const file = join(dataDir, 'dns', 'table.log');
    const make = () =>
      new DnsSidecar({ dataDir, listen: '127.0.0.1:0', command: [], logger: pino({ level: 'silent' }) });
    let dns = make();
    const follower = new TableLogReader(file);
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    let sites: Site[] = [];
    const want = () =>
      Object.fromEntries(
        Object.entries(tableFromSites(sites)).map(([h, ups]) => [
          h,
          ups.map(([a, p]) => `${a}:${p}`).join(','),
        ]),
      );
    for (let step = 0; step < 300; step++) {
      const next = new Map(sites.map((s) => [`${s.host}${s.path}`, s]));
      for (let k = rnd(5); k >= 0; k--) {
        const host = `h${rnd(60)}.test`;
        const op = rnd(4);
        if (op === 0) next.delete(`${host}/`);
        else if (op === 1)
          next.set(`${host}/api`, site(host, 9000, '/api')); // leaves the table
        else next.set(`${host}/`, site(host, 8000 + rnd(3)));
      }
      sites = [...next.values()];
      if (step === 150) {
        await dns.stop();
        dns = make(); // a restarted server writes the whole table again
      }
      await dns.publish(sites);
      follower.poll();
      expect(hosts(follower)).toEqual(want());
    }
    const fresh = new TableLogReader(file);
    fresh.poll();
    expect(hosts(fresh)).toEqual(want());
    expect(() => readFileSync(join(dataDir, 'dns', 'table.json'))).toThrow();
    for (const r of [follower, fresh]) r.close();
    await dns.stop();
  });
});
