/**
 * The KMS secure-channel key (draft-abiggs-saag-key-management-service-03, ephemeral key
 * exchange): K = HKDF-SHA256(IKM = ECDH shared secret Z, salt = empty, info = empty, L).
 * An empty salt is the HashLen zero octets of RFC 5869 §2.2 (HMAC pads keys with zeros).
 */
import { ECDH, KeyObject, diffieHellman, hkdfSync } from 'node:crypto';
import { keyInvalid } from './errors.js';
import { cachedEcdh, ecCurveOf, ecRawPublic } from './keys.js';

const EMPTY = Buffer.alloc(0);

/** Derives the channel key from our private key (KeyObject or ECDH) and the peer's EC public key. */
export function deriveChannelKey(ownPrivate: KeyObject | ECDH, peerPublic: KeyObject | Buffer, length = 32): Buffer {
  // RFC 5869 §2.3: L <= 255 * HashLen.
  if (!Number.isInteger(length) || length < 1 || length > 255 * 32) throw new RangeError('bad channel key length');
  if (Buffer.isBuffer(peerPublic)) {
    // The peer's uncompressed point: OpenSSL's EC_POINT_oct2point rejects a point off our curve,
    // and the handshake skips importing the client's JWK as a KeyObject (about 95 us).
    if (!(ownPrivate instanceof ECDH)) throw keyInvalid('a raw peer point needs an ECDH object');
    let z: Buffer;
    try {
      z = ownPrivate.computeSecret(peerPublic);
    } catch {
      throw keyInvalid('the peer point is not on our curve');
    }
    const key = Buffer.from(hkdfSync('sha256', z, EMPTY, EMPTY, length));
    z.fill(0);
    return key;
  }
  if (!(peerPublic instanceof KeyObject) || peerPublic.type !== 'public') throw keyInvalid('the peer key must be an EC public key');
  const peerCurve = ecCurveOf(peerPublic);
  let z: Buffer;
  if (ownPrivate instanceof KeyObject) {
    if (ownPrivate.type !== 'private') throw keyInvalid('our key must be an EC private key');
    if (ecCurveOf(ownPrivate).crv !== peerCurve.crv) throw keyInvalid('the keys are on different curves');
    const ecdh = cachedEcdh(ownPrivate);
    z = ecdh ? ecdh.computeSecret(ecRawPublic(peerPublic)) : diffieHellman({ privateKey: ownPrivate, publicKey: peerPublic });
  } else if (ownPrivate instanceof ECDH) {
    try {
      z = ownPrivate.computeSecret(ecRawPublic(peerPublic));
    } catch {
      throw keyInvalid('the peer key does not fit our ECDH key (different curve?)');
    }
  } else {
    throw keyInvalid('our key must be a KeyObject or an ECDH');
  }
  const key = Buffer.from(hkdfSync('sha256', z, EMPTY, EMPTY, length));
  z.fill(0);
  return key;
}
