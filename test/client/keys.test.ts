import { expect } from 'chai';
import { createEntityKey, entityKeyFromJwk } from '../../src/client/keys.js';
import { signJws } from '../../src/client/webcrypto.js';
import { signCompact, verifyCompact } from '../../src/crypto/jws.js';
import { decryptJwe, encryptJwe } from '../../src/crypto/jwe.js';
import { importPrivateJwk, importPublicJwk } from '../../src/crypto/keys.js';

describe('client: entity keys', function () {
  this.timeout(30_000);

  it('makes RSA-2048 keys by default (PCG-01 MTI: PS256 signatures, RSA-OAEP wrapping)', async () => {
    const key = await createEntityKey();
    expect(key.alg).to.equal('PS256');
    expect(key.publicJwk.kty).to.equal('RSA');
    const publicKey = importPublicJwk(key.publicJwk);
    const privateKey = importPrivateJwk(key.privateJwk);
    expect(publicKey.asymmetricKeyDetails?.modulusLength).to.equal(2048);
    expect(key.publicJwk).to.not.have.property('d');
    const jws = await signJws(key.privateJwk, key.alg, 'block', { kid: key.kid });
    expect(verifyCompact(jws, publicKey, ['PS256']).payload.toString()).to.equal('block');
    expect(verifyCompact(signCompact(privateKey, 'PS256', 'x'), publicKey, ['PS256']).payload.toString()).to.equal('x');
    const jwe = encryptJwe(publicKey, 'gk', { alg: 'RSA-OAEP', enc: 'A256GCM', kid: key.kid });
    expect(decryptJwe(jwe, privateKey, { alg: ['RSA-OAEP'], enc: ['A256GCM'] }).plaintext.toString()).to.equal('gk');
  });

  it('makes P-256 keys on request (ES256, ECDH-ES+A256KW)', async () => {
    const key = await createEntityKey({ type: 'EC' });
    expect(key.alg).to.equal('ES256');
    expect(key.publicJwk).to.include({ kty: 'EC', crv: 'P-256' });
    const jwe = encryptJwe(importPublicJwk(key.publicJwk), 'gk', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: key.kid });
    expect(decryptJwe(jwe, importPrivateJwk(key.privateJwk), { alg: ['ECDH-ES+A256KW'], enc: ['A256GCM'] }).plaintext.toString()).to.equal('gk');
  });

  it('takes a larger RSA modulus and refuses one under 2048 bits', async () => {
    expect(importPublicJwk((await createEntityKey({ modulusLength: 3072 })).publicJwk).asymmetricKeyDetails?.modulusLength).to.equal(3072);
    for (const modulusLength of [1024, 2048.5]) {
      let refused: unknown;
      await createEntityKey({ modulusLength }).catch((e) => (refused = e));
      expect(String(refused)).to.match(/from 2048 to 8192/);
    }
  });

  it('rebuilds the same key (same kid) from its saved private JWK, and refuses a public or mismatched one', async () => {
    for (const type of ['RSA', 'EC'] as const) {
      const key = await createEntityKey({ type });
      const saved = JSON.parse(JSON.stringify(key.privateJwk));
      const again = await entityKeyFromJwk(saved);
      expect(again.kid).to.equal(key.kid);
      expect(again.publicJwk).to.deep.equal(key.publicJwk);
      let refused = 0;
      await entityKeyFromJwk(key.publicJwk).catch(() => refused++);
      const other = await createEntityKey({ type });
      await entityKeyFromJwk({ ...other.privateJwk, ...(type === 'EC' ? { x: key.publicJwk.x!, y: key.publicJwk.y! } : { n: key.publicJwk.n! }) }).catch(
        () => refused++,
      );
      expect(refused).to.equal(2);
    }
  });
});
