import { expect } from 'chai';
import { createPublicKey } from 'node:crypto';
import { createEntityKey, entityKeyFromJwk, generateEntityKey } from '../../src/client/keys.js';
import { signCompact, verifyCompact } from '../../src/crypto/jws.js';
import { decryptJwe, encryptJwe } from '../../src/crypto/jwe.js';

describe('client: entity keys', function () {
  this.timeout(30_000);

  it('makes RSA-2048 keys by default (PCG-01 MTI: PS256 signatures, RSA-OAEP wrapping)', async () => {
    for (const key of [generateEntityKey(), await createEntityKey()]) {
      expect(key.alg).to.equal('PS256');
      expect(key.publicJwk.kty).to.equal('RSA');
      expect(key.publicKey.asymmetricKeyDetails?.modulusLength).to.equal(2048);
      expect(key.publicJwk).to.not.have.property('d');
      const jws = signCompact(key.privateKey, key.alg, 'block', { kid: key.kid });
      expect(verifyCompact(jws, key.publicKey, ['PS256']).payload.toString()).to.equal('block');
      const jwe = encryptJwe(key.publicKey, 'gk', { alg: 'RSA-OAEP', enc: 'A256GCM', kid: key.kid });
      expect(decryptJwe(jwe, key.privateKey, { alg: ['RSA-OAEP'], enc: ['A256GCM'] }).plaintext.toString()).to.equal('gk');
    }
  });

  it('makes P-256 keys on request (ES256, ECDH-ES+A256KW)', async () => {
    for (const key of [generateEntityKey({ type: 'EC' }), await createEntityKey({ type: 'EC' })]) {
      expect(key.alg).to.equal('ES256');
      expect(key.publicJwk).to.include({ kty: 'EC', crv: 'P-256' });
      const jwe = encryptJwe(key.publicKey, 'gk', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: key.kid });
      expect(decryptJwe(jwe, key.privateKey, { alg: ['ECDH-ES+A256KW'], enc: ['A256GCM'] }).plaintext.toString()).to.equal('gk');
    }
  });

  it('takes a larger RSA modulus and refuses one under 2048 bits', async () => {
    expect((await createEntityKey({ modulusLength: 3072 })).publicKey.asymmetricKeyDetails?.modulusLength).to.equal(3072);
    expect(() => generateEntityKey({ modulusLength: 1024 })).to.throw(/from 2048 to 8192/);
    let refused: unknown;
    await createEntityKey({ modulusLength: 2048.5 }).catch((e) => (refused = e));
    expect(String(refused)).to.match(/from 2048 to 8192/);
  });

  it('rebuilds the same key (same kid) from its saved private JWK', () => {
    for (const type of ['RSA', 'EC'] as const) {
      const key = generateEntityKey({ type });
      const saved = key.privateKey.export({ format: 'jwk' });
      const again = entityKeyFromJwk(saved);
      expect(again.kid).to.equal(key.kid);
      expect(createPublicKey(again.privateKey).equals(key.publicKey)).to.equal(true);
    }
  });
});
