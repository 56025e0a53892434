/**
 * Errors raised by the JOSE layer (`src/crypto`). Each carries a stable `code`; messages never
 * contain key material, and every decryption failure uses one and the same message so that the
 * error is not a padding or key-unwrap oracle (RFC 7516 §11.4, §11.5).
 */

/** The stable codes of {@link JoseError}. */
export type JoseErrorCode = 'JOSE_MALFORMED' | 'JOSE_ALG_NOT_ALLOWED' | 'JOSE_DECRYPTION_FAILED' | 'JOSE_SIGNATURE_INVALID' | 'JOSE_KEY_INVALID';

/** A failure to parse, verify, decrypt or import a JOSE object or key. */
export class JoseError extends Error {
  readonly code: JoseErrorCode;

  constructor(code: JoseErrorCode, message: string) {
    super(message);
    this.name = 'JoseError';
    this.code = code;
  }
}

/** The single message used for every decryption failure. */
export const DECRYPTION_FAILED_MESSAGE = 'JWE decryption failed';

/** A fresh generic decryption failure (bad tag, bad key unwrap, wrong key, bad lengths, ...). */
export function decryptionFailed(): JoseError {
  return new JoseError('JOSE_DECRYPTION_FAILED', DECRYPTION_FAILED_MESSAGE);
}

/** Shorthand for a `JOSE_MALFORMED` error. */
export function malformed(message: string): JoseError {
  return new JoseError('JOSE_MALFORMED', message);
}

/** Shorthand for a `JOSE_ALG_NOT_ALLOWED` error. */
export function algNotAllowed(message: string): JoseError {
  return new JoseError('JOSE_ALG_NOT_ALLOWED', message);
}

/** Shorthand for a `JOSE_KEY_INVALID` error. */
export function keyInvalid(message: string): JoseError {
  return new JoseError('JOSE_KEY_INVALID', message);
}
