/**
 * Hostile input: every bad message goes through `engine.handle`, and each test checks the status,
 * a meaningful reason, the form of the answer (a JWS by the static key when there is no usable
 * channel, a JWE under the channel key otherwise), and that the store is unchanged byte for byte.
 */
import { expect } from 'chai';
import { createECDH, createPublicKey, randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { KmsFixture, type TestUser, add, remove, payloadOf, AUDIENCE, DOMAIN, ISSUER } from '../support/kms-fixture.js';
import { encryptDir, decryptDir, encryptJwe, readJweHeader } from '../../src/crypto/jwe.js';
import { signCompact, verifyCompact } from '../../src/crypto/jws.js';
import { deriveChannelKey } from '../../src/crypto/channel.js';
import { importPublicJwk } from '../../src/crypto/keys.js';
import { encode as b64u } from '../../src/crypto/base64url.js';
import { LocalIssuer } from '../../src/auth/local-issuer.js';
import { blockHash } from '../support/node-client.js';
import { generateEntityKey, openGk, registrationProof, type EntityKey } from '../support/node-client.js';
import { KMS_ERRORS } from '../../src/protocol/errors.js';

// ---- a raw channel: what a client does, by hand, so that every byte can be chosen ----

interface Reply {
  form: 'signed' | 'encrypted';
  body: Record<string, unknown> & { status?: number; reason?: string; requestId?: unknown };
  raw: string;
}

/** Opens a KMS answer: a JWS must verify with the static key (kid kms://<domain>); a JWE needs the channel key. */
function openReply(kms: KmsFixture, raw: string, key?: Buffer): Reply {
  expect(raw, 'the engine answered with a string').to.be.a('string');
  const parts = raw.split('.').length;
  if (parts === 3) {
    const { header, payload } = verifyCompact(raw, kms.identity.publicKey, [kms.identity.sigAlg]);
    expect(header.kid).to.equal(`kms://${DOMAIN}`);
    return coded({ form: 'signed', body: JSON.parse(payload.toString('utf8')), raw });
  }
  expect(parts, 'a compact JWE').to.equal(5);
  if (!key) throw new Error(`an encrypted answer where none was expected: kid ${String(readJweHeader(raw).kid)}`);
  const { plaintext } = decryptDir(raw, key, ['A256GCM']);
  return coded({ form: 'encrypted', body: JSON.parse(plaintext.toString('utf8')), raw });
}

/** XEP "KMS Error Codes": every error answer carries a code of the registry, with that code's status. */
function coded(r: Reply): Reply {
  const { status, code } = r.body as { status?: number; code?: unknown };
  if (typeof status === 'number' && status >= 400) {
    expect(Object.keys(KMS_ERRORS), JSON.stringify(r.body)).to.include(code);
    expect(KMS_ERRORS[code as keyof typeof KMS_ERRORS].status, JSON.stringify(r.body)).to.equal(status);
  }
  return r;
}

/** A handshake message to the static key with any payload. */
function toStaticKey(kms: KmsFixture, payload: unknown): string {
  const rsa = kms.identity.keyType === 'RSA';
  return encryptJwe(kms.identity.publicKey, JSON.stringify(payload), { alg: rsa ? 'RSA-OAEP' : 'ECDH-ES', enc: 'A256GCM', kid: kms.identity.kid });
}

/** A fresh client ECDH key and its public JWK. */
function clientEcdh() {
  const ecdh = createECDH('prime256v1');
  const point = ecdh.generateKeys();
  return { ecdh, jwk: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)) } as Record<string, unknown> };
}

class RawChannel {
  constructor(
    readonly kms: KmsFixture,
    readonly uri: string,
    readonly key: Buffer,
    readonly token: string,
    readonly clientId: string,
    readonly handshake: Reply,
  ) {}

  /** create /ecdhe by hand; `jwkExtra` is merged into the client's public JWK. */
  static async open(kms: KmsFixture, token: string, o: { clientId?: string; jwkExtra?: Record<string, unknown> } = {}): Promise<RawChannel> {
    const clientId = o.clientId ?? `raw-${randomUUID()}`;
    const { ecdh, jwk } = clientEcdh();
    const msg = toStaticKey(kms, {
      client: { clientId, credential: { bearer: token } },
      method: 'create',
      uri: '/ecdhe',
      requestId: randomUUID(),
      jwk: { ...jwk, ...(o.jwkExtra ?? {}) },
    });
    const reply = openReply(kms, await kms.engine.handle(msg));
    expect(reply.body.status, String(reply.body.reason)).to.equal(201);
    const key = reply.body.key as { uri: string; jwk: unknown };
    const ch = new RawChannel(kms, key.uri, deriveChannelKey(ecdh, importPublicJwk(key.jwk)), token, clientId, reply);
    knownSecrets.ephemeral.add(ch.key.toString('hex'));
    return ch;
  }

  client(token = this.token, clientId = this.clientId) {
    return { clientId, credential: { bearer: token } };
  }

  seal(payload: unknown): string {
    return encryptDir(this.key, JSON.stringify(payload), { enc: 'A256GCM', kid: this.uri });
  }

  /** A well-formed request payload. */
  payload(method: string, uri: string, body: Record<string, unknown> = {}): Record<string, unknown> {
    return { client: this.client(), method, uri, requestId: randomUUID(), ...body };
  }

  async send(message: string): Promise<Reply> {
    return openReply(this.kms, await this.kms.engine.handle(message), this.key);
  }

  async request(method: string, uri: string, body: Record<string, unknown> = {}): Promise<Reply> {
    return this.send(this.seal(this.payload(method, uri, body)));
  }

  async ok(method: string, uri: string, body: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const r = await this.request(method, uri, body);
    expect(r.form).to.equal('encrypted');
    expect(r.body.status, String(r.body.reason)).to.be.within(200, 299);
    return r.body;
  }
}

/** Secrets that must never appear in a response, as hex. */
const knownSecrets = { gk: new Set<string>(), ephemeral: new Set<string>() };

interface Want {
  status: number;
  reason: RegExp;
  form: 'signed' | 'encrypted';
}

/** Sends `message`, checks the refusal and that the store did not change. */
async function refused(kms: KmsFixture, message: string | unknown, want: Want, key?: Buffer): Promise<Reply> {
  const before = await kms.digest();
  const raw = await kms.engine.handle(message as string);
  const reply = openReply(kms, raw, key);
  expect(reply.form, `${reply.body.status} ${reply.body.reason}`).to.equal(want.form);
  expect(reply.body.status, String(reply.body.reason)).to.equal(want.status);
  expect(reply.body.reason).to.be.a('string').and.match(want.reason);
  expect(await kms.digest(), 'the store changed').to.equal(before);
  return reply;
}

/** The same, for a request on a raw channel. */
async function refusedOn(ch: RawChannel, payload: Record<string, unknown>, status: number, reason: RegExp): Promise<Reply> {
  return refused(ch.kms, ch.seal(payload), { status, reason, form: 'encrypted' }, ch.key);
}

/** Flips one bit of one part of a compact serialization, keeping the encoding canonical. */
function tamper(token: string, part: number): string {
  const parts = token.split('.');
  const bytes = Buffer.from(parts[part]!, 'base64url');
  expect(bytes.length).to.be.greaterThan(0);
  bytes[0]! ^= 0x01;
  parts[part] = b64u(bytes);
  return parts.join('.');
}

