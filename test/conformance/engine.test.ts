/**
 * Conformance of the KMS engine to requirements of xep/kms.xml that the other engine tests do not
 * single out: the handshake's "enc" and "kid", a handshake without credential, the bearer token's
 * claims, the genesis request's ignored members, and the entity of /entity-keys/{entity}. Every
 * message goes through `engine.handle`; refusals are checked for status, code, form and that the
 * store did not change.
 */
import { expect } from 'chai';
import { createECDH } from 'node:crypto';
import { SignJWT, createLocalJWKSet, exportJWK, generateKeyPair } from 'jose';
import { KmsFixture, add, payloadOf, AUDIENCE, DOMAIN, ISSUER, type TestUser } from '../support/kms-fixture.js';
import { openRawChannel, type RawChannel } from '../support/raw-channel.js';
import { encryptJwe } from '../../src/crypto/jwe.js';
import { signatureAlgsFor, verifyCompact } from '../../src/crypto/jws.js';
import { thumbprint } from '../../src/crypto/keys.js';
import { encode as b64u } from '../../src/crypto/base64url.js';
import { Authenticator } from '../../src/engine/credentials.js';
import { KmsError } from '../../src/protocol/errors.js';

const ALICE = 'alice@example.com';

describe('conformance: the KMS engine (xep/kms.xml)', function () {
  this.timeout(60_000);
  let kms: KmsFixture;
  let alice: TestUser;
  let ch: RawChannel;
  before(async () => {
    kms = await KmsFixture.create();
    alice = await kms.user(ALICE, { keyType: 'EC' });
    await alice.register();
    ch = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), alice.token);
  });
  after(() => kms.close());

  /** A handshake to the static key with this payload and these header members. */
  function handshake(payload: Record<string, unknown>, header: { enc?: string; kid?: string | null } = {}): string {
    const ecdh = createECDH('prime256v1');
    const point = ecdh.generateKeys();
    const body = {
      client: { clientId: 'conformance', credential: { bearer: alice.token } },
      method: 'create',
      uri: '/ecdhe',
      requestId: 'hs',
      jwk: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)) },
      ...payload,
    };
    const h: Record<string, unknown> = { alg: kms.identity.keyType === 'RSA' ? 'RSA-OAEP' : 'ECDH-ES', enc: 'A256GCM' };
    if (header.kid !== null) h.kid = header.kid ?? kms.identity.kid;
    const jwe = encryptJwe(kms.identity.publicKey, JSON.stringify(body), h as never);
    if (!header.enc) return jwe;
    // Another "enc" in the protected header (the KMS reads the header before it decrypts anything).
    const parts = jwe.split('.');
    parts[0] = b64u(JSON.stringify({ ...JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')), enc: header.enc }));
    return parts.join('.');
  }

  /** Sends `message`, expects a signed answer, returns its payload. */
  async function signed(message: string): Promise<Record<string, unknown>> {
    const raw = await kms.engine.handle(message);
    expect(raw.split('.'), 'a JWS by the static key').to.have.length(3);
    const { header, payload } = verifyCompact(raw, kms.identity.publicKey, signatureAlgsFor(kms.identity.publicKey));
    expect(header.kid).to.equal(kms.identity.kid);
    return JSON.parse(payload.toString('utf8'));
  }

  it('refuses a handshake whose enc is not A256GCM (signed 400 UNSUPPORTED) and makes no ephemeral key', async () => {
    for (const enc of ['A128GCM', 'A192GCM', 'A128CBC-HS256']) {
      const before = await kms.digest();
      const res = await signed(handshake({}, { enc }));
      expect([res.status, res.code], String(res.reason)).to.deep.equal([400, 'UNSUPPORTED']);
      expect(res.reason).to.match(new RegExp(`enc ${enc}`));
      expect(await kms.digest()).to.equal(before);
    }
    expect((await signed(handshake({}))).status).to.equal(201);
  });

  it("refuses a handshake addressed to the static key's RFC 7638 thumbprint or any kid but the KMS identity (signed 400 BAD_REQUEST), and takes one without kid", async () => {
    const print = thumbprint(kms.identity.publicKey);
    for (const kid of [print, `kms://${DOMAIN.toUpperCase()}`, `kms://${DOMAIN}/`, 'kms://other.example.net', '']) {
      const before = await kms.digest();
      const res = await signed(handshake({}, { kid }));
      expect([res.status, res.code], `${kid}: ${String(res.reason)}`).to.deep.equal([400, 'BAD_REQUEST']);
      expect(res, 'the request could not be read').to.not.have.property('requestId');
      expect(await kms.digest()).to.equal(before);
    }
    const noKid = await signed(handshake({}, { kid: null }));
    expect([noKid.status, noKid.requestId]).to.deep.equal([201, 'hs']);
  });

  it('refuses a handshake without a credential (signed 401 UNAUTHENTICATED, with its requestId)', async () => {
    const before = await kms.digest();
    const res = await signed(handshake({ client: { clientId: 'conformance' } }));
    expect([res.status, res.code], String(res.reason)).to.deep.equal([401, 'UNAUTHENTICATED']);
    expect(res.requestId).to.equal('hs');
    expect(await kms.digest()).to.equal(before);
  });

  it("ignores a genesis request's creator and created when they are strings, and refuses them otherwise (400)", async () => {
    const post = (blockPayload: Record<string, unknown>) => kms.engine.handle(ch.seal('post', `kms://${DOMAIN}/blocks`, { blockPayload }));
    const ok = ch.open(await post({ creator: 'mallory@example.com', created: 'long ago', operations: [add(ALICE)] }));
    expect(ok.status, String(ok.reason)).to.equal(201);
    const genesis = payloadOf(ok.block as string);
    expect([genesis.creator, genesis.curator]).to.deep.equal([`kms://${DOMAIN}`, `kms://${DOMAIN}`]);
    expect(genesis.created).to.not.equal('long ago');
    for (const [member, value] of [
      ['creator', 5],
      ['creator', { entity: ALICE }],
      ['created', 1795425605],
      ['created', null],
    ] as const) {
      const before = await kms.digest();
      const res = ch.open(await post({ [member]: value, operations: [add(ALICE)] }));
      expect([res.status, res.code], `${member}: ${JSON.stringify(value)}`).to.deep.equal([400, 'BAD_REQUEST']);
      expect(String(res.reason)).to.include(member);
      expect(await kms.digest()).to.equal(before);
    }
  });

  it('lists the entity keys of /entity-keys/{entity} by the canonical entity after percent-decoding, and refuses any other spelling (400)', async () => {
    const list = async (uri: string) => ch.open(await kms.engine.handle(ch.seal('get', uri)));
    for (const spelling of [ALICE, 'alice%40example.com', '%61lice@example.com']) {
      const res = await list(`/entity-keys/${spelling}`);
      expect(res.status, spelling).to.equal(200);
      expect(
        (res.entityKeys as { kid: string }[]).map((k) => k.kid),
        spelling,
      ).to.deep.equal([alice.key.kid]);
    }
    for (const spelling of ['Alice@Example.com', 'alice%40Example.com', 'acct%3Aalice%40example.com', 'alice%40example.com%2Fphone', 'ALICE%40EXAMPLE.COM']) {
      const res = await list(`/entity-keys/${spelling}`);
      expect([res.status, res.code], `${spelling}: ${String(res.reason)}`).to.deep.equal([400, 'BAD_REQUEST']);
      expect(String(res.reason), spelling).to.include(`"${ALICE}"`);
    }
  });

  it("checks a bearer token's claims: iss, aud as a string or a list, exp required, nbf and iat, with the clock tolerance", async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'ES256' };
    const auth = new Authenticator({
      bearer: { keys: createLocalJWKSet({ keys: [jwk] }), issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'], userClaim: 'sub', clockToleranceSec: 30 },
      serviceAnchors: [],
    });
    const now = Math.floor(Date.now() / 1000);
    /** A token with the right claims but those of `override` (undefined: left out). */
    const token = (override: Record<string, unknown>) => {
      const claims = Object.entries({ sub: ALICE, iss: ISSUER, aud: AUDIENCE, iat: now, exp: now + 600, ...override }).filter(([, v]) => v !== undefined);
      return new SignJWT(Object.fromEntries(claims)).setProtectedHeader({ alg: 'ES256', kid: 'idp-1' }).sign(privateKey);
    };
    const cases: [string, Record<string, unknown>, boolean][] = [
      ['all claims right', {}, true],
      ['aud a list that holds the KMS', { aud: ['https://other.example.net', AUDIENCE] }, true],
      ['nbf reached', { nbf: now - 10 }, true],
      ['nbf just ahead, within the tolerance', { nbf: now + 20 }, true],
      ['exp just passed, within the tolerance', { exp: now - 20 }, true],
      ['no iat', { iat: undefined }, true],
      ['another iss', { iss: 'https://other.example.net' }, false],
      ['no iss', { iss: undefined }, false],
      ['aud another service', { aud: 'https://other.example.net' }, false],
      ['aud a list without the KMS', { aud: ['https://a.example.net', 'https://b.example.net'] }, false],
      ['no aud', { aud: undefined }, false],
      ['no exp', { exp: undefined }, false],
      ['exp passed', { exp: now - 120 }, false],
      ['exp not a number', { exp: String(now + 600) }, false],
      ['nbf ahead', { nbf: now + 120 }, false],
      ['nbf not a number', { nbf: 'now' }, false],
      ['iat not a number', { iat: 'today' }, false],
    ];
    for (const [what, claims, accepted] of cases) {
      const outcome = await auth.authenticate({ bearer: await token(claims) }, new Date(now * 1000)).then(
        (p) => p.id,
        (e: unknown) => e,
      );
      if (accepted) expect(outcome, what).to.equal(ALICE);
      else {
        expect(outcome, what).to.be.instanceOf(KmsError);
        expect([(outcome as KmsError).status, (outcome as KmsError).code], what).to.deep.equal([401, 'UNAUTHENTICATED']);
      }
    }
  });
});
