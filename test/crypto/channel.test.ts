import { expect } from 'chai';
import { createECDH, createPrivateKey, diffieHellman, hkdfSync, type JsonWebKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { deriveChannelKey } from '../../src/crypto/channel.js';
import { generateEcKeyPair, importPrivateJwk, importPublicJwk } from '../../src/crypto/keys.js';
import { expectJoseError } from '../support/jose-assert.js';

interface ChannelVector {
  source: string;
  private: JsonWebKey;
  public: JsonWebKey;
  length: number;
  key: string;
}
const { vectors } = JSON.parse(readFileSync(new URL('../vectors/ecdhe-hkdf.json', import.meta.url), 'utf8')) as {
  vectors: ChannelVector[];
};

describe('crypto/channel', () => {
  it('has vectors to check', () => {
    expect(vectors.length).to.be.greaterThan(0);
  });

  for (const v of vectors) {
    describe(`vector: ${v.source} (L = ${v.length})`, () => {
      const peer = importPublicJwk(v.public);

      it('reproduces the key with an imported private KeyObject', () => {
        expect(deriveChannelKey(importPrivateJwk(v.private), peer, v.length).toString('base64url')).to.equal(v.key);
      });

      it('reproduces the key with an ECDH object', () => {
        const ecdh = createECDH('prime256v1');
        ecdh.setPrivateKey(Buffer.from(v.private.d as string, 'base64url'));
        expect(deriveChannelKey(ecdh, peer, v.length).toString('base64url')).to.equal(v.key);
      });

      it('reproduces the key with a foreign KeyObject (diffieHellman path)', () => {
        const foreign = createPrivateKey({ key: v.private, format: 'jwk' });
        expect(deriveChannelKey(foreign, peer, v.length).toString('base64url')).to.equal(v.key);
      });
    });
  }

  it('the empty salt equals an explicit 32-byte zero salt (RFC 5869 §2.2)', () => {
    const v = vectors[0]!;
    const z = diffieHellman({ privateKey: createPrivateKey({ key: v.private, format: 'jwk' }), publicKey: importPublicJwk(v.public) });
    const explicit = Buffer.from(hkdfSync('sha256', z, Buffer.alloc(32), Buffer.alloc(0), 32));
    expect(deriveChannelKey(importPrivateJwk(v.private), importPublicJwk(v.public)).equals(explicit)).to.equal(true);
  });

  it('defaults to 32 bytes and is symmetric between the parties', () => {
    const a = generateEcKeyPair();
    const b = generateEcKeyPair();
    const k1 = deriveChannelKey(a.privateKey, b.publicKey);
    const k2 = deriveChannelKey(b.privateKey, a.publicKey);
    expect(k1.length).to.equal(32);
    expect(k1.equals(k2)).to.equal(true);
  });

  it('works on P-384 and P-521 as well', () => {
    for (const curve of ['P-384', 'P-521'] as const) {
      const a = generateEcKeyPair(curve);
      const b = generateEcKeyPair(curve);
      expect(deriveChannelKey(a.privateKey, b.publicKey, 16).equals(deriveChannelKey(b.privateKey, a.publicKey, 16))).to.equal(true);
    }
  });

  it('rejects keys on different curves, a private peer key and non-EC keys', () => {
    const p256 = generateEcKeyPair('P-256');
    const p384 = generateEcKeyPair('P-384');
    expectJoseError(() => deriveChannelKey(p256.privateKey, p384.publicKey), 'JOSE_KEY_INVALID');
    const ecdh = createECDH('prime256v1');
    ecdh.generateKeys();
    expectJoseError(() => deriveChannelKey(ecdh, p384.publicKey), 'JOSE_KEY_INVALID');
    expectJoseError(() => deriveChannelKey(p256.privateKey, p256.privateKey), 'JOSE_KEY_INVALID');
    expectJoseError(() => deriveChannelKey(p256.publicKey, p256.publicKey), 'JOSE_KEY_INVALID');
    const rsa = importPublicJwk(JSON.parse(readFileSync(new URL('../vectors/rfc7520/3_3.rsa_public_key.json', import.meta.url), 'utf8')));
    expectJoseError(() => deriveChannelKey(p256.privateKey, rsa), 'JOSE_KEY_INVALID');
  });

  it('rejects a bad length', () => {
    const a = generateEcKeyPair();
    for (const length of [0, -1, 1.5, 255 * 32 + 1]) {
      expect(() => deriveChannelKey(a.privateKey, a.publicKey, length)).to.throw(RangeError);
    }
  });
});