const b64json = (v: unknown) => b64u(JSON.stringify(v));
const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
const MALLORY = 'mallory@example.com';
const CAROL = 'carol@example.com';

describe('engine: hostile input', function () {
  this.timeout(60_000);
  let kms: KmsFixture;
  let offsetMs = 0;
  const responses: string[] = [];
  const plaintexts: string[] = [];
  let alice: TestUser, bob: TestUser, mallory: TestUser;
  let aliceCh: RawChannel, bobCh: RawChannel, malloryCh: RawChannel;
  let genesis: string, b1: string, chainUri: string;
  let unboundGk: string, boundGk: string;
  /** The chain's tail, kept up to date by the tests that append. */
  let tail: string;

  const trackGk = (jws: string, who: EntityKey) => {
    knownSecrets.gk.add(openGk(jws, kms.identity.publicKey, who).key.toString('hex'));
    return payloadOf(jws).uri as string;
  };

  before(async () => {
    kms = await KmsFixture.create({
      clock: () => new Date(Date.now() + offsetMs),
      config: { limits: { maxBlocksPerAppend: 4, maxOperationsPerBlock: 8 } },
    });
    // Record every answer, and the plaintext of every encrypted one whose key is still on record.
    const handle = kms.engine.handle.bind(kms.engine);
    kms.engine.handle = async (message: string) => {
      const kid = (() => {
        try {
          return readJweHeader(message).kid;
        } catch {
          return undefined;
        }
      })();
      const id = typeof kid === 'string' ? kid.split('/').pop()! : '';
      const eph = /^[0-9a-f-]{36}$/.test(id) ? await kms.deps.state.ephemeral(id) : undefined;
      const key = eph ? kms.deps.sealer.open(eph.key, `ecdhe:${eph.id}`) : undefined;
      const out = await handle(message);
      responses.push(out);
      if (key) knownSecrets.ephemeral.add(key.toString('hex'));
      if (key && out.split('.').length === 5) plaintexts.push(decryptDir(out, key, ['A256GCM']).plaintext.toString('utf8'));
      if (out.split('.').length === 3) plaintexts.push(Buffer.from(out.split('.')[1]!, 'base64url').toString('utf8'));
      return out;
    };

    alice = await kms.user(ALICE);
    bob = await kms.user(BOB);
    mallory = await kms.user(MALLORY);
    for (const u of [alice, bob, mallory]) expect((await u.register()).status).to.equal(201);
    ({ block: genesis, uri: chainUri } = await alice.genesis([add(ALICE)]));
    b1 = alice.block(blockHash(genesis), [add(BOB)]);
    await alice.append(chainUri, [b1]);
    tail = blockHash(b1);
    unboundGk = trackGk(await alice.createGk(), alice.key);
    boundGk = trackGk(await alice.createGk(tail), alice.key);
    trackGk(await bob.getGk(boundGk), bob.key);
    aliceCh = await RawChannel.open(kms, alice.token);
    bobCh = await RawChannel.open(kms, bob.token);
    malloryCh = await RawChannel.open(kms, mallory.token);
  });
  after(() => kms.close());

  describe('malformed JOSE (answered by a JWS from the static key)', () => {
    const signed400 = (reason: RegExp): Want => ({ status: 400, reason, form: 'signed' });

    it('refuses the wrong number of parts', async () => {
      const good = aliceCh.seal(aliceCh.payload('update', '/ping'));
      const parts = good.split('.');
      for (const m of ['a.b.c', parts.slice(0, 4).join('.'), [...parts, parts[4]].join('.'), parts.join('..'), '', 'x']) {
        await refused(kms, m, signed400(/not a compact JWE/));
      }
    });

    it('refuses bad base64url in any part', async () => {
      const parts = aliceCh.seal(aliceCh.payload('update', '/ping')).split('.');
      for (const i of [0, 2, 3, 4]) {
        for (const bad of [`${parts[i]}=`, `${parts[i]!.slice(0, -1)}+`, `${parts[i]!.slice(0, 2)} ${parts[i]!.slice(2)}`, '*']) {
          const p = [...parts];
          p[i] = bad;
          await refused(kms, p.join('.'), signed400(/not a compact JWE/));
        }
      }
    });

    it('refuses a header that is not a JSON object with string alg and enc', async () => {
      const rest = aliceCh.seal(aliceCh.payload('update', '/ping')).split('.').slice(1).join('.');
      for (const h of [
        b64u('{not json'),
        b64u('[1,2]'),
        b64u('"dir"'),
        b64json({ enc: 'A256GCM', kid: aliceCh.uri }),
        b64json({ alg: 'dir', kid: aliceCh.uri }),
        b64json({ alg: 5, enc: 'A256GCM' }),
        b64u(Buffer.from([0xff, 0xfe, 0x7b, 0x7d])),
      ]) {
        await refused(kms, `${h}.${rest}`, signed400(/not a compact JWE/));
      }
    });

    it('refuses a message that is not a string', async () => {
      for (const m of [undefined, null, 42, {}, ['a.b.c.d.e'], Buffer.from('a.b.c.d.e')]) {
        await refused(kms, m, signed400(/must be a string/));
      }
    });
  });

  describe('alg none and algorithm confusion', () => {
    it('refuses a JWS with alg none as a message', async () => {
      const m = `${b64json({ alg: 'none' })}.${b64json(aliceCh.payload('update', '/ping'))}.`;
      await refused(kms, m, { status: 400, reason: /not a compact JWE/, form: 'signed' });
    });

    it('refuses a JWE with alg none, with or without a channel kid', async () => {
      const body = b64u(JSON.stringify(aliceCh.payload('update', '/ping')));
      const none = (h: unknown) => `${b64json(h)}..${b64u(Buffer.alloc(12))}.${body}.${b64u(Buffer.alloc(16))}`;
      for (const h of [
        { alg: 'none', enc: 'A256GCM' },
        { alg: 'none', enc: 'A256GCM', kid: kms.identity.kid },
        { alg: 'none', enc: 'none' },
      ]) {
        await refused(kms, none(h), { status: 400, reason: /handshake alg none is not accepted/, form: 'signed' });
      }
      // A message under an ephemeral key must be dir; any other alg there is a 400 that says so.
      await refused(kms, none({ alg: 'none', enc: 'A256GCM', kid: aliceCh.uri }), {
        status: 400,
        reason: /a message under an ephemeral key uses alg dir/,
        form: 'signed',
      });
    });

    it('refuses dir with enc none, and dir with an encrypted key, under a real channel', async () => {
      const good = aliceCh.seal(aliceCh.payload('update', '/ping')).split('.');
      const noneEnc = [b64json({ alg: 'dir', enc: 'none', kid: aliceCh.uri }), '', good[2], good[3], good[4]].join('.');
      await refused(kms, noneEnc, { status: 400, reason: /uses enc A256GCM, not none/, form: 'encrypted' }, aliceCh.key);
      const withKey = [good[0], b64u(Buffer.alloc(40, 1)), good[2], good[3], good[4]].join('.');
      await refused(kms, withKey, { status: 400, reason: /could not be decrypted under its ephemeral key/, form: 'encrypted' }, aliceCh.key);
    });

    it('refuses a handshake under a key management alg the static key does not take', async () => {
      const { jwk } = clientEcdh();
      const payload = { client: aliceCh.client(), method: 'create', uri: '/ecdhe', requestId: randomUUID(), jwk };
      // A dir JWE "to the static key" is not a handshake: it names no ephemeral key.
      const m = encryptDir(Buffer.alloc(32, 7), JSON.stringify(payload), { enc: 'A256GCM', kid: kms.identity.kid });
      await refused(kms, m, { status: 401, reason: /unknown ephemeral key/, form: 'signed' });
      const rsaOaep = `${b64json({ alg: 'RSA-OAEP', enc: 'A256GCM', kid: kms.identity.kid })}.${b64u(Buffer.alloc(256, 1))}.${b64u(Buffer.alloc(12))}.${b64u('x')}.${b64u(Buffer.alloc(16))}`;
      await refused(kms, rsaOaep, { status: 400, reason: /handshake alg RSA-OAEP is not accepted/, form: 'signed' });
      const other = toStaticKey(kms, payload).split('.');
      other[0] = b64json({ ...JSON.parse(Buffer.from(other[0]!, 'base64url').toString()), kid: 'kms://other.example.net' });
      await refused(kms, other.join('.'), { status: 400, reason: /addressed to kms:\/\/other\.example\.net/, form: 'signed' });
    });

    it("refuses a bearer JWT signed HS256 with the issuer's public key as the secret", async () => {
      const pub = createPublicKey({ key: kms.issuer.jwks.keys[0]! as never, format: 'jwk' });
      const secrets = [
        Buffer.from(pub.export({ type: 'spki', format: 'pem' }) as string),
        pub.export({ type: 'spki', format: 'der' }),
        Buffer.from(JSON.stringify(kms.issuer.jwks.keys[0])),
      ];
      const now = Math.floor(Date.now() / 1000);
      for (const secret of secrets) {
        const token = await new SignJWT({ sub: ALICE })
          .setProtectedHeader({ alg: 'HS256', kid: kms.issuer.jwks.keys[0]!.kid! })
          .setIssuer(ISSUER)
          .setAudience(AUDIENCE)
          .setIssuedAt(now)
          .setExpirationTime(now + 600)
          .sign(new Uint8Array(secret));
        const { jwk } = clientEcdh();
        await refused(
          kms,
          toStaticKey(kms, { client: { clientId: 'c', credential: { bearer: token } }, method: 'create', uri: '/ecdhe', requestId: randomUUID(), jwk }),
          {
            status: 401,
            reason: /bearer token rejected: algorithm not allowed/,
            form: 'signed',
          },
        );
        await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(token) }, 401, /bearer token rejected: algorithm not allowed/);
      }
    });
  });

  describe('tampering and unknown, expired or deleted ephemeral keys', () => {
    it('refuses tampered ciphertext, tag, IV and protected header on a channel (encrypted 400)', async () => {
      const good = aliceCh.seal(aliceCh.payload('update', '/ping'));
      for (const part of [3, 4, 2]) {
        await refused(kms, tamper(good, part), { status: 400, reason: /could not be decrypted/, form: 'encrypted' }, aliceCh.key);
      }
      const p = good.split('.');
      p[0] = b64json({ alg: 'dir', enc: 'A256GCM', kid: aliceCh.uri, x: 1 });
      await refused(kms, p.join('.'), { status: 400, reason: /could not be decrypted/, form: 'encrypted' }, aliceCh.key);
      // The untampered message still works: the failure was the tampering.
      expect((await aliceCh.send(good)).body.status).to.equal(200);
    });

    it('refuses a tampered handshake (signed 400)', async () => {
      const { jwk } = clientEcdh();
      const good = toStaticKey(kms, { client: aliceCh.client(), method: 'create', uri: '/ecdhe', requestId: randomUUID(), jwk });
      for (const part of [3, 4, 2]) {
        await refused(kms, tamper(good, part), { status: 400, reason: /could not be decrypted with the KMS static key/, form: 'signed' });
      }
    });

    it('refuses an unknown or missing kid (signed 401)', async () => {
      const key = Buffer.alloc(32, 3);
      const body = JSON.stringify(aliceCh.payload('update', '/ping'));
      for (const kid of [
        `/ecdhe/${randomUUID()}`,
        `kms://${DOMAIN}/ecdhe/${randomUUID()}`,
        '/ecdhe/../../e!x',
        aliceCh.uri.slice(0, -1),
        `${aliceCh.uri}0`,
        '',
        'x'.repeat(5000),
      ]) {
        await refused(kms, encryptDir(key, body, { enc: 'A256GCM', kid }), { status: 401, reason: /unknown ephemeral key/, form: 'signed' });
      }
      await refused(kms, encryptDir(key, body, { enc: 'A256GCM' }), { status: 401, reason: /names no ephemeral key/, form: 'signed' });
      // Another user's channel URI with the wrong key: the key, not the kid, is what counts.
      await refused(
        kms,
        encryptDir(key, body, { enc: 'A256GCM', kid: bobCh.uri }),
        { status: 400, reason: /could not be decrypted/, form: 'encrypted' },
        bobCh.key,
      );
    });

    it('refuses a request under an expired ephemeral key (signed 401), and the key works again when time is back', async () => {
      const ch = await RawChannel.open(kms, alice.token);
      const exp = Date.parse((ch.handshake.body.key as { expirationDate: string }).expirationDate);
      const msg = ch.seal({ ...ch.payload('update', '/ping'), requestId: 'late-1' });
      offsetMs = exp - Date.now() + 1;
      try {
        // The KMS still holds the expired key, so it reads the request and echoes its requestId.
        const r = await refused(kms, msg, { status: 401, reason: /ephemeral key \/ecdhe\/[0-9a-f-]{36} expired/, form: 'signed' });
        expect(r.body.requestId).to.equal('late-1');
        // Garbage under the expired key: still a signed 401, with no requestId to echo.
        const r2 = await refused(kms, tamper(msg, 3), { status: 401, reason: /expired/, form: 'signed' });
        expect(r2.body).to.not.have.property('requestId');
      } finally {
        offsetMs = 0;
      }
      expect((await ch.send(msg)).body.status).to.equal(200);
    });

    it('refuses a request under a deleted ephemeral key (signed 401)', async () => {
      const ch = await RawChannel.open(kms, alice.token);
      const del = await ch.request('delete', ch.uri);
      expect(del.form).to.equal('encrypted');
      expect(del.body.status).to.equal(204);
      // A deleted key is gone: the KMS cannot read the request, so the signed 401 has no requestId.
      const r = await refused(kms, ch.seal(ch.payload('update', '/ping')), { status: 401, reason: /unknown ephemeral key/, form: 'signed' });
      expect(r.body).to.not.have.property('requestId');
      await refused(kms, ch.seal(ch.payload('delete', ch.uri)), { status: 401, reason: /unknown ephemeral key/, form: 'signed' });
    });

    it('refuses a live channel named by its absolute URI (signed 401 that says how to write the kid)', async () => {
      const body = JSON.stringify(aliceCh.payload('update', '/ping'));
      const absolute = `kms://${DOMAIN}${aliceCh.uri}`;
      await refused(kms, encryptDir(aliceCh.key, body, { enc: 'A256GCM', kid: absolute }), {
        status: 401,
        reason: /exactly as the handshake returned it/,
        form: 'signed',
      });
      // Under the relative URI the same request works, and the reply carries the kid it was sent under.
      const ok = await aliceCh.send(encryptDir(aliceCh.key, body, { enc: 'A256GCM', kid: aliceCh.uri }));
      expect(ok.body.status).to.equal(200);
      expect(JSON.parse(Buffer.from(ok.raw.split('.')[0]!, 'base64url').toString()).kid).to.equal(aliceCh.uri);
    });

    it("refuses deleting another channel's ephemeral key (404), which keeps working", async () => {
      await refusedOn(malloryCh, malloryCh.payload('delete', aliceCh.uri), 404, /only the ephemeral key of this channel/);
      expect((await aliceCh.request('update', '/ping')).body.status).to.equal(200);
    });
  });

  describe('credentials', () => {
    const handshakeWith = (token: string, clientId = 'c') =>
      toStaticKey(kms, {
        client: { clientId, credential: { bearer: token } },
        method: 'create',
        uri: '/ecdhe',
        requestId: randomUUID(),
        jwk: clientEcdh().jwk,
      });

    it('refuses an expired token at the handshake (signed) and on a channel (encrypted)', async () => {
      const token = await kms.issuer.mint({ subject: ALICE, audience: AUDIENCE, ttlSec: -3600 });
      await refused(kms, handshakeWith(token), { status: 401, reason: /bearer token rejected: .*expired/, form: 'signed' });
      await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(token) }, 401, /bearer token rejected: .*expired/);
    });

    it('refuses a token that expires while the channel is open (the KMS clock moves past exp)', async () => {
      const token = await kms.issuer.mint({ subject: ALICE, audience: AUDIENCE, ttlSec: 120 });
      const ch = await RawChannel.open(kms, token);
      expect((await ch.request('update', '/ping')).body.status).to.equal(200); // now cached as valid
      offsetMs = 10 * 60_000;
      try {
        await refusedOn(ch, ch.payload('update', '/ping'), 401, /bearer token rejected: .*expired/);
      } finally {
        offsetMs = 0;
      }
    });

    it('refuses a token for another audience', async () => {
      const token = await kms.issuer.mint({ subject: ALICE, audience: 'kms://other.example.net' });
      await refused(kms, handshakeWith(token), { status: 401, reason: /bearer token rejected: claim aud/, form: 'signed' });
      await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(token) }, 401, /claim aud/);
    });

    it('refuses a token from another issuer (its name, or its key)', async () => {
      // The right key under the wrong name: a KMS that trusts this issuer's key but expects ISSUER.
      const evil = await LocalIssuer.ephemeral('https://evil.example.net');
      const other = await KmsFixture.create({ issuer: evil });
      try {
        const token = await evil.mint({ subject: ALICE, audience: AUDIENCE });
        await refused(
          other,
          toStaticKey(other, {
            client: { clientId: 'c', credential: { bearer: token } },
            method: 'create',
            uri: '/ecdhe',
            requestId: randomUUID(),
            jwk: clientEcdh().jwk,
          }),
          {
            status: 401,
            reason: /bearer token rejected: claim iss/,
            form: 'signed',
          },
        );
      } finally {
        await other.close();
      }
      // The right name under the wrong key.
      const impostor = await LocalIssuer.ephemeral(ISSUER);
      const token = await impostor.mint({ subject: ALICE, audience: AUDIENCE });
      await refused(kms, handshakeWith(token), { status: 401, reason: /bearer token rejected: (signed by an unknown key|bad signature)/, form: 'signed' });
      await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(token) }, 401, /bearer token rejected/);
    });

    it('refuses an unsigned token (alg none) and garbage tokens', async () => {
      const now = Math.floor(Date.now() / 1000);
      const claims = { sub: ALICE, iss: ISSUER, aud: AUDIENCE, iat: now, exp: now + 600 };
      const unsigned = `${b64json({ alg: 'none', typ: 'JWT' })}.${b64json(claims)}.`;
      await refused(kms, handshakeWith(unsigned), {
        status: 401,
        reason: /bearer token rejected: (algorithm not allowed|malformed token|unsupported)/,
        form: 'signed',
      });
      await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(unsigned) }, 401, /bearer token rejected/);
      // alice's real header and payload, signature stripped.
      const stripped = `${alice.token.split('.').slice(0, 2).join('.')}.`;
      await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(stripped) }, 401, /bearer token rejected/);
      for (const t of ['x', 'a.b.c', `${b64json({ alg: 'ES256' })}.${b64json(claims)}.${b64u(Buffer.alloc(64))}`]) {
        await refusedOn(aliceCh, { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(t) }, 401, /bearer token rejected/);
      }
    });

    it('refuses a token without the user claim, or whose user is not an address', async () => {
      for (const subject of [
        '',
        'not-an-address',
        'kms://kms.example.com',
        `${ALICE}\u0000mallory`,
        `alice\u0000@example.com`,
        `${ALICE}\u202e`,
        'alice @example.com',
      ]) {
        const token = await kms.issuer.mint({ subject, audience: AUDIENCE });
        await refused(kms, handshakeWith(token), { status: 401, reason: /bearer token rejected: claim sub is not a user address/, form: 'signed' });
      }
    });

    it("canonicalises the token's user claim: any harmless spelling of alice is alice", async () => {
      for (const subject of [`acct:${ALICE}`, 'Alice@Example.COM', `${ALICE}/laptop`]) {
        const token = await kms.issuer.mint({ subject, audience: AUDIENCE });
        const r = await kms.engine.handle(handshakeWith(token));
        const reply = openReply(kms, r);
        expect(reply.body.status, subject).to.equal(201);
        expect((reply.body.key as { userId: string }).userId).to.equal(ALICE);
      }
    });

    it("refuses another user's valid token, or another clientId, on a channel", async () => {
      await refusedOn(
        aliceCh,
        { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(bob.token) },
        401,
        /not the one this ephemeral key was made for/,
      );
      await refusedOn(
        aliceCh,
        { ...aliceCh.payload('update', '/ping'), client: aliceCh.client(alice.token, 'another-client') },
        401,
        /not the one this ephemeral key was made for/,
      );
      // Bob cannot act as Alice by writing on her channel with his token and a chain write.
      await refusedOn(
        aliceCh,
        { ...aliceCh.payload('post', `kms://${DOMAIN}/blocks`, { blockPayload: { operations: [add(BOB)] } }), client: aliceCh.client(bob.token) },
        401,
        /not the one/,
      );
    });
  });

  describe('missing, mistyped and oversized fields', () => {
    it('refuses missing basic fields and a bad requestId type (no requestId echoed)', async () => {
      const base = aliceCh.payload('update', '/ping');
      const cases: [Record<string, unknown>, RegExp][] = [
        [{ ...base, client: undefined }, /invalid request: client/],
        [{ ...base, method: undefined }, /invalid request: method/],
        [{ ...base, uri: undefined }, /invalid request: uri/],
        [{ ...base, requestId: true }, /invalid request: requestId/],
        [{ ...base, requestId: { id: 1 } }, /invalid request: requestId/],
        [{ ...base, requestId: 'r'.repeat(300) }, /invalid request: requestId/],
        [{ ...base, client: { credential: { bearer: alice.token } } }, /invalid request: client\.clientId/],
        [{ ...base, requestId: undefined }, /invalid request: requestId/],
        [{ ...base, requestId: '' }, /invalid request: requestId/],
        [{ ...base, requestId: Number.NaN }, /invalid request: requestId/],
        [
          { ...base, client: { clientId: aliceCh.clientId, credential: { bearer: alice.token, jwk: { kty: 'EC', x5c: ['x'] } } } },
          /invalid request: client\.credential/,
        ],
        [{ ...base, client: { clientId: aliceCh.clientId, credential: {} } }, /invalid request: client\.credential/],
      ];
      for (const [p, reason] of cases) {
        const r = await refusedOn(aliceCh, JSON.parse(JSON.stringify(p)), 400, reason);
        if (typeof p.requestId !== 'string' || p.requestId.length > 256 || p.requestId.length === 0) expect(r.body).to.not.have.property('requestId');
        else expect(r.body.requestId).to.equal(p.requestId);
      }
      // A missing credential is a 401 (XEP "Failure Responses"), a malformed one a 400.
      const noCredential = await refusedOn(aliceCh, { ...base, client: { clientId: aliceCh.clientId } }, 401, /client\.credential is missing/);
      expect(noCredential.body.requestId).to.equal(base.requestId);
      for (const text of ['not json', '[]', '"x"', 'null', '5']) {
        await refused(
          kms,
          encryptDir(aliceCh.key, text, { enc: 'A256GCM', kid: aliceCh.uri }),
          { status: 400, reason: /not JSON|invalid request/, form: 'encrypted' },
          aliceCh.key,
        );
      }
    });

    it('refuses mistyped fields at the handshake (signed)', async () => {
      const base = { client: aliceCh.client(), method: 'create', uri: '/ecdhe', requestId: 'hs-1' };
      const cases: [Record<string, unknown>, number, RegExp][] = [
        [{ ...base }, 400, /jwk: the client's ephemeral public key is required/],
        [{ ...base, jwk: 'x' }, 400, /jwk/],
        [{ ...base, jwk: { kty: 'EC', crv: 'P-384', x: 'x', y: 'y' } }, 400, /must be EC P-256/],
        [{ ...base, jwk: { kty: 'RSA', n: 'x', e: 'AQAB' } }, 400, /must be EC P-256/],
        [{ ...base, jwk: { kty: 'EC', crv: 'P-256', x: b64u(Buffer.alloc(32, 1)), y: b64u(Buffer.alloc(32, 2)) } }, 400, /jwk: .*(curve|point)/],
        [{ ...base, jwk: clientEcdh().jwk, uri: '/ping' }, 400, /must create an ephemeral key/],
        [{ ...base, jwk: clientEcdh().jwk, method: 'delete' }, 405, /accepts create, not delete/],
        [{ ...base, jwk: clientEcdh().jwk, method: undefined }, 400, /invalid request: method/],
      ];
      for (const [p, status, reason] of cases) {
        const r = await refused(kms, toStaticKey(kms, JSON.parse(JSON.stringify(p))), { status, reason, form: 'signed' });
        expect(r.body.requestId).to.equal('hs-1');
      }
    });

    it('refuses mistyped operation bodies', async () => {
      const blocks = `${chainUri}`;
      const cases: [Record<string, unknown>, RegExp][] = [
        [aliceCh.payload('post', blocks, { blocks: 'x' }), /invalid request: blocks/],
        [aliceCh.payload('post', blocks, { blocks: [5] }), /invalid request: blocks\.0/],
        [aliceCh.payload('post', blocks, { blocks: [] }), /invalid request: blocks/],
        [aliceCh.payload('post', blocks, {}), /invalid request: blocks/],
        [aliceCh.payload('post', `/blocks`, { blockPayload: { operations: {} } }), /invalid request: blockPayload\.operations/],
        [aliceCh.payload('post', `/blocks`, { blockPayload: { operations: 'add bob' } }), /invalid request: blockPayload\.operations/],
        [aliceCh.payload('post', `/blocks`, { blockPayload: 5 }), /invalid request: blockPayload/],
        [
          aliceCh.payload('post', `/blocks`, { blockPayload: { operations: [{ entity: 5, optype: 'add' }] } }),
          /invalid request: blockPayload\.operations\.0\.entity/,
        ],
        [aliceCh.payload('post', `/blocks`, { blockPayload: { operations: [{ entity: BOB, optype: 'promote' }] } }), /optype/],
        [aliceCh.payload('post', `/blocks`, { blockPayload: { operations: [{ entity: 'not an address', optype: 'add' }] } }), /entity must be a user address/],
        [aliceCh.payload('post', `/blocks`, { blockPayload: { operations: [remove(BOB)] } }), /must add at least one member/],
        [aliceCh.payload('post', `/blocks`, { blockPayload: { operations: [add(`kms://${DOMAIN}`)] } }), /must add at least one member/],
        [aliceCh.payload('get', boundGk, { entity: 5 }), /invalid request: entity/],
        [aliceCh.payload('get', boundGk, {}), /invalid request: entity/],
        [aliceCh.payload('get', boundGk, { entity: ALICE, kid: '' }), /kid must not be empty/],
        [aliceCh.payload('post', boundGk, { block: 'zz' }), /invalid request: block/],
        [aliceCh.payload('post', `/gks`, { block: 5 }), /invalid request: block/],
        [aliceCh.payload('get', chainUri, { antecedent: 'nothex' }), /antecedent must be a block hash \(64 lowercase hex digits\)/],
        [aliceCh.payload('get', chainUri, { antecedent: '' }), /antecedent must be a block hash/],
        [aliceCh.payload('get', chainUri, { antecedent: '0x0' }), /antecedent must be a block hash/],
        [aliceCh.payload('get', chainUri, { antecedent: tail.toUpperCase() }), /antecedent must be written in lowercase hex/],
        [aliceCh.payload('post', '/entity-keys', { jwk: 'x', proof: 'y' }), /invalid request: jwk/],
        [aliceCh.payload('get', '/entity-keys/not-an-address'), /uri entity must be a user address/],
      ];
      for (const [p, reason] of cases) await refusedOn(aliceCh, p, 400, reason);
      // Appended blocks whose payload is mistyped.
      const signed = (payload: unknown) => signCompact(alice.key.privateKey, alice.key.alg, JSON.stringify(payload), { kid: alice.key.kid });
      const blk = { antecedent: tail, creator: ALICE, created: new Date().toISOString(), operations: [add(CAROL)] };
      const bad: [unknown, RegExp][] = [
        [{ ...blk, operations: 'x' }, /blocks\[0\].*|operations/],
        [{ ...blk, operations: [{ entity: 7, optype: 'add' }] }, /operations\.0\.entity/],
        [{ ...blk, creator: 42 }, /creator/],
        [{ ...blk, created: 'yesterday' }, /created/],
        [{ ...blk, antecedent: 12 }, /antecedent/],
        [[blk], /blocks\[0\]: \(payload\)/],
        [null, /blocks\[0\]: \(payload\)/],
        [{ ...blk, antecedent: tail.toUpperCase() }, /blocks\[0\]: antecedent: must be a block hash in lowercase hex/],
        [{ ...blk, creator: ALICE.toUpperCase() }, /blocks\[0\]: creator: must be a canonical entity/],
        [{ ...blk, creator: `${ALICE}/laptop` }, /blocks\[0\]: creator: must be a canonical entity/],
        [{ ...blk, operations: [add(`acct:${CAROL}`)] }, /blocks\[0\]: operations\.0\.entity: must be a canonical entity/],
        [{ ...blk, operations: [add('Carol@Example.COM/phone')] }, /blocks\[0\]: operations\.0\.entity: must be a canonical entity/],
      ];
      for (const [payload, reason] of bad) await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [signed(payload)] }), 400, reason);
      const notJson = signCompact(alice.key.privateKey, alice.key.alg, 'not json', { kid: alice.key.kid });
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [notJson] }), 400, /blocks\[0\]: the payload is not JSON/);
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: ['a.b'] }), 400, /blocks\[0\]: not a compact JWS/);
    });

    it('refuses a message over maxMessageBytes (signed 413) before decrypting it', async () => {
      const max = kms.deps.config.limits.maxMessageBytes;
      const big = aliceCh.seal({ ...aliceCh.payload('update', '/ping'), padding: 'x'.repeat(max) });
      expect(Buffer.byteLength(big)).to.be.greaterThan(max);
      await refused(kms, big, { status: 413, reason: new RegExp(`exceeds ${max} bytes`), form: 'signed' });
      // Multi-byte characters count as bytes, not as UTF-16 units.
      const wide = 'é'.repeat(Math.ceil(max / 2) + 1);
      expect(wide.length).to.be.lessThan(max);
      await refused(kms, wide, { status: 413, reason: /exceeds/, form: 'signed' });
    });

    it('refuses too many blocks and too many operations (encrypted 413)', async () => {
      const five = Array.from({ length: 5 }, (_, i) => alice.block(tail, [add(`u${i}@example.com`)]));
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: five }), 413, /more than 4 blocks/);
      const nine = Array.from({ length: 9 }, (_, i) => add(`u${i}@example.com`));
      await refusedOn(aliceCh, aliceCh.payload('post', '/blocks', { blockPayload: { operations: nine } }), 413, /more than 8 operations/);
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [alice.block(tail, nine)] }), 413, /blocks\[0\]: more than 8 operations/);
    });
  });

  describe('routing', () => {
    it('refuses unknown URIs (404), including names inherited by plain objects', async () => {
      for (const uri of [
        '/nope',
        '/blocks/a/b',
        `kms://${DOMAIN}`,
        '/',
        '/constructor',
        '/__proto__',
        '/toString',
        '/hasOwnProperty',
        '/constructor/x',
        '/valueOf/x',
      ]) {
        await refusedOn(aliceCh, aliceCh.payload('get', uri), 404, /no such resource/);
      }
      await refusedOn(aliceCh, aliceCh.payload('get', `/blocks/${randomUUID()}`), 404, /no chain/);
      await refusedOn(aliceCh, aliceCh.payload('get', `/gks/${randomUUID()}`, { entity: ALICE }), 404, /no group key/);
      await refusedOn(aliceCh, aliceCh.payload('get', '/blocks/__proto__'), 404, /no chain/);
      await refusedOn(aliceCh, aliceCh.payload('get', '/gks/constructor', { entity: ALICE }), 404, /no group key/);
      for (const uri of ['blocks', 'http://kms.example.com/blocks', '/blocks/%zz', '/blocks/a b']) {
        await refusedOn(aliceCh, aliceCh.payload('get', uri), 400, /uri/);
      }
    });

    it('refuses an unknown method (400) and a method a URI does not take (405)', async () => {
      for (const method of ['patch', 'POST', '', 'constructor']) {
        await refusedOn(aliceCh, aliceCh.payload(method, '/ping'), 400, /invalid request: method/);
      }
      await refusedOn(aliceCh, aliceCh.payload('delete', '/blocks'), 405, /does not accept delete/);
      await refusedOn(aliceCh, aliceCh.payload('delete', chainUri), 405, /does not accept delete/);
      await refusedOn(aliceCh, aliceCh.payload('delete', boundGk), 405, /does not accept delete/);
      await refusedOn(aliceCh, aliceCh.payload('get', '/ecdhe'), 405, /handshake to the static key/);
      await refusedOn(aliceCh, aliceCh.payload('create', '/ecdhe', { jwk: clientEcdh().jwk }), 405, /handshake to the static key/);
      await refusedOn(aliceCh, aliceCh.payload('post', '/ping'), 405, /does not accept post/);
    });
  });

  describe('chains', () => {
    it('refuses a stale or wrong antecedent (409)', async () => {
      for (const antecedent of [blockHash(genesis), '0'.repeat(64), tail.replace(/^./, (c) => (c === 'a' ? 'b' : 'a'))]) {
        await refusedOn(
          aliceCh,
          aliceCh.payload('post', chainUri, { blocks: [alice.block(antecedent, [add(CAROL)])] }),
          409,
          /antecedent is not the hash of the chain's last block/,
        );
      }
      // Replaying the block already at the tail.
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [b1] }), 409, /antecedent/);
    });

    it('refuses a non-member requester and a non-member signer (403)', async () => {
      await refusedOn(
        malloryCh,
        malloryCh.payload('post', chainUri, { blocks: [mallory.block(tail, [add(MALLORY)])] }),
        403,
        /mallory@example\.com is not a member of/,
      );
      await refusedOn(
        aliceCh,
        aliceCh.payload('post', chainUri, { blocks: [mallory.block(tail, [add(MALLORY)])] }),
        403,
        /blocks\[0\]: mallory@example\.com is not a member before this block/,
      );
      await refusedOn(malloryCh, malloryCh.payload('get', chainUri), 403, /may not read/);
    });

    it("refuses a block whose signature is not by the creator's registered key (403)", async () => {
      const payload = JSON.stringify({ antecedent: tail, creator: ALICE, created: new Date().toISOString(), operations: [add(MALLORY)] });
      const forged = [
        signCompact(mallory.key.privateKey, mallory.key.alg, payload, { kid: alice.key.kid }), // alice's kid, mallory's key
        signCompact(generateEntityKey({ type: 'EC' }).privateKey, 'ES256', payload, { kid: alice.key.kid }),
        `${b64json({ alg: 'none', kid: alice.key.kid })}.${b64u(payload)}.`,
        `${b64json({ alg: 'HS256', kid: alice.key.kid })}.${b64u(payload)}.${b64u(Buffer.alloc(32))}`,
        tamper(signCompact(alice.key.privateKey, alice.key.alg, payload, { kid: alice.key.kid }), 2),
      ];
      for (const jws of forged) {
        await refusedOn(
          aliceCh,
          aliceCh.payload('post', chainUri, { blocks: [jws] }),
          403,
          /blocks\[0\]: the signature does not verify with alice@example\.com's key/,
        );
      }
      const otherKid = signCompact(mallory.key.privateKey, mallory.key.alg, payload, { kid: mallory.key.kid });
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [otherKid] }), 403, /alice@example\.com has no registered key with kid/);
      // A block without kid cannot be verified by the XEP's rule: refused with 400, even when alice signed it.
      for (const signer of [mallory.key, alice.key]) {
        const noKid = signCompact(signer.privateKey, signer.alg, payload);
        await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [noKid] }), 400, /blocks\[0\]: the JWS header must carry kid/);
      }
      // The same payload signed by alice herself is fine: the refusals were about the signature.
      const genuine = signCompact(alice.key.privateKey, alice.key.alg, payload, { kid: alice.key.kid });
      expect(payloadOf(genuine).creator).to.equal(ALICE);
    });

    it('refuses a request without requestId, a state-changing append included, and changes nothing (400)', async () => {
      const before = await kms.digest();
      const requests = [
        aliceCh.payload('post', chainUri, { blocks: [alice.block(tail, [add(CAROL)])] }),
        aliceCh.payload('post', '/blocks', { blockPayload: { operations: [add(ALICE)] } }),
        aliceCh.payload('post', '/gks', {}),
      ];
      for (const p of requests) {
        delete (p as { requestId?: unknown }).requestId;
        const r = await refusedOn(aliceCh, p, 400, /invalid request: requestId/);
        expect(r.body).to.not.have.property('requestId');
      }
      expect(await kms.digest()).to.equal(before);
    });

    it('refuses a block that removes the curator (403); any other spelling of it is not an entity (400)', async () => {
      const curator = `kms://${DOMAIN}`;
      await refusedOn(
        aliceCh,
        aliceCh.payload('post', chainUri, { blocks: [alice.block(tail, [add(CAROL), remove(curator)])] }),
        403,
        /blocks\[0\]: operation 1 removes the curator/,
      );
      await refusedOn(
        aliceCh,
        aliceCh.payload('post', '/blocks', { blockPayload: { operations: [add(ALICE), remove(curator)] } }),
        403,
        /blockPayload: operation 1 removes the curator/,
      );
      const shouted = `KMS://${DOMAIN.toUpperCase()}`;
      await refusedOn(
        aliceCh,
        aliceCh.payload('post', chainUri, { blocks: [alice.block(tail, [add(CAROL), remove(shouted)])] }),
        400,
        /operations\.1\.entity: must be a canonical entity/,
      );
      await refusedOn(
        aliceCh,
        aliceCh.payload('post', '/blocks', { blockPayload: { operations: [add(ALICE), remove(shouted)] } }),
        400,
        /operations\[1\]\.entity must be a user address/,
      );
    });

    it('applies an append all or nothing: block 2 of 3 bad, or block 3 of 3 bad, leaves the chain as it was', async () => {
      const before = (await aliceCh.ok('get', chainUri)).blocks as string[];
      const good1 = alice.block(tail, [add(CAROL)]);
      const badSig = signCompact(
        mallory.key.privateKey,
        mallory.key.alg,
        JSON.stringify({ antecedent: blockHash(good1), creator: ALICE, created: new Date().toISOString(), operations: [remove(BOB)] }),
        { kid: alice.key.kid },
      );
      const good3 = alice.block(blockHash(badSig), [add(MALLORY)]);
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [good1, badSig, good3] }), 403, /blocks\[1\]: the signature does not verify/);
      const good2 = alice.block(blockHash(good1), [remove(BOB)]);
      const badLink = alice.block(tail, [add(MALLORY)]); // antecedent is not good2's hash
      await refusedOn(
        aliceCh,
        aliceCh.payload('post', chainUri, { blocks: [good1, good2, badLink] }),
        400,
        /blocks\[2\]: antecedent is not the hash of blocks\[1\]/,
      );
      await refusedOn(aliceCh, aliceCh.payload('post', chainUri, { blocks: [good1, good1] }), 400, /blocks\[1\]: antecedent/);
      // Carol, added by the staged first block, is not a member: she cannot read the chain.
      const carol = await kms.user(CAROL);
      const carolCh = await RawChannel.open(kms, carol.token);
      await refusedOn(carolCh, carolCh.payload('get', chainUri), 403, /may not read/);
      expect((await aliceCh.ok('get', chainUri)).blocks).to.deep.equal(before);
      // Bob was not removed by the refused batch: he still gets the bound GK.
      expect((await bobCh.ok('get', boundGk, { entity: BOB })).gk).to.be.a('string');
      // And the good blocks alone go through.
      expect((await aliceCh.ok('post', chainUri, { blocks: [good1, good2] })).status).to.equal(200);
      tail = blockHash(good2);
      expect((await aliceCh.ok('get', chainUri)).blocks).to.deep.equal([...before, good1, good2]);
      // Put Bob back for the tests that follow.
      const back = alice.block(tail, [add(BOB)]);
      await aliceCh.ok('post', chainUri, { blocks: [back] });
      tail = blockHash(back);
    });
  });

  describe('group keys', () => {
    it("refuses binding someone else's unbound GK (403) and reading it before it is bound (409 NOT_BOUND)", async () => {
      await refusedOn(bobCh, bobCh.payload('post', unboundGk, { block: blockHash(b1) }), 403, /only the owner may bind/);
      await refusedOn(bobCh, bobCh.payload('get', unboundGk, { entity: BOB }), 409, /is not bound to a block yet/);
      await refusedOn(malloryCh, malloryCh.payload('get', unboundGk, { entity: MALLORY }), 409, /is not bound to a block yet/);
    });

    it('refuses binding to a block where the owner is not a member, or that does not exist', async () => {
      const { block: other } = await bob.genesis([add(BOB)]);
      await refusedOn(aliceCh, aliceCh.payload('post', unboundGk, { block: blockHash(other) }), 403, /alice@example\.com is not a member at block/);
      await refusedOn(aliceCh, aliceCh.payload('post', unboundGk, { block: 'f'.repeat(64) }), 404, /no block/);
      await refusedOn(aliceCh, aliceCh.payload('post', '/gks', { block: blockHash(other) }), 403, /not a member at block/);
    });

    it('refuses creating a GK for a user with no registered key (404, nothing stored)', async () => {
      const dave = await kms.user('dave@example.com');
      const ch = await RawChannel.open(kms, dave.token);
      await refusedOn(ch, ch.payload('post', '/gks'), 404, /dave@example\.com has no registered entity key/);
      await refusedOn(aliceCh, aliceCh.payload('post', '/gks', { kid: 'no-such-kid' }), 404, /has no key no-such-kid/);
    });

    it('refuses rebinding a bound GK to another block (409); the same block again is an idempotent 200', async () => {
      const bound = payloadOf(await alice.getGk(boundGk)).block as string;
      await refusedOn(aliceCh, aliceCh.payload('post', boundGk, { block: blockHash(genesis) }), 409, /already bound to another block/);
      // A hash has one spelling, lowercase hex: the same block in upper case is a 400 and changes nothing.
      await refusedOn(aliceCh, aliceCh.payload('post', boundGk, { block: bound.toUpperCase() }), 400, /lowercase/);
      for (const block of [bound, bound]) {
        const before = await kms.digest();
        const r = await aliceCh.request('post', boundGk, { block });
        expect(r.body.status).to.equal(200);
        const gk = r.body.gk as string;
        expect(payloadOf(gk).block).to.equal(bound);
        trackGk(gk, alice.key);
        expect(await kms.digest()).to.equal(before);
      }
    });

    it('refuses a GK to a non-member (403) and for another entity (403)', async () => {
      await refusedOn(malloryCh, malloryCh.payload('get', boundGk, { entity: MALLORY }), 403, /mallory@example\.com may not have .* under retrieval policy 1/);
      await refusedOn(bobCh, bobCh.payload('get', boundGk, { entity: ALICE }), 403, /bob@example\.com may not fetch keys for alice@example\.com/);
      // Any spelling but the canonical one is a 400 that names it (XEP "Entities and Hashes").
      await refusedOn(malloryCh, malloryCh.payload('get', boundGk, { entity: `acct:${BOB}` }), 400, /entity must be written canonically: "bob@example\.com"/);
      await refusedOn(malloryCh, malloryCh.payload('get', unboundGk, { entity: ALICE }), 403, /may not fetch keys for alice@example\.com/);
    });
  });

  describe('entity key registration', () => {
    it('refuses a bad proof of possession: other key, other channel, other entity, stale or future iat (403)', async () => {
      const dave = generateEntityKey();
      const other = generateEntityKey();
      const eveTok = await kms.issuer.mint({ subject: 'eve@example.com', audience: AUDIENCE });
      const ch = await RawChannel.open(kms, eveTok);
      const now = Date.now();
      const cases: [string, RegExp][] = [
        [registrationProof(other, 'eve@example.com', ch.uri, now), /proof: not a valid signature by the key being registered/],
        [registrationProof(dave, 'eve@example.com', aliceCh.uri, now), /proof: signed for another channel/],
        [registrationProof(dave, 'eve@example.com', `kms://${DOMAIN}${ch.uri}x`, now), /proof: signed for another channel/],
        [registrationProof(dave, ALICE, ch.uri, now), /proof: signed for another entity/],
        [registrationProof(dave, 'eve@example.com', ch.uri, now - 3600_000), /proof: iat is not fresh/],
        [registrationProof(dave, 'eve@example.com', ch.uri, now + 3600_000), /proof: iat is not fresh/],
        [
          `${b64json({ alg: 'none' })}.${b64json({ entity: 'eve@example.com', ephemeralKey: ch.uri, iat: Math.floor(now / 1000) })}.`,
          /proof: not a valid signature/,
        ],
      ];
      for (const [proof, reason] of cases) {
        await refusedOn(ch, ch.payload('post', '/entity-keys', { jwk: dave.publicJwk, proof }), 403, reason);
      }
      // A malformed proof is a 400 (XEP "Entity Keys"): not a JWS, not JSON, claims missing or mistyped.
      const iat = Math.floor(now / 1000);
      const signedBy = (payload: string) => signCompact(dave.privateKey, 'PS256', payload);
      const malformed: [string, RegExp][] = [
        ['x', /proof: not a compact JWS/],
        ['a.b', /proof: not a compact JWS/],
        [signedBy('not json'), /proof: the payload is not JSON/],
        [signedBy(JSON.stringify({ entity: 'eve@example.com', ephemeralKey: ch.uri })), /invalid request: iat/],
        [signedBy(JSON.stringify({ entity: 'eve@example.com', ephemeralKey: ch.uri, iat: 'now' })), /invalid request: iat/],
        [signedBy(JSON.stringify({ entity: 'Eve@Example.com', ephemeralKey: ch.uri, iat })), /proof\.entity must be written canonically/],
      ];
      for (const [proof, reason] of malformed) {
        await refusedOn(ch, ch.payload('post', '/entity-keys', { jwk: dave.publicJwk, proof }), 400, reason);
      }
      // A JWK with private members is refused, never registered by its public part; a bad key is a 400.
      const before = await kms.digest();
      for (const jwk of [
        { kty: 'oct', k: 'AAAA' },
        { ...dave.publicJwk, d: 'AAAA' },
        { ...dave.publicJwk, p: 'AAAA', q: 'AAAA' },
      ]) {
        await refusedOn(
          ch,
          ch.payload('post', '/entity-keys', { jwk, proof: registrationProof(dave, 'eve@example.com', ch.uri) }),
          400,
          /jwk: carries private key members/,
        );
      }
      expect(await kms.digest()).to.equal(before);
      // The proof signed right goes through (the refusals were about the proof).
      const ok = await ch.request('post', '/entity-keys', { jwk: dave.publicJwk, proof: registrationProof(dave, 'eve@example.com', ch.uri) });
      expect(ok.body.status).to.equal(201);
    });

    it("keeps an entity's keys apart from an entity whose address extends it", async () => {
      // A fresh KMS, so that no cached key list hides what the store returns.
      const f = await KmsFixture.create();
      try {
        // A user whose address is Alice's followed by '!x' registers a key first...
        const twin = await f.user('alice@example.com!x');
        expect((await twin.register()).status).to.equal(201);
        const a = await f.user(ALICE);
        expect((await a.register()).status).to.equal(201);
        // ...which must never count as one of Alice's keys.
        const list = (await a.session.request('get', `/entity-keys/${ALICE}`)).entityKeys as { kid: string; entity: string }[];
        expect(list.map((e) => e.kid)).to.deep.equal([a.key.kid]);
        const { block: g, uri } = await a.genesis([add(ALICE)]);
        const forged = signCompact(
          twin.key.privateKey,
          twin.key.alg,
          JSON.stringify({ antecedent: blockHash(g), creator: ALICE, created: new Date().toISOString(), operations: [add('mallory@example.com')] }),
          { kid: twin.key.kid },
        );
        const before = await f.digest();
        const [res] = await a.session.batch([{ method: 'post', uri, body: { blocks: [forged] } }]);
        expect(res!.status, String(res!.reason)).to.equal(403);
        expect(res!.reason).to.match(/alice@example\.com has no registered key with kid/);
        expect(await f.digest()).to.equal(before);
        // A GK for Alice is wrapped to her own key.
        openGk(await a.createGk(), f.identity.publicKey, a.key);
      } finally {
        await f.close();
      }
    });
  });

  describe("the client's handshake JWK", () => {
    it('refuses private members in the handshake jwk (400): nothing stored, the private value never echoed', async () => {
      const { ecdh, jwk } = clientEcdh();
      const stray = createECDH('prime256v1');
      stray.generateKeys();
      for (const [member, value] of [
        ['d', b64u(ecdh.getPrivateKey())],
        ['d', b64u(stray.getPrivateKey())],
        ['k', b64u(Buffer.alloc(32, 9))],
      ] as const) {
        const before = await kms.digest();
        const msg = toStaticKey(kms, { client: aliceCh.client(), method: 'create', uri: '/ecdhe', requestId: 'd-test', jwk: { ...jwk, [member]: value } });
        const raw = await kms.engine.handle(msg);
        const reply = openReply(kms, raw);
        expect(reply.form).to.equal('signed');
        expect(reply.body.status).to.equal(400);
        expect(reply.body.reason).to.match(new RegExp(`jwk: carries private key members \\(${member}\\)`));
        expect(reply.body.requestId).to.equal('d-test');
        expect(raw).to.not.include(value);
        expect(JSON.stringify(reply.body)).to.not.include(value);
        expect(await kms.digest()).to.equal(before);
      }
    });
  });

  describe('leaks', () => {
    it('never sends a GK key or an ephemeral key in clear, in any answer or decrypted payload', () => {
      expect(knownSecrets.gk.size).to.be.greaterThan(1);
      expect(knownSecrets.ephemeral.size).to.be.greaterThan(5);
      expect(responses.length).to.be.greaterThan(100);
      expect(plaintexts.length).to.be.greaterThan(100);
      const forms = (hex: string) => {
        const b = Buffer.from(hex, 'hex');
        return [b64u(b), b.toString('base64'), hex, hex.toUpperCase(), b.toString('latin1')];
      };
      const find = (texts: string[], secrets: Set<string>) => {
        const hits: string[] = [];
        for (const s of secrets) for (const f of forms(s)) for (const t of texts) if (t.includes(f)) hits.push(f);
        return hits;
      };
      // The detector works: a planted secret is found.
      const [someGk] = knownSecrets.gk;
      expect(find([`{"k":"${b64u(Buffer.from(someGk!, 'hex'))}"}`], knownSecrets.gk)).to.have.length(1);
      expect(find(responses, knownSecrets.gk), 'a GK key in an answer').to.deep.equal([]);
      expect(find(plaintexts, knownSecrets.gk), 'a GK key in a decrypted answer').to.deep.equal([]);
      expect(find(responses, knownSecrets.ephemeral), 'an ephemeral key in an answer').to.deep.equal([]);
      expect(find(plaintexts, knownSecrets.ephemeral), 'an ephemeral key in a decrypted answer').to.deep.equal([]);
    });
  });
});
