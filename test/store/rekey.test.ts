/**
 * Master key rotation in a running engine (issue 14, item 3): a store with GKs (bound and
 * unbound), chains and ephemeral keys, and data-folder files, sealed under key 1, re-sealed under
 * key 2 in the background while requests are served; every GK still opens with its key, bindings
 * made meanwhile are kept, nothing is left under key 1, key 1 leaves the ring; a run stopped in
 * the middle resumes after its mark; afterwards key 2 alone opens the store and key 1 alone is
 * refused, naming key 2's id.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { KmsFixture, add, payloadOf, type TestUser } from '../support/kms-fixture.js';
import { blockHash, openGk } from '../support/node-client.js';
import { MissingMasterKeyError, masterKeyId, Sealer, sealedBy } from '../../src/crypto/seal.js';
import { LocalIssuer } from '../../src/auth/local-issuer.js';
import { recordKeyCheck } from '../../src/store/data-dir.js';
import { RekeyRunner, rekeyProgress, resealAll, sealedCounts } from '../../src/store/rekey.js';
import type { GkRecord } from '../../src/store/kms-state.js';
import { silentLogger } from '../../src/util/logger.js';

describe('store: master key rotation while the engine serves', function () {
  this.timeout(180_000);
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);
  const [id1, id2] = [masterKeyId(k1), masterKeyId(k2)];
  let kms: KmsFixture;
  let dir: string;
  let alice: TestUser;
  let bob: TestUser;
  let tail: string;
  /** GK uri → its raw key, as alice opened it when it was made. */
  const keys = new Map<string, string>();
  const unbound: string[] = [];

  before(async () => {
    kms = await KmsFixture.create({ storage: 'disk', masterKey: k1 });
    dir = kms.dir!;
    await LocalIssuer.open(dir, 'urn:kms:local-issuer', kms.deps.sealer);
    await recordKeyCheck(dir, kms.deps.sealer);
    alice = await kms.user('alice@example.com', { keyType: 'EC' });
    bob = await kms.user('bob@example.com', { keyType: 'EC' });
    await alice.register();
    await bob.register();
    const genesis = await alice.genesis([add('alice@example.com'), add('bob@example.com')]);
    tail = blockHash(genesis.block);
    for (let i = 0; i < 40; i++) {
      const gk = await alice.createGk(i % 4 === 0 ? undefined : tail);
      const uri = payloadOf(gk).uri as string;
      keys.set(uri, openGk(gk, kms.identity.publicKey, alice.key).key.toString('base64url'));
      if (i % 4 === 0) unbound.push(uri);
    }
    // More channels (ephemeral keys).
    for (let i = 0; i < 5; i++) await (await kms.user(`u${i}@example.com`, { keyType: 'EC' })).register();
    const counts = await sealedCounts(kms.kv, dir);
    expect(Object.keys(counts)).to.deep.equal([id1]);
  });

  after(async () => {
    await kms.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it('re-seals everything under key 2 while GKs are made, bound and fetched; every GK still opens; key 1 leaves the ring', async () => {
    const sealer = kms.deps.sealer;
    sealer.rotateTo(k2);
    const runner = new RekeyRunner({
      state: kms.deps.state,
      sealer,
      dataDir: dir,
      logger: silentLogger(),
      keyFile: join(dir, 'master.key'),
      keyFromEnv: false,
    });
    runner.start();
    let served = 0;
    let running = true;
    const load = (async () => {
      let n = 0;
      while (running || n < 10) {
        const gk = await alice.createGk(tail);
        const uri = payloadOf(gk).uri as string;
        keys.set(uri, openGk(gk, kms.identity.publicKey, alice.key).key.toString('base64url'));
        const u = unbound.shift();
        if (u) await alice.bindGk(u, tail);
        const some = [...keys.keys()][n % keys.size]!;
        expect(openGk(await bob.getGk(some), kms.identity.publicKey, bob.key).key.toString('base64url')).to.equal(keys.get(some));
        await (await kms.user(`late${n}@example.com`, { keyType: 'EC' })).register();
        served += 4;
        n++;
      }
    })();
    await runner.settled();
    running = false;
    await load;
    expect(runner.status).to.deep.include({ state: 'done', keyId: id2, keyIds: [id2], retired: [id1] });
    expect(served).to.be.greaterThan(0);
    // Nothing sealed under key 1 is left, in the store or the data folder.
    await kms.deps.state.flush();
    expect(await sealedCounts(kms.kv, dir)).to.have.all.keys(id2);
    const issuerFile = JSON.parse(await readFile(join(dir, 'issuer.json'), 'utf8')) as { key: string };
    expect(sealedBy(issuerFile.key)).to.equal(id2);
    // Every GK opens, with the key it was made with; the bindings made during the run are kept (bob, not the owner, gets each one).
    for (const [uri, raw] of keys) expect(openGk(await bob.getGk(uri), kms.identity.publicKey, bob.key).key.toString('base64url')).to.equal(raw);
    expect((await rekeyProgress(kms.kv))?.finished).to.be.a('string');
  });

  it('a run stopped in the middle resumes after its mark', async () => {
    const k3 = randomBytes(32);
    const sealer = kms.deps.sealer;
    for (let i = 0; i < 250; i++) {
      const id = `00000000-0000-4000-8000-${i.toString().padStart(12, '0')}`;
      const g: GkRecord = { id, uri: `kms://kms.example.com/gks/${id}`, created: new Date().toISOString(), owner: 'alice@example.com', clientId: 't', key: '' };
      g.key = sealer.seal(randomBytes(32), `gk:${id}`);
      await kms.deps.state.putGk(g);
    }
    sealer.rotateTo(k3);
    let chunks = 0;
    const err = await resealAll({ state: kms.deps.state, sealer, dataDir: dir, stopping: () => ++chunks >= 2 }).catch((e: Error) => e);
    expect(err)
      .to.be.instanceOf(Error)
      .with.property('message')
      .that.matches(/stopped before the end/);
    const mark = await rekeyProgress(kms.kv);
    expect(mark?.target).to.equal(masterKeyId(k3));
    expect(mark?.after).to.be.a('string');
    expect(mark?.finished).to.equal(undefined);
    const mixed = await sealedCounts(kms.kv);
    expect(mixed[id2]).to.be.greaterThan(0);
    expect(mixed[masterKeyId(k3)]).to.be.greaterThan(0);
    const seen: (string | undefined)[] = [];
    const done = await resealAll({ state: kms.deps.state, sealer, dataDir: dir, onChunk: (p) => seen.push(p.after) });
    expect(done.started).to.equal(mark!.started);
    expect(seen[0]! > mark!.after!).to.equal(true);
    expect(await sealedCounts(kms.kv, dir)).to.have.all.keys(masterKeyId(k3));
    sealer.retireOlder();
    // Back to key 2 for the next test.
    sealer.rotateTo(k2);
    await resealAll({ state: kms.deps.state, sealer, dataDir: dir });
    sealer.retireOlder();
  });

  it('afterwards key 2 alone opens every GK, and key 1 alone is refused naming key 2', async () => {
    await kms.close();
    kms = await KmsFixture.create({ storage: { dir }, masterKey: k2 });
    const alice2 = await kms.user('alice@example.com', { keyType: 'EC' });
    await alice2.register();
    for (const [uri, raw] of keys) expect(openGk(await alice2.getGk(uri), kms.identity.publicKey, alice2.key).key.toString('base64url')).to.equal(raw);
    let g: GkRecord | undefined;
    for await (const [, v] of kms.kv.entries({ gte: 'g!', lt: 'g!~', limit: 1 })) g = JSON.parse(v) as GkRecord;
    const only1 = new Sealer(k1);
    expect(() => only1.open(g!.key, `gk:${g!.id}`))
      .to.throw(MissingMasterKeyError)
      .with.property('message')
      .that.contains(`sealed under master key ${id2}, which is not in the keyring (keys held: ${id1})`);
  });
});
