/**
 * The client's cryptography on WebCrypto (`globalThis.crypto.subtle`, through `jose` for JOSE), so
 * that the client library runs in browsers and in Node (20+) alike: no `node:crypto`, no `Buffer`.
 * The server keeps its own node:crypto implementation (src/crypto); the two meet only on the wire,
 * and test/client/webcrypto.test.ts checks that each reads what the other writes.
 *
 * Keys are kept as JWKs and imported per use: a WebCrypto key has fixed usages, and one RSA entity
 * key serves both PS256 signatures and RSA-OAEP unwrapping. Imports are cached per JWK object.
 */
import {
  base64url,
  CompactEncrypt,
  CompactSign,
  calculateJwkThumbprint,
  compactDecrypt,
  compactVerify,
  exportJWK,
  generateKeyPair,
  importJWK,
  type CompactJWEHeaderParameters,
  type CompactJWSHeaderParameters,
  type CryptoKey,
  type JWK,
} from 'jose';

export type { JWK };

/** The signature algorithms the client checks and makes. */
export type ClientJwsAlg = 'PS256' | 'RS256' | 'ES256';

const subtle = () => globalThis.crypto.subtle;
const ENCODER = new TextEncoder();
const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Unpadded base64url of bytes, or of a string as UTF-8. */
export function b64uEncode(data: Uint8Array | string): string {
  return base64url.encode(data);
}

/** Bytes of unpadded base64url. */
export function b64uDecode(s: string): Uint8Array {
  return base64url.decode(s);
}

/** Strict UTF-8 decoding (throws on malformed input). */
export function utf8(bytes: Uint8Array): string {
  return UTF8.decode(bytes);
}

/** The UTF-8 bytes of a string. */
export function utf8Encode(s: string): Uint8Array {
  return ENCODER.encode(s);
}

