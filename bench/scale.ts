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
import { rm } from 'node:fs/promises';
import { openEtcdStore } from '../src/store/etcd.js';
import type { KvStore } from '../src/store/kv.js';
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

/** Operations per second: `total` operations, `parallel` clients each doing its share in turn. */
async function rate(total: number, parallel: number, op: (client: number, k: number) => Promise<void>): Promise<number> {
  const per = Math.ceil(total / parallel);
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: parallel }, async (_, c) => {
      for (let k = 0; k < per; k++) await op(c, k);
    }),
  );
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
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

interface Figures {
  createSerial: number;
  createConcurrent: number;
  appendSerial: number;
  appendConcurrent: number;
}

async function measure(kms: KmsFixture): Promise<Figures> {
  const cs = await clients(kms);
  const gkCreate = async (c: number) => {
    const gk = await cs[c]!.user.createGk(cs[c]!.tail);
    if (typeof payloadOf(gk).uri !== 'string') throw new Error('no GK');
  };
  // Warm up (JIT, connections).
  await rate(CLIENTS * 5, CLIENTS, gkCreate);
  const createSerial = await rate(N, 1, gkCreate);
  const createConcurrent = await rate(N, CLIENTS, gkCreate);
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
  return { createSerial, createConcurrent, appendSerial, appendConcurrent };
}

function line(store: string, f: Figures): string {
  const x = (a: number, b: number) => `${(a / b).toFixed(1)}x`;
  return (
    `${store.padEnd(18)} GK create ${String(f.createSerial).padStart(6)}/s alone, ${String(f.createConcurrent).padStart(6)}/s with ${CLIENTS} (${x(f.createConcurrent, f.createSerial)}); ` +
    `append ${String(f.appendSerial).padStart(6)}/s alone, ${String(f.appendConcurrent).padStart(6)}/s with ${CLIENTS} (${x(f.appendConcurrent, f.appendSerial)})`
  );
}

async function main(): Promise<void> {
  const results: Record<string, Figures> = {};
  // LevelDB on disk.
  const level = await KmsFixture.create({ storage: 'disk', keyType: 'EC' });
  try {
    results.leveldb = await measure(level);
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
    results.etcd = await measure(etcd);
  } finally {
    await kv?.close();
    await cluster.stop();
  }
  console.log(line('etcd (3 nodes)', results.etcd));
  const ratio = (f: Figures) => ({
    create: Number((f.createConcurrent / f.createSerial).toFixed(2)),
    append: Number((f.appendConcurrent / f.appendSerial).toFixed(2)),
  });
  console.log(
    JSON.stringify({
      bench: 'scale',
      n: N,
      clients: CLIENTS,
      cores: (await import('node:os')).availableParallelism(),
      leveldb: { ...results.leveldb, speedup: ratio(results.leveldb!) },
      etcd: { ...results.etcd, speedup: ratio(results.etcd!) },
    }),
  );
}

await main();
process.exit(0);
