/**
 * Persistence on LevelDB: everything the KMS keeps survives a restart on the same directory with
 * the same master key; another master key cannot open the sealed keys (a 500, no crash); and no
 * key material is on disk in clear.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { KmsFixture, TestUser, add, remove, payloadOf } from '../support/kms-fixture.js';
import { blockHash } from '../support/node-client.js';
import { openGk } from '../support/node-client.js';
import { encode as b64u } from '../../src/crypto/base64url.js';
import { encryptDir } from '../../src/crypto/jwe.js';

const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';

/** Every file under `dir`, recursively. */
async function filesUnder(dir: string): Promise<{ path: string; data: Buffer }[]> {
  const out: { path: string; data: Buffer }[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else if (e.isFile()) out.push({ path: p, data: await readFile(p) });
  }
  return out;
}

/** The encodings a secret could be written in. */
function encodings(secret: Buffer): Buffer[] {
  const hex = secret.toString('hex');
  return [secret, Buffer.from(b64u(secret)), Buffer.from(secret.toString('base64').replace(/=+$/, '')), Buffer.from(hex), Buffer.from(hex.toUpperCase())];
}

/** Names of the secrets found in any file, with the file. */
function findOnDisk(files: { path: string; data: Buffer }[], secrets: Map<string, Buffer>): string[] {
  const hits: string[] = [];
  for (const [name, secret] of secrets) {
    // One hit per secret and file, whichever encodings match (base64 and base64url can coincide).
    for (const f of files) if (encodings(secret).some((enc) => f.data.includes(enc))) hits.push(`${name} in ${f.path}`);
  }
  return hits;
}

/** The ephemeral keys on record, opened with the fixture's master key. */
async function ephemeralKeys(kms: KmsFixture): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for await (const [k, v] of kms.kv.entries({ gte: 'e!', lt: 'e!~' })) {
    const rec = JSON.parse(v) as { id: string; key: string };
    out.set(`ephemeral ${k}`, kms.deps.sealer.open(rec.key, `ecdhe:${rec.id}`));
  }
  return out;
}

/** A user of `kms` with a given entity key (the key a client keeps across a KMS restart). */
async function userWithKey(kms: KmsFixture, before: TestUser): Promise<TestUser> {
  const u = await kms.user(before.jid);
  return new TestUser(u.jid, u.session, before.key, u.token, kms);
}

