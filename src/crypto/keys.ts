/**
 * JWK import/export on node:crypto KeyObjects (RFC 7517, RFC 7518 §6), RFC 7638 thumbprints and
 * fast EC key generation.
 *
 * Node 20 pitfall: `.export({ format: 'jwk' })` of a key made by `generateKeyPairSync('ec', ...)`
 * can hang the process (GC finaliser deadlock). This module therefore generates EC keys with
 * `createECDH` and only ever exports keys that were imported from JWK.
 */
import { createECDH, createHash, createPrivateKey, createPublicKey, sign, verify, KeyObject, type ECDH, type JsonWebKey } from 'node:crypto';
import { decode, encode } from './base64url.js';
import { keyInvalid } from './errors.js';

/** The EC curves we accept (RFC 7518 §6.2.1.1). */
export type EcCurve = 'P-256' | 'P-384' | 'P-521';

/** Per-curve facts: OpenSSL name, coordinate (and scalar) length in bytes, ES hash. */
export interface CurveInfo {
  readonly crv: EcCurve;
  readonly nodeName: 'prime256v1' | 'secp384r1' | 'secp521r1';
  readonly size: number;
}

const CURVES: ReadonlyMap<string, CurveInfo> = new Map<string, CurveInfo>([
  ['P-256', { crv: 'P-256', nodeName: 'prime256v1', size: 32 }],
  ['P-384', { crv: 'P-384', nodeName: 'secp384r1', size: 48 }],
  ['P-521', { crv: 'P-521', nodeName: 'secp521r1', size: 66 }],
]);
const CURVES_BY_NODE_NAME: ReadonlyMap<string, CurveInfo> = new Map([...CURVES.values()].map((c) => [c.nodeName, c] as const));

/** Smallest RSA modulus we accept (RFC 7518 §3.3, §4.2: "2048 bits or larger MUST be used"). */
const MIN_RSA_BITS = 2048;
/** Largest RSA modulus we accept; bounds the cost an attacker-supplied key can impose. */
const MAX_RSA_BITS = 16384;

/** Raw uncompressed public points (0x04 ‖ X ‖ Y), cached per KeyObject. */
const rawPointCache = new WeakMap<KeyObject, Buffer>();
/** ECDH objects holding the scalar of private KeyObjects we created or imported. */
const ecdhCache = new WeakMap<KeyObject, ECDH>();
/** Public JWKs, cached per KeyObject. */
const publicJwkCache = new WeakMap<KeyObject, JsonWebKey>();

/** Curve facts for a JWK `crv` name, or undefined if unsupported. */
function curveByName(crv: unknown): CurveInfo | undefined {
  return typeof crv === 'string' ? CURVES.get(crv) : undefined;
}

/** Curve facts of an EC KeyObject; throws `JOSE_KEY_INVALID` for non-EC keys or other curves. */
export function ecCurveOf(key: KeyObject): CurveInfo {
  if (key.asymmetricKeyType !== 'ec') throw keyInvalid('not an EC key');
  const info = CURVES_BY_NODE_NAME.get(key.asymmetricKeyDetails?.namedCurve ?? '');
  if (!info) throw keyInvalid('unsupported EC curve');
  return info;
}

/** Modulus length in bits of an RSA KeyObject; throws `JOSE_KEY_INVALID` if not RSA or too small. */
export function rsaModulusBits(key: KeyObject): number {
  if (key.asymmetricKeyType !== 'rsa') throw keyInvalid('not an RSA key');
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) throw keyInvalid(`RSA modulus must be at least ${MIN_RSA_BITS} bits`);
  return bits;
}

