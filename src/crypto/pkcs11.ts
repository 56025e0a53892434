/**
 * A master key kept under an HSM key through PKCS#11 (tested with Debian's SoftHSM2). The HSM holds
 * a non-extractable AES-256 key (found by its label on the token); the master key file holds the
 * master key wrapped under it, AES-256-GCM done by the HSM:
 *   `pkcs11.v1.<base64url(iv ‖ ciphertext ‖ tag)>`
 * At start the KMS has the HSM unwrap it, so a copy of the key file (or of a backup) is useless
 * without the token and its PIN. Settings come from the environment (never a file): the PKCS#11
 * module, the token's label, the user PIN and the key's label. The binding is pkcs11js, an
 * optional dependency built from source (node-gyp), loaded only when a wrapped key is read.
 */
import { randomBytes } from './random.js';

const PREFIX = 'pkcs11.v1.';
const AAD = Buffer.from('xmpp-kms master key', 'utf8');

/** Where the HSM key is. */
export interface Pkcs11Settings {
  /** The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so). */
  module: string;
  /** The token's label. */
  token: string;
  /** The user PIN. */
  pin: string;
  /** The label of the AES key that wraps the master key. */
  keyLabel: string;
}

/** The environment variables of the settings, for messages and `kms run --help`. */
export const PKCS11_ENV = {
  KMS_PKCS11_MODULE: 'the PKCS#11 module of the HSM that wraps the master key (e.g. /usr/lib/softhsm/libsofthsm2.so)',
  KMS_PKCS11_TOKEN: "the HSM token's label",
  KMS_PKCS11_PIN: "the token's user PIN",
  KMS_PKCS11_KEY_LABEL: 'the label of the AES-256 key on the token that wraps the master key',
} as const;

/** Whether a key file's content is a wrapped key. */
export const isWrapped = (content: string) => content.trim().startsWith(PREFIX);

/** The settings from the environment; undefined when KMS_PKCS11_MODULE is unset; an error naming what is missing. */
export function pkcs11Settings(env: NodeJS.ProcessEnv = process.env): Pkcs11Settings | undefined {
  if (!env.KMS_PKCS11_MODULE) return undefined;
  const missing = (['KMS_PKCS11_TOKEN', 'KMS_PKCS11_PIN', 'KMS_PKCS11_KEY_LABEL'] as const).filter((n) => !env[n]);
  if (missing.length > 0) throw new Error(`KMS_PKCS11_MODULE is set, but ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not`);
  return { module: env.KMS_PKCS11_MODULE, token: env.KMS_PKCS11_TOKEN!, pin: env.KMS_PKCS11_PIN!, keyLabel: env.KMS_PKCS11_KEY_LABEL! };
}

type Pkcs11Module = typeof import('pkcs11js');

async function binding(): Promise<Pkcs11Module> {
  try {
    const m = (await import('pkcs11js')) as Pkcs11Module & { default?: Pkcs11Module };
    return m.default ?? m;
  } catch (e) {
    throw new Error(`the PKCS#11 binding pkcs11js is not installed (an optional dependency, built with node-gyp): ${(e as Error).message}`);
  }
}

/** Runs `fn` with a logged-in session on the token and the wrapping key's handle; always logs out and finalizes. */
async function withKey<T>(s: Pkcs11Settings, fn: (p: import('pkcs11js').PKCS11, session: Buffer, key: Buffer, lib: Pkcs11Module) => T): Promise<T> {
  const lib = await binding();
  const p = new lib.PKCS11();
  try {
    p.load(s.module);
  } catch (e) {
    throw new Error(`PKCS#11 module ${s.module} (KMS_PKCS11_MODULE) does not load: ${(e as Error).message}`);
  }
  p.C_Initialize();
  try {
    const slot = p.C_GetSlotList(true).find((sl) => p.C_GetTokenInfo(sl).label.trim() === s.token);
    if (!slot) throw new Error(`no token labelled "${s.token}" (KMS_PKCS11_TOKEN) in ${s.module}`);
    const session = p.C_OpenSession(slot, lib.CKF_SERIAL_SESSION);
    try {
      try {
        p.C_Login(session, lib.CKU_USER, s.pin);
      } catch (e) {
        throw new Error(`cannot log in to the token "${s.token}" (KMS_PKCS11_PIN wrong?): ${(e as Error).message}`);
      }
      p.C_FindObjectsInit(session, [
        { type: lib.CKA_CLASS, value: lib.CKO_SECRET_KEY },
        { type: lib.CKA_LABEL, value: s.keyLabel },
      ]);
      const found = p.C_FindObjects(session, 2);
      p.C_FindObjectsFinal(session);
      if (found.length !== 1)
        throw new Error(`${found.length === 0 ? 'no' : 'more than one'} secret key labelled "${s.keyLabel}" (KMS_PKCS11_KEY_LABEL) on the token "${s.token}"`);
      try {
        return fn(p, session, found[0]!, lib);
      } finally {
        p.C_Logout(session);
      }
    } finally {
      p.C_CloseSession(session);
    }
  } finally {
    p.C_Finalize();
  }
}

/** CKM_AES_GCM with a 96-bit IV, a 128-bit tag and the fixed additional data. */
function gcm(lib: Pkcs11Module, iv: Buffer): import('pkcs11js').Mechanism {
  const parameter: import('pkcs11js').GcmParams = { type: lib.CK_PARAMS_AES_GCM, iv, ivBits: 96, aad: AAD, tagBits: 128 };
  return { mechanism: lib.CKM_AES_GCM, parameter };
}

/** `key` wrapped under the HSM key, as a key file holds it. */
export async function wrapMasterKey(key: Buffer, s: Pkcs11Settings): Promise<string> {
  if (key.length !== 32) throw new Error('the master key must be 32 bytes');
  const iv = randomBytes(12);
  const out = await withKey(s, (p, session, hsmKey, lib) => {
    p.C_EncryptInit(session, gcm(lib, iv), hsmKey);
    return Buffer.from(p.C_Encrypt(session, key, Buffer.alloc(key.length + 16)));
  });
  return `${PREFIX}${Buffer.concat([iv, out]).toString('base64url')}`;
}

/** The master key a key file's content holds wrapped; `file` names it in errors. */
export async function unwrapMasterKey(content: string, s: Pkcs11Settings | undefined, file: string): Promise<Buffer> {
  if (!s)
    throw new Error(
      `${file} holds a master key wrapped by an HSM key: set ${Object.keys(PKCS11_ENV).join(', ')} to unwrap it (the key file alone opens nothing)`,
    );
  const raw = Buffer.from(content.trim().slice(PREFIX.length), 'base64url');
  if (raw.length !== 12 + 32 + 16) throw new Error(`${file}: a wrapped master key of the wrong size (damaged?)`);
  return withKey(s, (p, session, hsmKey, lib) => {
    p.C_DecryptInit(session, gcm(lib, raw.subarray(0, 12)), hsmKey);
    try {
      return Buffer.from(p.C_Decrypt(session, raw.subarray(12), Buffer.alloc(raw.length)));
    } catch {
      throw new Error(`${file} does not unwrap under the HSM key "${s.keyLabel}" on the token "${s.token}" (another key, or the file altered)`);
    }
  });
}
