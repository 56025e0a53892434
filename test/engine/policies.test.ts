import { expect } from 'chai';
import { KmsFixture, add, remove, type TestUser } from '../support/kms-fixture.js';
import { blockHash } from '../support/node-client.js';
import { openGk } from '../support/node-client.js';
import type { RetrievalPolicy } from '../../src/engine/config.js';

/** Who can get which GK, as a matrix: status of `user` fetching `gk`. */
async function status(u: TestUser, gkUri: string): Promise<number> {
  const [res] = await u.session.batch([{ method: 'get', uri: gkUri, body: { entity: u.jid } }]);
  return res!.status;
}

/**
 * The add/remove story used for every policy:
 *   genesis  adds A, B          -> GK0 bound here
 *   block 1  adds C             -> GK1
 *   block 2  removes B          -> GK2
 *   block 3  adds D             (no GK)
 *   block 4  adds B again       (no GK)
 */
async function story(kms: KmsFixture) {
  const [a, b, c, d] = await Promise.all(['a', 'b', 'c', 'd'].map((n) => kms.user(`${n}@example.com`)));
  for (const u of [a!, b!, c!, d!]) await u.register();
  const { block: g, uri } = await a!.genesis([add(a!.jid), add(b!.jid)]);
  const gk0 = await a!.createGk(blockHash(g));
  const b1 = a!.block(blockHash(g), [add(c!.jid)]);
  await a!.append(uri, [b1]);
  const gk1 = await a!.createGk(blockHash(b1));
  const b2 = a!.block(blockHash(b1), [remove(b!.jid)]);
  await a!.append(uri, [b2]);
  const gk2 = await a!.createGk(blockHash(b2));
  const b3 = c!.block(blockHash(b2), [add(d!.jid)]);
  const b4 = c!.block(blockHash(b3), [add(b!.jid)]);
  await c!.append(uri, [b3]);
  const uris = [gk0, gk1, gk2].map((jws) => openGk(jws, kms.identity.publicKey, a!.key).uri);
  return { users: { a: a!, b: b!, c: c!, d: d! }, uris, uri, b4 };
}

async function matrix(users: Record<string, TestUser>, uris: string[]) {
  const out: Record<string, number[]> = {};
  for (const [name, u] of Object.entries(users)) out[name] = await Promise.all(uris.map((g) => status(u, g)));
  return out;
}

const EXPECTED: Record<RetrievalPolicy, { before: Record<string, number[]>; afterReadd: Record<string, number[]> }> = {
  // Policy 1: a member at the GK's block. Former members keep old keys; late joiners get none of them.
  1: {
    before: { a: [200, 200, 200], b: [200, 200, 403], c: [403, 200, 200], d: [403, 403, 403] },
    afterReadd: { a: [200, 200, 200], b: [200, 200, 403], c: [403, 200, 200], d: [403, 403, 403] },
  },
  // Policy 2: a member at the tail. Removed members lose everything; new members get the whole history.
  2: {
    before: { a: [200, 200, 200], b: [403, 403, 403], c: [200, 200, 200], d: [200, 200, 200] },
    afterReadd: { a: [200, 200, 200], b: [200, 200, 200], c: [200, 200, 200], d: [200, 200, 200] },
  },
  // Policy 3: both. Only current members, and only back to the block that added them.
  3: {
    before: { a: [200, 200, 200], b: [403, 403, 403], c: [403, 200, 200], d: [403, 403, 403] },
    afterReadd: { a: [200, 200, 200], b: [200, 200, 403], c: [403, 200, 200], d: [403, 403, 403] },
  },
};

for (const policy of [1, 2, 3] as const) {
  describe(`engine: GK retrieval policy ${policy} (-03 §4.6.8)`, () => {
    it('gives each GK to exactly the entities the policy allows, before and after a removed member is re-added', async () => {
      const kms = await KmsFixture.create({ config: { policy } });
      try {
        const s = await story(kms);
        expect(await matrix(s.users, s.uris)).to.deep.equal(EXPECTED[policy].before);
        await s.users.c.append(s.uri, [s.b4]);
        expect(await matrix(s.users, s.uris)).to.deep.equal(EXPECTED[policy].afterReadd);
      } finally {
        await kms.close();
      }
    });
  });
}

describe('engine: the multi-user chat use case (-03 §3.2)', () => {
  it('A makes the room chain with A, B and C, gets a GK bound to the genesis, and B and C fetch it', async () => {
    const kms = await KmsFixture.create();
    try {
      const [a, b, c, eve] = await Promise.all(['a', 'b', 'c', 'eve'].map((n) => kms.user(`${n}@example.com`)));
      for (const u of [a!, b!, c!, eve!]) await u.register();
      // (1) A requests a GMBC adding A, B and C.
      const { block: genesis } = await a!.genesis([add(a!.jid), add(b!.jid), add(c!.jid)]);
      // (2) A requests a GK bound at once to the genesis; A is its only recipient.
      const gkForA = openGk(await a!.createGk(blockHash(genesis)), kms.identity.publicKey, a!.key);
      expect(gkForA.block).to.equal(blockHash(genesis));
      // (5)-(7) B and C fetch the GK by the URI carried in the message metadata, and get the same key.
      for (const u of [b!, c!]) {
        const wrapped = await u.getGk(gkForA.uri);
        const gk = openGk(wrapped, kms.identity.publicKey, u.key);
        expect(gk.key.equals(gkForA.key)).to.equal(true);
        // The wrapped copy is for u's key alone: A's key cannot open it.
        expect(() => openGk(wrapped, kms.identity.publicKey, a!.key)).to.throw();
      }
      // Someone outside the room gets 403.
      expect(await status(eve!, gkForA.uri)).to.equal(403);
    } finally {
      await kms.close();
    }
  });
});
