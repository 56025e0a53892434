// Versioned sealing (issue 14, item 3): sealed values name the master key that sealed them, a
// Sealer holds a keyring, values from before key versions stay readable.
import { expect } from 'chai';
import { createCipheriv, randomBytes } from 'node:crypto';
import { MissingMasterKeyError, masterKeyId, Sealer, sealedBy } from '../../src/crypto/seal.js';

/** A value in the format before key versions (`s1.`), as older releases sealed it. */
function legacySeal(key: Buffer, plaintext: string, context: string): string {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(context));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return `s1.${Buffer.concat([iv, ct, c.getAuthTag()]).toString('base64url')}`;
}

describe('crypto: versioned sealing', () => {
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);

  it('names the key by an id that is not the key (16 hex digits of HMAC-SHA256(key, "kms-key-id"))', () => {
    const id = masterKeyId(k1);
    expect(id).to.match(/^[0-9a-f]{16}$/);
    expect(id).to.not.equal(k1.subarray(0, 8).toString('hex'));
    expect(masterKeyId(k1)).to.equal(id);
    expect(masterKeyId(k2)).to.not.equal(id);
  });

  it('seals as s2.<keyId>.<…> and opens it; the value holds no key bytes', () => {
    const s = new Sealer(k1);
    const sealed = s.seal('secret', 'gk:1');
    expect(sealed.startsWith(`s2.${masterKeyId(k1)}.`)).to.equal(true);
    expect(sealedBy(sealed)).to.equal(masterKeyId(k1));
    expect(sealed).to.not.contain(k1.toString('base64url'));
    expect(s.open(sealed, 'gk:1').toString()).to.equal('secret');
    expect(() => s.open(sealed, 'gk:2')).to.throw(/does not open under master key/);
  });

  it('opens a legacy value (s1.) under the current key, and under an older key of the ring', () => {
    const legacy = legacySeal(k1, 'old', 'gk:1');
    expect(sealedBy(legacy)).to.equal('legacy');
    expect(new Sealer(k1).open(legacy, 'gk:1').toString()).to.equal('old');
    expect(new Sealer([k2, k1]).open(legacy, 'gk:1').toString()).to.equal('old');
    expect(() => new Sealer(k2).open(legacy, 'gk:1')).to.throw(/does not open under the master key/);
  });

  it('a ring opens by key id, seals under the current key; a missing key is named', () => {
    const old = new Sealer(k1).seal('v', 'ctx');
    const ring = new Sealer([k2, k1]);
    expect(ring.keyId).to.equal(masterKeyId(k2));
    expect(ring.keyIds()).to.deep.equal([masterKeyId(k2), masterKeyId(k1)]);
    expect(ring.open(old, 'ctx').toString()).to.equal('v');
    expect(ring.isCurrent(old)).to.equal(false);
    const again = ring.reseal(old, 'ctx');
    expect(sealedBy(again)).to.equal(masterKeyId(k2));
    expect(ring.isCurrent(again)).to.equal(true);
    const only2 = new Sealer(k2);
    let err: unknown;
    try {
      only2.open(old, 'ctx');
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(MissingMasterKeyError);
    expect((err as Error).message).to.contain(`master key ${masterKeyId(k1)}, which is not in the keyring (keys held: ${masterKeyId(k2)})`);
  });

  it('rotateTo makes a new key current, retireOlder drops the rest', () => {
    const s = new Sealer(k1);
    const v1 = s.seal('a', 'c');
    expect(s.rotateTo(k2)).to.equal(masterKeyId(k2));
    expect(sealedBy(s.seal('b', 'c'))).to.equal(masterKeyId(k2));
    expect(s.open(v1, 'c').toString()).to.equal('a');
    expect(s.retireOlder()).to.deep.equal([masterKeyId(k1)]);
    expect(() => s.open(v1, 'c')).to.throw(MissingMasterKeyError);
  });
});
