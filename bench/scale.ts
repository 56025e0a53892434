/**
 * Durable writes with several writers (issue 15): `npm run bench:scale [-- --quick]`.
 *
 * GK creations (bound to a block) and appends through `engine.handle` (in process, no XMPP), each
 * acknowledged only once durable (LevelDB: fsync; etcd: the Raft commit on a quorum), one request
 * at a time against 20 clients at once, on LevelDB on disk and on a real 3-node etcd cluster on
 * loopback (test/store/harness/etcd-cluster.ts; Debian's etcd-server). Each client appends to a
 * chain of its own (appends to one chain serialise by design: one wins per antecedent), its blocks
 * signed ahead of time so that only the KMS's work is timed. Prints a table, then one JSON object
 * as the last line.
 */
import { X509Certificate } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client as XmppClient } from '@xmpp/client';
import { KmsClient } from '../src/client/kms-client.js';
import { loadConfig } from '../src/config.js';
import { localTokens } from '../src/server.js';
import { openEtcdStore } from '../src/store/etcd.js';
import { type KvStore, openLevelStore } from '../src/store/kv.js';
import { connectClient, disconnect } from '../test/e2e/harness/clients.js';
import { KmsProcess } from '../test/e2e/harness/kms-process.js';
import { freePorts } from '../test/e2e/harness/net.js';
import { serverKinds, startServer } from '../test/e2e/harness/servers.js';
import { EtcdCluster } from '../test/store/harness/etcd-cluster.js';
import { add, KmsFixture, payloadOf, remove, type TestUser } from '../test/support/kms-fixture.js';
import { blockHash } from '../test/support/node-client.js';

const QUICK = process.argv.includes('--quick');
/** Operations per measurement. */
const N = QUICK ? 200 : 1000;
const CLIENTS = 20;

interface Client {
  user: TestUser;
  chain: string;
  tail: string;
}

async function clients(kms: KmsFixture): Promise<Client[]> {
  const out: Client[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const user = await kms.user(`u${i}@example.com`, { keyType: 'EC' });
    await user.register();
    const { block, uri } = await user.genesis([add(user.jid)]);
    out.push({ user, chain: uri, tail: blockHash(block) });
  }
  return out;
}

/** Cores' worth of CPU this process used during the last `rate` (1 = one core busy all the time). */
let lastCpu = 0;

/** Operations per second: `total` operations, `parallel` clients each doing its share in turn. */
async function rate(total: number, parallel: number, op: (client: number, k: number) => Promise<void>): Promise<number> {
  const per = Math.ceil(total / parallel);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: parallel }, async (_, c) => {
      for (let k = 0; k < per; k++) await op(c, k);
    }),
  );
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  lastCpu = Number(((cpu.user + cpu.system) / 1e6 / s).toFixed(2));
  return Math.round((per * parallel) / s);
}

/** Each client's next `count` blocks, signed ahead of time (a dummy member added and removed in turn). */
function signAhead(c: Client, count: number): string[] {
  const blocks: string[] = [];
  for (let k = 0; k < count; k++) {
    const dummy = `d-${c.user.jid}`;
    const block = c.user.block(c.tail, [k % 2 === 0 ? add(dummy) : remove(dummy)]);
    c.tail = blockHash(block);
    blocks.push(block);
  }
  return blocks;
}

/** Durable batches of two puts per second (the store alone, no KMS work), `parallel` writers at a time. */
async function batchRate(kv: KvStore, total: number, parallel: number, tag: string): Promise<number> {
  return rate(total, parallel, (c, k) =>
    kv.batch(
      [
        { type: 'put', key: `${tag}!${c}!${k}`, value: 'x'.repeat(200) },
        { type: 'put', key: `${tag}!index!${c}!${k}`, value: String(k) },
      ],
      { durable: true },
    ),
  );
}

async function storeFigures(kv: KvStore): Promise<{ batchSerial: number; batchConcurrent: number }> {
  await batchRate(kv, CLIENTS * 5, CLIENTS, 'warm');
  return { batchSerial: await batchRate(kv, N, 1, 'one'), batchConcurrent: await batchRate(kv, N, CLIENTS, 'many') };
}

