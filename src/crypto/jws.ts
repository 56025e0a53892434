/**
 * Compact JWS (RFC 7515) on node:crypto for ES256/384/512, PS256/384/512 and RS256/384/512
 * (RFC 7518 §3.3-3.5). No `none`, no HMAC, no unencoded payloads, no `crit` extensions.
 */
import { constants, sign, verify, type KeyObject, type SignKeyObjectInput, type VerifyKeyObjectInput } from 'node:crypto';
import { decode, decodeJsonObject, encode } from './base64url.js';
import { JoseError, algNotAllowed, keyInvalid, malformed } from './errors.js';
import { ecCurveOf, rsaModulusBits, type EcCurve } from './keys.js';

/** The signature algorithms implemented here. */
export type JwsAlg = 'ES256' | 'ES384' | 'ES512' | 'PS256' | 'PS384' | 'PS512' | 'RS256' | 'RS384' | 'RS512';

/** A parsed JWS Protected Header; `alg` is known to be a string. */
interface JwsHeader {
  alg: string;
  kid?: string;
  [name: string]: unknown;
}

/** A strictly parsed, NOT verified, compact JWS. */
export interface DecodedJws {
  header: JwsHeader;
  payload: Buffer;
  signingInput: string;
  signature: Buffer;
}

/** The result of a successful verification. */
export interface VerifiedJws {
  header: JwsHeader;
  payload: Buffer;
}

interface AlgSpec {
  readonly kind: 'ec' | 'pss' | 'pkcs1';
  readonly hash: 'sha256' | 'sha384' | 'sha512';
  readonly hashLen: number;
  /** ECDSA only: the curve the alg is bound to (RFC 7518 §3.4). */
  readonly crv?: EcCurve;
  /** ECDSA only: the length of R ‖ S in bytes. */
  readonly sigLen?: number;
}

const ALGS: ReadonlyMap<string, AlgSpec> = new Map<string, AlgSpec>([
  ['ES256', { kind: 'ec', hash: 'sha256', hashLen: 32, crv: 'P-256', sigLen: 64 }],
  ['ES384', { kind: 'ec', hash: 'sha384', hashLen: 48, crv: 'P-384', sigLen: 96 }],
  ['ES512', { kind: 'ec', hash: 'sha512', hashLen: 64, crv: 'P-521', sigLen: 132 }],
  ['PS256', { kind: 'pss', hash: 'sha256', hashLen: 32 }],
  ['PS384', { kind: 'pss', hash: 'sha384', hashLen: 48 }],
  ['PS512', { kind: 'pss', hash: 'sha512', hashLen: 64 }],
  ['RS256', { kind: 'pkcs1', hash: 'sha256', hashLen: 32 }],
  ['RS384', { kind: 'pkcs1', hash: 'sha384', hashLen: 48 }],
  ['RS512', { kind: 'pkcs1', hash: 'sha512', hashLen: 64 }],
]);

/** Whether `key` (already known to be public or private) has the type and curve `spec` needs. */
function keyFits(key: KeyObject, spec: AlgSpec): boolean {
  if (spec.kind === 'ec') return key.asymmetricKeyType === 'ec' && ecCurveOf(key).crv === spec.crv;
  return key.asymmetricKeyType === 'rsa';
}

/** node:crypto options for `spec` (RFC 7518 §3.4: R ‖ S; §3.5: salt = hash length, MGF1 same hash). */
function keyInput(key: KeyObject, spec: AlgSpec): SignKeyObjectInput & VerifyKeyObjectInput {
  if (spec.kind === 'ec') return { key, dsaEncoding: 'ieee-p1363' };
  if (spec.kind === 'pss') return { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: spec.hashLen };
  return { key, padding: constants.RSA_PKCS1_PADDING };
}

/** The signature algorithms accepted from a KMS or entity key of this type: ES256 for P-256, PS256 or RS256 for RSA. */
export function signatureAlgsFor(key: KeyObject): JwsAlg[] {
  return key.asymmetricKeyType === 'rsa' ? ['PS256', 'RS256'] : ['ES256'];
}

/** Signs `payload` as a compact JWS; `alg` goes first in the header, then the `header` members. */
export function signCompact(privateKey: KeyObject, alg: JwsAlg, payload: Uint8Array | string, header: Record<string, unknown> = {}): string {
  return compactSigner(privateKey, alg, header)(payload);
}

/**
 * A signer for many payloads under one key, alg and header: the checks of the key, alg and header,
 * and the encoded protected header, done once.
 */
