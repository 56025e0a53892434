/**
 * A client's key work on node:crypto, synchronous: entity keys, registration proofs, block
 * signatures, block hashes and GK unwrapping, for tests and benchmarks that play a client against
 * the engine directly. The client library itself (src/client) does the same on WebCrypto, and
 * test/client/webcrypto.test.ts checks that the two agree.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type JsonWebKey, type KeyObject } from 'node:crypto';
import { signatureAlgsFor, signCompact, verifyCompact, type JwsAlg } from '../../src/crypto/jws.js';
import { decryptJwe } from '../../src/crypto/jwe.js';
import { generateEcKeyPair, importPublicJwk, publicJwk, thumbprint } from '../../src/crypto/keys.js';
import type { JWK } from '../../src/client/webcrypto.js';
import { decode as b64uDecode } from '../../src/crypto/base64url.js';
import type { Operation } from '../../src/protocol/blocks.js';

export { blockHash } from '../../src/protocol/block-hash.js';

/** A node:crypto public key as the public JWK the client library takes. */
export function jwkOf(key: KeyObject): JWK {
  return publicJwk(key) as JWK;
}

/** An entity key pair as node:crypto key objects, with its public JWK, kid (thumbprint) and alg. */
export interface EntityKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: JsonWebKey;
  /** The private JWK (for the client library, which keeps keys as JWKs). */
  privateJwk: JsonWebKey;
  kid: string;
  alg: JwsAlg;
}

/**
 * Makes a new entity key, blocking for RSA. Keys are never exported from a generateKeyPairSync key
 * object as JWK (on Node 20 that can hang the process): P-256 comes from createECDH, RSA goes through PKCS#8.
 */
export function generateEntityKey(opts: { type?: 'RSA' | 'EC'; modulusLength?: number } = {}): EntityKey {
  if (opts.type === 'EC') return entityKeyFromPrivate(generateEcKeyPair('P-256').privateKey);
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: opts.modulusLength ?? 2048, publicExponent: 0x10001 });
  return entityKeyFromPrivate(createPrivateKey({ key: privateKey.export({ format: 'der', type: 'pkcs8' }), format: 'der', type: 'pkcs8' }));
}

/** generateEntityKey, off the event loop's critical path (a promise, like the client library's). */
export async function createEntityKey(opts: { type?: 'RSA' | 'EC'; modulusLength?: number } = {}): Promise<EntityKey> {
  return generateEntityKey(opts);
}

/** Rebuilds an entity key from its private JWK. */
export function entityKeyFromJwk(jwk: JsonWebKey): EntityKey {
  return entityKeyFromPrivate(createPrivateKey({ key: jwk, format: 'jwk' }));
}

function entityKeyFromPrivate(privateKey: KeyObject): EntityKey {
  const publicKey = createPublicKey(privateKey);
  const pub = publicJwk(publicKey);
  const alg: JwsAlg = pub.kty === 'EC' ? 'ES256' : 'PS256';
  const privateJwk = privateKey.export({ format: 'jwk' });
  return { privateKey, publicKey, publicJwk: pub, privateJwk, kid: thumbprint(pub), alg };
}

/** The proof of possession for post /entity-keys: a JWS by the key over entity, channel and time. */
export function registrationProof(key: EntityKey, entity: string, ephemeralKeyUri: string, now = Date.now()): string {
  return signCompact(key.privateKey, key.alg, JSON.stringify({ entity, ephemeralKey: ephemeralKeyUri, iat: Math.floor(now / 1000) }), {
    kid: key.kid,
  });
}

/** Signs an appended block (PCG-01 gmbc-appended-block) over `antecedent`. */
export function signBlock(key: EntityKey, creator: string, antecedent: string, operations: Operation[], created = new Date()): string {
  const payload = { antecedent, creator, created: created.toISOString(), operations };
  return signCompact(key.privateKey, key.alg, JSON.stringify(payload), { kid: key.kid });
}

/** A GK after checking the KMS's signature and unwrapping the key. */
export interface NodeGroupKey {
  uri: string;
  block?: string;
  created: string;
  key: Buffer;
}

/** Verifies a GK (signed by the KMS) and unwraps its key with the entity's private key. */
export function openGk(gkJws: string, kmsPublic: KeyObject | JWK, entityKey: EntityKey): NodeGroupKey {
  const kmsKey = 'export' in kmsPublic && typeof kmsPublic.export === 'function' ? (kmsPublic as KeyObject) : importPublicJwk(kmsPublic);
  const gk = JSON.parse(verifyCompact(gkJws, kmsKey, signatureAlgsFor(kmsKey)).payload.toString('utf8'));
  if (typeof gk.uri !== 'string' || typeof gk.key !== 'string') throw new Error('not a group key');
  const { plaintext } = decryptJwe(gk.key, entityKey.privateKey, { alg: ['ECDH-ES+A256KW', 'RSA-OAEP', 'RSA-OAEP-256'], enc: ['A256GCM'] });
  const jwk = JSON.parse(plaintext.toString('utf8'));
  if (jwk.kty !== 'oct' || jwk.kid !== gk.uri) throw new Error("the wrapped key is not this group key's");
  const key = b64uDecode(jwk.k);
  if (key.length !== 32) throw new Error('the group key is not 256 bits');
  const out: NodeGroupKey = { uri: gk.uri, created: gk.created, key };
  if (typeof gk.block === 'string') out.block = gk.block;
  return out;
}