interface Figures {
  /** The store alone: durable batches per second, one writer and 20. */
  batchSerial: number;
  batchConcurrent: number;
  createSerial: number;
  createConcurrent: number;
  appendSerial: number;
  appendConcurrent: number;
  /** Cores' worth of CPU the bench process (KMS and clients) used with 20 clients. */
  createConcurrentCpu: number;
  appendConcurrentCpu: number;
}

async function measure(kms: KmsFixture): Promise<Omit<Figures, 'batchSerial' | 'batchConcurrent'>> {
  const cs = await clients(kms);
  const gkCreate = async (c: number) => {
    const gk = await cs[c]!.user.createGk(cs[c]!.tail);
    if (typeof payloadOf(gk).uri !== 'string') throw new Error('no GK');
  };
  // Warm up (JIT, connections).
  await rate(CLIENTS * 5, CLIENTS, gkCreate);
  const createSerial = await rate(N, 1, gkCreate);
  const createConcurrent = await rate(N, CLIENTS, gkCreate);
  const createConcurrentCpu = lastCpu;
  // Appends: client 0 alone, then all 20, each on its own chain.
  const serialBlocks = signAhead(cs[0]!, N);
  const appendSerial = await rate(N, 1, async (_, k) => {
    await cs[0]!.user.append(cs[0]!.chain, [serialBlocks[k]!]);
  });
  const per = Math.ceil(N / CLIENTS);
  const ahead = cs.map((c) => signAhead(c, per));
  const appendConcurrent = await rate(N, CLIENTS, async (c, k) => {
    await cs[c]!.user.append(cs[c]!.chain, [ahead[c]![k]!]);
  });
  return { createSerial, createConcurrent, createConcurrentCpu, appendSerial, appendConcurrent, appendConcurrentCpu: lastCpu };
}

function line(store: string, f: Figures): string {
  const x = (a: number, b: number) => `${(a / b).toFixed(1)}x`;
  return (
    `${store.padEnd(18)} durable batch ${String(f.batchSerial).padStart(6)}/s alone, ${String(f.batchConcurrent).padStart(6)}/s with ${CLIENTS} (${x(f.batchConcurrent, f.batchSerial)}); ` +
    `GK create ${String(f.createSerial).padStart(6)}/s alone, ${String(f.createConcurrent).padStart(6)}/s with ${CLIENTS} (${x(f.createConcurrent, f.createSerial)}); ` +
    `append ${String(f.appendSerial).padStart(6)}/s alone, ${String(f.appendConcurrent).padStart(6)}/s with ${CLIENTS} (${x(f.appendConcurrent, f.appendSerial)}); ` +
    `CPU with ${CLIENTS}: ${f.createConcurrentCpu}, ${f.appendConcurrentCpu} cores`
  );
}

interface XmppFigures {
  /** GK gets per second, 20 clients, through ejabberd, one KMS instance. */
  gkGet1: number;
  /** The same with two instances on the same etcd store. */
  gkGet2: number;
  /** kill -9 of one of the two under load: the longest time with no answer to any client (s). */
  failoverGapS: number;
  /** The same for one client (one whose request was in flight at the killed instance waits for its timeout). */
  failoverClientGapS: number;
}

const KMS_DOMAIN = 'kms.localhost';

/**
 * GK gets through a real ejabberd with 1 KMS instance, then 2 (`kms run` processes on one 3-node
 * etcd store, as test/e2e/cluster.test.ts starts them), then the kill -9 of one of the two under load.
 */