/** The ECDH object cached for a private EC KeyObject made by this module, if any. */
export function cachedEcdh(key: KeyObject): ECDH | undefined {
  return ecdhCache.get(key);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Decodes a base64url JWK member, mapping format errors to `JOSE_KEY_INVALID`. */
function member(jwk: Record<string, unknown>, name: string): Buffer {
  const v = jwk[name];
  if (typeof v !== 'string') throw keyInvalid(`JWK member "${name}" must be a string`);
  try {
    return decode(v);
  } catch {
    throw keyInvalid(`JWK member "${name}" is not base64url`);
  }
}

/** Reads and checks kty/crv/x/y of an EC JWK (RFC 7518 §6.2.1). */
function ecPublicMembers(jwk: Record<string, unknown>): { info: CurveInfo; x: string; y: string; raw: Buffer } {
  const info = curveByName(jwk.crv);
  if (!info) throw keyInvalid('unsupported or missing EC "crv" (P-256, P-384, P-521 are accepted)');
  const x = member(jwk, 'x');
  const y = member(jwk, 'y');
  // RFC 7518 §6.2.1.2/3: x and y MUST be the full coordinate length.
  if (x.length !== info.size || y.length !== info.size) {
    throw keyInvalid(`EC coordinates must be ${info.size} bytes for ${info.crv}`);
  }
  return { info, x: jwk.x as string, y: jwk.y as string, raw: Buffer.concat([Buffer.of(4), x, y]) };
}

/** Reads and checks n/e of an RSA JWK (RFC 7518 §6.3.1). */
function rsaPublicMembers(jwk: Record<string, unknown>): { n: string; e: string } {
  const n = member(jwk, 'n');
  const e = member(jwk, 'e');
  // RFC 7518 §6.3.1.1/2: minimum number of octets, so no leading zero octet.
  if (n.length === 0 || n[0] === 0) throw keyInvalid('RSA "n" must have no leading zero octets');
  if (e.length === 0 || e[0] === 0) throw keyInvalid('RSA "e" must have no leading zero octets');
  const bits = (n.length - 1) * 8 + (32 - Math.clz32(n[0]!));
  if (bits < MIN_RSA_BITS) throw keyInvalid(`RSA modulus must be at least ${MIN_RSA_BITS} bits`);
  if (bits > MAX_RSA_BITS) throw keyInvalid(`RSA modulus must be at most ${MAX_RSA_BITS} bits`);
  if (e.length > 8 || (e[e.length - 1]! & 1) === 0 || (e.length === 1 && e[0]! < 3)) {
    throw keyInvalid('RSA public exponent must be odd, at least 3 and at most 64 bits');
  }
  return { n: jwk.n as string, e: jwk.e as string };
}

/**
 * Imports the public part of an EC (P-256/384/521) or RSA (>= 2048 bits) JWK. Private members
 * (d, p, q, dp, dq, qi, oth, k) are ignored: the key is built from kty/crv/x/y or kty/n/e only.
 * EC points not on the curve are rejected by the import. Throws `JOSE_KEY_INVALID`.
 */
export function importPublicJwk(jwk: unknown): KeyObject {
  if (!isObject(jwk)) throw keyInvalid('JWK must be a JSON object');
  if (jwk.kty === 'EC') {
    const { info, x, y, raw } = ecPublicMembers(jwk);
    let key: KeyObject;
    try {
      key = createPublicKey({ key: { kty: 'EC', crv: info.crv, x, y }, format: 'jwk' });
    } catch {
      throw keyInvalid('EC public key is not a point on the curve');
    }
    rawPointCache.set(key, raw);
    return key;
  }
  if (jwk.kty === 'RSA') {
    const { n, e } = rsaPublicMembers(jwk);
    try {
      return createPublicKey({ key: { kty: 'RSA', n, e }, format: 'jwk' });
    } catch {
      throw keyInvalid('RSA public key could not be imported');
    }
  }
  throw keyInvalid('unsupported or missing "kty" (EC and RSA are accepted)');
}

/** Imports an EC or RSA private JWK, checking that the private part matches the public part. */
export function importPrivateJwk(jwk: unknown): KeyObject {
  if (!isObject(jwk)) throw keyInvalid('JWK must be a JSON object');
  if (jwk.kty === 'EC') {
    const { info, x, y, raw } = ecPublicMembers(jwk);
    const d = member(jwk, 'd');
    // RFC 7518 §6.2.2.1: d MUST be the full length of the group order.
    if (d.length !== info.size) throw keyInvalid(`EC "d" must be ${info.size} bytes for ${info.crv}`);
    const ecdh = createECDH(info.nodeName);
    try {
      ecdh.setPrivateKey(d);
    } catch {
      throw keyInvalid('EC "d" is not a valid private scalar');
    }
    // OpenSSL does not check that d and (x, y) belong together; we do.
    if (!ecdh.getPublicKey().equals(raw)) throw keyInvalid('EC "d" does not match "x"/"y"');
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: { kty: 'EC', crv: info.crv, x, y, d: jwk.d as string }, format: 'jwk' });
    } catch {
      throw keyInvalid('EC private key could not be imported');
    }
    rawPointCache.set(key, raw);
    ecdhCache.set(key, ecdh);
    return key;
  }
  if (jwk.kty === 'RSA') {
    const { n, e } = rsaPublicMembers(jwk);
    if (jwk.oth !== undefined) throw keyInvalid('multi-prime RSA keys ("oth") are not supported');
    const priv: JsonWebKey = { kty: 'RSA', n, e };
    for (const name of ['d', 'p', 'q', 'dp', 'dq', 'qi'] as const) {
      member(jwk, name); // type and base64url check
      priv[name] = jwk[name] as string;
    }
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: priv, format: 'jwk' });
    } catch {
      throw keyInvalid('RSA private key could not be imported');
    }
    // OpenSSL does not check consistency at import; a sign/verify round trip does.
    const probe = Buffer.from('jwk consistency probe');
    let ok = false;
    try {
      const pub = createPublicKey({ key: { kty: 'RSA', n, e }, format: 'jwk' });
      ok = verify('sha256', probe, pub, sign('sha256', probe, key));
    } catch {
      ok = false;
    }
    if (!ok) throw keyInvalid('RSA private members do not match "n"/"e"');
    return key;
  }
  throw keyInvalid('unsupported or missing "kty" (EC and RSA are accepted)');
}

