/**
 * Envelope sealing of key material at rest: AES-256-GCM under the operator's master key, with
 * the record's identity as additional authenticated data so that a sealed value cannot be moved
 * to another record. Format: `s1.<base64url(iv ‖ ciphertext ‖ tag)>`.
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto';
import { randomBytes } from './random.js';

const PREFIX = 's1.';

/** Seals and opens values under one 32-byte master key. */
export class Sealer {
  /** A KeyObject: the master key lives in native memory, and each seal or open skips an import. */
  readonly #key: KeyObject;

  constructor(masterKey: Uint8Array) {
    if (masterKey.length !== 32) throw new Error('the master key must be 32 bytes');
    const copy = Buffer.from(masterKey);
    this.#key = createSecretKey(copy);
    copy.fill(0);
  }

  /** Seals `plaintext`, binding it to `context` (for example `gk:<id>`). */
  seal(plaintext: Uint8Array | string, context: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv);
    cipher.setAAD(Buffer.from(context, 'utf8'));
    const data = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
    const ct = Buffer.concat([cipher.update(data), cipher.final()]);
    return PREFIX + Buffer.concat([iv, ct, cipher.getAuthTag()]).toString('base64url');
  }

  /** Opens a value sealed for `context`; throws if it was sealed for another context, key or altered. */
  open(sealed: string, context: string): Buffer {
    if (!sealed.startsWith(PREFIX)) throw new Error('not a sealed value');
    const raw = Buffer.from(sealed.slice(PREFIX.length), 'base64url');
    if (raw.length < 28) throw new Error('sealed value too short');
    const decipher = createDecipheriv('aes-256-gcm', this.#key, raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(context, 'utf8'));
    decipher.setAuthTag(raw.subarray(raw.length - 16));
    try {
      return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]);
    } catch {
      throw new Error(`sealed value for ${context} does not open under this master key`);
    }
  }
}
