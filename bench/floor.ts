/**
 * The crypto floor: the least a KMS must compute for a ping, a GK get and a handshake, written
 * directly on node:crypto with no parsing, validation, storage or framework around it. The engine
 * benchmark divides the engine's throughput by this one's, measured in the same run on the same
 * inputs; the XMPP benchmark runs it in a component (bench/xmpp-echo.ts) through the same server as
 * the KMS. Nothing here is used by the product.
 */
import {
  createCipheriv,
  createDecipheriv,
  createECDH,
  createHash,
  constants,
  generateKeyPairSync,
  hkdfSync,
  publicEncrypt,
  randomBytes,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';

const b64u = (b: Buffer | string) => Buffer.from(b).toString('base64url');
const unb64u = (s: string) => Buffer.from(s, 'base64url');
const A6 = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

function gcmEncrypt(key: Buffer, plaintext: Buffer, aad: string) {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'ascii'));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return `${b64u(iv)}.${b64u(ct)}.${b64u(c.getAuthTag())}`;
}

function dirDecrypt(token: string, key: Buffer): Buffer {
  const [h, , iv, ct, tag] = token.split('.');
  const d = createDecipheriv('aes-256-gcm', key, unb64u(iv!));
  d.setAAD(Buffer.from(h!, 'ascii'));
  d.setAuthTag(unb64u(tag!));
  return Buffer.concat([d.update(unb64u(ct!)), d.final()]);
}

function dirEncrypt(key: Buffer, kid: string, plaintext: Buffer): string {
  const h = b64u(JSON.stringify({ alg: 'dir', enc: 'A256GCM', kid }));
  return `${h}..${gcmEncrypt(key, plaintext, h)}`;
}

/** RFC 7518 §4.6.2 Concat KDF, one SHA-256 round (keys up to 256 bits). */
function concatKdf(z: Buffer, alg: string, bits: number): Buffer {
  const algId = Buffer.from(alg, 'ascii');
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  return createHash('sha256')
    .update(Buffer.concat([u32(1), z, u32(algId.length), algId, u32(0), u32(0), u32(bits)]))
    .digest()
    .subarray(0, bits / 8);
}

function es256(key: KeyObject, payload: string): string {
  const input = `${b64u(JSON.stringify({ alg: 'ES256' }))}.${b64u(payload)}`;
  return `${input}.${b64u(sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }))}`;
}

export interface GkGetFloorInput {
  request: string;
  channelKey: Buffer;
  channelKid: string;
  /** The member's entity key: an RSA public key (RSA-OAEP), or a P-256 point, uncompressed (ECDH-ES+A256KW). */
  member: { rsa: KeyObject } | { point: Buffer };
  gkKey: Buffer;
  kmsKey: KeyObject;
}

/** Decrypt the request, wrap the GK to the member (RSA-OAEP or ECDH-ES+A256KW), sign the GK (ES256), encrypt the response. */
export function gkGetFloor(i: GkGetFloorInput): string {
  const req = JSON.parse(dirDecrypt(i.request, i.channelKey).toString('utf8'));
  const jwk = Buffer.from(JSON.stringify({ kty: 'oct', k: b64u(i.gkKey) }));
  const wrapped = 'rsa' in i.member ? wrapRsaOaep(i.member.rsa, jwk) : wrapEcdhEs(i.member.point, jwk);
  const gk = es256(i.kmsKey, JSON.stringify({ uri: req.uri, block: 'x'.repeat(64), key: wrapped }));
  return dirEncrypt(i.channelKey, i.channelKid, Buffer.from(JSON.stringify({ status: 200, requestId: req.requestId, gk })));
}

function wrapRsaOaep(key: KeyObject, plaintext: Buffer): string {
  const cek = randomBytes(32);
  const encryptedKey = publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, cek);
  const h = b64u(JSON.stringify({ alg: 'RSA-OAEP', enc: 'A256GCM' }));
  return `${h}.${b64u(encryptedKey)}.${gcmEncrypt(cek, plaintext, h)}`;
}

