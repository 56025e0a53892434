/**
 * Property-based tests of the one membership rule (src/protocol/entity.ts, src/protocol/blocks.ts):
 * canonicalisation is idempotent, and for random sequences of blocks whose entities are spelled in
 * every way a person or a hostile member might write them, the KMS accepts exactly the blocks that
 * a client's verifyChain accepts, and the KMS's membership equals the client's after every block.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { canonicalEntity, isCanonicalEntity } from '../../src/protocol/entity.js';
import { encodeSegment } from '../../src/protocol/uri.js';
import { applyOperations, type Operation } from '../../src/protocol/blocks.js';
import { verifyChain, type VerifiedChain } from '../../src/client/chain.js';
import type { JWK } from '../../src/client/webcrypto.js';
import { blockHash, jwkOf, signBlock } from '../support/node-client.js';
import { isMemberAt } from '../../src/store/kms-state.js';
import { DOMAIN, KmsFixture, type TestUser } from '../support/kms-fixture.js';

const CURATOR = `kms://${DOMAIN}`;
const NAMES = ['alice', 'bob', 'carol', 'dave'] as const;
const canonical = (n: string) => `${n}@example.com`;
const ALICE = canonical('alice');

/** The spellings of one user a block might carry: only the first is canonical. */
const spellings = (n: string) => [
  canonical(n),
  `${n[0]!.toUpperCase()}${n.slice(1)}@Example.COM`,
  `acct:${n}@example.com`,
  `xmpp:${n}@example.com`,
  `${n}@example.com/phone`,
  `${n.toUpperCase()}@EXAMPLE.COM/Laptop`,
  ` ${n}@example.com`,
  `${n}@example.com\u0000mallory`,
  `${n}\u200b@example.com`,
];

const arbEntity = fc.record({ name: fc.constantFrom(...NAMES), spelling: fc.nat({ max: 8 }), plain: fc.boolean() }).map(({ name, spelling, plain }) =>
  // Half of the entities are canonical, so that most blocks are valid and the chain grows.
  plain ? canonical(name) : spellings(name)[spelling]!,
);
const arbOperation: fc.Arbitrary<Operation> = fc.record({ entity: arbEntity, optype: fc.constantFrom('add' as const, 'remove' as const) });
const arbBlock = fc.record({ creator: fc.oneof(fc.constant(ALICE), arbEntity), operations: fc.array(arbOperation, { minLength: 0, maxLength: 3 }) });
const arbGenesis = fc.uniqueArray(fc.constantFrom(...NAMES.slice(1)), { maxLength: 3 }).map((others) => [ALICE, ...others.map(canonical)]);