export function compactSigner(privateKey: KeyObject, alg: JwsAlg, header: Record<string, unknown> = {}): (payload: Uint8Array | string) => string {
  const spec = ALGS.get(alg);
  if (!spec) throw algNotAllowed('unsupported JWS "alg"');
  if (header.alg !== undefined && header.alg !== alg) throw malformed('header "alg" differs from the alg argument');
  if (header.crit !== undefined || header.b64 !== undefined) throw malformed('"crit" and "b64" are not supported');
  if (privateKey.type !== 'private') throw keyInvalid('signing needs a private key');
  if (!keyFits(privateKey, spec)) throw keyInvalid(`the key does not fit ${alg}`);
  if (spec.kind !== 'ec') rsaModulusBits(privateKey);
  const { alg: _alg, ...rest } = header;
  const prefix = `${encode(JSON.stringify({ alg, ...rest }))}.`;
  const input = keyInput(privateKey, spec);
  return (payload) => {
    const signingInput = prefix + encode(payload);
    return `${signingInput}.${encode(sign(spec.hash, Buffer.from(signingInput, 'ascii'), input))}`;
  };
}

/**
 * Strictly parses a compact JWS without verifying it (3 parts, strict base64url, header a JSON
 * object with a string `alg`, no `crit`, no `b64`); throws `JOSE_MALFORMED`.
 */
export function decodeCompactJws(token: string): DecodedJws {
  if (typeof token !== 'string') throw malformed('JWS must be a string');
  const parts = token.split('.');
  if (parts.length !== 3) throw malformed('compact JWS must have exactly 3 parts');
  const [h, p, s] = parts as [string, string, string];
  const header = decodeJsonObject(h, 'JWS protected header');
  // RFC 7515 §4.1.1: "alg" is REQUIRED.
  if (typeof header.alg !== 'string') throw malformed('JWS header "alg" must be a string');
  // RFC 7515 §4.1.11: "crit" extensions we do not understand MUST be rejected (we understand none).
  if (header.crit !== undefined) throw malformed('JWS "crit" header extensions are not supported');
  // RFC 7797: unencoded payloads ("b64") are not supported.
  if (header.b64 !== undefined) throw malformed('JWS "b64" header is not supported');
  if (header.kid !== undefined && typeof header.kid !== 'string') throw malformed('JWS header "kid" must be a string');
  return { header: header as JwsHeader, payload: decode(p), signingInput: `${h}.${p}`, signature: decode(s) };
}

/**
 * Verifies a compact JWS with `publicKey`. The header's `alg` must be in `allowed` and fit the
 * key type (`none` and HMAC are always refused: RFC 8725 §3.1, §3.2); throws
 * `JOSE_ALG_NOT_ALLOWED`, `JOSE_MALFORMED`, `JOSE_KEY_INVALID` or `JOSE_SIGNATURE_INVALID`.
 */
export function verifyCompact(token: string, publicKey: KeyObject, allowed: readonly JwsAlg[]): VerifiedJws {
  return verifyDecoded(decodeCompactJws(token), publicKey, allowed);
}

/** `verifyCompact` on a JWS already parsed by `decodeCompactJws` (same checks, no second parse). */
export function verifyDecoded(jws: DecodedJws, publicKey: KeyObject, allowed: readonly JwsAlg[]): VerifiedJws {
  const alg = jws.header.alg;
  const spec = ALGS.get(alg);
  if (!spec || !(allowed as readonly string[]).includes(alg)) throw algNotAllowed('JWS "alg" is not allowed');
  if (publicKey.type !== 'public') throw keyInvalid('verification needs a public key');
  // RFC 8725 §3.1: the algorithm must fit the key, never the other way round.
  if (!keyFits(publicKey, spec)) throw algNotAllowed('JWS "alg" does not fit the key');
  const expectedLen = spec.kind === 'ec' ? spec.sigLen! : Math.ceil(rsaModulusBits(publicKey) / 8);
  if (jws.signature.length !== expectedLen) throw new JoseError('JOSE_SIGNATURE_INVALID', 'JWS signature is invalid');
  let ok = false;
  try {
    ok = verify(spec.hash, Buffer.from(jws.signingInput, 'ascii'), keyInput(publicKey, spec), jws.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new JoseError('JOSE_SIGNATURE_INVALID', 'JWS signature is invalid');
  return { header: jws.header, payload: jws.payload };
}
