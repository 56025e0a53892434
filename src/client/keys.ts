/**
 * A client's entity key, its registration proof, and the unwrapping of GKs the KMS sends. One key
 * serves block signatures and receiving GKs: RSA (PS256, RSA-OAEP: PCG-01's mandatory-to-implement
 * algorithms, and the default) or P-256 (ES256, ECDH-ES+A256KW).
 */
import { createPrivateKey, createPublicKey, generateKeyPair, generateKeyPairSync, type JsonWebKey, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { signatureAlgsFor, signCompact, verifyCompact, type JwsAlg } from '../crypto/jws.js';
import { decryptJwe } from '../crypto/jwe.js';
import { generateEcKeyPair, publicJwk, thumbprint } from '../crypto/keys.js';
import { decode as b64uDecode } from '../crypto/base64url.js';
import type { SigningKey } from './chain.js';

/** An entity key pair as the client keeps it. */
export interface EntityKey extends SigningKey {
  publicKey: KeyObject;
  publicJwk: JsonWebKey;
}

/**
 * Which entity key to make. RSA is PCG-01's mandatory-to-implement type, so every KMS and client
 * handles it, and it is the cheaper one for the KMS: wrapping a GK to an RSA key is one RSA-OAEP
 * public-key operation (about 23 us here), to a P-256 key a fresh ECDH (about 150 us), and the KMS
 * does it for every member and every GK. The member pays instead: about 0.3 ms to unwrap a GK or
 * sign a block with RSA-2048, and 0.2-1 s to make the key, once per device.
 */
export interface EntityKeyOptions {
  /** 'RSA' (default) or 'EC' (P-256). */
  type?: 'RSA' | 'EC';
  /** RSA modulus in bits (default 2048, the least JWA allows; 3072 matches P-256's strength). */
  modulusLength?: number;
}

const DEFAULT_RSA_BITS = 2048;
const generateKeyPairAsync = promisify(generateKeyPair);

/**
 * Makes a new entity key, blocking for RSA (0.2 s at 2048 bits, about 1 s at 3072); prefer
 * createEntityKey in an application. Keys are never exported from a generateKeyPairSync key object
 * as JWK (on Node 20 that can hang the process): P-256 comes from createECDH, RSA goes through PKCS#8.
 */
export function generateEntityKey(opts: EntityKeyOptions = {}): EntityKey {
  if (opts.type === 'EC') return entityKeyFromPrivate(generateEcKeyPair('P-256').privateKey);
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: rsaBits(opts), publicExponent: 0x10001 });
  return entityKeyFromPrivate(reimported(privateKey));
}

/** Makes a new entity key without blocking the event loop (RSA is made on libuv's thread pool). */
export async function createEntityKey(opts: EntityKeyOptions = {}): Promise<EntityKey> {
  if (opts.type === 'EC') return generateEntityKey(opts);
  const { privateKey } = await generateKeyPairAsync('rsa', { modulusLength: rsaBits(opts), publicExponent: 0x10001 });
  return entityKeyFromPrivate(reimported(privateKey));
}

function rsaBits(opts: EntityKeyOptions): number {
  const bits = opts.modulusLength ?? DEFAULT_RSA_BITS;
  if (!Number.isInteger(bits) || bits < 2048 || bits > 8192) throw new Error('modulusLength must be a whole number of bits from 2048 to 8192');
  return bits;
}

/** The same private key, imported from its PKCS#8 form (so that it may later be exported as JWK safely). */
function reimported(key: KeyObject): KeyObject {
  return createPrivateKey({ key: key.export({ format: 'der', type: 'pkcs8' }), format: 'der', type: 'pkcs8' });
}

/** Rebuilds an entity key from its private JWK (as saved by a client). */
export function entityKeyFromJwk(jwk: JsonWebKey): EntityKey {
  return entityKeyFromPrivate(createPrivateKey({ key: jwk, format: 'jwk' }));
}

function entityKeyFromPrivate(privateKey: KeyObject): EntityKey {
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
  const gk = JSON.parse(verifyCompact(gkJws, kmsKey, signatureAlgsFor(kmsKey)).payload.toString('utf8'));
  if (typeof gk.uri !== 'string' || typeof gk.key !== 'string') throw new Error('not a group key');
  const { plaintext } = decryptJwe(gk.key, entityKey.privateKey, {
    alg: ['ECDH-ES+A256KW', 'RSA-OAEP', 'RSA-OAEP-256'],
    enc: ['A256GCM'],
  });
  const jwk = JSON.parse(plaintext.toString('utf8'));
  if (jwk.kty !== 'oct' || jwk.kid !== gk.uri) throw new Error("the wrapped key is not this group key's");
  const key = b64uDecode(jwk.k);
  if (key.length !== 32) throw new Error('the group key is not 256 bits');
  const out: GroupKey = { uri: gk.uri, created: gk.created, key };
  if (typeof gk.block === 'string') out.block = gk.block;
  return out;
}