/** The public JWK of an EC or RSA key (public or private): kty/crv/x/y or kty/n/e only. */
export function publicJwk(key: KeyObject): JsonWebKey {
  let jwk = publicJwkCache.get(key);
  if (!jwk) {
    if (key.type === 'secret') throw keyInvalid('a secret key has no public JWK');
    const type = key.asymmetricKeyType;
    if (type !== 'ec' && type !== 'rsa') throw keyInvalid('only EC and RSA keys are supported');
    const pub = key.type === 'private' ? createPublicKey(key) : key;
    const full = pub.export({ format: 'jwk' });
    jwk =
      type === 'ec'
        ? { kty: 'EC', crv: ecCurveOf(key).crv, x: full.x as string, y: full.y as string }
        : { kty: 'RSA', n: full.n as string, e: full.e as string };
    publicJwkCache.set(key, jwk);
  }
  return { ...jwk };
}

/** RFC 7638 JWK SHA-256 thumbprint, base64url, of an EC, RSA or oct JWK (or a KeyObject). */
export function thumbprint(jwk: JsonWebKey | KeyObject): string {
  const src: Record<string, unknown> = jwk instanceof KeyObject ? publicJwk(jwk) : jwk;
  if (!isObject(src)) throw keyInvalid('JWK must be a JSON object');
  const str = (name: string): string => {
    const v = src[name];
    if (typeof v !== 'string') throw keyInvalid(`JWK member "${name}" must be a string`);
    return v;
  };
  // RFC 7638 §3.2: required members only, lexicographic order, no whitespace.
  let canonical: Record<string, string>;
  if (src.kty === 'EC') canonical = { crv: str('crv'), kty: 'EC', x: str('x'), y: str('y') };
  else if (src.kty === 'RSA') canonical = { e: str('e'), kty: 'RSA', n: str('n') };
  else if (src.kty === 'oct') canonical = { k: str('k'), kty: 'oct' };
  else throw keyInvalid('unsupported or missing "kty" for a thumbprint');
  return createHash('sha256').update(JSON.stringify(canonical)).digest('base64url');
}

/** A freshly generated EC key pair. */
export interface EcKeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: JsonWebKey;
}

/** Generates an EC key pair with createECDH (never generateKeyPairSync, see the module note). */
export function generateEcKeyPair(curve: EcCurve = 'P-256'): EcKeyPair {
  const info = curveByName(curve);
  if (!info) throw keyInvalid('unsupported EC curve');
  const ecdh = createECDH(info.nodeName);
  const raw = ecdh.generateKeys();
  const x = encode(raw.subarray(1, 1 + info.size));
  const y = encode(raw.subarray(1 + info.size));
  // getPrivateKey() drops leading zero octets; JWK "d" must be full length (RFC 7518 §6.2.2.1).
  const scalar = ecdh.getPrivateKey();
  const d = Buffer.alloc(info.size);
  scalar.copy(d, info.size - scalar.length);
  const pubJwk: JsonWebKey = { kty: 'EC', crv: info.crv, x, y };
  const privateKey = createPrivateKey({ key: { ...pubJwk, d: encode(d) }, format: 'jwk' });
  const publicKey = createPublicKey({ key: pubJwk, format: 'jwk' });
  d.fill(0);
  scalar.fill(0);
  rawPointCache.set(privateKey, raw);
  rawPointCache.set(publicKey, raw);
  ecdhCache.set(privateKey, ecdh);
  publicJwkCache.set(privateKey, pubJwk);
  publicJwkCache.set(publicKey, pubJwk);
  return { privateKey, publicKey, publicJwk: { ...pubJwk } };
}

/**
 * The uncompressed public point 0x04 ‖ X ‖ Y of an EC key (public or private), cached per key.
 * The returned buffer is shared with the cache: do not modify it.
 */
export function ecRawPublic(key: KeyObject): Buffer {
  let raw = rawPointCache.get(key);
  if (!raw) {
    const info = ecCurveOf(key);
    const jwk = publicJwk(key);
    const x = decode(jwk.x as string);
    const y = decode(jwk.y as string);
    if (x.length !== info.size || y.length !== info.size) throw keyInvalid('unexpected EC coordinate length');
    raw = Buffer.concat([Buffer.of(4), x, y]);
    rawPointCache.set(key, raw);
  }
  return raw;
}
