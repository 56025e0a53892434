/**
 * The secure channel (-03 §4.5, §4.6.1): the handshake response, requestId echo, request URI
 * forms, foreign authorities, and the client session's recovery when the KMS forgets its key.
 */
import { expect } from 'chai';
import { randomUUID, type ECDH } from 'node:crypto';
import { KmsFixture, add, payloadOf, AUDIENCE, DOMAIN } from '../support/kms-fixture.js';
import { handshakeRequest, openRawChannel, type RawChannel } from '../support/raw-channel.js';
import { decodeCompactJws, verifyCompact } from '../../src/crypto/jws.js';
import { decryptDir, encryptDir, encryptJwe, readJweHeader } from '../../src/crypto/jwe.js';
import { KmsSession } from '../../src/client/session.js';
import { deriveChannelKey } from '../../src/crypto/channel.js';
import { importPublicJwk } from '../../src/crypto/keys.js';
import { generateEntityKey, openGk } from '../support/node-client.js';
import { jwkOf } from '../support/node-client.js';

/** The public JWK of a client ECDH key. */
function ecdhJwk(ecdh: ECDH) {
  const p = ecdh.getPublicKey();
  return { kty: 'EC', crv: 'P-256', x: p.subarray(1, 33).toString('base64url'), y: p.subarray(33, 65).toString('base64url') };
}

/** A signed answer: verified with the static key, kid checked. */
function signed(kms: KmsFixture, message: string): Record<string, unknown> {
  expect(message.split('.')).to.have.length(3);
  const { header, payload } = verifyCompact(message, kms.identity.publicKey, [kms.identity.sigAlg]);
  expect(header.kid).to.equal(`kms://${DOMAIN}`);
  return JSON.parse(payload.toString('utf8'));
}