describe('protocol: one membership rule (property-based)', function () {
  this.timeout(120_000);

  describe('canonicalEntity', () => {
    it('is idempotent, and what it returns is canonical, for any string', () => {
      fc.assert(
        fc.property(fc.oneof(fc.string({ unit: 'grapheme' }), fc.string({ unit: 'binary' }), arbEntity, fc.constantFrom(...NAMES.flatMap(spellings))), (s) => {
          const c = canonicalEntity(s);
          if (c === undefined) return;
          expect(canonicalEntity(c)).to.equal(c);
          expect(isCanonicalEntity(c)).to.equal(true);
        }),
        { numRuns: 3000 },
      );
    });

    it('maps every harmless spelling of a user to one entity and refuses the hostile ones', () => {
      for (const n of NAMES) {
        const [c, ...rest] = spellings(n);
        expect(isCanonicalEntity(c)).to.equal(true);
        for (const s of rest.slice(0, 6)) expect(canonicalEntity(s), s).to.equal(c);
        for (const s of rest.slice(6)) expect(canonicalEntity(s), JSON.stringify(s)).to.equal(undefined);
        for (const s of rest) expect(isCanonicalEntity(s), JSON.stringify(s)).to.equal(false);
      }
    });

    it('gives one spelling to a name whatever the position of its letters (a final sigma too), and counts parts in UTF-8 octets', () => {
      for (const s of [
        '\u03a3\u0391\u03a3@x.org',
        '\u03c3\u03b1\u03c2@x.org',
        '\u03c3\u03b1\u03c3@x.org',
        '\u039f\u0394\u039f\u03a3@x.org'.replace('\u039f\u0394\u039f', '\u03c3\u03b1'),
      ]) {
        expect(canonicalEntity(s), s).to.equal('\u03c3\u03b1\u03c3@x.org');
      }
      for (const prefix of ['ACCT:', 'Xmpp:']) expect(canonicalEntity(`${prefix}bob@example.com`)).to.equal('bob@example.com');
      // 341 three-octet letters are 1023 octets: the most a localpart may hold (RFC 7622); one more is too long.
      expect(canonicalEntity(`${'\u4e00'.repeat(341)}@example.com`)).to.be.a('string');
      expect(canonicalEntity(`${'\u4e00'.repeat(342)}@example.com`)).to.equal(undefined);
    });

    it('lets the longest entity be named in a URI: its keys can be listed', async () => {
      const f = await KmsFixture.create();
      try {
        const longest = `${'\u4e00'.repeat(341)}@${'d'.repeat(1019)}.org`;
        expect(isCanonicalEntity(longest)).to.equal(true);
        const user = await f.user(longest, { keyType: 'EC' });
        await user.register();
        const reader = await f.user(ALICE, { keyType: 'EC' });
        const res = await reader.session.request('get', `/entity-keys/${encodeSegment(longest)}`);
        expect((res.entityKeys as { entity: string }[]).map((k) => k.entity)).to.deep.equal([longest]);
      } finally {
        await f.close();
      }
    });
  });

  describe('the KMS and a client verifying the chain', () => {
    let kms: KmsFixture;
    let alice: TestUser;
    let aliceKey: JWK;

    before(async () => {
      kms = await KmsFixture.create();
      alice = await kms.user(ALICE, { keyType: 'EC' });
      await alice.register();
      aliceKey = jwkOf(alice.key.publicKey);
    });
    after(() => kms.close());

    it('accept the same blocks and agree on the members after every block', async () => {
      const keysOf = async (e: string) => (e === ALICE ? [{ kid: alice.key.kid, key: aliceKey }] : []);
      const opts = { kmsKey: jwkOf(kms.identity.publicKey), kmsId: CURATOR, keysOf };
      let accepted = 0;
      let refused = 0;
      await fc.assert(
        fc.asyncProperty(arbGenesis, fc.array(arbBlock, { minLength: 1, maxLength: 6 }), async (genesisMembers, blocks) => {
          const genesis = await alice.genesis(genesisMembers.map((entity) => ({ entity, optype: 'add' })));
          const chainId = genesis.uri.split('/').pop()!;
          const stored = [genesis.block];
          let verified: VerifiedChain = await verifyChain(stored, opts);
          for (const b of blocks) {
            const jws = signBlock(alice.key, b.creator, blockHash(stored[stored.length - 1]!), b.operations);
            // What a client makes of the chain with this block...
            let clientView: VerifiedChain | undefined;
            try {
              clientView = await verifyChain([jws], opts, verified);
            } catch {
              clientView = undefined;
            }
            // ...and what the KMS does with it.
            const [res] = await alice.session.batch([{ method: 'post', uri: genesis.uri, body: { blocks: [jws] } }]);
            expect(
              res!.status === 200,
              `KMS ${res!.status} ${String(res!.reason)}; client ${clientView ? 'accepts' : 'refuses'} ${JSON.stringify(b)}`,
            ).to.equal(clientView !== undefined);
            if (!clientView) {
              refused++;
              expect(res!.status).to.be.oneOf([400, 403]);
              continue;
            }
            accepted++;
            stored.push(jws);
            verified = clientView;
          }
          // After every block, the KMS's membership is the client's.
          for (const [seq, members] of verified.members.entries()) {
            for (const name of NAMES) {
              const e = canonical(name);
              const onKms = isMemberAt(await kms.deps.state.intervals(chainId, e), seq);
              expect(onKms, `${e} after block ${seq}`).to.equal(members.has(e));
            }
            for (const m of members) expect(isCanonicalEntity(m), m).to.equal(true);
          }
          // And the shared rule, applied once more from the stored blocks, gives the same sets.
          expect(await kms.deps.state.blocks(chainId)).to.deep.equal(stored);
        }),
        { numRuns: 40 },
      );
      // The generators reach both sides of the property.
      expect(accepted).to.be.greaterThan(10);
      expect(refused).to.be.greaterThan(10);
    });
  });

  describe('applyOperations', () => {
    it('applies operations in order: add then remove leaves a non-member out, remove then add keeps a member in', () => {
      const bob = canonical('bob');
      expect([
        ...applyOperations(
          new Set(),
          [
            { entity: bob, optype: 'add' },
            { entity: bob, optype: 'remove' },
          ],
          CURATOR,
        ),
      ]).to.deep.equal([]);
      expect([
        ...applyOperations(
          new Set([bob]),
          [
            { entity: bob, optype: 'remove' },
            { entity: bob, optype: 'add' },
          ],
          CURATOR,
        ),
      ]).to.deep.equal([bob]);
      expect([...applyOperations(new Set([bob]), [{ entity: CURATOR, optype: 'add' }], CURATOR)]).to.deep.equal([bob]);
      expect(() => applyOperations(new Set([bob]), [{ entity: CURATOR, optype: 'remove' }], CURATOR)).to.throw(/removes the curator/);
    });
  });
});
