import { expect } from 'chai';
import { createHmac, sign as nodeSign, type JsonWebKey, type KeyObject } from 'node:crypto';
import * as jose from 'jose';
import { decodeCompactJws, signCompact, verifyCompact, type JwsAlg } from '../../src/crypto/jws.js';
import { generateEcKeyPair, importPrivateJwk, importPublicJwk, publicJwk } from '../../src/crypto/keys.js';
import { expectJoseError, vector } from '../support/jose-assert.js';

const b64 = (b: Uint8Array | string) => Buffer.from(b).toString('base64url');
const unb64 = (s: string) => Buffer.from(s, 'base64url');

function bareJwk(jwk: JsonWebKey): jose.JWK {
  const { kid: _k, use: _u, alg: _a, ...rest } = jwk;
  return rest as jose.JWK;
}

/** A compact JWS with an arbitrary header and signature bytes. */
function forge(header: unknown, payload: string, signature: Uint8Array = Buffer.alloc(0)): string {
  return `${b64(JSON.stringify(header))}.${b64(payload)}.${b64(signature)}`;
}

const RSA_PRIVATE_JWK: JsonWebKey = vector('4_1').input.key;
const RSA_PRIVATE = importPrivateJwk(RSA_PRIVATE_JWK);
const RSA_PUBLIC = importPublicJwk(RSA_PRIVATE_JWK);

