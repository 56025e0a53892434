/**
 * The KMS error registry: every failure the engine reports has a stable code, an HTTP-style
 * status (draft-abiggs-saag-key-management-service-03 §4.5: "an RFC 7231 code that fits") and a
 * reason. The XEP's KMS status table is kept in step with this registry by a test.
 */

/** Every KMS-level error code, with the status it is answered with and what it means. */
export const KMS_ERRORS = {
  BAD_REQUEST: { status: 400, summary: 'The request is malformed: bad JSON, a missing or mistyped field, a bad JOSE object.' },
  UNSUPPORTED: { status: 400, summary: 'An algorithm, curve or key type the KMS does not accept.' },
  UNAUTHENTICATED: { status: 401, summary: 'The credential is missing, invalid, expired, not yet valid, or for another audience or issuer; or the ephemeral key is unknown, expired or deleted.' },
  FORBIDDEN: { status: 403, summary: 'The authenticated entity may not do this: not a member, not the owner, a bad block signature, a block that removes the curator.' },
  NOT_FOUND: { status: 404, summary: 'No such chain, block, group key, entity key or URI.' },
  METHOD_NOT_ALLOWED: { status: 405, summary: 'The URI exists but does not accept this method.' },
  CONFLICT: { status: 409, summary: 'A stale antecedent (the chain moved on), or a group key already bound to another block.' },
  TOO_LARGE: { status: 413, summary: 'The message or one of its fields exceeds a configured limit.' },
  INTERNAL: { status: 500, summary: 'An unexpected failure inside the KMS; nothing was changed.' },
} as const satisfies Record<string, { status: number; summary: string }>;

/** A stable KMS error code. */
export type KmsErrorCode = keyof typeof KMS_ERRORS;

/** A KMS-level failure, answered as a response with `status` and `reason`. */
export class KmsError extends Error {
  readonly code: KmsErrorCode;
  readonly status: number;

  constructor(code: KmsErrorCode, reason: string, options?: { cause?: unknown }) {
    super(reason, options);
    this.name = 'KmsError';
    this.code = code;
    this.status = KMS_ERRORS[code].status;
  }

  /** The human-readable reason sent to the client. */
  get reason(): string {
    return this.message;
  }
}

/** Shorthands that read well at the call site: `throw badRequest('blocks must be an array')`. */
export const badRequest = (reason: string, cause?: unknown) => new KmsError('BAD_REQUEST', reason, { cause });
export const unsupported = (reason: string) => new KmsError('UNSUPPORTED', reason);
export const unauthenticated = (reason: string, cause?: unknown) => new KmsError('UNAUTHENTICATED', reason, { cause });
export const forbidden = (reason: string) => new KmsError('FORBIDDEN', reason);
export const notFound = (reason: string) => new KmsError('NOT_FOUND', reason);
export const methodNotAllowed = (reason: string) => new KmsError('METHOD_NOT_ALLOWED', reason);
export const conflict = (reason: string) => new KmsError('CONFLICT', reason);
export const tooLarge = (reason: string) => new KmsError('TOO_LARGE', reason);

/** The error code for a given status; the client rebuilds typed errors from responses with it. */
export function codeForStatus(status: number): KmsErrorCode {
  for (const [code, entry] of Object.entries(KMS_ERRORS)) {
    if (entry.status === status && code !== 'UNSUPPORTED') return code as KmsErrorCode;
  }
  return 'INTERNAL';
}
