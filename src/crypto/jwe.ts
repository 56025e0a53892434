/**
 * Compact JWE (RFC 7516) on node:crypto for the few modes the KMS uses: `dir`, `ECDH-ES`
 * (direct and +A128KW/+A192KW/+A256KW, RFC 7518 §4.6), `RSA-OAEP` and `RSA-OAEP-256`
 * (RFC 7518 §4.3), each with A128GCM/A192GCM/A256GCM content encryption (RFC 7518 §5.3).
 *
 * Every failure after the algorithms have been accepted (bad tag, bad key unwrap, wrong key,
 * bad lengths, a bad `epk`) is the one generic `JOSE_DECRYPTION_FAILED` (RFC 7516 §11.4, §11.5).
 */
import {
  constants,
  createCipheriv,
  createDecipheriv,
  createECDH,
  createHash,
  createPublicKey,
  diffieHellman,
  privateDecrypt,
  publicEncrypt,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { decode, decodeJsonObject, encode } from './base64url.js';
import { algNotAllowed, decryptionFailed, keyInvalid, malformed } from './errors.js';
import { cachedEcdh, ecCurveOf, ecRawPublic, rsaModulusBits, type CurveInfo } from './keys.js';
import { randomBytes } from './random.js';

/** Content encryption algorithms (RFC 7518 §5.3). */
export type JweEnc = 'A128GCM' | 'A192GCM' | 'A256GCM';
/** ECDH-ES key agreement algorithms (RFC 7518 §4.6). */
export type EcdhEsAlg = 'ECDH-ES' | 'ECDH-ES+A128KW' | 'ECDH-ES+A192KW' | 'ECDH-ES+A256KW';
/** RSAES-OAEP key encryption algorithms (RFC 7518 §4.3). */
type RsaOaepAlg = 'RSA-OAEP' | 'RSA-OAEP-256';

/** A parsed JWE Protected Header; `alg` and `enc` are known to be strings. */
export interface JweProtectedHeader {
  alg: string;
  enc: string;
  kid?: string;
  epk?: JsonWebKey;
  apu?: string;
  apv?: string;
  [name: string]: unknown;
}

/** The algorithms a caller accepts when decrypting. */
export interface JweAllowed {
  alg: readonly string[];
  enc: readonly string[];
}

/** The result of a successful decryption. */
export interface JweDecryptResult {
  header: JweProtectedHeader;
  plaintext: Buffer;
}

/** Header for `encryptDir`: `enc`, an optional `kid` and further non-reserved members. */
export interface DirHeader {
  enc: JweEnc;
  kid?: string;
  [name: string]: unknown;
}

/** Options of `encryptEcdhEs`. */
export interface EcdhEsOptions {
  alg: EcdhEsAlg;
  enc: JweEnc;
  kid?: string;
  header?: Record<string, unknown>;
  apu?: Buffer;
  apv?: Buffer;
}

/** Options of `encryptRsaOaep`. */
export interface RsaOaepOptions {
  alg: RsaOaepAlg;
  enc: JweEnc;
  kid?: string;
  header?: Record<string, unknown>;
}

/** Options of `encryptJwe` with a secret KeyObject. */
interface DirOptions {
  alg: 'dir';
  enc: JweEnc;
  kid?: string;
  header?: Record<string, unknown>;
}

/** Options of `encryptJwe`: the `alg` selects the mode. */
export type EncryptJweOptions = EcdhEsOptions | RsaOaepOptions | DirOptions;

interface EncInfo {
  readonly keyLen: number;
  readonly cipher: 'aes-128-gcm' | 'aes-192-gcm' | 'aes-256-gcm';
}

const ENCS: ReadonlyMap<string, EncInfo> = new Map<string, EncInfo>([
  ['A128GCM', { keyLen: 16, cipher: 'aes-128-gcm' }],
  ['A192GCM', { keyLen: 24, cipher: 'aes-192-gcm' }],
  ['A256GCM', { keyLen: 32, cipher: 'aes-256-gcm' }],
]);
/** ECDH-ES algorithms and their key-wrapping key length (0 = direct key agreement). */
const ECDH_KW: ReadonlyMap<string, number> = new Map([
  ['ECDH-ES', 0],
  ['ECDH-ES+A128KW', 16],
  ['ECDH-ES+A192KW', 24],
  ['ECDH-ES+A256KW', 32],
]);
const OAEP_HASH: ReadonlyMap<string, 'sha1' | 'sha256'> = new Map([
  ['RSA-OAEP', 'sha1'],
  ['RSA-OAEP-256', 'sha256'],
] as const);
const KW_CIPHER: ReadonlyMap<number, string> = new Map([
  [16, 'id-aes128-wrap'],
  [24, 'id-aes192-wrap'],
  [32, 'id-aes256-wrap'],
]);
/** RFC 7518 §5.3: 96-bit IV, 128-bit tag. */
const IV_LEN = 12;
const TAG_LEN = 16;
/** RFC 3394 §2.2.3.1 default initial value. */
const KW_IV = Buffer.from('a6a6a6a6a6a6a6a6', 'hex');
/** Header members set by this module; callers may not pass them in `header`. */
const RESERVED = new Set(['alg', 'enc', 'kid', 'epk', 'apu', 'apv', 'zip', 'crit']);

/** A compact JWE split and strictly decoded, not yet decrypted (see `parseCompactJwe`). */
export interface ParsedJwe {
  header: JweProtectedHeader;
  aad: Buffer;
  encryptedKey: Buffer;
  iv: Buffer;
  ciphertext: Buffer;
  tag: Buffer;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function toBytes(data: Uint8Array | string): Buffer {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** Splits and strictly decodes a compact JWE (RFC 7516 §7.1, §5.2 steps 1-4). */
function parseJwe(token: string): ParsedJwe {
  if (typeof token !== 'string') throw malformed('JWE must be a string');
  const parts = token.split('.');
  if (parts.length !== 5) throw malformed('compact JWE must have exactly 5 parts');
  const [h, ek, iv, ct, tag] = parts as [string, string, string, string, string];
  const header = decodeJsonObject(h, 'JWE protected header');
  // RFC 7516 §4.1.1, §4.1.2: "alg" and "enc" are REQUIRED.
  if (typeof header.alg !== 'string') throw malformed('JWE header "alg" must be a string');
  if (typeof header.enc !== 'string') throw malformed('JWE header "enc" must be a string');
  // RFC 7516 §4.1.13: "crit" extensions we do not understand MUST be rejected (we understand none).
  if (header.crit !== undefined) throw malformed('JWE "crit" header extensions are not supported');
  // RFC 7516 §4.1.3: compression is not supported (and invites compression side channels).
  if (header.zip !== undefined) throw algNotAllowed('JWE compression ("zip") is not supported');
  if (header.kid !== undefined && typeof header.kid !== 'string') throw malformed('JWE header "kid" must be a string');
  return {
    header: header as JweProtectedHeader,
    aad: Buffer.from(h, 'ascii'),
    encryptedKey: decode(ek),
    iv: decode(iv),
    ciphertext: decode(ct),
    tag: decode(tag),
  };
}

/** Reads the protected header of a compact JWE without decrypting it; throws `JOSE_MALFORMED`. */
export function readJweHeader(token: string): JweProtectedHeader {
  return parseJwe(token).header;
}

/**
 * Splits and strictly decodes a compact JWE without decrypting it (the same checks as
 * `readJweHeader`); throws `JOSE_MALFORMED`. Lets a caller that routes on the header decrypt
 * with `decryptJweParsed`/`decryptDirParsed` without parsing the message twice.
 */
export function parseCompactJwe(token: string): ParsedJwe {
  return parseJwe(token);
}

function encInfoFor(enc: unknown): EncInfo {
  const info = typeof enc === 'string' ? ENCS.get(enc) : undefined;
  if (!info) throw algNotAllowed('unsupported JWE "enc"');
  return info;
}

/** The accepted content encryption of a parsed header; `JOSE_ALG_NOT_ALLOWED` otherwise. */
function allowedEnc(header: JweProtectedHeader, allowed: readonly string[]): EncInfo {
  if (!allowed.includes(header.enc)) throw algNotAllowed('JWE "enc" is not allowed');
  return encInfoFor(header.enc);
}

/** Builds the protected header in the RFC 7520 member order: alg, kid, epk, apu, apv, enc, extras. */
function buildHeader(
  alg: string,
  enc: string,
  kid: unknown,
  extra: Record<string, unknown> | undefined,
  ecdh?: { epk: JsonWebKey; apu?: Buffer | undefined; apv?: Buffer | undefined },
): Record<string, unknown> {
  const h: Record<string, unknown> = { alg };
  if (kid !== undefined) {
    if (typeof kid !== 'string') throw malformed('"kid" must be a string');
    h.kid = kid;
  }
  if (ecdh) {
    h.epk = ecdh.epk;
    if (ecdh.apu) h.apu = encode(ecdh.apu);
    if (ecdh.apv) h.apv = encode(ecdh.apv);
  }
  h.enc = enc;
  if (extra === undefined) return h;
  for (const name of Object.keys(extra)) {
    if (RESERVED.has(name)) throw malformed(`header member "${name}" is set by the library`);
  }
  return { ...h, ...extra };
}

/**
 * A symmetric key: bytes, or a secret KeyObject. A KeyObject keeps the key in native memory, out
 * of the JavaScript heap, and is the cheaper of the two to encrypt with (node:crypto turns a
 * Buffer key into a KeyObject on every call, about 1.8 µs here).
 */
export type SecretKey = Buffer | KeyObject;

function secretLength(key: SecretKey): number {
  return Buffer.isBuffer(key) ? key.length : key.type === 'secret' ? key.symmetricKeySize! : -1;
}

/** The protected header encoded (RFC 7516 §5.1 step 13) and its AAD (step 14). */
interface EncodedHeader {
  b64: string;
  aad: Buffer;
}

function encodeHeader(header: Record<string, unknown>): EncodedHeader {
  const b64 = encode(JSON.stringify(header));
  return { b64, aad: Buffer.from(b64, 'ascii') };
}

/** AES-GCM encrypts and serializes (RFC 7516 §5.1 steps 11-19; AAD = ASCII(BASE64URL(header))). */
function seal(enc: EncInfo, cek: SecretKey, iv: Buffer | undefined, plaintext: Uint8Array | string, h: EncodedHeader, encryptedKey: Buffer): string {
  if (iv !== undefined && iv.length !== IV_LEN) throw malformed(`test IV must be ${IV_LEN} bytes`);
  const nonce = iv ?? randomBytes(IV_LEN);
  const cipher = createCipheriv(enc.cipher, cek, nonce, { authTagLength: TAG_LEN });
  cipher.setAAD(h.aad);
  const first = cipher.update(toBytes(plaintext));
  const last = cipher.final();
  const ct = last.length === 0 ? first : Buffer.concat([first, last]);
  return `${h.b64}.${encode(encryptedKey)}.${encode(nonce)}.${encode(ct)}.${encode(cipher.getAuthTag())}`;
}

/** AES-GCM decrypts a parsed JWE; any failure is the generic decryption error. */
function open(enc: EncInfo, cek: SecretKey, p: ParsedJwe): Buffer {
  if (secretLength(cek) !== enc.keyLen || p.iv.length !== IV_LEN || p.tag.length !== TAG_LEN) throw decryptionFailed();
  try {
    const decipher = createDecipheriv(enc.cipher, cek, p.iv, { authTagLength: TAG_LEN });
    decipher.setAAD(p.aad);
    decipher.setAuthTag(p.tag);
    const first = decipher.update(p.ciphertext);
    const last = decipher.final(); // throws on a bad tag
    return last.length === 0 ? first : Buffer.concat([first, last]);
  } catch {
    throw decryptionFailed();
  }
}

// ---------------------------------------------------------------------------------------------
// dir (RFC 7518 §4.5)

const NO_KEY = Buffer.alloc(0);

/** Encrypts with a shared symmetric key used directly as the CEK (`alg: "dir"`). */
export function encryptDir(key: SecretKey, plaintext: Uint8Array | string, header: DirHeader, test?: { iv: Buffer }): string {
  return dirEncrypter(key, header)(plaintext, test);
}

/**
 * `encryptDir` for many messages under one key and header (a channel's responses): the checks
 * run and the header is encoded once, here.
 */
export function dirEncrypter(key: SecretKey, header: DirHeader): (plaintext: Uint8Array | string, test?: { iv: Buffer }) => string {
  const enc = encInfoFor(header.enc);
  if (secretLength(key) !== enc.keyLen) throw keyInvalid(`dir key must be ${enc.keyLen} bytes for ${header.enc}`);
  const { enc: _enc, kid, ...extra } = header;
  const encoded = encodeHeader(buildHeader('dir', header.enc, kid, extra));
  return (plaintext, test) => seal(enc, key, test?.iv, plaintext, encoded, NO_KEY);
}

/** `decryptDir` on a message already parsed by `parseCompactJwe`. */
export function decryptDirParsed(p: ParsedJwe, key: SecretKey, allowed: readonly string[]): JweDecryptResult {
  if (p.header.alg !== 'dir') throw algNotAllowed('JWE "alg" must be "dir"');
  const enc = allowedEnc(p.header, allowed);
  // RFC 7516 §5.2 step 10: with direct encryption the JWE Encrypted Key MUST be empty.
  if (p.encryptedKey.length !== 0) throw decryptionFailed();
  return { header: p.header, plaintext: open(enc, key, p) };
}

/** Decrypts an `alg: "dir"` compact JWE with a shared key, accepting only `allowedEnc`. */
export function decryptDir(token: string, key: SecretKey, allowedEnc: readonly string[]): JweDecryptResult {
  return decryptDirParsed(parseJwe(token), key, allowedEnc);
}

// ---------------------------------------------------------------------------------------------
// ECDH-ES (RFC 7518 §4.6)

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** Concat KDF with SHA-256 (NIST SP 800-56A §5.8.1; RFC 7518 §4.6.2 fixes the OtherInfo fields). */
function concatKdf(z: Buffer, keyLen: number, algorithmId: string, apu: Buffer, apv: Buffer): Buffer {
  const alg = Buffer.from(algorithmId, 'ascii');
  const otherInfo = Buffer.concat([u32(alg.length), alg, u32(apu.length), apu, u32(apv.length), apv, u32(keyLen * 8)]);
  const rounds = Math.ceil(keyLen / 32);
  const blocks: Buffer[] = [];
  for (let i = 1; i <= rounds; i++) {
    blocks.push(createHash('sha256').update(u32(i)).update(z).update(otherInfo).digest());
  }
  const out = rounds === 1 ? blocks[0]! : Buffer.concat(blocks);
  return out.length === keyLen ? out : out.subarray(0, keyLen);
}

function aesKwWrap(kek: Buffer, cek: Buffer): Buffer {
  const cipher = createCipheriv(KW_CIPHER.get(kek.length)!, kek, KW_IV);
  return Buffer.concat([cipher.update(cek), cipher.final()]);
}

/** RFC 3394 unwrap; on any failure a random CEK, so that the error surfaces at the tag (RFC 7516 §11.5). */
function aesKwUnwrapOrRandom(kek: Buffer, wrapped: Buffer, cekLen: number): Buffer {
  if (wrapped.length === cekLen + 8) {
    try {
      const decipher = createDecipheriv(KW_CIPHER.get(kek.length)!, kek, KW_IV);
      const cek = Buffer.concat([decipher.update(wrapped), decipher.final()]);
      if (cek.length === cekLen) return cek;
    } catch {
      // fall through
    }
  }
  return randomBytes(cekLen);
}

function optionalB64(header: JweProtectedHeader, name: 'apu' | 'apv'): Buffer {
  const v = header[name];
  if (v === undefined) return Buffer.alloc(0);
  if (typeof v !== 'string') throw malformed(`JWE header "${name}" must be a string`);
  return decode(v);
}

/** Test-only: the ECDH object of a fixed ephemeral private JWK. */
function fixedEphemeral(epk: JsonWebKey, info: CurveInfo) {
  if (epk.kty !== 'EC' || epk.crv !== info.crv || typeof epk.d !== 'string') {
    throw keyInvalid(`test epk must be an EC ${info.crv} private JWK`);
  }
  const ecdh = createECDH(info.nodeName);
  ecdh.setPrivateKey(decode(epk.d));
  return ecdh;
}

/** Encrypts to an EC public key with ECDH-ES (direct or with AES key wrap). */
export function encryptEcdhEs(
  recipient: KeyObject,
  plaintext: Uint8Array | string,
  opts: EcdhEsOptions,
  test?: { epk: JsonWebKey; cek?: Buffer; iv: Buffer },
): string {
  const kwLen = ECDH_KW.get(opts.alg);
  if (kwLen === undefined) throw algNotAllowed('not an ECDH-ES algorithm');
  const enc = encInfoFor(opts.enc);
  if (recipient.type !== 'public') throw keyInvalid('ECDH-ES encryption needs an EC public key');
  const info = ecCurveOf(recipient);
  const recipientPoint = ecRawPublic(recipient);

  const eph = test ? fixedEphemeral(test.epk, info) : createECDH(info.nodeName);
  const ephPoint = test ? eph.getPublicKey() : eph.generateKeys();
  const z = eph.computeSecret(recipientPoint);
  const epk: JsonWebKey = {
    kty: 'EC',
    crv: info.crv,
    x: encode(ephPoint.subarray(1, 1 + info.size)),
    y: encode(ephPoint.subarray(1 + info.size)),
  };
  const apu = opts.apu ?? Buffer.alloc(0);
  const apv = opts.apv ?? Buffer.alloc(0);
  const header = buildHeader(opts.alg, opts.enc, opts.kid, opts.header, { epk, apu: opts.apu, apv: opts.apv });

  // RFC 7518 §4.6.2: AlgorithmID is "enc" in direct mode, "alg" in key wrapping mode.
  if (kwLen === 0) {
    const cek = concatKdf(z, enc.keyLen, opts.enc, apu, apv);
    z.fill(0);
    const out = seal(enc, cek, test?.iv, plaintext, encodeHeader(header), NO_KEY);
    cek.fill(0);
    return out;
  }
  const kek = concatKdf(z, kwLen, opts.alg, apu, apv);
  z.fill(0);
  if (test?.cek !== undefined && test.cek.length !== enc.keyLen) throw malformed(`test CEK must be ${enc.keyLen} bytes`);
  const cek = test?.cek ?? randomBytes(enc.keyLen);
  const wrapped = aesKwWrap(kek, cek);
  kek.fill(0);
  return seal(enc, cek, test?.iv, plaintext, encodeHeader(header), wrapped);
}

/**
 * ECDH with the sender's `epk`, after checking it (RFC 7518 §4.6.1.1; invalid-curve defence):
 * an EC JWK on the private key's curve with full-length coordinates, and a point on that curve.
 */
function agreeWithEpk(privateKey: KeyObject, info: CurveInfo, epk: Record<string, unknown>): Buffer {
  if (epk.kty !== 'EC' || epk.crv !== info.crv || typeof epk.x !== 'string' || typeof epk.y !== 'string') {
    throw decryptionFailed();
  }
  try {
    const x = decode(epk.x);
    const y = decode(epk.y);
    if (x.length !== info.size || y.length !== info.size) throw decryptionFailed();
    const ecdh = cachedEcdh(privateKey);
    // Fast path: OpenSSL's EC_POINT_oct2point rejects a point that is not on the curve.
    if (ecdh) return ecdh.computeSecret(Buffer.concat([Buffer.of(4), x, y]));
    // Other keys: importing the epk as a KeyObject performs the same on-curve check.
    const pub = createPublicKey({ key: { kty: 'EC', crv: info.crv, x: epk.x, y: epk.y }, format: 'jwk' });
    return diffieHellman({ privateKey, publicKey: pub });
  } catch {
    throw decryptionFailed();
  }
}

function decryptEcdhEsParsed(p: ParsedJwe, privateKey: KeyObject, allowed: JweAllowed): JweDecryptResult {
  const alg = p.header.alg;
  const kwLen = ECDH_KW.get(alg);
  if (kwLen === undefined || !allowed.alg.includes(alg)) throw algNotAllowed('JWE "alg" is not allowed');
  const enc = allowedEnc(p.header, allowed.enc);
  if (privateKey.type !== 'private') throw keyInvalid('ECDH-ES decryption needs an EC private key');
  const info = ecCurveOf(privateKey);
  // RFC 7518 §4.6.1.1: "epk" is REQUIRED.
  const epk = p.header.epk;
  if (!isObject(epk)) throw malformed('JWE header "epk" must be a JWK object');
  const apu = optionalB64(p.header, 'apu');
  const apv = optionalB64(p.header, 'apv');

  const z = agreeWithEpk(privateKey, info, epk);
  let cek: Buffer;
  if (kwLen === 0) {
    // RFC 7516 §5.2 step 10: with direct key agreement the JWE Encrypted Key MUST be empty.
    if (p.encryptedKey.length !== 0) throw decryptionFailed();
    cek = concatKdf(z, enc.keyLen, p.header.enc, apu, apv);
  } else {
    const kek = concatKdf(z, kwLen, alg, apu, apv);
    cek = aesKwUnwrapOrRandom(kek, p.encryptedKey, enc.keyLen);
    kek.fill(0);
  }
  z.fill(0);
  const plaintext = open(enc, cek, p);
  cek.fill(0);
  return { header: p.header, plaintext };
}

/** Decrypts an ECDH-ES compact JWE with an EC private key, accepting only the `allowed` algorithms. */
export function decryptEcdhEs(token: string, privateKey: KeyObject, allowed: JweAllowed): JweDecryptResult {
  return decryptEcdhEsParsed(parseJwe(token), privateKey, allowed);
}

// ---------------------------------------------------------------------------------------------
// RSA-OAEP (RFC 7518 §4.3)

/** Encrypts to an RSA public key (>= 2048 bits) with RSA-OAEP or RSA-OAEP-256. */
export function encryptRsaOaep(recipient: KeyObject, plaintext: Uint8Array | string, opts: RsaOaepOptions, test?: { cek: Buffer; iv: Buffer }): string {
  const oaepHash = OAEP_HASH.get(opts.alg);
  if (!oaepHash) throw algNotAllowed('not an RSA-OAEP algorithm');
  const enc = encInfoFor(opts.enc);
  if (recipient.type !== 'public') throw keyInvalid('RSA-OAEP encryption needs an RSA public key');
  rsaModulusBits(recipient);
  if (test && test.cek.length !== enc.keyLen) throw malformed(`test CEK must be ${enc.keyLen} bytes`);
  const cek = test?.cek ?? randomBytes(enc.keyLen);
  // SHA-1 is OAEP's default in OpenSSL: naming it anyway costs a digest fetch per call (~2 us).
  const encryptedKey = publicEncrypt(
    oaepHash === 'sha1'
      ? { key: recipient, padding: constants.RSA_PKCS1_OAEP_PADDING }
      : { key: recipient, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash },
    cek,
  );
  return seal(enc, cek, test?.iv, plaintext, encodeHeader(buildHeader(opts.alg, opts.enc, opts.kid, opts.header)), encryptedKey);
}

function decryptRsaOaepParsed(p: ParsedJwe, privateKey: KeyObject, allowed: JweAllowed): JweDecryptResult {
  const alg = p.header.alg;
  const oaepHash = OAEP_HASH.get(alg);
  if (!oaepHash || !allowed.alg.includes(alg)) throw algNotAllowed('JWE "alg" is not allowed');
  const enc = allowedEnc(p.header, allowed.enc);
  if (privateKey.type !== 'private') throw keyInvalid('RSA-OAEP decryption needs an RSA private key');
  const bits = rsaModulusBits(privateKey);
  // RFC 7516 §11.5: do not distinguish format, padding and length errors of the encrypted key;
  // substitute a random CEK and let the failure surface at the authentication tag.
  let cek: Buffer | undefined;
  if (p.encryptedKey.length === Math.ceil(bits / 8)) {
    try {
      cek = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, p.encryptedKey);
    } catch {
      cek = undefined;
    }
  }
  if (cek === undefined || cek.length !== enc.keyLen) cek = randomBytes(enc.keyLen);
  const plaintext = open(enc, cek, p);
  cek.fill(0);
  return { header: p.header, plaintext };
}

/** Decrypts an RSA-OAEP(-256) compact JWE with an RSA private key. */
export function decryptRsaOaep(token: string, privateKey: KeyObject, allowed: JweAllowed): JweDecryptResult {
  return decryptRsaOaepParsed(parseJwe(token), privateKey, allowed);
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/** Encrypts to `recipient` with the mode named by `opts.alg` (dir needs a secret KeyObject). */
export function encryptJwe(recipient: KeyObject, plaintext: Uint8Array | string, opts: EncryptJweOptions): string {
  switch (opts.alg) {
    case 'dir': {
      if (recipient.type !== 'secret') throw keyInvalid('"dir" needs a secret key');
      for (const name of Object.keys(opts.header ?? {})) {
        if (RESERVED.has(name)) throw malformed(`header member "${name}" is set by the library`);
      }
      const header: DirHeader = { ...opts.header, enc: opts.enc };
      if (opts.kid !== undefined) header.kid = opts.kid;
      return encryptDir(recipient, plaintext, header);
    }
    case 'ECDH-ES':
    case 'ECDH-ES+A128KW':
    case 'ECDH-ES+A192KW':
    case 'ECDH-ES+A256KW':
      return encryptEcdhEs(recipient, plaintext, opts);
    case 'RSA-OAEP':
    case 'RSA-OAEP-256':
      return encryptRsaOaep(recipient, plaintext, opts);
    default:
      throw algNotAllowed('unsupported JWE "alg"');
  }
}

/**
 * Decrypts a compact JWE with `key`, choosing the mode by key type: secret -> dir, EC -> ECDH-ES,
 * RSA -> RSA-OAEP. The header's `alg` must belong to that mode and be in `allowed.alg`.
 */
export function decryptJwe(token: string, key: KeyObject, allowed: JweAllowed): JweDecryptResult {
  return decryptJweParsed(parseJwe(token), key, allowed);
}

/** `decryptJwe` on a message already parsed by `parseCompactJwe`. */
export function decryptJweParsed(p: ParsedJwe, key: KeyObject, allowed: JweAllowed): JweDecryptResult {
  if (key.type === 'secret') {
    if (!allowed.alg.includes('dir')) throw algNotAllowed('JWE "alg" is not allowed');
    return decryptDirParsed(p, key, allowed.enc);
  }
  if (key.type !== 'private') throw keyInvalid('decryption needs a private or secret key');
  if (key.asymmetricKeyType === 'ec') return decryptEcdhEsParsed(p, key, allowed);
  if (key.asymmetricKeyType === 'rsa') return decryptRsaOaepParsed(p, key, allowed);
  throw keyInvalid('only EC, RSA and secret keys are supported');
}
