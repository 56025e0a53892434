// The client library's KmsClient against the real engine in process: group keys fetched once and
// cached, chains verified on the client, appends that survive a concurrent writer, retries with
// backoff on transient transport failures, and renewal of the ephemeral key before it expires.
import { expect } from 'chai';
import { KmsFixture, AUDIENCE } from '../support/kms-fixture.js';
import { KmsClient, withRetry } from '../../src/client/kms-client.js';
import { KmsResponseError } from '../../src/client/errors.js';
import { KmsStanzaError } from '../../src/client/xmpp.js';
import type { Transport } from '../../src/client/session.js';
import { verifyChain } from '../../src/client/chain.js';
import type { EngineOverrides } from '../../src/engine/config.js';

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
    identity: { kid: kms.identity.kid, key: kms.identity.publicKey, sigAlg: 'ES256', encAlg: 'ECDH-ES' },
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
    for (const g of got) expect(g.key.equals(gk.key)).to.equal(true);
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
      expect((r as PromiseRejectedResult).reason).to.be.instanceOf(KmsResponseError).with.property('status', 403);
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
    await verifyChain(blocks, { kmsKey: bob.kmsKey, kmsId: bob.kmsId, keysOf: async () => [{ kid: alice.entityKey.kid, key: alice.entityKey.publicKey }] }).catch((e: Error) => (err = e));
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

describe('client: withRetry', function () {
  const timeout = () => Object.assign(new Error('timed out'), { name: 'TimeoutError' });

  it('retries timeouts and "wait" stanza errors with growing delays, then succeeds', async function () {
    let n = 0;
    const stamps: number[] = [];
    const t = withRetry(async (m) => {
      stamps.push(Date.now());
      if (n++ < 2) throw n === 1 ? timeout() : new KmsStanzaError(undefined, 'resource-constraint', 'wait');
      return m;
    }, { retries: 3, backoffMs: 40 });
    expect(await t(['x'])).to.deep.equal(['x']);
    expect(n).to.equal(3);
    // first delay 20-40 ms, second 40-80 ms (exponential, with jitter)
    expect(stamps[1]! - stamps[0]!).to.be.at.least(18);
    expect(stamps[2]! - stamps[1]!).to.be.at.least(38);
  });

  it('gives up after its retries, and never retries a refusal', async function () {
    let n = 0;
    const t = withRetry(async () => {
      n++;
      throw timeout();
    }, { retries: 2, backoffMs: 1 });
    await t(['x']).then(() => expect.fail('resolved'), (e: Error) => expect(e.name).to.equal('TimeoutError'));
    expect(n).to.equal(3);
    n = 0;
    const refused = withRetry(async () => {
      n++;
      throw new KmsStanzaError(undefined, 'not-acceptable', 'modify');
    }, { retries: 5, backoffMs: 1 });
    await refused(['x']).catch(() => undefined);
    expect(n).to.equal(1);
  });
});