describe('engine: persistence on LevelDB', function () {
  this.timeout(60_000);

  it('keeps chains, GKs and entity keys across a restart, continues chains from their tails, and keeps no key in clear on disk', async () => {
    const kms = await KmsFixture.create({ storage: 'disk' });
    const dir = kms.dir!;
    const secrets = new Map<string, Buffer>([['master key', kms.masterKey]]);
    let alice = await kms.user(ALICE);
    let bob = await kms.user(BOB);
    await alice.register();
    await bob.register();
    const { block: g1, uri: chain1 } = await alice.genesis([add(ALICE)]);
    const b1 = alice.block(blockHash(g1), [add(BOB)]);
    await alice.append(chain1, [b1]);
    const b2 = bob.block(blockHash(b1), [remove(ALICE), add(ALICE)]);
    await bob.append(chain1, [b2]);
    const { block: g2, uri: chain2 } = await bob.genesis([add(BOB), add(ALICE)]);
    const bound = await alice.createGk(blockHash(b1));
    const unbound = await alice.createGk();
    const laterBound = await alice.createGk();
    await alice.bindGk(payloadOf(laterBound).uri as string, blockHash(g2));
    const gkKeys = new Map<string, Buffer>();
    for (const [name, jws] of [
      ['bound', bound],
      ['unbound', unbound],
      ['laterBound', laterBound],
    ] as const) {
      const gk = openGk(jws, kms.identity.publicKey, alice.key);
      gkKeys.set(gk.uri, gk.key);
      secrets.set(`GK ${name}`, gk.key);
    }
    const blocks1 = await alice.chain(chain1);
    const blocks2 = await alice.chain(chain2);
    expect(blocks1).to.deep.equal([g1, b1, b2]);
    const aliceKeys = (await bob.session.request('get', `/entity-keys/${ALICE}`)).entityKeys;
    for (const [n, k] of await ephemeralKeys(kms)) secrets.set(n, k);
    expect([...secrets.keys()].filter((n) => n.startsWith('ephemeral'))).to.have.length(2);
    await kms.close();

    // ---- nothing in clear on disk ----
    let files = await filesUnder(dir);
    expect(files.length).to.be.greaterThan(0);
    // The scan can see what is stored: a chain id and a block are found in the files.
    const chainId = Buffer.from(chain1.split('/').pop()!);
    expect(files.some((f) => f.data.includes(chainId))).to.equal(true);
    expect(files.some((f) => f.data.includes(Buffer.from(b2.split('.')[2]!)))).to.equal(true);
    // And it finds a secret when one is there.
    expect(findOnDisk([{ path: 'planted', data: Buffer.from(`{"k":"${b64u(secrets.get('GK bound')!)}"}`) }], secrets)).to.have.length(1);
    expect(findOnDisk(files, secrets)).to.deep.equal([]);

    // ---- reopen with the same master key and issuer ----
    const kms2 = await KmsFixture.create({ storage: { dir }, masterKey: kms.masterKey, issuer: kms.issuer });
    try {
      alice = await userWithKey(kms2, alice);
      bob = await userWithKey(kms2, bob);
      // Chains: the same blocks, in order, and the same answer from an antecedent.
      expect(await alice.chain(chain1)).to.deep.equal(blocks1);
      expect(await bob.chain(chain2)).to.deep.equal(blocks2);
      expect(await alice.chain(chain1, blockHash(b1))).to.deep.equal([b2]);
      expect(await alice.chain(chain1, blockHash(b2))).to.deep.equal([]);
      // Entity keys: registered before, used now without registering again.
      expect((await bob.session.request('get', `/entity-keys/${ALICE}`)).entityKeys).to.deep.equal(aliceKeys);
      // GKs: the same key bytes, for the owner and for a member.
      for (const jws of [bound, unbound, laterBound]) {
        const uri = payloadOf(jws).uri as string;
        expect(openGk(await alice.getGk(uri), kms2.identity.publicKey, alice.key).key.equals(gkKeys.get(uri)!)).to.equal(true);
      }
      expect(
        openGk(await bob.getGk(payloadOf(bound).uri as string), kms2.identity.publicKey, bob.key).key.equals(gkKeys.get(payloadOf(bound).uri as string)!),
      ).to.equal(true);
      // Binding state survived: the bound GK refuses another block, the unbound one can still be bound.
      const [rebind] = await alice.session.batch([{ method: 'post', uri: payloadOf(bound).uri as string, body: { block: blockHash(g1) } }]);
      expect(rebind!.status).to.equal(409);
      const nowBound = openGk(await alice.bindGk(payloadOf(unbound).uri as string, blockHash(b2)), kms2.identity.publicKey, alice.key);
      expect(nowBound.block).to.equal(blockHash(b2));
      expect(nowBound.key.equals(gkKeys.get(nowBound.uri)!)).to.equal(true);
      // Appending continues from the tail: a stale antecedent is a 409, the tail's hash works.
      const stale = await alice.session.batch([{ method: 'post', uri: chain1, body: { blocks: [alice.block(blockHash(b1), [remove(BOB)])] } }]);
      expect(stale[0]!.status).to.equal(409);
      const b3 = alice.block(blockHash(b2), [remove(BOB)]);
      expect((await alice.append(chain1, [b3])).status).to.equal(200);
      expect(await alice.chain(chain1)).to.deep.equal([...blocks1, b3]);
      // Membership survived too: Bob was removed by b3, so he is not a member at the tail.
      const b4 = await bob.session.batch([{ method: 'post', uri: chain1, body: { blocks: [bob.block(blockHash(b3), [add(BOB)])] } }]);
      expect(b4[0]!.status).to.equal(403);
      for (const [n, k] of await ephemeralKeys(kms2)) secrets.set(n, k);
    } finally {
      await kms2.close();
    }
    files = await filesUnder(dir);
    expect([...secrets.keys()].filter((n) => n.startsWith('ephemeral')).length).to.be.greaterThan(2);
    expect(findOnDisk(files, secrets)).to.deep.equal([]);

    // ---- reopen with another master key ----
    const kms3 = await KmsFixture.create({ storage: { dir }, masterKey: randomBytes(32), issuer: kms.issuer });
    try {
      const a3 = await userWithKey(kms3, alice);
      // A new channel works (its key is sealed under the new master key)...
      expect((await a3.session.request('update', '/ping')).status).to.equal(200);
      // ...the chains, which are not sealed, are still readable...
      expect((await a3.chain(chain1)).length).to.equal(4);
      // ...but no GK can be opened: a 500 that leaks nothing, and nothing changes.
      const before = await kms3.digest();
      for (const jws of [bound, unbound]) {
        const [res] = await a3.session.batch([{ method: 'get', uri: payloadOf(jws).uri as string, body: { entity: ALICE } }]);
        expect(res!.status).to.equal(500);
        expect(res!.reason).to.match(/internal error/);
        expect(res).to.not.have.property('gk');
      }
      expect(await kms3.digest()).to.equal(before);
      // A channel made before the restart cannot be opened either: an error, not a crash.
      const oldEph = [...secrets.entries()].find(([n]) => n.startsWith('ephemeral'))!;
      const oldId = oldEph[0].replace('ephemeral e!', '');
      const msg = encryptDir(oldEph[1], JSON.stringify({ client: { clientId: 'c', credential: { bearer: a3.token } }, method: 'update', uri: '/ping' }), {
        enc: 'A256GCM',
        kid: `/ecdhe/${oldId}`,
      });
      const answer = await kms3.engine.handle(msg);
      expect(answer.split('.')).to.have.length(3);
      const status = JSON.parse(Buffer.from(answer.split('.')[1]!, 'base64url').toString()).status as number;
      expect(status).to.be.within(400, 599);
      // The KMS keeps serving.
      expect((await a3.session.request('update', '/ping')).status).to.equal(200);
    } finally {
      await kms3.close();
    }
    await rm(dir, { recursive: true, force: true });
  });
});
