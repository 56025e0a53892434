/**
 * A client's entity key, its registration proof, and the unwrapping of GKs the KMS sends. One key
 * serves block signatures and receiving GKs: RSA (PS256, RSA-OAEP: PCG-01's mandatory-to-implement
 * algorithms, and the default) or P-256 (ES256, ECDH-ES+A256KW). Keys are JWKs, used through
 * WebCrypto (src/client/webcrypto.ts), so that this runs in browsers and in Node.
 */
import type { SigningKey } from './chain.js';
import { b64uDecode, bareJwk, decryptWithKey, generatePrivateJwk, publicJwk, signJws, thumbprint, utf8, verifyJws, type JWK } from './webcrypto.js';

/** An entity key pair as the client keeps it: the private JWK (to save and reuse), the public JWK, kid and alg. */
export interface EntityKey extends SigningKey {
  publicJwk: JWK;
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

/** Makes a new entity key (with WebCrypto, off the event loop). */
export async function createEntityKey(opts: EntityKeyOptions = {}): Promise<EntityKey> {
  if (opts.type === 'EC') return entityKeyFromJwk(await generatePrivateJwk({ type: 'EC' }));
  return entityKeyFromJwk(await generatePrivateJwk({ type: 'RSA', modulusLength: rsaBits(opts) }));
}

function rsaBits(opts: EntityKeyOptions): number {
  const bits = opts.modulusLength ?? DEFAULT_RSA_BITS;
  if (!Number.isInteger(bits) || bits < 2048 || bits > 8192) throw new Error('modulusLength must be a whole number of bits from 2048 to 8192');
  return bits;
}

/** Rebuilds an entity key from its private JWK (as saved by a client): an RSA or a P-256 private key. */
export async function entityKeyFromJwk(jwk: JWK): Promise<EntityKey> {
  if (typeof jwk?.d !== 'string') throw new Error('an entity key needs a private JWK');
  if (jwk.kty !== 'RSA' && !(jwk.kty === 'EC' && jwk.crv === 'P-256')) throw new Error('an entity key is RSA or P-256');
  const pub = publicJwk(jwk);
  const privateJwk = bareJwk(jwk);
  // Signing once checks that the private and public parts belong together.
  const key: EntityKey = { privateJwk, publicJwk: pub, kid: await thumbprint(pub), alg: pub.kty === 'EC' ? 'ES256' : 'PS256' };
  await verifyJws(await signJws(privateJwk, key.alg, 'check'), pub);
  return key;
}

/** The proof of possession for post /entity-keys: a JWS by the key over entity, channel and time. */
export function registrationProof(key: EntityKey, entity: string, ephemeralKeyUri: string, now = Date.now()): Promise<string> {
  return signJws(key.privateJwk, key.alg, JSON.stringify({ entity, ephemeralKey: ephemeralKeyUri, iat: Math.floor(now / 1000) }), {
    kid: key.kid,
  });
}

/** A GK as the client holds it after checking the KMS's signature and unwrapping the key. */
export interface GroupKey {
  uri: string;
  block?: string;
  created: string;
  /** The 32-byte A256GCM key. */
  key: Uint8Array;
}

/** Verifies a GK (signed by the KMS) and unwraps its key with the entity's private key. */
export async function openGk(gkJws: string, kmsKey: JWK, entityKey: EntityKey): Promise<GroupKey> {
  const gk = JSON.parse(utf8((await verifyJws(gkJws, kmsKey)).payload));
  if (typeof gk.uri !== 'string' || typeof gk.key !== 'string') throw new Error('not a group key');
  const { plaintext } = await decryptWithKey(gk.key, entityKey.privateJwk);
  const jwk = JSON.parse(utf8(plaintext));
  if (jwk.kty !== 'oct' || jwk.kid !== gk.uri || typeof jwk.k !== 'string') throw new Error("the wrapped key is not this group key's");
  const key = b64uDecode(jwk.k);
  if (key.length !== 32) throw new Error('the group key is not 256 bits');
  const out: GroupKey = { uri: gk.uri, created: gk.created, key };
  if (typeof gk.block === 'string') out.block = gk.block;
  return out;
}