for (const keyType of ['EC', 'RSA'] as const) {
  describe(`engine: the secure channel (${keyType} static key)`, function () {
    this.timeout(60_000);
    let kms: KmsFixture;
    let offsetMs = 0;
    let token: string;
    before(async () => {
      kms = await KmsFixture.create({ keyType, clock: () => new Date(Date.now() + offsetMs) });
      token = await kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE });
    });
    after(() => kms.close());
    const handle = (m: string) => kms.engine.handle(m);

    it('answers a handshake with a JWS by the static key holding key and ephemeral-key, on P-256, and both sides derive the same key', async () => {
      const before = Date.now();
      const { message, ecdh } = handshakeRequest(kms.identity, token, 'client-1', 'hs-req-1');
      const raw = await kms.engine.handle(message);
      const { header } = decodeCompactJws(raw);
      expect(header.alg).to.equal(keyType === 'RSA' ? 'PS256' : 'ES256');
      expect(header.kid).to.equal('kms://kms.example.com');
      // The static key signed it: another key does not verify it.
      const res = signed(kms, raw);
      expect(() => verifyCompact(raw, generateEntityKey().publicKey, ['ES256', 'PS256', 'RS256'])).to.throw();
      expect(res.status).to.equal(201);
      expect(res.requestId).to.equal('hs-req-1');
      expect(res.key).to.be.an('object');
      expect(res['ephemeral-key']).to.deep.equal(res.key);
      const key = res.key as Record<string, unknown> & { jwk: Record<string, unknown> };
      expect(key.uri).to.match(/^\/ecdhe\/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(key.userId).to.equal('alice@example.com');
      expect(key.clientId).to.equal('client-1');
      expect(Object.keys(key.jwk).sort()).to.deep.equal(['crv', 'kty', 'x', 'y']);
      expect(key.jwk.kty).to.equal('EC');
      expect(key.jwk.crv).to.equal('P-256');
      expect(Buffer.from(key.jwk.x as string, 'base64url')).to.have.length(32);
      expect(Buffer.from(key.jwk.y as string, 'base64url')).to.have.length(32);
      const created = Date.parse(key.createDate as string);
      expect(created).to.be.within(before - 1000, Date.now() + 1000);
      expect(Date.parse(key.expirationDate as string) - created).to.equal(3600_000);

      const channelKey = deriveChannelKey(ecdh, importPublicJwk(key.jwk));
      // The KMS holds the same key (sealed) ...
      const record = await kms.deps.state.ephemeral((key.uri as string).split('/').pop()!);
      expect(kms.deps.sealer.open(record!.key, `ecdhe:${record!.id}`).equals(channelKey)).to.equal(true);
      // ... and a ping round trip proves it: the KMS read our JWE and we read its answer.
      const ping = `${randomUUID()}`;
      const req = encryptDir(
        channelKey,
        JSON.stringify({ client: { clientId: 'client-1', credential: { bearer: token } }, method: 'update', uri: '/ping', requestId: ping }),
        {
          enc: 'A256GCM',
          kid: key.uri as string,
        },
      );
      const answer = await kms.engine.handle(req);
      expect(readJweHeader(answer)).to.include({ alg: 'dir', enc: 'A256GCM', kid: key.uri });
      const body = JSON.parse(decryptDir(answer, channelKey, ['A256GCM']).plaintext.toString('utf8'));
      expect(body).to.deep.equal({ status: 200, requestId: ping });
      // A wrong key cannot read it.
      expect(() => decryptDir(answer, Buffer.alloc(32), ['A256GCM'])).to.throw();
    });

    it('echoes requestId with its JSON type, on success and failure, on the channel and at the handshake', async () => {
      const ch = await openRawChannel(kms.identity, handle, token);
      for (const id of ['abc', 'x', '42', 42, 0, -1.5, 1e21]) {
        const ok = ch.open(await handle(ch.seal('update', '/ping', {}, id)));
        expect(ok).to.deep.equal({ status: 200, requestId: id });
        const bad = ch.open(await handle(ch.seal('get', '/nope', {}, id)));
        expect(bad.status).to.equal(404);
        expect(bad.requestId).to.equal(id);
        expect(typeof bad.requestId).to.equal(typeof id);
        // A failure after parsing (an operation's body) echoes it too.
        const bad2 = ch.open(await handle(ch.seal('post', '/blocks', { blockPayload: 5 }, id)));
        expect(bad2.status).to.equal(400);
        expect(bad2.requestId).to.equal(id);
      }
      for (const id of ['hs', 7]) {
        const { message } = handshakeRequest(kms.identity, token, 'c', id);
        const res = signed(kms, await handle(message));
        expect(res.status).to.equal(201);
        expect(res.requestId).to.equal(id);
        expect(typeof res.requestId).to.equal(typeof id);
        // A refused handshake (expired token) is signed and still echoes it.
        const expired = await kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE, ttlSec: -3600 });
        const refused = signed(kms, await handle(handshakeRequest(kms.identity, expired, 'c', id).message));
        expect(refused.status).to.equal(401);
        expect(refused.requestId).to.equal(id);
        expect(typeof refused.requestId).to.equal(typeof id);
      }
      // requestId is required (XEP "Failure Responses"): without one the request is refused, and the answer has none.
      const noId = encryptDir(ch.key, JSON.stringify({ client: { clientId: ch.clientId, credential: { bearer: token } }, method: 'get', uri: '/ping' }), {
        enc: 'A256GCM',
        kid: ch.uri,
      });
      const refusedNoId = ch.open(await handle(noId));
      expect(refusedNoId).to.include({ status: 400, reason: 'invalid request: requestId: Invalid input' });
      expect(refusedNoId).to.not.have.property('requestId');
    });

    it('routes relative and absolute kms:// request URIs alike', async () => {
      const alice = await kms.user('alice@example.com');
      await alice.register();
      for (const uri of ['/ping', `kms://${DOMAIN}/ping`, `kms://${DOMAIN.toUpperCase()}/ping`]) {
        expect((await alice.session.request('update', uri)).status, uri).to.equal(200);
      }
      const rel = await alice.session.request('post', '/blocks', { blockPayload: { operations: [add('alice@example.com')] } });
      const abs = await alice.session.request('post', `kms://${DOMAIN}/blocks`, { blockPayload: { operations: [add('alice@example.com')] } });
      for (const res of [rel, abs]) {
        const g = payloadOf(res.block as string);
        const id = (g.uri as string).split('/').pop()!;
        expect(g.uri).to.equal(`kms://${DOMAIN}/blocks/${id}`);
        const viaAbs = await alice.session.request('get', g.uri as string);
        const viaRel = await alice.session.request('get', `/blocks/${id}`);
        expect(viaAbs.blocks).to.deep.equal([res.block]);
        expect(viaRel.blocks).to.deep.equal([res.block]);
      }
      const gk = payloadOf(await alice.createGk()).uri as string;
      const id = gk.split('/').pop()!;
      for (const uri of [gk, `/gks/${id}`]) {
        const got = await alice.session.request('get', uri, { entity: 'alice@example.com' });
        expect(openGk(got.gk as string, kms.identity.publicKey, alice.key).uri).to.equal(gk);
      }
      // The handshake URI may be absolute too.
      const hs = handshakeRequest(kms.identity, token, 'c');
      const payload = {
        client: { clientId: 'c', credential: { bearer: token } },
        method: 'create',
        uri: `kms://${DOMAIN}/ecdhe`,
        requestId: 'abs',
        jwk: ecdhJwk(hs.ecdh),
      };
      const rsa = keyType === 'RSA';
      const res = signed(
        kms,
        await handle(encryptJwe(kms.identity.publicKey, JSON.stringify(payload), { alg: rsa ? 'RSA-OAEP' : 'ECDH-ES', enc: 'A256GCM', kid: kms.identity.kid })),
      );
      expect(res.status).to.equal(201);
      expect(res.requestId).to.equal('abs');
    });

    it("answers a URI on another KMS's authority with 404 naming federation", async () => {
      const ch: RawChannel = await openRawChannel(kms.identity, handle, token);
      for (const uri of [
        `kms://other.example.net/gks/${randomUUID()}`,
        'kms://other.example.net/ping',
        `kms://${DOMAIN}.evil.net/ping`,
        `kms://evil.net/${DOMAIN}/ping`,
      ]) {
        const before = await kms.digest();
        const res = ch.open(await handle(ch.seal('get', uri, { entity: 'alice@example.com' })));
        expect(res.status, uri).to.equal(404);
        expect(res.reason).to.match(/another KMS .*federation is not enabled/);
        expect(await kms.digest()).to.equal(before);
      }
    });

    it('re-handshakes transparently when the KMS has forgotten the ephemeral key', async () => {
      // A token that outlives the ephemeral key, so that the KMS's clock can pass the key's expiry.
      const long = await kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE, ttlSec: 4 * 3600 });
      const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: jwkOf(kms.identity.publicKey), transport: kms.transport, bearer: () => long });
      const calls: number[] = [];
      expect((await session.request('update', '/ping')).status).to.equal(200);
      const first = session.ephemeral!.uri;
      // Behind the session's back: the record goes from the store (and the KMS's cache).
      await kms.deps.state.deleteEphemeral(first.split('/').pop()!);
      expect(await kms.deps.state.ephemeral(first.split('/').pop()!)).to.equal(undefined);
      const orig = kms.engine.handle.bind(kms.engine);
      kms.engine.handle = async (m: string) => {
        calls.push(1);
        return orig(m);
      };
      try {
        const res = await session.request('update', '/ping');
        expect(res.status).to.equal(200);
        const second = session.ephemeral!.uri;
        expect(second).to.not.equal(first);
        expect(calls).to.have.length(3); // the refused request, the handshake, the retried request
        // A batch after the next loss: every request is answered.
        await kms.deps.state.deleteEphemeral(second.split('/').pop()!);
        const batch = await session.batch([
          { method: 'update', uri: '/ping' },
          { method: 'get', uri: `/entity-keys/alice@example.com` },
          { method: 'get', uri: '/nope' },
        ]);
        expect(batch.map((r) => r.status)).to.deep.equal([200, 200, 404]);
        expect(session.ephemeral!.uri).to.not.equal(second);
        // An expiry the client did not see coming (the KMS's clock is ahead) is recovered the same way.
        const third = session.ephemeral!.uri;
        const exp = Date.parse(session.ephemeral!.expirationDate);
        offsetMs = exp - Date.now() + 1000;
        const late = await session.request('update', '/ping');
        expect(late.status).to.equal(200);
        expect(session.ephemeral!.uri).to.not.equal(third);
      } finally {
        offsetMs = 0;
        kms.engine.handle = orig;
      }
    });
  });
}
