/**
 * Envelope sealing of key material at rest: AES-256-GCM under the operator's master key, with
 * the record's identity as additional authenticated data so that a sealed value cannot be moved
 * to another record. Format: `s2.<keyId>.<base64url(iv ‖ ciphertext ‖ tag)>`, where keyId names
 * the master key that sealed it (masterKeyId: a fingerprint, never the key). Values from before
 * key versions (`s1.<…>`, "legacy") open under any key of the ring, the current one first.
 *
 * A Sealer holds a keyring: the current key (it seals) and older keys (they only open), so that
 * a master key rotation (`kms rekey`, src/store/rekey.ts) can re-seal while the KMS serves.
 */
import { createCipheriv, createDecipheriv, createHmac, createSecretKey, type KeyObject } from 'node:crypto';
import { randomBytes } from './random.js';

const LEGACY = 's1.';
const V2 = 's2.';
const KEY_ID = /^[0-9a-f]{16}$/;

/** A master key's id: hex of the first 8 bytes of HMAC-SHA256(key, 'kms-key-id'). Says nothing about the key. */
export function masterKeyId(masterKey: Uint8Array): string {
  return createHmac('sha256', masterKey).update('kms-key-id').digest().subarray(0, 8).toString('hex');
}

/** The id of the key that sealed `sealed` ('legacy' for a value from before key versions). */
export function sealedBy(sealed: string): string {
  if (sealed.startsWith(LEGACY)) return 'legacy';
  if (!sealed.startsWith(V2)) throw new Error('not a sealed value');
  const id = sealed.slice(V2.length, V2.length + 16);
  if (!KEY_ID.test(id) || sealed[V2.length + 16] !== '.') throw new Error('not a sealed value (bad key id)');
  return id;
}

/** Raised when a value was sealed under a master key this Sealer does not hold. */
export class MissingMasterKeyError extends Error {
  constructor(
    readonly keyId: string,
    readonly context: string,
    held: string[],
  ) {
    super(
      `the value for ${context} was sealed under master key ${keyId}, which is not in the keyring (keys held: ${held.join(', ')}): ` +
        `give that key too (in <masterKeyFile>.d/, see kms rekey), or the key this data was sealed with`,
    );
  }
}

function importKey(masterKey: Uint8Array): KeyObject {
  if (masterKey.length !== 32) throw new Error('the master key must be 32 bytes');
  const copy = Buffer.from(masterKey);
  const key = createSecretKey(copy);
  copy.fill(0);
  return key;
}

/** Seals under the current master key; opens under any key of its ring. */
export class Sealer {
  /** KeyObjects: the master keys live in native memory, and each seal or open skips an import. */
  readonly #ring = new Map<string, KeyObject>();
  #current: string;

  /** `masterKey`: the current key, or the ring with the current key first and older keys after it. */
  constructor(masterKey: Uint8Array | readonly Uint8Array[]) {
    const keys = masterKey instanceof Uint8Array ? [masterKey] : masterKey;
    if (keys.length === 0) throw new Error('a keyring needs a master key');
    this.#current = masterKeyId(keys[0]!);
    for (const k of keys) this.#ring.set(masterKeyId(k), importKey(k));
  }

  /** The id of the key that seals. */
  get keyId(): string {
    return this.#current;
  }

  /** The ids of every key held, the current one first. */
  keyIds(): string[] {
    return [this.#current, ...[...this.#ring.keys()].filter((id) => id !== this.#current)];
  }

  /** Adds `masterKey` to the ring (if new) and makes it the key that seals; returns its id. */
  rotateTo(masterKey: Uint8Array): string {
    const id = masterKeyId(masterKey);
    if (!this.#ring.has(id)) this.#ring.set(id, importKey(masterKey));
    this.#current = id;
    return id;
  }

  /** Adds an older key to the ring (it opens, the current key still seals); returns its id. */
  add(masterKey: Uint8Array): string {
    const id = masterKeyId(masterKey);
    if (!this.#ring.has(id)) this.#ring.set(id, importKey(masterKey));
    return id;
  }

  /** Drops every key but the current one (after every value was re-sealed under it); returns the ids dropped. */
  retireOlder(): string[] {
    const dropped = [...this.#ring.keys()].filter((id) => id !== this.#current);
    for (const id of dropped) this.#ring.delete(id);
    return dropped;
  }

  /** Whether `sealed` is sealed under the current key (a legacy value never is). */
  isCurrent(sealed: string): boolean {
    return sealed.startsWith(`${V2}${this.#current}.`);
  }

  /** Seals `plaintext`, binding it to `context` (for example `gk:<id>`). */
  seal(plaintext: Uint8Array | string, context: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.#ring.get(this.#current)!, iv);
    cipher.setAAD(Buffer.from(context, 'utf8'));
    const data = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
    const ct = Buffer.concat([cipher.update(data), cipher.final()]);
    return `${V2}${this.#current}.${Buffer.concat([iv, ct, cipher.getAuthTag()]).toString('base64url')}`;
  }

  /**
   * Opens a value sealed for `context`; throws if it was sealed for another context, under a key
   * not in the ring (MissingMasterKeyError, naming the key id) or altered.
   */
  open(sealed: string, context: string): Buffer {
    const by = sealedBy(sealed);
    if (by === 'legacy') {
      const raw = Buffer.from(sealed.slice(LEGACY.length), 'base64url');
      for (const id of this.keyIds()) {
        const out = decrypt(this.#ring.get(id)!, raw, context);
        if (out) return out;
      }
      throw new Error(`sealed value for ${context} does not open under the master key(s) ${this.keyIds().join(', ')}`);
    }
    const key = this.#ring.get(by);
    if (!key) throw new MissingMasterKeyError(by, context, this.keyIds());
    const out = decrypt(key, Buffer.from(sealed.slice(V2.length + 17), 'base64url'), context);
    if (!out) throw new Error(`sealed value for ${context} does not open under master key ${by} (sealed for another record, or altered)`);
    return out;
  }

  /** `sealed` opened and sealed again under the current key (the same value when it already is). */
  reseal(sealed: string, context: string): string {
    if (this.isCurrent(sealed)) return sealed;
    const raw = this.open(sealed, context);
    try {
      return this.seal(raw, context);
    } finally {
      raw.fill(0);
    }
  }
}

function decrypt(key: KeyObject, raw: Buffer, context: string): Buffer | undefined {
  if (raw.length < 28) throw new Error('sealed value too short');
  const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12));
  decipher.setAAD(Buffer.from(context, 'utf8'));
  decipher.setAuthTag(raw.subarray(raw.length - 16));
  try {
    return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]);
  } catch {
    return undefined;
  }
}
