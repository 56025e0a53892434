import { expect } from 'chai';
import { createHmac } from 'node:crypto';
import { jwtVerify, SignJWT, UnsecuredJWT, generateKeyPair } from 'jose';
import { Authenticator } from '../../src/engine/credentials.js';
import { LocalIssuer } from '../../src/auth/local-issuer.js';
import { KmsError } from '../../src/protocol/errors.js';

const ISS = 'https://idp.example.com';
const AUD = 'kms://kms.example.com';
const b64u = (s: string | Buffer) => Buffer.from(s).toString('base64url');

describe('Authenticator: bearer tokens, cross-checked against jose.jwtVerify', () => {
  let issuer: LocalIssuer;
  let auth: Authenticator;
  // Taken when these tests start, not when the file loads: tokens are minted on the real clock,
  // and in the whole suite minutes of other tests run in between.
  let now: Date;
  let sec: number;

  before(async () => {
    now = new Date();
    sec = Math.floor(now.getTime() / 1000);
    issuer = await LocalIssuer.ephemeral(ISS);
    auth = new Authenticator({
      bearer: { keys: issuer.keys(), issuer: ISS, audience: AUD, algorithms: ['ES256', 'PS256', 'RS256'], userClaim: 'sub', clockToleranceSec: 30 },
      serviceAnchors: [],
    });
  });

  async function cases(): Promise<[string, string][]> {
    const good = await issuer.mint({ subject: 'Alice@Example.com/phone', audience: AUD });
    const [h, p, s] = good.split('.') as [string, string, string];
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
    const other = await generateKeyPair('ES256');
    const pubJwk = JSON.stringify(issuer.jwks.keys[0]);
    const hsHeader = b64u(JSON.stringify({ alg: 'HS256', kid: issuer.jwks.keys[0]!.kid }));
    const hsInput = `${hsHeader}.${p}`;
    return [
      ['a good token', good],
      ['an expired token', await issuer.mint({ subject: 'alice@example.com', audience: AUD, ttlSec: -120 })],
      ['a token for another audience', await issuer.mint({ subject: 'alice@example.com', audience: 'kms://other.example.com' })],
      ['a token with an audience list including ours', await issuer.mint({ subject: 'alice@example.com', audience: ['kms://x', AUD] })],
      ['a token with an audience list without ours', await issuer.mint({ subject: 'alice@example.com', audience: ['kms://x', 'kms://y'] })],
      [
        'a token without sub',
        await new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).setIssuer(ISS).setAudience(AUD).setExpirationTime('1h').sign(other.privateKey),
      ],
      ['a token not yet valid', await issuer.mint({ subject: 'alice@example.com', audience: AUD, claims: { nbf: sec + 600 } })],
      [
        'a token from another issuer',
        await new SignJWT({ sub: 'alice@example.com' })
          .setProtectedHeader({ alg: 'ES256', kid: issuer.jwks.keys[0]!.kid! })
          .setIssuer('https://evil.example.com')
          .setAudience(AUD)
          .setExpirationTime('1h')
          .sign(other.privateKey),
      ],
      ['an unsigned token (alg none)', new UnsecuredJWT({ sub: 'alice@example.com' }).setIssuer(ISS).setAudience(AUD).setExpirationTime('1h').encode()],
      ['HS256 keyed with the public key', `${hsInput}.${b64u(createHmac('sha256', pubJwk).update(hsInput).digest())}`],
      ['a tampered payload', `${h}.${b64u(JSON.stringify({ ...payload, sub: 'mallory@example.com' }))}.${s}`],
      ['a tampered signature', `${h}.${p}.${s.slice(0, -4)}AAAA`],
      ['garbage', 'not.a.token'],
    ];
  }

  it('accepts and refuses exactly the tokens jose accepts and refuses, with a reason', async () => {
    let accepted = 0;
    for (const [name, token] of await cases()) {
      let joseOk = true;
      try {
        await jwtVerify(token, issuer.keys(), {
          issuer: ISS,
          audience: AUD,
          algorithms: ['ES256', 'PS256', 'RS256'],
          clockTolerance: 30,
          currentDate: now,
          requiredClaims: ['exp', 'sub'],
        });
      } catch {
        joseOk = false;
      }
      let ours: string | KmsError;
      try {
        ours = (await auth.authenticate({ bearer: token }, now)).id;
      } catch (e) {
        ours = e as KmsError;
      }
      if (joseOk) {
        expect(ours, name).to.be.a('string');
        accepted++;
      } else {
        expect(ours, name).to.be.instanceOf(KmsError);
        expect((ours as KmsError).status, name).to.equal(401);
        expect((ours as KmsError).reason, name).to.match(/^bearer token rejected: .+/);
      }
    }
    expect(accepted).to.equal(2); // the good token and the audience list with ours
  });

  it('names the user by the configured claim, as a bare lower-case JID', async () => {
    const token = await issuer.mint({ subject: 'Alice@Example.com/phone', audience: AUD });
    expect((await auth.authenticate({ bearer: token }, now)).id).to.equal('alice@example.com');
  });

  it('says why a token is refused', async () => {
    const expired = await issuer.mint({ subject: 'alice@example.com', audience: AUD, ttlSec: -120 });
    const wrongAud = await issuer.mint({ subject: 'alice@example.com', audience: 'kms://other' });
    await auth.authenticate({ bearer: expired }, now).then(
      () => expect.fail(),
      (e) => expect(e.reason).to.match(/exp.*expired/),
    );
    await auth.authenticate({ bearer: wrongAud }, now).then(
      () => expect.fail(),
      (e) => expect(e.reason).to.match(/aud/),
    );
  });
});

