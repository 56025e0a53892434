/**
 * A bare client channel for tests and benchmarks that need to build request messages ahead of
 * time or send malformed ones: the handshake by hand, and the channel key in the open.
 */
import { createECDH, randomUUID, type KeyObject } from 'node:crypto';
import { encryptDir, encryptJwe, decryptDir } from '../../src/crypto/jwe.js';
import { signatureAlgsFor, verifyCompact } from '../../src/crypto/jws.js';
import { importPublicJwk } from '../../src/crypto/keys.js';
import { deriveChannelKey } from '../../src/crypto/channel.js';
import { encode as b64u } from '../../src/crypto/base64url.js';

export interface RawChannel {
  uri: string;
  key: Buffer;
  clientId: string;
  token: string;
  /** Encrypts one request under the channel. */
  seal(method: string, uri: string, body?: Record<string, unknown>, requestId?: string | number): string;
  /** Decrypts one response under the channel. */
  open(message: string): Record<string, unknown>;
}

/** Builds a handshake request to the KMS's static key. */
export function handshakeRequest(kms: { kid: string; publicKey: KeyObject }, token: string, clientId: string, requestId: string | number = randomUUID()) {
  const ecdh = createECDH('prime256v1');
  const point = ecdh.generateKeys();
  const payload = {
    client: { clientId, credential: { bearer: token } },
    method: 'create',
    uri: '/ecdhe',
    requestId,
    jwk: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)) },
  };
  const rsa = kms.publicKey.asymmetricKeyType === 'rsa';
  const message = encryptJwe(kms.publicKey, JSON.stringify(payload), { alg: rsa ? 'RSA-OAEP' : 'ECDH-ES', enc: 'A256GCM', kid: kms.kid });
  return { message, ecdh };
}

/** Makes a channel through `handle` (the engine in process, or any transport). */
export async function openRawChannel(
  kms: { kid: string; publicKey: KeyObject },
  handle: (m: string) => Promise<string>,
  token: string,
  clientId = `raw-${randomUUID()}`,
): Promise<RawChannel> {
  const { message, ecdh } = handshakeRequest(kms, token, clientId);
  const reply = await handle(message);
  const res = JSON.parse(verifyCompact(reply, kms.publicKey, signatureAlgsFor(kms.publicKey)).payload.toString('utf8'));
  if (res.status !== 201) throw new Error(`handshake failed: ${res.status} ${res.reason}`);
  const key = deriveChannelKey(ecdh, importPublicJwk(res.key.jwk));
  const uri = res.key.uri as string;
  return {
    uri,
    key,
    clientId,
    token,
    seal(method, target, body = {}, requestId = randomUUID()) {
      const p = { client: { clientId, credential: { bearer: token } }, method, uri: target, requestId, ...body };
      return encryptDir(key, JSON.stringify(p), { enc: 'A256GCM', kid: uri });
    },
    open(m) {
      return JSON.parse(decryptDir(m, key, ['A256GCM']).plaintext.toString('utf8'));
    },
  };
}