function wrapEcdhEs(memberPoint: Buffer, plaintext: Buffer): string {
  const eph = createECDH('prime256v1');
  const epkPoint = eph.generateKeys();
  const kek = concatKdf(eph.computeSecret(memberPoint), 'ECDH-ES+A256KW', 256);
  const cek = randomBytes(32);
  const w = createCipheriv('id-aes256-wrap', kek, A6);
  const encryptedKey = Buffer.concat([w.update(cek), w.final()]);
  const h = b64u(
    JSON.stringify({
      alg: 'ECDH-ES+A256KW',
      enc: 'A256GCM',
      epk: { kty: 'EC', crv: 'P-256', x: b64u(epkPoint.subarray(1, 33)), y: b64u(epkPoint.subarray(33)) },
    }),
  );
  return `${h}.${b64u(encryptedKey)}.${gcmEncrypt(cek, plaintext, h)}`;
}

export interface PingFloorInput {
  request: string;
  channelKey: Buffer;
  channelKid: string;
}

/** Decrypt the request, encrypt the response: the channel's two AES-GCM operations. */
export function pingFloor(i: PingFloorInput): string {
  const req = JSON.parse(dirDecrypt(i.request, i.channelKey).toString('utf8'));
  return dirEncrypt(i.channelKey, i.channelKid, Buffer.from(JSON.stringify({ status: 200, requestId: req.requestId })));
}

/**
 * Inputs for the floors of a ping and a GK get on a channel of its own, with a request of about
 * `requestChars` characters (the size of the KMS's real request), for a component that computes
 * the floor in place of the KMS (bench/xmpp-echo.ts).
 */
export function floorInputs(requestChars: number): { ping: PingFloorInput; gkGet: GkGetFloorInput } {
  const channelKey = randomBytes(32);
  const channelKid = `kms://kms.localhost/ecdhe/${randomBytes(16).toString('hex')}`;
  const plain = { method: 'get', uri: `kms://kms.localhost/gks/${randomBytes(16).toString('hex')}`, requestId: randomBytes(8).toString('hex'), filler: '' };
  const overhead = dirEncrypt(channelKey, channelKid, Buffer.from(JSON.stringify(plain))).length;
  plain.filler = 'x'.repeat(Math.max(0, Math.floor(((requestChars - overhead) * 3) / 4)));
  const request = dirEncrypt(channelKey, channelKid, Buffer.from(JSON.stringify(plain)));
  const member = { rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey };
  const kmsKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return { ping: { request, channelKey, channelKid }, gkGet: { request, channelKey, channelKid, member, gkKey: randomBytes(32), kmsKey } };
}

export interface HandshakeFloorInput {
  /** ECDH-ES + A256GCM JWE to the KMS's static P-256 key. */
  request: string;
  kmsEcdh: ReturnType<typeof createECDH>;
  kmsKey: KeyObject;
  issuerKey: KeyObject;
}

/** Decrypt the handshake, verify the bearer token (ES256), make a P-256 key, ECDH + HKDF, sign the response. */
export function handshakeFloor(i: HandshakeFloorInput): string {
  const [h, , iv, ct, tag] = i.request.split('.');
  const header = JSON.parse(unb64u(h!).toString('utf8'));
  const epk = Buffer.concat([Buffer.from([4]), unb64u(header.epk.x), unb64u(header.epk.y)]);
  const cek = concatKdf(i.kmsEcdh.computeSecret(epk), 'A256GCM', 256);
  const d = createDecipheriv('aes-256-gcm', cek, unb64u(iv!));
  d.setAAD(Buffer.from(h!, 'ascii'));
  d.setAuthTag(unb64u(tag!));
  const req = JSON.parse(Buffer.concat([d.update(unb64u(ct!)), d.final()]).toString('utf8'));
  const [th, tp, ts] = (req.client.credential.bearer as string).split('.');
  if (!verify('sha256', Buffer.from(`${th}.${tp}`), { key: i.issuerKey, dsaEncoding: 'ieee-p1363' }, unb64u(ts!))) throw new Error('bad token');
  const claims = JSON.parse(unb64u(tp!).toString('utf8'));
  const clientPoint = Buffer.concat([Buffer.from([4]), unb64u(req.jwk.x), unb64u(req.jwk.y)]);
  const ecdh = createECDH('prime256v1');
  const point = ecdh.generateKeys();
  const key = Buffer.from(hkdfSync('sha256', ecdh.computeSecret(clientPoint), Buffer.alloc(0), Buffer.alloc(0), 32));
  const uri = `/ecdhe/${randomBytes(16).toString('hex')}`;
  const keyObj = { uri, jwk: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33)) }, userId: claims.sub };
  key.fill(0);
  return es256(i.kmsKey, JSON.stringify({ status: 201, requestId: req.requestId, key: keyObj }));
}
