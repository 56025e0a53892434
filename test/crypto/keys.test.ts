import { expect } from 'chai';
import { createPrivateKey, sign, verify, type JsonWebKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as jose from 'jose';
import { ecRawPublic, generateEcKeyPair, importPrivateJwk, importPublicJwk, publicJwk, thumbprint, type EcCurve } from '../../src/crypto/keys.js';
import { expectJoseError } from '../support/jose-assert.js';

const VECTORS = new URL('../vectors/rfc7520/', import.meta.url);
const load = (file: string): JsonWebKey => JSON.parse(readFileSync(new URL(file, VECTORS), 'utf8'));
const EC_PUBLIC = load('3_1.ec_public_key.json'); // P-521
const EC_PRIVATE = load('3_2.ec_private_key.json');
const RSA_PUBLIC = load('3_3.rsa_public_key.json'); // 2048 bits
const RSA_PRIVATE = load('3_4.rsa_private_key.json');
const RSA_4096_PRIVATE = JSON.parse(readFileSync(new URL('5_2.key_encryption_using_rsa-oaep_with_aes-gcm.json', VECTORS), 'utf8')).input.key as JsonWebKey;

const b64 = (b: Buffer) => b.toString('base64url');
const unb64 = (s: unknown) => Buffer.from(s as string, 'base64url');

describe('crypto/keys', () => {
  describe('importPublicJwk', () => {
    it('imports the RFC 7520 P-521 and RSA public keys', () => {
      const ec = importPublicJwk(EC_PUBLIC);
      expect(ec.type).to.equal('public');
      expect(ec.asymmetricKeyDetails?.namedCurve).to.equal('secp521r1');
      const rsa = importPublicJwk(RSA_PUBLIC);
      expect(rsa.type).to.equal('public');
      expect(rsa.asymmetricKeyDetails?.modulusLength).to.equal(2048);
    });

    for (const curve of ['P-256', 'P-384', 'P-521'] as const) {
      it(`imports a ${curve} public key`, () => {
        const { publicJwk: jwk } = generateEcKeyPair(curve);
        expect(publicJwk(importPublicJwk(jwk))).to.deep.equal(jwk);
      });
    }

    it('ignores private members: an EC JWK with "d" gives a public key without "d"', () => {
      const key = importPublicJwk(EC_PRIVATE);
      expect(key.type).to.equal('public');
      expect(publicJwk(key)).to.deep.equal({ kty: 'EC', crv: 'P-521', x: EC_PUBLIC.x, y: EC_PUBLIC.y });
      expect(publicJwk(key)).to.not.have.property('d');
    });

    it('ignores private members: an RSA JWK with d/p/q/dp/dq/qi/oth gives a public key', () => {
      const key = importPublicJwk({ ...RSA_PRIVATE, oth: [{ r: 'AQAB' }] });
      expect(key.type).to.equal('public');
      const jwk = publicJwk(key);
      expect(Object.keys(jwk).sort()).to.deep.equal(['e', 'kty', 'n']);
    });

    it('ignores private members even when they are malformed, and ignores "k"', () => {
      const key = importPublicJwk({ ...EC_PUBLIC, d: 12, k: ['x'], p: null });
      expect(key.type).to.equal('public');
    });

    const bad: Array<[string, unknown, RegExp]> = [
      ['a non-object', 'EC', /object/],
      ['an array', [EC_PUBLIC], /object/],
      ['a missing kty', { crv: 'P-256' }, /kty/],
      ['kty oct', { kty: 'oct', k: 'AAAA' }, /kty/],
      ['kty OKP', { kty: 'OKP', crv: 'Ed25519', x: 'AAAA' }, /kty/],
      ['an unsupported curve', { ...EC_PUBLIC, crv: 'secp256k1' }, /crv/],
      ['x of the wrong length', { ...EC_PUBLIC, x: b64(unb64(EC_PUBLIC.x).subarray(1)) }, /66 bytes/],
      ['x that is not base64url', { ...EC_PUBLIC, x: `${EC_PUBLIC.x}==` }, /"x" is not base64url/],
      ['x that is a number', { ...EC_PUBLIC, x: 5 }, /"x" must be a string/],
      ['a point not on the curve', { ...EC_PUBLIC, y: b64(Buffer.from(unb64(EC_PUBLIC.y).map((v, i) => (i === 65 ? v ^ 1 : v)))) }, /not a point on the curve/],
      ['a 1024-bit RSA modulus', { kty: 'RSA', n: b64(unb64(RSA_PUBLIC.n).subarray(0, 128)), e: 'AQAB' }, /at least 2048/],
      ['an RSA modulus with a leading zero', { ...RSA_PUBLIC, n: b64(Buffer.concat([Buffer.of(0), unb64(RSA_PUBLIC.n)])) }, /leading zero/],
      ['an even RSA exponent', { ...RSA_PUBLIC, e: 'AQAC' }, /exponent/],
      ['RSA e = 1', { ...RSA_PUBLIC, e: 'AQ' }, /exponent/],
    ];
    for (const [label, jwk, reason] of bad) {
      it(`rejects ${label} with JOSE_KEY_INVALID and a clear reason`, () => {
        const err = expectJoseError(() => importPublicJwk(jwk), 'JOSE_KEY_INVALID');
        expect(err.message).to.match(reason);
      });
    }
  });

  describe('importPrivateJwk', () => {
    it('imports the RFC 7520 EC and RSA private keys', () => {
      const ec = importPrivateJwk(EC_PRIVATE);
      expect(ec.type).to.equal('private');
      const rsa = importPrivateJwk(RSA_PRIVATE);
      expect(rsa.type).to.equal('private');
      const data = Buffer.from('probe');
      const sig = sign('sha512', data, { key: ec, dsaEncoding: 'ieee-p1363' });
      expect(verify('sha512', data, { key: importPublicJwk(EC_PUBLIC), dsaEncoding: 'ieee-p1363' }, sig)).to.equal(true);
    });

    it('rejects an EC "d" that does not match x/y', () => {
      const other = generateEcKeyPair('P-521').privateKey.export({ format: 'jwk' });
      const err = expectJoseError(() => importPrivateJwk({ ...EC_PRIVATE, d: other.d }), 'JOSE_KEY_INVALID');
      expect(err.message).to.match(/does not match/);
      expect(err.message).to.not.include(other.d as string);
    });

    it('rejects a short EC "d" and a missing "d"', () => {
      expectJoseError(() => importPrivateJwk({ ...EC_PRIVATE, d: b64(unb64(EC_PRIVATE.d).subarray(1)) }), 'JOSE_KEY_INVALID');
      expectJoseError(() => importPrivateJwk(EC_PUBLIC), 'JOSE_KEY_INVALID');
    });

    it('rejects RSA private members that do not work with n/e (sign/verify probe)', () => {
      const { kty: _kty, n: _n, e: _e, ...foreignPrivate } = RSA_4096_PRIVATE;
      const err = expectJoseError(() => importPrivateJwk({ ...RSA_PRIVATE, ...foreignPrivate }), 'JOSE_KEY_INVALID');
      expect(err.message).to.not.include(RSA_4096_PRIVATE.d as string);
      // A wrong public exponent: OpenSSL signs with p/q but the signature does not verify under n/e.
      expectJoseError(() => importPrivateJwk({ ...RSA_PRIVATE, e: 'AQAD' }), 'JOSE_KEY_INVALID');
    });

    it('rejects an RSA JWK without private members, and multi-prime keys', () => {
      expectJoseError(() => importPrivateJwk(RSA_PUBLIC), 'JOSE_KEY_INVALID');
      expectJoseError(() => importPrivateJwk({ ...RSA_PRIVATE, oth: [] }), 'JOSE_KEY_INVALID');
    });
  });

  describe('publicJwk', () => {
    it('gives kty/crv/x/y for EC private and public keys', () => {
      const expected = { kty: 'EC', crv: 'P-521', x: EC_PUBLIC.x, y: EC_PUBLIC.y };
      expect(publicJwk(importPrivateJwk(EC_PRIVATE))).to.deep.equal(expected);
      expect(publicJwk(importPublicJwk(EC_PUBLIC))).to.deep.equal(expected);
    });

    it('gives kty/n/e for RSA private and public keys', () => {
      const expected = { kty: 'RSA', n: RSA_PUBLIC.n, e: RSA_PUBLIC.e };
      expect(publicJwk(importPrivateJwk(RSA_PRIVATE))).to.deep.equal(expected);
      expect(publicJwk(importPublicJwk(RSA_PUBLIC))).to.deep.equal(expected);
    });

    it('returns a copy that callers may modify', () => {
      const key = importPublicJwk(EC_PUBLIC);
      const jwk = publicJwk(key);
      jwk.kid = 'mine';
      expect(publicJwk(key)).to.not.have.property('kid');
    });
  });

  describe('thumbprint', () => {
    it('reproduces the RFC 7638 §3.1 example', () => {
      const jwk = {
        kty: 'RSA',
        n: '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw',
        e: 'AQAB',
        alg: 'RS256',
        kid: '2011-04-29',
      };
      expect(thumbprint(jwk)).to.equal('NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs');
    });

    it('agrees with jose.calculateJwkThumbprint for EC, RSA and oct keys', async () => {
      const jwks: JsonWebKey[] = [EC_PUBLIC, EC_PRIVATE, RSA_PUBLIC, RSA_PRIVATE, generateEcKeyPair().publicJwk, { kty: 'oct', k: 'XctOhJAkA-pD9Lh7ZgW_2A' }];
      for (const jwk of jwks) {
        expect(thumbprint(jwk)).to.equal(await jose.calculateJwkThumbprint(jwk as jose.JWK, 'sha256'));
      }
    });

    it('accepts a KeyObject and ignores non-required members', () => {
      expect(thumbprint(importPrivateJwk(EC_PRIVATE))).to.equal(thumbprint(EC_PUBLIC));
      expect(thumbprint({ ...EC_PUBLIC, kid: 'other', use: 'enc' })).to.equal(thumbprint(EC_PUBLIC));
    });

    it('rejects unsupported or incomplete JWKs', () => {
      expectJoseError(() => thumbprint({ kty: 'OKP', x: 'AA' }), 'JOSE_KEY_INVALID');
      expectJoseError(() => thumbprint({ kty: 'EC', crv: 'P-256', x: 'AA' }), 'JOSE_KEY_INVALID');
    });
  });

  describe('generateEcKeyPair', () => {
    for (const [curve, size, nodeName] of [
      ['P-256', 32, 'prime256v1'],
      ['P-384', 48, 'secp384r1'],
      ['P-521', 66, 'secp521r1'],
    ] as Array<[EcCurve, number, string]>) {
      it(`makes a working ${curve} pair with a public-only JWK`, () => {
        const pair = generateEcKeyPair(curve);
        expect(pair.privateKey.type).to.equal('private');
        expect(pair.publicKey.type).to.equal('public');
        expect(pair.publicKey.asymmetricKeyDetails?.namedCurve).to.equal(nodeName);
        expect(Object.keys(pair.publicJwk).sort()).to.deep.equal(['crv', 'kty', 'x', 'y']);
        expect(unb64(pair.publicJwk.x).length).to.equal(size);
        const data = Buffer.from('probe');
        const sig = sign(null, data, { key: pair.privateKey, dsaEncoding: 'ieee-p1363' });
        expect(verify(null, data, { key: importPublicJwk(pair.publicJwk), dsaEncoding: 'ieee-p1363' }, sig)).to.equal(true);
      });
    }

    it('defaults to P-256', () => {
      expect(generateEcKeyPair().publicJwk.crv).to.equal('P-256');
    });

    it('pads "d" to full length when the scalar has leading zero octets (P-521: half the time)', () => {
      let padded = 0;
      for (let i = 0; i < 40; i++) {
        const pair = generateEcKeyPair('P-521');
        const d = unb64(pair.privateKey.export({ format: 'jwk' }).d);
        expect(d.length).to.equal(66);
        if (d[0] === 0) padded++;
        // The full JWK passes the strict import, including the d-matches-x/y check.
        importPrivateJwk({ ...pair.publicJwk, d: b64(d) });
      }
      expect(padded).to.be.greaterThan(0);
    });
  });

  describe('ecRawPublic', () => {
    it('gives 0x04 ‖ X ‖ Y for public and private keys, including keys not made here', () => {
      const expected = Buffer.concat([Buffer.of(4), unb64(EC_PUBLIC.x), unb64(EC_PUBLIC.y)]);
      expect(ecRawPublic(importPublicJwk(EC_PUBLIC)).equals(expected)).to.equal(true);
      expect(ecRawPublic(importPrivateJwk(EC_PRIVATE)).equals(expected)).to.equal(true);
      const foreign = createPrivateKey({ key: EC_PRIVATE, format: 'jwk' });
      expect(ecRawPublic(foreign).equals(expected)).to.equal(true);
      expect(ecRawPublic(foreign)).to.equal(ecRawPublic(foreign)); // cached
    });

    it('rejects a non-EC key', () => {
      expectJoseError(() => ecRawPublic(importPublicJwk(RSA_PUBLIC)), 'JOSE_KEY_INVALID');
    });
  });
});
