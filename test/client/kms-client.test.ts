// The client library's KmsClient against the real engine in process: group keys fetched once and
// cached, chains verified on the client, appends that survive a concurrent writer, retries with
// backoff on transient transport failures, and renewal of the ephemeral key before it expires.
import { expect } from 'chai';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { KmsFixture, AUDIENCE } from '../support/kms-fixture.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { isTransient, retrying, type RetryOptions } from '../../src/client/retry.js';

/** A transport whose failures are retried by `retrying`, as the session retries its exchanges. */
const withRetry =
  (t: Transport, o: RetryOptions): Transport =>
  (m) =>
    retrying(() => t(m), o);
import {
  BadResponseError,
  ChainVerificationError,
  IdentityValidationError,
  KmsResponseError,
  KmsStanzaError,
  KmsTimeoutError,
} from '../../src/client/errors.js';
import { KmsSession, type Transport } from '../../src/client/session.js';
import { KmsError } from '../../src/protocol/errors.js';
import { encryptDir } from '../../src/crypto/jwe.js';
import { verifyChain } from '../../src/client/chain.js';
import type { EngineOverrides } from '../../src/engine/config.js';
import { jwkOf } from '../support/node-client.js';

/** A transport to the engine that counts requests by method and uri (it can read them: tests only). */
function counting(kms: KmsFixture) {
  const calls: string[] = [];
  const transport: Transport = async (messages) => {
    calls.push(...messages.map(() => 'message'));
    return kms.transport(messages);
  };
  return { calls, transport };
}

async function clientFor(kms: KmsFixture, jid: string, transport: Transport = kms.transport, extra: object = {}) {
  const token = await kms.issuer.mint({ subject: jid, audience: AUDIENCE });
  return KmsClient.connect({
    kms: 'kms.example.com',
    anchors: [],
    bearer: () => token,
    transport,
    identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
    backoffMs: 1,
    ...extra,
  });
}