describe('Authenticator: jwk credentials of trusted services (x5c to a trust anchor)', () => {
  it('accepts a key certified by a trusted CA as the service named by the certificate, and refuses the rest', async () => {
    const { X509Certificate, createPublicKey } = await import('node:crypto');
    const { createDevIdentity, x5cOf } = await import('../../src/crypto/x509.js');
    const { publicJwk } = await import('../../src/crypto/keys.js');
    const peer = await createDevIdentity({ domain: 'peer.example.com', keyType: 'EC' });
    const stranger = await createDevIdentity({ domain: 'peer.example.com', keyType: 'EC' });
    const issuer = await LocalIssuer.ephemeral(ISS);
    const auth = new Authenticator({
      bearer: { keys: issuer.keys(), issuer: ISS, audience: AUD, algorithms: ['ES256'], userClaim: 'sub', clockToleranceSec: 30 },
      serviceAnchors: [new X509Certificate(peer.caCertPem)],
    });
    const jwk = { ...publicJwk(createPublicKey(peer.privateKey)), x5c: x5cOf(peer.chainPem) } as Record<string, unknown> & { x5c: string[] };
    const p = await auth.authenticate({ jwk }, new Date());
    expect(p).to.include({ id: 'kms://peer.example.com', kind: 'service' });

    const reject = async (cred: Record<string, unknown> & { x5c: string[] }, reason: RegExp) => {
      const e = await auth.authenticate({ jwk: cred }, new Date()).then(
        () => undefined,
        (err: KmsError) => err,
      );
      expect(e, String(reason)).to.be.instanceOf(KmsError);
      expect(e!.status).to.equal(401);
      expect(e!.reason).to.match(reason);
    };
    // A chain to a CA this KMS does not trust.
    await reject({ ...publicJwk(createPublicKey(stranger.privateKey)), x5c: x5cOf(stranger.chainPem) }, /trust anchor/);
    // A trusted certificate presented with another key.
    await reject({ ...publicJwk(createPublicKey(stranger.privateKey)), x5c: x5cOf(peer.chainPem) }, /not the certificate's key/);
    // Without anchors, no service credential is accepted at all.
    const closed = new Authenticator({
      bearer: { keys: issuer.keys(), issuer: ISS, audience: AUD, algorithms: ['ES256'], userClaim: 'sub', clockToleranceSec: 30 },
      serviceAnchors: [],
    });
    const e = await closed.authenticate({ jwk }, new Date()).then(
      () => undefined,
      (err: KmsError) => err,
    );
    expect(e?.reason).to.match(/not accepted/);
  });
});
