/**
 * One error model (XEP "KMS Error Codes"): every error response of the engine, signed by the static
 * key or encrypted under a channel, carries "code" beside "status" and "reason", the code is one of
 * the registry's (KMS_ERRORS), and the status is the one the registry gives that code. The test
 * provokes every code of the registry and checks each response the engine sends on the way.
 */
import { expect } from 'chai';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { KmsFixture, add, AUDIENCE, DOMAIN, payloadOf } from '../support/kms-fixture.js';
import { openRawChannel, handshakeRequest } from '../support/raw-channel.js';
import { decryptDir } from '../../src/crypto/jwe.js';
import { signatureAlgsFor, verifyCompact } from '../../src/crypto/jws.js';
import { encode as b64u } from '../../src/crypto/base64url.js';
import { blockHash } from '../support/node-client.js';
import { KMS_ERRORS, type KmsServerCode } from '../../src/protocol/errors.js';
import { PeerLinks } from '../../src/federation/peers.js';

describe('engine: every error response carries a code from the registry', function () {
  let kms: KmsFixture;
  afterEach(async () => kms?.close());

  it('signed and encrypted, for every code of the registry', async function () {
    kms = await KmsFixture.create();
    const handle = (m: string) => kms.engine.handle(m);
    const algs = signatureAlgsFor(kms.identity.publicKey);
    const seen = new Set<KmsServerCode>();
    /** Opens one answer (signed, or under `key`), checks its error members and returns its code. */
    const codeOf = (raw: string, key?: Buffer): string => {
      const body =
        raw.split('.').length === 3
          ? JSON.parse(verifyCompact(raw, kms.identity.publicKey, algs).payload.toString('utf8'))
          : JSON.parse(decryptDir(raw, key!, ['A256GCM']).plaintext.toString('utf8'));
      expect(body.status, JSON.stringify(body)).to.be.at.least(400);
      expect(Object.keys(KMS_ERRORS), JSON.stringify(body)).to.include(body.code);
      expect(body.status, JSON.stringify(body)).to.equal(KMS_ERRORS[body.code as KmsServerCode].status);
      expect(body.reason, JSON.stringify(body)).to.be.a('string').and.not.equal('');
      seen.add(body.code);
      return body.code;
    };

    // Setup through the client session: alice's key, a chain, a block on it.
    const alice = await kms.user('alice@example.com');
    await alice.register();
    const { block: genesis, uri: chainUri } = await alice.genesis([add('alice@example.com'), add('bob@example.com')]);
    await alice.append(chainUri, [alice.block(blockHash(genesis), [add('carol@example.com')])]);
    const token = await kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE });
    const ch = await openRawChannel(kms.identity, handle, token);
    const onChannel = async (method: string, uri: string, body?: Record<string, unknown>) => codeOf(await handle(ch.seal(method, uri, body)), ch.key);

    // ---- signed: no usable channel ----
    expect(codeOf(await handle('not jose at all'))).to.equal('BAD_REQUEST');
    expect(codeOf(await handle('a'.repeat(70_000)))).to.equal('TOO_LARGE');
    const jwe = (header: object) =>
      [b64u(Buffer.from(JSON.stringify(header))), b64u(Buffer.from('k')), b64u(Buffer.alloc(12)), b64u(Buffer.from('ct')), b64u(Buffer.alloc(16))].join('.');
    expect(codeOf(await handle(jwe({ alg: 'A128KW', enc: 'A256GCM', kid: kms.identity.kid })))).to.equal('UNSUPPORTED');
    expect(codeOf(await handle(jwe({ alg: 'dir', enc: 'A256GCM', kid: `/ecdhe/${randomUUID()}` })))).to.equal('UNAUTHENTICATED');
    expect(codeOf(await handle(handshakeRequest(kms.identity, 'not a token', 'c1').message)), 'bad credential').to.equal('UNAUTHENTICATED');

    // ---- encrypted under the channel ----
    expect(await onChannel('get', '/nowhere')).to.equal('NOT_FOUND');
    expect(await onChannel('delete', `kms://${DOMAIN}/gks`)).to.equal('METHOD_NOT_ALLOWED');
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ format: 'jwk' });
    expect(await onChannel('post', '/entity-keys', { jwk: p384, proof: 'x' })).to.equal('UNSUPPORTED');
    expect(await onChannel('post', '/entity-keys', { jwk: alice.key.publicJwk, proof: 'not a JWS' })).to.equal('BAD_REQUEST');
    expect(await onChannel('get', `kms://${DOMAIN}/gks/${randomUUID()}`, { entity: 'bob@example.com' })).to.equal('FORBIDDEN');
    const unbound = payloadOf(await alice.createGk()).uri as string;
    const bobCh = await openRawChannel(kms.identity, handle, await kms.issuer.mint({ subject: 'bob@example.com', audience: AUDIENCE }));
    expect(codeOf(await handle(bobCh.seal('get', unbound, { entity: 'bob@example.com' })), bobCh.key)).to.equal('NOT_BOUND');
    const stale = alice.block(blockHash(genesis), [add('dave@example.com')]);
    expect(await onChannel('post', chainUri, { blocks: [stale] })).to.equal('CONFLICT');

    // ---- INTERNAL: a store that fails, on a channel and before one ----
    const state = kms.deps.state;
    const entityKeys = state.entityKeys.bind(state);
    state.entityKeys = async () => {
      throw new Error('disk on fire');
    };
    expect(await onChannel('get', '/entity-keys/alice@example.com')).to.equal('INTERNAL');
    state.entityKeys = entityKeys;
    const ephemeral = state.ephemeral.bind(state);
    state.ephemeral = async () => {
      throw new Error('disk on fire');
    };
    expect(codeOf(await handle(ch.seal('update', '/ping')))).to.equal('INTERNAL');
    state.ephemeral = ephemeral;

    // ---- PEER_FAILED: a group key of a peer KMS that cannot be reached (no XMPP connection) ----
    kms.deps.federation = new PeerLinks({
      peers: [{ kms: 'kms.peer.example', domains: ['peer.example'], anchors: [] }],
      self: kms.identity,
      entity: () => undefined,
    });
    expect(await onChannel('get', `kms://kms.peer.example/gks/${randomUUID()}`, { entity: 'alice@example.com' })).to.equal('PEER_FAILED');
    kms.deps.federation = undefined;

    expect([...seen].sort()).to.deep.equal(Object.keys(KMS_ERRORS).sort());
  });
});
