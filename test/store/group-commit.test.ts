/**
 * Group commit (issue 15): concurrent durable batches share synced writes. On LevelDB (on disk) the
 * database is wrapped to count its synced `batch` calls, and to fail one of them; on etcd (a real
 * 3-node cluster on loopback) a write transaction raises the store's revision by one, so the
 * revisions count the transactions.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AbstractLevel } from 'abstract-level';
import { expect } from 'chai';
import { Etcd3 } from 'etcd3';
import { Level } from 'level';
import { openEtcdStore } from '../../src/store/etcd.js';
import { type BatchOp, type KvStore, LevelKvStore } from '../../src/store/kv.js';
import { EtcdCluster } from './harness/etcd-cluster.js';

const N = 20;

type Db = AbstractLevel<string | Buffer | Uint8Array, string, string>;

/** A LevelDB on disk whose synced batches are counted; `failAt` makes that synced batch (1-based) fail. */
function counted(db: Level<string, string>, failAt?: number): { db: Db; synced: () => number } {
  let synced = 0;
  const proxy = new Proxy(db, {
    get(target, prop) {
      if (prop === 'batch') {
        return async (ops: BatchOp[], options: { sync?: boolean }) => {
          if (options?.sync === true && ++synced === failAt) throw new Error('injected write failure');
          return target.batch(ops, options);
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { db: proxy as unknown as Db, synced: () => synced };
}

const ops = (tag: string, i: number): BatchOp[] => [
  { type: 'put', key: `${tag}!${i}`, value: `v${i}` },
  { type: 'put', key: `${tag}!index!${i}`, value: String(i) },
];

describe('store: group commit on LevelDB (on disk)', function () {
  this.timeout(30_000);
  let dir: string;
  let kv: KvStore | undefined;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-group-'));
  });
  afterEach(async () => {
    await kv?.close();
    kv = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  async function open(failAt?: number) {
    const level = new Level<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
    await level.open();
    const c = counted(level, failAt);
    kv = new LevelKvStore(c.db);
    return { kv, synced: c.synced };
  }

  it(`${N} concurrent durable batches take fewer than ${N} synced writes, and every one is readable, after a reopen too`, async () => {
    const { kv, synced } = await open();
    await Promise.all(Array.from({ length: N }, (_, i) => kv.batch(ops('g', i), { durable: true })));
    expect(synced()).to.be.lessThan(N);
    expect(synced()).to.be.greaterThan(0);
    const keys = Array.from({ length: N }, (_, i) => [`g!${i}`, `g!index!${i}`]).flat();
    expect(await kv.getMany(keys)).to.deep.equal(Array.from({ length: N }, (_, i) => [`v${i}`, String(i)]).flat());
    await kv.close();
    const again = await open();
    expect(await again.kv.getMany(keys)).to.deep.equal(Array.from({ length: N }, (_, i) => [`v${i}`, String(i)]).flat());
  });

  it('a failed combined write rejects every batch in it, and none of it is written; the batch before it stands', async () => {
    // The first batch goes alone (synced write 1); the next ones queue while it is in flight and go as write 2, which fails.
    const { kv, synced } = await open(2);
    const results = await Promise.allSettled(Array.from({ length: N }, (_, i) => kv.batch(ops('f', i), { durable: true })));
    expect(synced()).to.equal(2);
    expect(results[0]!.status).to.equal('fulfilled');
    for (const r of results.slice(1)) {
      expect(r.status).to.equal('rejected');
      expect(String((r as PromiseRejectedResult).reason)).to.match(/injected write failure/);
    }
    expect(await kv.get('f!0')).to.equal('v0');
    for (let i = 1; i < N; i++) expect(await kv.get(`f!${i}`)).to.equal(undefined);
    // The store goes on.
    await kv.batch(ops('after', 0), { durable: true });
    expect(await kv.get('after!0')).to.equal('v0');
  });

  it('a conditional batch still checks and writes as one step between grouped batches', async () => {
    const { kv } = await open();
    const batchIf = kv.batchIf!.bind(kv);
    const writes = Array.from({ length: N }, (_, i) => kv.batch(ops('c', i), { durable: true }));
    const binds = Array.from({ length: 5 }, (_, i) =>
      batchIf([{ key: 'bound', equals: undefined }], [{ type: 'put', key: 'bound', value: String(i) }], { durable: true }),
    );
    await Promise.all(writes);
    expect((await Promise.all(binds)).filter(Boolean)).to.have.length(1);
  });
});

describe('store: grouped transactions on etcd (3 nodes)', function () {
  this.timeout(60_000);
  let cluster: EtcdCluster;
  let client: Etcd3;
  let kv: KvStore;
  before(async () => {
    cluster = await EtcdCluster.start(3);
    client = new Etcd3({ hosts: cluster.endpoints });
  });
  after(async () => {
    await kv?.close();
    client?.close();
    await cluster?.stop();
  });
  const revision = async () => Number((await client.kv.range({ key: Buffer.from('none') })).header.revision);

  it(`${N} concurrent durable batches take fewer than ${N} transactions, and every one is readable`, async () => {
    kv = openEtcdStore({ endpoints: cluster.endpoints, prefix: 'group/' });
    await kv.batch(ops('warm', 0), { durable: true });
    const before = await revision();
    await Promise.all(Array.from({ length: N }, (_, i) => kv.batch(ops('g', i), { durable: true })));
    const txns = (await revision()) - before;
    expect(txns).to.be.lessThan(N);
    expect(txns).to.be.greaterThan(0);
    const keys = Array.from({ length: N }, (_, i) => [`g!${i}`, `g!index!${i}`]).flat();
    expect(await kv.getMany(keys)).to.deep.equal(Array.from({ length: N }, (_, i) => [`v${i}`, String(i)]).flat());
  });

  it('conditional batches in one transaction succeed or fail each on its own; overlapping ones are not combined', async () => {
    const batchIf = kv.batchIf!.bind(kv);
    await kv.batch([{ type: 'put', key: 'taken!0', value: 'x' }], { durable: true });
    // One in flight; then 10 on free keys, 1 on a taken key, and 5 racing for one key.
    const first = batchIf([{ key: 'free!a', equals: undefined }], [{ type: 'put', key: 'free!a', value: 'a' }]);
    const free = Array.from({ length: 10 }, (_, i) =>
      batchIf([{ key: `free!${i}`, equals: undefined }], [{ type: 'put', key: `free!${i}`, value: String(i) }]),
    );
    const taken = batchIf([{ key: 'taken!0', equals: undefined }], [{ type: 'put', key: 'taken!0', value: 'y' }]);
    const race = Array.from({ length: 5 }, (_, i) => batchIf([{ key: 'race', equals: undefined }], [{ type: 'put', key: 'race', value: String(i) }]));
    expect(await first).to.equal(true);
    expect(await Promise.all(free)).to.deep.equal(Array(10).fill(true));
    expect(await taken).to.equal(false);
    expect((await Promise.all(race)).filter(Boolean)).to.have.length(1);
    expect(await kv.get('taken!0')).to.equal('x');
    expect(await kv.getMany(['free!0', 'free!9'])).to.deep.equal(['0', '9']);
  });

  it('more writes than one transaction may hold are split, and all land', async () => {
    const many = Array.from({ length: 100 }, (_, i) => kv.batch(ops('big', i), { durable: true }));
    await Promise.all(many);
    const got = await kv.getMany(Array.from({ length: 100 }, (_, i) => `big!${i}`));
    expect(got).to.deep.equal(Array.from({ length: 100 }, (_, i) => `v${i}`));
  });
});
