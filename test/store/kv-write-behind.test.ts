/**
 * The KvStore's write-behind (`deferred` batches): what readers see at once, when the records
 * reach the database, that a later batch on the same key wins on disk, that close flushes, and
 * that a failed background write loses the deferred records (as a crash would) and is reported.
 * On etcd too (a real 3-node cluster), read behind the store's back through a second store.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AbstractLevel } from 'abstract-level';
import { MemoryLevel } from 'memory-level';
import { openEtcdStore } from '../../src/store/etcd.js';
import { LevelKvStore, openLevelStore, type KvStore, type WriteBehindOptions } from '../../src/store/kv.js';
import { EtcdCluster } from './harness/etcd-cluster.js';

type Db = AbstractLevel<string | Buffer | Uint8Array, string, string>;

/** A store on a memory-level database the test can read behind the store's back. */
async function memory(opts?: WriteBehindOptions): Promise<{ kv: LevelKvStore; db: MemoryLevel<string, string> }> {
  const db = new MemoryLevel<string, string>({ keyEncoding: 'utf8', valueEncoding: 'utf8' });
  await db.open();
  return { kv: new LevelKvStore(db as unknown as Db, opts), db };
}

async function all(kv: KvStore, range: Parameters<KvStore['entries']>[0] = {}): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for await (const e of kv.entries(range)) out.push(e);
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('store: write-behind (deferred batches)', function () {
  this.timeout(30_000);

  it('shows a deferred batch to every read at once, before it reaches the database', async () => {
    const { kv, db } = await memory({ flushMs: 60_000 });
    await kv.batch([{ type: 'put', key: 'durable', value: 'd' }], { durable: true });
    await kv.batch(
      [
        { type: 'put', key: 'e!1', value: 'one' },
        { type: 'put', key: 'e!2', value: 'two' },
        { type: 'del', key: 'durable' },
      ],
      { deferred: true },
    );
    expect(await db.get('e!1')).to.equal(undefined);
    expect(await db.get('durable')).to.equal('d');
    expect(await kv.get('e!1')).to.equal('one');
    expect(await kv.get('durable')).to.equal(undefined);
    expect(await kv.getMany(['e!2', 'durable', 'nope'])).to.deep.equal(['two', undefined, undefined]);
    // A range read that covers a deferred key writes the queue first.
    expect(await all(kv, { gte: 'e!', lt: 'e!~' })).to.deep.equal([
      ['e!1', 'one'],
      ['e!2', 'two'],
    ]);
    expect(await db.get('e!1')).to.equal('one');
    expect(await db.get('durable')).to.equal(undefined);
    await kv.close();
  });

  it('writes deferred batches within flushMs, or at once when maxQueued ops are queued', async () => {
    const { kv, db } = await memory({ flushMs: 30, maxQueued: 4 });
    await kv.batch([{ type: 'put', key: 'a', value: '1' }], { deferred: true });
    expect(await db.get('a')).to.equal(undefined);
    await sleep(80);
    expect(await db.get('a')).to.equal('1');
    const slow = await memory({ flushMs: 60_000, maxQueued: 4 });
    for (const k of ['p', 'q', 'r']) await slow.kv.batch([{ type: 'put', key: k, value: k }], { deferred: true });
    await sleep(10);
    expect(await slow.db.get('p')).to.equal(undefined);
    await slow.kv.batch([{ type: 'put', key: 's', value: 's' }], { deferred: true });
    await sleep(10);
    expect(await slow.db.getMany(['p', 'q', 'r', 's'])).to.deep.equal(['p', 'q', 'r', 's']);
    await kv.close();
    await slow.kv.close();
  });

  it('lands a later batch on the same key after the deferred one, whether it is queued or being written', async () => {
    const { kv, db } = await memory({ flushMs: 60_000 });
    await kv.batch([{ type: 'put', key: 'k1', value: 'v' }], { deferred: true });
    await kv.batch([{ type: 'del', key: 'k1' }], { durable: true });
    expect(await db.get('k1')).to.equal(undefined);
    expect(await kv.get('k1')).to.equal(undefined);
    // Being written: the flush has started but not finished when the delete comes.
    await kv.batch([{ type: 'put', key: 'k2', value: 'v' }], { deferred: true });
    const flushing = kv.flush();
    await kv.batch([{ type: 'del', key: 'k2' }], { durable: true });
    await flushing;
    expect(await db.get('k2')).to.equal(undefined);
    expect(await kv.get('k2')).to.equal(undefined);
    await kv.close();
  });

  it('applies an invalid deferred batch not at all, and refuses deferred with durable', async () => {
    const { kv, db } = await memory({ flushMs: 60_000 });
    for (const bad of [{ type: 'put', key: 5, value: 'x' }, { type: 'put', key: 'v', value: null }, { type: 'upsert', key: 'v', value: 'x' }, null]) {
      let failed = false;
      try {
        await kv.batch([{ type: 'put', key: 'first', value: 'x' }, bad as never], { deferred: true });
      } catch {
        failed = true;
      }
      expect(failed, JSON.stringify(bad)).to.equal(true);
      expect(await kv.get('first')).to.equal(undefined);
    }
    let failed = false;
    try {
      await kv.batch([{ type: 'put', key: 'x', value: 'x' }], { deferred: true, durable: true });
    } catch (e) {
      failed = e instanceof TypeError;
    }
    expect(failed).to.equal(true);
    await kv.flush();
    expect(await all(kv)).to.deep.equal([]);
    expect(await db.get('x')).to.equal(undefined);
    await kv.close();
  });

  it('loses the deferred records of a failed write (as a crash would) and reports the failure on flush', async () => {
    const { kv, db } = await memory({ flushMs: 60_000 });
    const realBatch = db.batch.bind(db);
    let fail = true;
    (db as unknown as { batch: unknown }).batch = (...args: unknown[]) =>
      fail ? Promise.reject(new Error('disk full')) : (realBatch as (...a: unknown[]) => unknown)(...args);
    await kv.batch([{ type: 'put', key: 'lost', value: 'x' }], { deferred: true });
    let error: unknown;
    try {
      await kv.flush();
    } catch (e) {
      error = e;
    }
    expect((error as Error)?.message).to.equal('disk full');
    expect(await kv.get('lost')).to.equal(undefined);
    // Reported once; the store keeps working.
    fail = false;
    await kv.flush();
    await kv.batch([{ type: 'put', key: 'kept', value: 'y' }], { deferred: true });
    await kv.flush();
    expect(await db.get('kept')).to.equal('y');
    await kv.close();
  });

  it('flushes on close: a reopened LevelDB store has every deferred record and none that was deleted', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-wb-'));
    try {
      let kv = await openLevelStore(join(dir, 'db'), { flushMs: 60_000 });
      await kv.batch([{ type: 'put', key: 'e!keep', value: 'k' }], { deferred: true });
      await kv.batch([{ type: 'put', key: 'e!gone', value: 'g' }], { deferred: true });
      await kv.batch([{ type: 'del', key: 'e!gone' }], { durable: true });
      await kv.batch([{ type: 'put', key: 'e!late', value: 'l' }], { deferred: true });
      await kv.close();
      kv = await openLevelStore(join(dir, 'db'));
      expect(await all(kv)).to.deep.equal([
        ['e!keep', 'k'],
        ['e!late', 'l'],
      ]);
      await kv.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('store: write-behind on etcd (3 nodes)', function () {
  this.timeout(60_000);
  let cluster: EtcdCluster;
  const open = (opts?: WriteBehindOptions) => openEtcdStore({ endpoints: cluster.endpoints, prefix: 'wb/', ...(opts ? { writeBehind: opts } : {}) });
  before(async () => {
    cluster = await EtcdCluster.start(3);
  });
  after(() => cluster.stop());

  it('shows a deferred batch at once, writes it to etcd on flush, within flushMs, and before a later batch on its key', async () => {
    const kv = open({ flushMs: 60_000 });
    const behind = open();
    await kv.batch([{ type: 'put', key: 'durable', value: 'd' }], { durable: true });
    await kv.batch(
      [
        { type: 'put', key: 'e!1', value: 'one' },
        { type: 'del', key: 'durable' },
      ],
      { deferred: true },
    );
    expect(await kv.getMany(['e!1', 'durable'])).to.deep.equal(['one', undefined]);
    expect(await behind.getMany(['e!1', 'durable'])).to.deep.equal([undefined, 'd']);
    await kv.flush();
    expect(await behind.getMany(['e!1', 'durable'])).to.deep.equal(['one', undefined]);
    // A later durable delete lands after the deferred put.
    await kv.batch([{ type: 'put', key: 'e!2', value: 'two' }], { deferred: true });
    await kv.batch([{ type: 'del', key: 'e!2' }], { durable: true });
    await kv.flush();
    expect(await behind.get('e!2')).to.equal(undefined);
    // Within flushMs by itself.
    const quick = open({ flushMs: 30 });
    await quick.batch([{ type: 'put', key: 'e!3', value: 'three' }], { deferred: true });
    const deadline = Date.now() + 5_000;
    while ((await behind.get('e!3')) === undefined && Date.now() < deadline) await sleep(10);
    expect(await behind.get('e!3')).to.equal('three');
    // Close flushes; many deferred batches coalesce into transactions etcd accepts.
    const many = open({ flushMs: 60_000 });
    for (let i = 0; i < 300; i++) await many.batch([{ type: 'put', key: `m!${String(i).padStart(3, '0')}`, value: String(i) }], { deferred: true });
    await many.close();
    expect(await all(behind, { gte: 'm!', lt: 'm!~' })).to.have.length(300);
    for (const s of [kv, behind, quick]) await s.close();
  });
});
