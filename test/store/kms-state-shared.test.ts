/**
 * KmsState on a store several KMS instances share (etcd, `shared`): two states on two clients of
 * one real 3-node etcd cluster, as two instances would be. Concurrent appends and binds: one wins;
 * what one instance writes, the other sees at once (no cache serves a stale chain, membership,
 * entity key or ephemeral key).
 */
import { expect } from 'chai';
import { type BlockWrite, type GkRecord, KmsState } from '../../src/store/kms-state.js';
import type { KvStore } from '../../src/store/kv.js';
import { openMemoryStore } from '../support/memory-store.js';
import { etcdFactory } from './harness/factories.js';

const factory = etcdFactory();

function genesis(id: string, members: string[]): BlockWrite {
  return {
    chain: { id, uri: `kms://kms.test/blocks/${id}`, created: new Date().toISOString(), length: 1, tail: `${id}-h0` },
    blocks: [{ seq: 0, jws: 'genesis', hash: `${id}-h0` }],
    members: new Map(members.map((m) => [m, [[0, null]]])),
  };
}

function append(id: string, seq: number, hash: string, members = new Map<string, [number, number | null][]>()): BlockWrite {
  return {
    chain: { id, uri: `kms://kms.test/blocks/${id}`, created: new Date().toISOString(), length: seq + 1, tail: hash },
    blocks: [{ seq, jws: `block ${hash}`, hash }],
    members,
  };
}

describe('store: KmsState shared by two instances on etcd (3 nodes)', function () {
  this.timeout(60_000);
  let kv1: KvStore;
  let kv2: KvStore;
  let a: KmsState;
  let b: KmsState;
  before(async () => {
    await factory.setup!();
  });
  beforeEach(async () => {
    kv1 = await factory.open();
    kv2 = await factory.twin!(kv1);
    a = new KmsState(kv1, { shared: true });
    b = new KmsState(kv2, { shared: true });
  });
  afterEach(async () => {
    await kv1.close();
    await kv2.close();
  });
  after(() => factory.cleanup());

  it('refuses to share a store without conditional batches', async () => {
    const mem = await openMemoryStore();
    const plain: KvStore = {
      get: (k) => mem.get(k),
      getMany: (k) => mem.getMany(k),
      batch: (o, p) => mem.batch(o, p),
      entries: (r) => mem.entries(r),
      flush: () => mem.flush(),
      close: () => mem.close(),
    };
    expect(() => new KmsState(plain, { shared: true })).to.throw(TypeError, /batchIf/);
    await mem.close();
  });

  it('20 appends after one tail, 10 through each instance: exactly one commits', async () => {
    expect(await a.commitBlocks(genesis('c1', ['alice']))).to.equal(true);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).commitBlocks(append('c1', 1, `c1-h1-${i}`))));
    expect(results.filter(Boolean)).to.have.length(1);
    const winner = results.indexOf(true);
    const chain = await b.chain('c1');
    expect(chain).to.include({ length: 2, tail: `c1-h1-${winner}` });
    expect(await a.blocks('c1')).to.deep.equal(['genesis', `block c1-h1-${winner}`]);
    // A loser's block is nowhere: neither its hash nor its block.
    const loser = winner === 0 ? 1 : 0;
    expect(await a.blockRef(`c1-h1-${loser}`)).to.equal(undefined);
    // A block already stored elsewhere is refused too (its hash is taken).
    expect(await b.commitBlocks(append('c1', 2, `c1-h1-${winner}`))).to.equal(false);
  });

  it('a membership and a tail changed by one instance are seen by the other at once', async () => {
    await a.commitBlocks(genesis('c2', ['alice', 'bob']));
    // b reads them first (a cache would keep them).
    expect(await b.intervals('c2', 'bob')).to.deep.equal([[0, null]]);
    expect((await b.chain('c2'))!.length).to.equal(1);
    expect(await a.commitBlocks(append('c2', 1, 'c2-h1', new Map([['bob', [[0, 1]]]])))).to.equal(true);
    expect(await b.intervals('c2', 'bob')).to.deep.equal([[0, 1]]);
    expect(await b.chain('c2')).to.include({ length: 2, tail: 'c2-h1' });
  });

  it('20 binds of one GK to different blocks through both instances: one binding, the same everywhere', async () => {
    const gk: GkRecord = { id: 'g1', uri: 'kms://kms.test/gks/g1', created: new Date().toISOString(), owner: 'alice', clientId: 'c', key: 'sealed' };
    await a.putGk(gk);
    // b reads it unbound first.
    expect((await b.gk('g1'))!.block).to.equal(undefined);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).bindGk('g1', `block-${i}`)));
    const bound = new Set(results.map((r) => r!.block));
    expect(bound.size).to.equal(1);
    const [block] = bound;
    expect((await a.gk('g1'))!.block).to.equal(block);
    expect((await b.gk('g1'))!.block).to.equal(block);
    expect(await b.bindGk('missing', 'x')).to.equal(undefined);
  });

  it('an ephemeral key made on one instance is readable on the other at once; deleted, it is gone on both', async () => {
    const e = {
      id: 'e1',
      uri: 'kms://kms.test/ecdhe/e1',
      userId: 'alice@test',
      clientId: 'c',
      createDate: new Date().toISOString(),
      expirationDate: new Date(Date.now() + 60_000).toISOString(),
      key: 'sealed',
      jwk: { kty: 'EC' },
    };
    await a.putEphemeral(e);
    expect((await b.ephemeral('e1'))?.userId).to.equal('alice@test');
    expect((await a.ephemeral('e1'))?.userId).to.equal('alice@test');
    await b.deleteEphemeral('e1');
    expect(await a.ephemeral('e1')).to.equal(undefined);
    // A re-seal on a deleted key does not bring it back.
    expect(await a.resealEphemeral('e1', (s) => `${s}!`)).to.equal(false);
    expect(await kv1.get('e!e1')).to.equal(undefined);
  });

  it('an entity key removed on one instance is no longer used by the other', async () => {
    const r = { entity: 'alice@test', kid: 'k1', jwk: { kty: 'EC' }, created: new Date().toISOString(), seq: 1 };
    await a.putEntityKey(r);
    expect((await b.entityKeys('alice@test')).map((k) => k.kid)).to.deep.equal(['k1']);
    await a.deleteEntityKey('alice@test', 'k1');
    expect(await b.entityKeys('alice@test')).to.deep.equal([]);
  });
});