describe('client: KmsClient (in process, real engine)', function () {
  let kms: KmsFixture;
  const open = async (config: EngineOverrides = {}) => (kms = await KmsFixture.create({ config }));
  afterEach(async () => kms?.close());

  it('connects: handshakes, learns its entity from the KMS and registers its entity key', async function () {
    await open();
    const alice = await clientFor(kms, 'Alice@Example.com');
    expect(alice.entity).to.equal('alice@example.com');
    const bob = await clientFor(kms, 'bob@example.com');
    const res = await bob.session.request('get', '/entity-keys/alice@example.com');
    expect((res.entityKeys as { kid: string }[]).map((k) => k.kid)).to.deep.equal([alice.entityKey.kid]);
  });

  it('makes an RSA entity key by default and a P-256 one when asked, and gets GKs wrapped to either', async function () {
    await open();
    const rsa = await clientFor(kms, 'alice@example.com');
    const ec = await clientFor(kms, 'bob@example.com', kms.transport, { entityKeyType: { type: 'EC' } });
    expect([rsa.entityKey.alg, rsa.entityKey.publicJwk.kty]).to.deep.equal(['PS256', 'RSA']);
    expect([ec.entityKey.alg, ec.entityKey.publicJwk.crv]).to.deep.equal(['ES256', 'P-256']);
    for (const c of [rsa, ec]) {
      const gk = await c.createGk();
      expect(gk.key).to.have.length(32);
    }
  });

  it('fetches a group key once however many callers ask at the same time, then serves it from the cache', async function () {
    await open();
    const alice = await clientFor(kms, 'alice@example.com');
    const chain = await alice.createChain(['bob@example.com']);
    const gk = await alice.createGk(chain.tail);
    const counter = counting(kms);
    const bob = await clientFor(kms, 'bob@example.com', counter.transport);
    const before = counter.calls.length;
    const got = await Promise.all(Array.from({ length: 10 }, () => bob.gk(gk.uri)));
    expect(counter.calls.length - before).to.equal(1);
    for (const g of got) expect(g.key).to.deep.equal(gk.key);
    expect(bob.hasGk(gk.uri)).to.equal(true);
    await bob.gk(gk.uri);
    expect(counter.calls.length - before).to.equal(1);
  });

  it('gives every concurrent caller the refusal of a non-member, and does not cache it', async function () {
    await open();
    const alice = await clientFor(kms, 'alice@example.com');
    const chain = await alice.createChain(['bob@example.com']);
    const gk = await alice.createGk(chain.tail);
    const counter = counting(kms);
    const mallory = await clientFor(kms, 'mallory@example.com', counter.transport);
    const before = counter.calls.length;
    const results = await Promise.allSettled([mallory.gk(gk.uri), mallory.gk(gk.uri), mallory.gk(gk.uri)]);
    expect(counter.calls.length - before).to.equal(1);
    for (const r of results) {
      expect(r.status).to.equal('rejected');
      expect((r as PromiseRejectedResult).reason)
        .to.be.instanceOf(KmsResponseError)
        .with.property('status', 403);
      expect((r as PromiseRejectedResult).reason).to.have.property('code', 'FORBIDDEN');
    }
    expect(mallory.hasGk(gk.uri)).to.equal(false);
    await mallory.gk(gk.uri).catch(() => undefined);
    expect(counter.calls.length - before).to.equal(2);
  });

  it('verifies chains itself, and a chain with an altered block does not verify', async function () {
    await open();
    const alice = await clientFor(kms, 'alice@example.com');
    const chain = await alice.addMembers((await alice.createChain(['bob@example.com'])).uri, ['carol@example.com']);
    expect([...chain.members[1]!].sort()).to.deep.equal(['alice@example.com', 'bob@example.com', 'carol@example.com']);
    const bob = await clientFor(kms, 'bob@example.com');
    const verified = await bob.chain(chain.uri);
    expect(verified.tail).to.equal(chain.tail);
    // The same blocks with one operation changed (what a lying KMS or a forged archive would show) do not verify.
    const blocks = [...verified.blocks];
    const [h, p, s] = blocks[1]!.split('.') as [string, string, string];
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
    payload.operations = [{ entity: 'mallory@example.com', optype: 'add' }];
    blocks[1] = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`;
    let err: Error | undefined;
    await verifyChain(blocks, {
      kmsKey: bob.kmsKey,
      kmsId: bob.kmsId,
      keysOf: async () => [{ kid: alice.entityKey.kid, key: alice.entityKey.publicJwk }],
    }).catch((e: Error) => (err = e));
    expect(err?.message).to.match(/block 1: the signature does not verify/);
  });

  it('appends on top of a concurrent writer: a 409 makes it fetch the chain and sign again', async function () {
    await open();
    const alice = await clientFor(kms, 'alice@example.com');
    const uri = (await alice.createChain(['bob@example.com'])).uri;
    const bob = await clientFor(kms, 'bob@example.com');
    await bob.chain(uri);
    await alice.addMembers(uri, ['carol@example.com']); // bob's view is now stale
    const after = await bob.addMembers(uri, ['dave@example.com']);
    expect(after.hashes).to.have.length(3);
    expect([...after.members[2]!].sort()).to.deep.equal(['alice@example.com', 'bob@example.com', 'carol@example.com', 'dave@example.com']);
  });

  it('renews the ephemeral key before it expires', async function () {
    await open({ ephemeralLifetimeSec: 3 });
    const alice = await clientFor(kms, 'alice@example.com', kms.transport, { renewBeforeMs: 2500 });
    const first = alice.session.ephemeral!.uri;
    await alice.ping();
    expect(alice.session.ephemeral!.uri).to.equal(first);
    await new Promise((r) => setTimeout(r, 600));
    await alice.ping();
    expect(alice.session.ephemeral!.uri).to.not.equal(first);
  });

  it('handshakes again when the KMS has lost its ephemeral key (signed 401)', async function () {
    await open();
    const alice = await clientFor(kms, 'alice@example.com');
    const first = alice.session.ephemeral!.uri;
    await kms.deps.state.deleteEphemeral(first.split('/').pop()!);
    expect((await alice.ping()).status).to.equal(200);
    expect(alice.session.ephemeral!.uri).to.not.equal(first);
  });
});

describe('client: retrying', function () {
  const timeout = () => Object.assign(new Error('timed out'), { name: 'TimeoutError' });

  it('retries timeouts and "wait" stanza errors with growing delays, then succeeds', async function () {
    let n = 0;
    const stamps: number[] = [];
    const t = withRetry(
      async (m) => {
        stamps.push(Date.now());
        if (n++ < 2) throw n === 1 ? timeout() : new KmsStanzaError(undefined, 'resource-constraint', 'wait');
        return m;
      },
      { retries: 3, backoffMs: 40 },
    );
    expect(await t(['x'])).to.deep.equal(['x']);
    expect(n).to.equal(3);
    // first delay 20-40 ms, second 40-80 ms (exponential, with jitter)
    expect(stamps[1]! - stamps[0]!).to.be.at.least(18);
    expect(stamps[2]! - stamps[1]!).to.be.at.least(38);
  });

  it('gives up after its retries, and never retries a refusal', async function () {
    let n = 0;
    const t = withRetry(
      async () => {
        n++;
        throw timeout();
      },
      { retries: 2, backoffMs: 1 },
    );
    await t(['x']).then(
      () => expect.fail('resolved'),
      (e: Error) => expect(e.name).to.equal('TimeoutError'),
    );
    expect(n).to.equal(3);
    n = 0;
    const refused = withRetry(
      async () => {
        n++;
        throw new KmsStanzaError(undefined, 'not-acceptable', 'modify');
      },
      { retries: 5, backoffMs: 1 },
    );
    await refused(['x']).catch(() => undefined);
    expect(n).to.equal(1);
  });
});

describe('client: one error model', function () {
  let kms: KmsFixture;
  afterEach(async () => kms?.close());

  const failure = (p: Promise<unknown>) =>
    p.then(
      () => expect.fail('expected a failure'),
      (e: Error) => e,
    );

  it("rebuilds the KMS's code: BAD_REQUEST and UNSUPPORTED, both status 400, arrive distinct", async function () {
    kms = await KmsFixture.create();
    const alice = await clientFor(kms, 'alice@example.com');
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ format: 'jwk' });
    const unsupported = await failure(alice.session.request('post', '/entity-keys', { jwk: p384, proof: 'x' }));
    const bad = await failure(alice.session.request('post', '/entity-keys', { jwk: alice.entityKey.publicJwk, proof: 'not a JWS' }));
    expect(unsupported).to.be.instanceOf(KmsResponseError).and.instanceOf(KmsError);
    expect(bad).to.be.instanceOf(KmsResponseError);
    expect([(unsupported as KmsResponseError).code, (unsupported as KmsResponseError).status]).to.deep.equal(['UNSUPPORTED', 400]);
    expect([(bad as KmsResponseError).code, (bad as KmsResponseError).status]).to.deep.equal(['BAD_REQUEST', 400]);
    const missing = await failure(alice.session.request('get', '/nowhere'));
    expect([(missing as KmsResponseError).code, (missing as KmsResponseError).status]).to.deep.equal(['NOT_FOUND', 404]);
  });

  it('falls back to the status when a response has no code, or one it does not know', function () {
    const rebuilt = (res: { status: number; code?: unknown; reason?: unknown }) => {
      const e = KmsResponseError.from(res);
      return [e.code, e.status];
    };
    expect(rebuilt({ status: 400, code: 'UNSUPPORTED' })).to.deep.equal(['UNSUPPORTED', 400]);
    expect(rebuilt({ status: 404 })).to.deep.equal(['NOT_FOUND', 404]);
    expect(rebuilt({ status: 400 })).to.deep.equal(['BAD_REQUEST', 400]);
    expect(rebuilt({ status: 403, code: 'NOT_A_CODE' })).to.deep.equal(['FORBIDDEN', 403]);
    // Client-only codes never travel: one in a response is unknown.
    expect(rebuilt({ status: 409, code: 'TIMEOUT' })).to.deep.equal(['CONFLICT', 409]);
    expect(rebuilt({ status: 418 })).to.deep.equal(['BAD_REQUEST', 418]);
    expect(rebuilt({ status: 503 })).to.deep.equal(['INTERNAL', 503]);
    expect(KmsResponseError.from({ status: 400, code: 'BAD_REQUEST', reason: 'blocks: required' }).message).to.equal('blocks: required');
  });

  it('invents no status: a response it cannot accept is a BadResponseError without status, and is not retried', async function () {
    kms = await KmsFixture.create();
    let mode: 'engine' | 'none' | 'foreign-key' | 'garbage' = 'engine';
    const transport: Transport = async (messages) => {
      if (mode === 'none') return [];
      if (mode === 'foreign-key') return messages.map(() => encryptDir(randomBytes(32), '{"status":200}', { enc: 'A256GCM', kid: '/ecdhe/someone-else' }));
      if (mode === 'garbage') return messages.map(() => 'x.y.z');
      return kms.transport(messages);
    };
    const token = await kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE });
    const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: jwkOf(kms.identity.publicKey), transport, bearer: () => token });
    await session.handshake();
    for (const m of ['none', 'foreign-key', 'garbage'] as const) {
      mode = m;
      const e = await failure(session.request('update', '/ping'));
      expect(e, m).to.be.instanceOf(BadResponseError);
      expect([(e as BadResponseError).code, (e as BadResponseError).status, isTransient(e)], m).to.deep.equal(['BAD_RESPONSE', undefined, false]);
    }
  });

  it('retries by code, never by message text', async function () {
    const cases: [string, () => Error, boolean][] = [
      ['TIMEOUT', () => new KmsTimeoutError('no answer'), true],
      [
        'STANZA_ERROR wait (rate-limited)',
        () => new KmsStanzaError({ key: 'rate-limited', type: 'wait', condition: 'resource-constraint', text: undefined }, 'resource-constraint', 'wait'),
        true,
      ],
      ['STANZA_ERROR from the server, component away', () => new KmsStanzaError(undefined, 'remote-server-timeout', 'wait'), true],
      [
        'STANZA_ERROR modify (malformed-payload)',
        () => new KmsStanzaError({ key: 'malformed-payload', type: 'modify', condition: 'bad-request', text: undefined }, 'bad-request', 'modify'),
        false,
      ],
      ['INTERNAL response', () => KmsResponseError.from({ status: 500, code: 'INTERNAL' }), false],
      ['CONFLICT response', () => KmsResponseError.from({ status: 409, code: 'CONFLICT' }), false],
      ['BAD_RESPONSE', () => new BadResponseError('the response is not signed by the KMS'), false],
      ['CHAIN_INVALID', () => new ChainVerificationError('block 1: bad signature', { block: 1 }), false],
      ['IDENTITY_INVALID', () => new IdentityValidationError('no anchor'), false],
      ['a socket closed (Node code)', () => Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), true],
      ['a message that only says so', () => new Error('connection lost: socket offline, disconnected'), false],
    ];
    for (const [what, make, retried] of cases) {
      let n = 0;
      const t = withRetry(
        async () => {
          n++;
          throw make();
        },
        { retries: 2, backoffMs: 1 },
      );
      await failure(t(['x']));
      expect(n, what).to.equal(retried ? 3 : 1);
    }
  });
});