/** `n` random bytes. */
export function randomBytes(n: number): Uint8Array {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

/** A random (version 4) UUID. */
export function randomUUID(): string {
  return globalThis.crypto.randomUUID();
}

/** A uniformly random integer in [min, max). */
export function randomInt(min: number, max: number): number {
  const range = max - min;
  if (!Number.isInteger(range) || range < 1 || range > 2 ** 32) throw new RangeError('bad random range');
  const limit = 2 ** 32 - (2 ** 32 % range);
  const word = new Uint32Array(1);
  for (;;) {
    globalThis.crypto.getRandomValues(word);
    if (word[0]! < limit) return min + (word[0]! % range);
  }
}

/** hex(SHA-256(ASCII string)): a block's hash (XEP "Entities and Hashes"). */
export async function sha256Hex(s: string): Promise<string> {
  const digest = new Uint8Array(await subtle().digest('SHA-256', ENCODER.encode(s)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------------------------------------
// Keys

/** The public members of a JWK (kty and crv/x/y or n/e), nothing else. */
export function publicJwk(jwk: JWK): JWK {
  if (jwk.kty === 'EC') return { kty: 'EC', crv: jwk.crv!, x: jwk.x!, y: jwk.y! };
  if (jwk.kty === 'RSA') return { kty: 'RSA', n: jwk.n!, e: jwk.e! };
  throw new Error('not an EC or RSA key');
}

/** The key material of a JWK without alg, use, key_ops or ext (so that it can be imported for any use). */
export function bareJwk(jwk: JWK): JWK {
  const { alg: _alg, use: _use, key_ops: _ops, ext: _ext, ...rest } = jwk;
  return rest;
}

/** The RFC 7638 SHA-256 thumbprint of a public (or private) JWK. */
export function thumbprint(jwk: JWK): Promise<string> {
  return calculateJwkThumbprint(publicJwk(jwk), 'sha256');
}

/** The signature algorithms accepted from a KMS or entity key: ES256 for P-256, PS256 or RS256 for RSA. */
export function signatureAlgsFor(jwk: JWK): ClientJwsAlg[] {
  if (jwk.kty === 'RSA') return ['PS256', 'RS256'];
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return ['ES256'];
  throw new Error('the key is neither RSA nor P-256');
}

const publicOfCache = new WeakMap<JWK, JWK>();

/** publicJwk(jwk), the same object for the same JWK (so that its imports are cached). */
function publicOf(jwk: JWK): JWK {
  let pub = publicOfCache.get(jwk);
  if (!pub) {
    pub = publicJwk(jwk);
    publicOfCache.set(jwk, pub);
  }
  return pub;
}

const imported = new WeakMap<JWK, Map<string, Promise<CryptoKey>>>();

/** `jwk` imported for `alg` (cached per JWK object and alg). */
function keyFor(jwk: JWK, alg: string): Promise<CryptoKey> {
  let byAlg = imported.get(jwk);
  if (!byAlg) {
    byAlg = new Map();
    imported.set(jwk, byAlg);
  }
  let key = byAlg.get(alg);
  if (!key) {
    key = importJWK(bareJwk(jwk), alg) as Promise<CryptoKey>;
    key.catch(() => byAlg.delete(alg));
    byAlg.set(alg, key);
  }
  return key;
}

/** Which entity key to make: RSA (PS256 and RSA-OAEP) or P-256 (ES256 and ECDH-ES+A256KW). */
export interface KeyGenOptions {
  type?: 'RSA' | 'EC';
  modulusLength?: number;
}

/** A new private JWK for an entity key (extractable, so that a client can save it). */
export async function generatePrivateJwk(opts: KeyGenOptions = {}): Promise<JWK> {
  const { privateKey } =
    opts.type === 'EC'
      ? await generateKeyPair('ES256', { extractable: true })
      : await generateKeyPair('PS256', { extractable: true, modulusLength: opts.modulusLength ?? 2048 });
  return bareJwk(await exportJWK(privateKey));
}

// ---------------------------------------------------------------------------------------------
// The secure channel: ECDH P-256 and HKDF-SHA256

/** An ephemeral ECDH P-256 key pair: the private key stays inside WebCrypto. */
export interface EphemeralKeyPair {
  privateKey: CryptoKey;
  publicJwk: JWK;
}

const ECDH_P256 = { name: 'ECDH', namedCurve: 'P-256' } as const;

/** A fresh ephemeral key pair for a handshake. */
export async function generateEphemeralKeyPair(): Promise<EphemeralKeyPair> {
  const pair = (await subtle().generateKey(ECDH_P256, false, ['deriveBits'])) as { privateKey: CryptoKey; publicKey: CryptoKey };
  return { privateKey: pair.privateKey, publicJwk: publicJwk((await subtle().exportKey('jwk', pair.publicKey)) as JWK) };
}

/** An ECDH P-256 private key from its JWK (for known-answer tests). */
export async function importEphemeralPrivate(jwk: JWK): Promise<CryptoKey> {
  return subtle().importKey('jwk', { kty: 'EC', crv: 'P-256', x: jwk.x!, y: jwk.y!, d: jwk.d! }, ECDH_P256, false, ['deriveBits']);
}

/** HKDF-SHA256 with an empty salt and info (RFC 5869). */
async function hkdfSha256(ikm: Uint8Array, length = 32): Promise<Uint8Array> {
  const key = await subtle().importKey('raw', ikm as Uint8Array<ArrayBuffer>, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle().deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: new Uint8Array(0) }, key, length * 8));
}

/** The channel key: HKDF-SHA256 of the ECDH shared secret (x-coordinate) of our private key and the peer's P-256 public JWK. */
export async function deriveChannelKey(ownPrivate: CryptoKey, peer: JWK, length = 32): Promise<Uint8Array> {
  if (peer.kty !== 'EC' || peer.crv !== 'P-256') throw new Error('the peer key is not a P-256 key');
  // The import rejects a point that is not on the curve.
  const peerKey = await subtle().importKey('jwk', publicJwk(peer), ECDH_P256, false, []);
  const z = new Uint8Array(await subtle().deriveBits({ name: 'ECDH', public: peerKey }, ownPrivate, 256));
  const key = await hkdfSha256(z, length);
  z.fill(0);
  return key;
}

// ---------------------------------------------------------------------------------------------
// JWE

/** Encrypts under a 32-byte key used directly (`{"alg":"dir","kid":kid,"enc":"A256GCM"}`, the header the KMS requires). */
export async function encryptDir(key: Uint8Array, plaintext: Uint8Array | string, kid: string, test?: { iv: Uint8Array }): Promise<string> {
  if (key.length !== 32) throw new Error('an A256GCM key is 32 bytes');
  const jwe = new CompactEncrypt(typeof plaintext === 'string' ? ENCODER.encode(plaintext) : plaintext).setProtectedHeader({
    alg: 'dir',
    kid,
    enc: 'A256GCM',
  });
  if (test) jwe.setInitializationVector(test.iv);
  return jwe.encrypt(key);
}

/** A decrypted JWE: its protected header and plaintext. */
export interface Decrypted {
  header: CompactJWEHeaderParameters;
  plaintext: Uint8Array;
}

/** Decrypts a `dir` + A256GCM compact JWE with a 32-byte key. */
export async function decryptDir(jwe: string, key: Uint8Array): Promise<Decrypted> {
  const { plaintext, protectedHeader } = await compactDecrypt(jwe, key, {
    keyManagementAlgorithms: ['dir'],
    contentEncryptionAlgorithms: ['A256GCM'],
  });
  return { header: protectedHeader, plaintext };
}

/** Encrypts to a public key (the KMS's static key): RSA-OAEP for RSA, ECDH-ES for EC; A256GCM. */
export async function encryptToKey(recipient: JWK, plaintext: Uint8Array | string, kid: string): Promise<string> {
  const alg = recipient.kty === 'RSA' ? 'RSA-OAEP' : 'ECDH-ES';
  return new CompactEncrypt(typeof plaintext === 'string' ? ENCODER.encode(plaintext) : plaintext)
    .setProtectedHeader({ alg, kid, enc: 'A256GCM' })
    .encrypt(await keyFor(recipient, alg));
}

/** The algorithms a GK's key may be wrapped with, to an RSA or an EC entity key. */
const UNWRAP_ALGS = ['ECDH-ES+A256KW', 'RSA-OAEP', 'RSA-OAEP-256'];

/** Decrypts a JWE sent to our private key (a wrapped GK): RSA-OAEP(-256) or ECDH-ES+A256KW, A256GCM. */
export async function decryptWithKey(jwe: string, privateJwk: JWK): Promise<Decrypted> {
  const { plaintext, protectedHeader } = await compactDecrypt(jwe, (header) => keyFor(privateJwk, header.alg), {
    keyManagementAlgorithms: UNWRAP_ALGS,
    contentEncryptionAlgorithms: ['A256GCM'],
  });
  return { header: protectedHeader, plaintext };
}

// ---------------------------------------------------------------------------------------------
// JWS

/** A verified JWS: its protected header and payload. */
export interface Verified {
  header: CompactJWSHeaderParameters;
  payload: Uint8Array;
}

/** Verifies a compact JWS with a public JWK, accepting only `algs` (by default those of the key's type). */
export async function verifyJws(jws: string, publicKey: JWK, algs: readonly ClientJwsAlg[] = signatureAlgsFor(publicKey)): Promise<Verified> {
  const pub = publicOf(publicKey);
  const { payload, protectedHeader } = await compactVerify(jws, (header) => keyFor(pub, header.alg), { algorithms: [...algs] });
  return { header: protectedHeader, payload };
}

/** Signs `payload` as a compact JWS with a private JWK; `alg` first in the header, then `header`. */
export async function signJws(privateJwk: JWK, alg: ClientJwsAlg, payload: Uint8Array | string, header: Record<string, unknown> = {}): Promise<string> {
  return new CompactSign(typeof payload === 'string' ? ENCODER.encode(payload) : payload)
    .setProtectedHeader(Object.assign({ alg }, header, { alg }))
    .sign(await keyFor(privateJwk, alg));
}

// ---------------------------------------------------------------------------------------------
// Parsing without keys

function jsonObjectOf(b64: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8(b64uDecode(b64)));
  } catch {
    throw new Error(`${what} is not base64url UTF-8 JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

/** A compact JWS split and decoded, NOT verified: its protected header (with a string alg) and payload. */
export interface DecodedJws {
  header: Record<string, unknown> & { alg: string; kid?: string };
  payload: Uint8Array;
}

/** Decodes a compact JWS without verifying it; throws when it is not 3 parts, its header is not a JSON object with alg, or it uses crit or b64. */
export function decodeJws(jws: string): DecodedJws {
  const parts = typeof jws === 'string' ? jws.split('.') : [];
  if (parts.length !== 3) throw new Error('a compact JWS has 3 parts');
  const header = jsonObjectOf(parts[0]!, 'the JWS header');
  if (typeof header.alg !== 'string') throw new Error('the JWS header has no alg');
  if (header.crit !== undefined || header.b64 !== undefined) throw new Error('"crit" and "b64" are not supported');
  if (header.kid !== undefined && typeof header.kid !== 'string') throw new Error('the JWS header kid is not a string');
  return { header: header as DecodedJws['header'], payload: b64uDecode(parts[1]!) };
}

/** The protected header of a compact JWE, not decrypted; throws when it is not 5 parts, has no string alg and enc, or uses zip or crit. */
export function decodeJweHeader(jwe: string): Record<string, unknown> & { alg: string; enc: string; kid?: string } {
  const parts = typeof jwe === 'string' ? jwe.split('.') : [];
  if (parts.length !== 5) throw new Error('a compact JWE has 5 parts');
  const header = jsonObjectOf(parts[0]!, 'the JWE header');
  if (typeof header.alg !== 'string' || typeof header.enc !== 'string') throw new Error('the JWE header needs alg and enc');
  if (header.zip !== undefined || header.crit !== undefined) throw new Error('"zip" and "crit" are not supported');
  if (header.kid !== undefined && typeof header.kid !== 'string') throw new Error('the JWE header kid is not a string');
  return header as Record<string, unknown> & { alg: string; enc: string; kid?: string };
}