async function xmppFigures(): Promise<XmppFigures | undefined> {
  if (!serverKinds().includes('ejabberd')) return undefined;
  const users = Array.from({ length: CLIENTS }, (_, i) => ({ username: `scale${i}`, password: `scale${i}-pw` }));
  const etcd = await EtcdCluster.start(3);
  const dir = await mkdtemp(join(tmpdir(), 'kms-scale-'));
  const server = await startServer('ejabberd');
  const procs: KmsProcess[] = [];
  const xmpps: XmppClient[] = [];
  const kcs: KmsClient[] = [];
  try {
    await server.registerUsers(users);
    const storeUrl = `etcd://${etcd.endpoints.map((e) => e.replace(/^http:\/\//, '')).join(',')}`;
    const ports = await freePorts(2);
    const configOf = async (name: string) => {
      const file = join(dir, `${name}.json`);
      const xmpp = {
        service: `xmpp://127.0.0.1:${server.componentPort}`,
        secret: server.componentSecret,
        reconnectInitialMs: 200,
        reconnectMaxMs: 1000,
        ratePerSec: 100_000,
        rateBurst: 100_000,
      };
      await writeFile(file, JSON.stringify({ domain: KMS_DOMAIN, dataDir: join(dir, `data-${name}`), audit: { dir: join(dir, `${name}-audit`) }, xmpp }));
      return file;
    };
    const start = async (file: string, adminPort: number) => {
      const p = new KmsProcess(['run', '--config', file, '--store', storeUrl], { KMS_LOG_LEVEL: 'info', KMS_ADMIN_LISTEN: String(adminPort) });
      procs.push(p);
      await p.waitFor((r) => r.event === 'online', 60_000, 'kms online');
      return p;
    };
    const file1 = await configOf('kms1');
    await start(file1, ports[0]!);
    // The second instance: the same identity (a copy of the first one's data folder), started later.
    await cp(join(dir, 'data-kms1'), join(dir, 'data-kms2'), { recursive: true });
    const file2 = await configOf('kms2');
    const anchors = [new X509Certificate(await readFile(join(dir, 'data-kms1', 'trust-anchor.pem')))];
    const tokens = await localTokens(loadConfig({ file: file1, env: {} }));
    for (const u of users) {
      const xmpp = await connectClient(server, u);
      xmpps.push(xmpp);
      const jid = `${u.username}@localhost`;
      kcs.push(
        await KmsClient.connect({ xmpp, kms: KMS_DOMAIN, anchors, bearer: () => tokens(jid), entityKeyType: { type: 'EC' }, timeoutMs: 5_000, retries: 0 }),
      );
    }
    const chain = await kcs[0]!.createChain(kcs.slice(1).map((c) => c.entity));
    const gk = await kcs[0]!.createGk(chain.tail);
    /** One GK get, uncached (every time a member's fetch, wrapped to its EC key). */
    const get = (c: KmsClient) => c.session.request('get', gk.uri, { entity: c.entity, kid: c.entityKey.kid });
    const seconds = QUICK ? 2 : 8;
    const throughput = async (): Promise<number> => {
      let done = 0;
      const until = Date.now() + seconds * 1000;
      const t0 = process.hrtime.bigint();
      await Promise.all(
        kcs.map(async (c) => {
          while (Date.now() < until) {
            await get(c);
            done++;
          }
        }),
      );
      return Math.round(done / (Number(process.hrtime.bigint() - t0) / 1e9));
    };
    await Promise.all(kcs.map((c) => get(c))); // warm up
    const gkGet1 = await throughput();
    const second = await start(file2, ports[1]!);
    await Promise.all(kcs.map((c) => get(c)));
    const gkGet2 = await throughput();
    // Failover: all 20 clients get in a loop; kms2 is killed; the longest time with no answer.
    const answered: number[] = [];
    const byClient: number[][] = kcs.map(() => []);
    let stopped = false;
    const load = kcs.map(async (c, i) => {
      while (!stopped) {
        try {
          await get(c);
          answered.push(Date.now());
          byClient[i]!.push(Date.now());
        } catch {
          // a request in flight at the killed instance times out
        }
      }
    });
    await new Promise((r) => setTimeout(r, 1000));
    await second.kill();
    const killedAt = Date.now();
    const deadline = killedAt + 30_000;
    while (Date.now() < deadline && !(Date.now() > killedAt + 2_000 && byClient.every((t) => t.some((x) => x > killedAt)))) {
      await new Promise((r) => setTimeout(r, 100));
    }
    stopped = true;
    await Promise.all(load);
    const maxGap = (ts: number[]) => {
      const times = [killedAt, ...ts.filter((t) => t > killedAt)].sort((a, b) => a - b);
      let gap = 0;
      for (let k = 1; k < times.length; k++) gap = Math.max(gap, times[k]! - times[k - 1]!);
      return gap;
    };
    const failoverGapS = maxGap(answered) / 1000;
    const failoverClientGapS = Math.max(...byClient.map(maxGap)) / 1000;
    return { gkGet1, gkGet2, failoverGapS, failoverClientGapS };
  } finally {
    for (const c of kcs) await c.close().catch(() => undefined);
    for (const x of xmpps) await disconnect(x).catch(() => undefined);
    for (const p of procs) await p.kill();
    await server.stop();
    await etcd.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const results: Record<string, Figures> = {};
  // LevelDB on disk.
  const level = await KmsFixture.create({ storage: 'disk', keyType: 'EC' });
  try {
    const rawDir = await mkdtemp(join(tmpdir(), 'kms-scale-raw-'));
    const raw = await openLevelStore(join(rawDir, 'db'));
    const batches = await storeFigures(raw);
    await raw.close();
    await rm(rawDir, { recursive: true, force: true });
    results.leveldb = { ...batches, ...(await measure(level)) };
  } finally {
    await level.close();
    if (level.dir) await rm(level.dir, { recursive: true, force: true });
  }
  console.log(line('LevelDB (fsync)', results.leveldb));
  // etcd, 3 nodes on loopback: one KMS instance's view of it (a shared store: conditional writes, reads through).
  const cluster = await EtcdCluster.start(3);
  let kv: KvStore | undefined;
  try {
    kv = openEtcdStore({ endpoints: cluster.endpoints, prefix: 'bench/' });
    const etcd = await KmsFixture.create({ storage: { kv, shared: true }, keyType: 'EC' });
    const batches = await storeFigures(openEtcdStore({ endpoints: cluster.endpoints, prefix: 'bench-raw/' }));
    results.etcd = { ...batches, ...(await measure(etcd)) };
  } finally {
    await kv?.close();
    await cluster.stop();
  }
  console.log(line('etcd (3 nodes)', results.etcd));
  const xmpp = await xmppFigures();
  if (xmpp === undefined) console.log('ejabberd not installed: no GK get and failover figures');
  else
    console.log(
      `ejabberd, etcd     GK get ${xmpp.gkGet1}/s with 1 instance, ${xmpp.gkGet2}/s with 2 (${(xmpp.gkGet2 / xmpp.gkGet1).toFixed(2)}x); ` +
        `kill -9 of one of two under load: ${xmpp.failoverGapS.toFixed(2)} s with no answer (${xmpp.failoverClientGapS.toFixed(2)} s for one client)`,
    );
  const ratio = (f: Figures) => ({
    batch: Number((f.batchConcurrent / f.batchSerial).toFixed(2)),
    create: Number((f.createConcurrent / f.createSerial).toFixed(2)),
    append: Number((f.appendConcurrent / f.appendSerial).toFixed(2)),
  });
  console.log(
    JSON.stringify({
      bench: 'scale',
      n: N,
      clients: CLIENTS,
      cores: availableParallelism(),
      leveldb: { ...results.leveldb, speedup: ratio(results.leveldb!) },
      etcd: { ...results.etcd, speedup: ratio(results.etcd!) },
      ...(xmpp === undefined
        ? {}
        : {
            ejabberd: {
              gkGet1: xmpp.gkGet1,
              gkGet2: xmpp.gkGet2,
              gkGetSpeedup: Number((xmpp.gkGet2 / xmpp.gkGet1).toFixed(2)),
              failoverGapS: xmpp.failoverGapS,
              failoverClientGapS: xmpp.failoverClientGapS,
            },
          }),
    }),
  );
}

await main();
process.exit(0);