describe('crypto/jws', () => {
  describe('RFC 7520 vectors', () => {
    it('4.1 RS256: exact reproduction, and the given output verifies', () => {
      const v = vector('4_1');
      const out = signCompact(RSA_PRIVATE, 'RS256', v.input.payload, { kid: v.input.key.kid });
      expect(out).to.equal(v.output.compact);
      const { header, payload } = verifyCompact(v.output.compact, RSA_PUBLIC, ['RS256']);
      expect(header).to.deep.equal(v.signing.protected);
      expect(payload.toString('utf8')).to.equal(v.input.payload);
    });

    for (const [section, alg] of [
      ['4_2', 'PS384'],
      ['4_3', 'ES512'],
    ] as const) {
      it(`${section.replace('_', '.')} ${alg}: the given output verifies; our signature verifies with us and with jose`, async () => {
        const v = vector(section);
        const pub = importPublicJwk(v.input.key);
        expect(verifyCompact(v.output.compact, pub, [alg]).payload.toString('utf8')).to.equal(v.input.payload);
        const ours = signCompact(importPrivateJwk(v.input.key), alg, v.input.payload, { kid: v.input.key.kid });
        expect(ours.split('.')[0]).to.equal(v.signing.protected_b64u);
        expect(verifyCompact(ours, pub, [alg]).payload.toString('utf8')).to.equal(v.input.payload);
        const joseKey = await jose.importJWK(bareJwk(publicJwk(pub)), alg);
        const verified = await jose.compactVerify(ours, joseKey, { algorithms: [alg] });
        expect(new TextDecoder().decode(verified.payload)).to.equal(v.input.payload);
      });
    }
  });

  describe('cross-checks with jose, both directions', () => {
    const payload = JSON.stringify({ creator: 'alice@example.com', n: 1 });
    const cases: Array<[JwsAlg, () => { priv: KeyObject; pub: KeyObject; privJwk: JsonWebKey }]> = [
      [
        'ES256',
        () => {
          const pair = generateEcKeyPair('P-256');
          return { priv: pair.privateKey, pub: pair.publicKey, privJwk: pair.privateKey.export({ format: 'jwk' }) };
        },
      ],
      ['PS256', () => ({ priv: RSA_PRIVATE, pub: RSA_PUBLIC, privJwk: RSA_PRIVATE_JWK })],
      ['RS256', () => ({ priv: RSA_PRIVATE, pub: RSA_PUBLIC, privJwk: RSA_PRIVATE_JWK })],
    ];
    for (const [alg, make] of cases) {
      it(alg, async () => {
        const { priv, pub, privJwk } = make();
        const ours = signCompact(priv, alg, payload, { kid: 'k' });
        const josePub = await jose.importJWK(bareJwk(publicJwk(pub)), alg);
        const verified = await jose.compactVerify(ours, josePub, { algorithms: [alg] });
        expect(new TextDecoder().decode(verified.payload)).to.equal(payload);
        expect(verified.protectedHeader).to.deep.equal({ alg, kid: 'k' });

        const josePriv = await jose.importJWK(bareJwk(privJwk), alg);
        const fromJose = await new jose.CompactSign(new TextEncoder().encode(payload)).setProtectedHeader({ alg, kid: 'j' }).sign(josePriv);
        const back = verifyCompact(fromJose, pub, [alg]);
        expect(back.payload.toString()).to.equal(payload);
        expect(back.header.kid).to.equal('j');
      });
    }

    it('all ES and PS/RS algorithms round-trip', () => {
      const ec: Array<[JwsAlg, 'P-256' | 'P-384' | 'P-521']> = [
        ['ES256', 'P-256'],
        ['ES384', 'P-384'],
        ['ES512', 'P-521'],
      ];
      for (const [alg, curve] of ec) {
        const pair = generateEcKeyPair(curve);
        expect(verifyCompact(signCompact(pair.privateKey, alg, 'p'), pair.publicKey, [alg]).payload.toString()).to.equal('p');
      }
      for (const alg of ['PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512'] as const) {
        expect(verifyCompact(signCompact(RSA_PRIVATE, alg, 'p'), RSA_PUBLIC, [alg]).payload.toString()).to.equal('p');
      }
    });
  });

  describe('decodeCompactJws', () => {
    it('parses without verifying, giving the signing input', () => {
      const v = vector('4_3');
      const d = decodeCompactJws(v.output.compact);
      expect(d.header).to.deep.equal(v.signing.protected);
      expect(d.payload.toString('utf8')).to.equal(v.input.payload);
      expect(d.signingInput).to.equal(v.signing['sig-input']);
      expect(d.signature.equals(unb64(v.signing.sig))).to.equal(true);
      // Also for a token whose signature is garbage: decoding is not verifying.
      expect(decodeCompactJws(forge({ alg: 'ES256' }, 'x', Buffer.alloc(3))).payload.toString()).to.equal('x');
    });

    const good = signCompact(RSA_PRIVATE, 'RS256', 'x');
    const [h, p, s] = good.split('.') as [string, string, string];
    const bad: Array<[string, string]> = [
      ['2 parts', `${h}.${p}`],
      ['4 parts', `${good}.AA`],
      ['5 parts (a JWE)', `${good}.AA.AA`],
      ['a "+" in the signature', `${h}.${p}.${s.slice(0, -4)}ab+c`],
      ['padding in the payload', `${h}.${p}==.${s}`],
      ['a header that is not JSON', `${b64('{"alg":')}.${p}.${s}`],
      ['a header that is a JSON array', `${b64('["RS256"]')}.${p}.${s}`],
      ['a header without alg', `${b64('{"kid":"a"}')}.${p}.${s}`],
      ['a "crit" header', `${b64('{"alg":"RS256","crit":["exp"],"exp":1}')}.${p}.${s}`],
      ['"b64": false', `${b64('{"alg":"RS256","b64":false,"crit":["b64"]}')}.x.${s}`],
      ['"b64": false without crit', `${b64('{"alg":"RS256","b64":false}')}.${p}.${s}`],
      ['a non-string kid', `${b64('{"alg":"RS256","kid":1}')}.${p}.${s}`],
    ];
    for (const [label, token] of bad) {
      it(`rejects ${label} with JOSE_MALFORMED (and so does verifyCompact)`, () => {
        expectJoseError(() => decodeCompactJws(token), 'JOSE_MALFORMED');
        expectJoseError(() => verifyCompact(token, RSA_PUBLIC, ['RS256']), 'JOSE_MALFORMED');
      });
    }
  });

  describe('hostile input to verifyCompact', () => {
    const ec = generateEcKeyPair('P-256');
    const allAsym: JwsAlg[] = ['ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512'];

    it('alg "none" is refused even if a caller lists it', () => {
      const token = forge({ alg: 'none' }, 'x');
      expectJoseError(() => verifyCompact(token, ec.publicKey, allAsym), 'JOSE_ALG_NOT_ALLOWED');
      expectJoseError(() => verifyCompact(token, ec.publicKey, ['none' as JwsAlg]), 'JOSE_ALG_NOT_ALLOWED');
    });

    it('HS256 with the public key bytes as the HMAC secret is refused (key confusion)', () => {
      for (const pub of [ec.publicKey, RSA_PUBLIC]) {
        for (const secret of [pub.export({ format: 'pem', type: 'spki' }), JSON.stringify(publicJwk(pub))]) {
          const input = `${b64(JSON.stringify({ alg: 'HS256' }))}.${b64('{"admin":true}')}`;
          const token = `${input}.${b64(createHmac('sha256', secret).update(input).digest())}`;
          expectJoseError(() => verifyCompact(token, pub, allAsym), 'JOSE_ALG_NOT_ALLOWED');
          expectJoseError(() => verifyCompact(token, pub, ['HS256' as JwsAlg]), 'JOSE_ALG_NOT_ALLOWED');
        }
      }
    });

    it('an alg outside the allow-list is refused', () => {
      const token = signCompact(ec.privateKey, 'ES256', 'x');
      expectJoseError(() => verifyCompact(token, ec.publicKey, ['ES384', 'RS256']), 'JOSE_ALG_NOT_ALLOWED');
      expectJoseError(() => verifyCompact(token, ec.publicKey, []), 'JOSE_ALG_NOT_ALLOWED');
    });

    it('an alg that does not fit the key type or curve is refused', () => {
      const rs = signCompact(RSA_PRIVATE, 'RS256', 'x');
      expectJoseError(() => verifyCompact(rs, ec.publicKey, allAsym), 'JOSE_ALG_NOT_ALLOWED');
      const es = signCompact(ec.privateKey, 'ES256', 'x');
      expectJoseError(() => verifyCompact(es, RSA_PUBLIC, allAsym), 'JOSE_ALG_NOT_ALLOWED');
      // ES384 claimed over a P-256 key.
      const relabelled = `${b64(JSON.stringify({ alg: 'ES384' }))}.${es.split('.').slice(1).join('.')}`;
      expectJoseError(() => verifyCompact(relabelled, ec.publicKey, allAsym), 'JOSE_ALG_NOT_ALLOWED');
    });

    it('a private or secret key is not accepted for verification', () => {
      const es = signCompact(ec.privateKey, 'ES256', 'x');
      expectJoseError(() => verifyCompact(es, ec.privateKey, ['ES256']), 'JOSE_KEY_INVALID');
    });

    it('a DER-encoded ECDSA signature (wrong length) is refused', () => {
      const input = `${b64(JSON.stringify({ alg: 'ES256' }))}.${b64('x')}`;
      const der = nodeSign('sha256', Buffer.from(input), { key: ec.privateKey, dsaEncoding: 'der' });
      expectJoseError(() => verifyCompact(`${input}.${b64(der)}`, ec.publicKey, ['ES256']), 'JOSE_SIGNATURE_INVALID');
      expectJoseError(() => verifyCompact(`${input}.`, ec.publicKey, ['ES256']), 'JOSE_SIGNATURE_INVALID');
      expectJoseError(() => verifyCompact(`${input}.${b64(Buffer.alloc(64))}`, ec.publicKey, ['ES256']), 'JOSE_SIGNATURE_INVALID');
    });

    it('tampered payload, header or signature, or another key -> JOSE_SIGNATURE_INVALID', () => {
      for (const [priv, pub, alg] of [
        [ec.privateKey, ec.publicKey, 'ES256'],
        [RSA_PRIVATE, RSA_PUBLIC, 'PS256'],
        [RSA_PRIVATE, RSA_PUBLIC, 'RS256'],
      ] as Array<[KeyObject, KeyObject, JwsAlg]>) {
        const token = signCompact(priv, alg, '{"n":1}', { kid: 'k' });
        const [h, p, s] = token.split('.') as [string, string, string];
        expectJoseError(() => verifyCompact(`${h}.${b64('{"n":2}')}.${s}`, pub, [alg]), 'JOSE_SIGNATURE_INVALID');
        expectJoseError(() => verifyCompact(`${b64(JSON.stringify({ alg, kid: 'm' }))}.${p}.${s}`, pub, [alg]), 'JOSE_SIGNATURE_INVALID');
        const sig = unb64(s);
        sig[10]! ^= 1;
        expectJoseError(() => verifyCompact(`${h}.${p}.${b64(sig)}`, pub, [alg]), 'JOSE_SIGNATURE_INVALID');
        expectJoseError(() => verifyCompact(`${h}.${p}.${b64(unb64(s).subarray(1))}`, pub, [alg]), 'JOSE_SIGNATURE_INVALID');
      }
      const other = generateEcKeyPair('P-256');
      expectJoseError(() => verifyCompact(signCompact(other.privateKey, 'ES256', 'x'), ec.publicKey, ['ES256']), 'JOSE_SIGNATURE_INVALID');
    });
  });

  describe('signCompact', () => {
    it('puts alg first and keeps the other header members', () => {
      const token = signCompact(RSA_PRIVATE, 'RS256', 'x', { kid: 'k', typ: 'kms' });
      expect(unb64(token.split('.')[0]!).toString()).to.equal('{"alg":"RS256","kid":"k","typ":"kms"}');
    });

    it('refuses a key that does not fit the alg with JOSE_KEY_INVALID', () => {
      const ec = generateEcKeyPair('P-256');
      expectJoseError(() => signCompact(RSA_PRIVATE, 'ES256', 'x'), 'JOSE_KEY_INVALID');
      expectJoseError(() => signCompact(ec.privateKey, 'ES384', 'x'), 'JOSE_KEY_INVALID');
      expectJoseError(() => signCompact(ec.privateKey, 'RS256', 'x'), 'JOSE_KEY_INVALID');
      expectJoseError(() => signCompact(ec.publicKey, 'ES256', 'x'), 'JOSE_KEY_INVALID');
    });

    it('refuses unsupported algs and conflicting or unsupported header members', () => {
      const ec = generateEcKeyPair('P-256');
      expectJoseError(() => signCompact(ec.privateKey, 'HS256' as JwsAlg, 'x'), 'JOSE_ALG_NOT_ALLOWED');
      expectJoseError(() => signCompact(ec.privateKey, 'ES256', 'x', { alg: 'none' }), 'JOSE_MALFORMED');
      expectJoseError(() => signCompact(ec.privateKey, 'ES256', 'x', { crit: ['b64'], b64: false }), 'JOSE_MALFORMED');
      expect(signCompact(ec.privateKey, 'ES256', 'x', { alg: 'ES256' }).split('.')[0]).to.equal(b64('{"alg":"ES256"}'));
    });
  });
});
