/**
 * A client's entity key (one P-256 key for ES256 block signatures and for receiving GKs by
 * ECDH-ES+A256KW), its registration proof, and the unwrapping of GKs the KMS sends.
 */
import { createECDH, createPrivateKey, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { signCompact, verifyCompact, type JwsAlg } from '../crypto/jws.js';
import { decryptJwe } from '../crypto/jwe.js';
import { publicJwk, thumbprint } from '../crypto/keys.js';
import { decode as b64uDecode, encode as b64u } from '../crypto/base64url.js';
import type { SigningKey } from './chain.js';

/** An entity key pair as the client keeps it. */
export interface EntityKey extends SigningKey {
  publicKey: KeyObject;
  publicJwk: JsonWebKey;
}

/** Makes a new P-256 entity key (createECDH: the Node 20 generateKeyPairSync+JWK export hang is avoided). */
export function generateEntityKey(): EntityKey {
  const ecdh = createECDH('prime256v1');
  const point = ecdh.generateKeys();
  const jwk = {
    kty: 'EC',
    crv: 'P-256',
    x: b64u(point.subarray(1, 33)),
    y: b64u(point.subarray(33, 65)),
    d: b64u(ecdh.getPrivateKey()),
  };
  return entityKeyFromJwk(jwk);
}

/** Rebuilds an entity key from its private JWK (as saved by a client). */
export function entityKeyFromJwk(jwk: JsonWebKey): EntityKey {
  const privateKey = createPrivateKey({ key: jwk, format: 'jwk' });
  const publicKey = createPublicKey(privateKey);
  const pub = publicJwk(publicKey);
  const alg: JwsAlg = pub.kty === 'EC' ? 'ES256' : 'PS256';
  return { privateKey, publicKey, publicJwk: pub, kid: thumbprint(pub), alg };
}

/** The proof of possession for post /entity-keys: a JWS by the key over entity, channel and time. */
export function registrationProof(key: EntityKey, entity: string, ephemeralKeyUri: string, now = Date.now()): string {
  return signCompact(key.privateKey, key.alg, JSON.stringify({ entity, ephemeralKey: ephemeralKeyUri, iat: Math.floor(now / 1000) }), {
    kid: key.kid,
  });
}

/** A GK as the client holds it after checking the KMS's signature and unwrapping the key. */
export interface GroupKey {
  uri: string;
  block?: string;
  created: string;
  /** The 32-byte A256GCM key. */
  key: Buffer;
}

/** Verifies a GK (signed by the KMS) and unwraps its key with the entity's private key. */
export function openGk(gkJws: string, kmsKey: KeyObject, entityKey: EntityKey): GroupKey {
  const algs: JwsAlg[] = kmsKey.asymmetricKeyType === 'rsa' ? ['PS256', 'RS256'] : ['ES256'];
  const gk = JSON.parse(verifyCompact(gkJws, kmsKey, algs).payload.toString('utf8'));
  if (typeof gk.uri !== 'string' || typeof gk.key !== 'string') throw new Error('not a group key');
  const { plaintext } = decryptJwe(gk.key, entityKey.privateKey, {
    alg: ['ECDH-ES+A256KW', 'RSA-OAEP', 'RSA-OAEP-256'],
    enc: ['A256GCM'],
  });
  const jwk = JSON.parse(plaintext.toString('utf8'));
  if (jwk.kty !== 'oct' || jwk.kid !== gk.uri) throw new Error('the wrapped key is not this group key\'s');
  const key = b64uDecode(jwk.k);
  if (key.length !== 32) throw new Error('the group key is not 256 bits');
  const out: GroupKey = { uri: gk.uri, created: gk.created, key };
  if (typeof gk.block === 'string') out.block = gk.block;
  return out;
}
