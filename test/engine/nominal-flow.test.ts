import { expect } from 'chai';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { KmsFixture, add, payloadOf, DOMAIN } from '../support/kms-fixture.js';
import { openGk } from '../support/node-client.js';
import { verifyChain } from '../../src/client/chain.js';
import { blockHash } from '../support/node-client.js';
import { importPublicJwk } from '../../src/crypto/keys.js';
import { jwkOf } from '../support/node-client.js';

function seal(key: Buffer, text: string) {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  const ct = Buffer.concat([c.update(text, 'utf8'), c.final()]);
  return { iv, ct, tag: c.getAuthTag() };
}
function unseal(key: Buffer, s: { iv: Buffer; ct: Buffer; tag: Buffer }) {
  const d = createDecipheriv('aes-256-gcm', key, s.iv);
  d.setAuthTag(s.tag);
  return Buffer.concat([d.update(s.ct), d.final()]).toString('utf8');
}

// The static key's type crossed with the members' entity key types (RSA is the client's default).
for (const [keyType, entityKeyType] of [
  ['EC', 'RSA'],
  ['EC', 'EC'],
  ['RSA', 'EC'],
] as const) {
  describe(`engine: the nominal flow of -03 §3 (${keyType} static key, ${entityKeyType} entity keys)`, function () {
    this.timeout(60_000);
    let kms: KmsFixture;
    before(async () => {
      kms = await KmsFixture.create({ keyType });
    });
    after(() => kms.close());

    it('lets Alice share a key with Bob only after she adds him to the chain', async () => {
      const alice = await kms.user('alice@example.com', { keyType: entityKeyType });
      const bob = await kms.user('bob@example.com', { keyType: entityKeyType });
      const eph = await alice.session.handshake();
      expect(eph.uri).to.match(/^\/ecdhe\/[0-9a-f-]{36}$/);
      expect(eph.userId).to.equal('alice@example.com');
      expect(Date.parse(eph.expirationDate) - Date.parse(eph.createDate)).to.equal(3600_000);
      expect((await alice.register()).status).to.equal(201);
      expect((await bob.register()).status).to.equal(201);

      // 1. Alice creates a chain with herself as member (genesis, signed by the KMS).
      const { block: genesis, uri: chainUri } = await alice.genesis([add('alice@example.com')]);
      const g = payloadOf(genesis);
      expect(g.curator).to.equal(`kms://${DOMAIN}`);
      expect(g.creator).to.equal(`kms://${DOMAIN}`);
      expect(chainUri).to.match(new RegExp(`^kms://${DOMAIN}/blocks/[0-9a-f-]{36}$`));

      // 2. Alice asks for an unbound GK and encrypts content with it.
      const gkJws = await alice.createGk();
      const gk = openGk(gkJws, kms.identity.publicKey, alice.key);
      expect(gk.block).to.equal(undefined);
      const content = seal(gk.key, 'the quarterly numbers');

      // Bob is not a member and the GK is unbound: he gets nothing, and is told "not bound yet" (409 NOT_BOUND).
      await bob.session.handshake();
      let refused = await bob.session.batch([{ method: 'get', uri: gk.uri, body: { entity: 'bob@example.com' } }]);
      expect(refused[0]!.status).to.equal(409);
      expect(refused[0]!.code).to.equal('NOT_BOUND');

      // 3. Alice appends a block adding Bob, signed with her own key.
      const b1 = alice.block(blockHash(genesis), [add('bob@example.com')]);
      expect((await alice.append(chainUri, [b1])).status).to.equal(200);

      // 4. Alice binds the GK to that block; the KMS re-signs it.
      const bound = openGk(await alice.bindGk(gk.uri, blockHash(b1)), kms.identity.publicKey, alice.key);
      expect(bound.block).to.equal(blockHash(b1));
      expect(bound.key.equals(gk.key)).to.equal(true);

      // 5. Bob fetches the GK, wrapped to his key (by his key's type), and reads the content.
      const bobsGk = await bob.getGk(gk.uri);
      const wrapped = JSON.parse(Buffer.from(String(payloadOf(bobsGk).key).split('.')[0]!, 'base64url').toString());
      expect(wrapped).to.include({ alg: entityKeyType === 'RSA' ? 'RSA-OAEP' : 'ECDH-ES+A256KW', enc: 'A256GCM', kid: bob.key.kid });
      const forBob = openGk(bobsGk, kms.identity.publicKey, bob.key);
      expect(unseal(forBob.key, content)).to.equal('the quarterly numbers');

      // Bob verifies the chain himself (PCG-01 validity) from what the KMS returns.
      const blocks = await bob.chain(chainUri);
      const keysOf = async (entity: string) => {
        const res = await bob.session.request('get', `/entity-keys/${entity}`);
        return (res.entityKeys as { kid: string; jwk: unknown }[]).map((k) => ({ kid: k.kid, key: jwkOf(importPublicJwk(k.jwk)) }));
      };
      const verified = await verifyChain(blocks, { kmsKey: jwkOf(kms.identity.publicKey), kmsId: `kms://${DOMAIN}`, keysOf });
      expect([...verified.members[1]!].sort()).to.deep.equal(['alice@example.com', 'bob@example.com']);
      expect(verified.tail).to.equal(blockHash(b1));
      refused = await bob.session.batch([{ method: 'get', uri: chainUri, body: { antecedent: blockHash(genesis) } }]);
      expect(refused[0]!.blocks).to.deep.equal([b1]);
    });

    it('pings, answers in batches by requestId and deletes the ephemeral key', async () => {
      const carol = await kms.user('carol@example.com');
      const res = await carol.session.request('update', '/ping');
      expect(res.status).to.equal(200);
      const batch = await carol.session.batch([
        { method: 'update', uri: '/ping' },
        { method: 'get', uri: `kms://${DOMAIN}/gks/00000000-0000-0000-0000-000000000000`, body: { entity: 'carol@example.com' } },
        { method: 'retrieve', uri: '/ping' },
      ]);
      expect(batch.map((r) => r.status)).to.deep.equal([200, 404, 200]);
      const uri = carol.session.ephemeral!.uri;
      const del = await carol.session.batch([{ method: 'delete', uri }]);
      expect(del[0]!.status).to.equal(204);
      expect(del[0]).to.not.have.property('key');
      expect(await kms.deps.state.ephemeral(uri.split('/')[2]!)).to.equal(undefined);
    });
  });
}
