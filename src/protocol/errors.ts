/**
 * One error model for the KMS and its client library (XEP "KMS Error Codes"). Every failure has a
 * stable code. The server codes travel: an error response carries "status" (an HTTP status, as
 * draft-abiggs-saag-key-management-service-03 section 4.5 asks), "code" and "reason", so that a
 * client rebuilds the same typed error. The client-only codes name what the client detects itself
 * (a response it cannot accept, a chain that does not verify, a timeout); they never travel and
 * have no status. The XEP's table of KMS error codes is kept in step with KMS_ERRORS by a test.
 */

/** Every code the KMS answers with, the status it goes with, and what it means. */
export const KMS_ERRORS = {
  BAD_REQUEST: { status: 400, summary: 'The request is malformed: bad JSON, a missing or mistyped field, a bad JOSE object.' },
  UNSUPPORTED: { status: 400, summary: 'An algorithm, curve or key type the KMS does not accept.' },
  UNAUTHENTICATED: {
    status: 401,
    summary:
      'The credential is missing, invalid, expired, not yet valid, or for another audience or issuer; or the ephemeral key is unknown, expired or deleted.',
  },
  FORBIDDEN: {
    status: 403,
    summary: 'The authenticated entity may not do this: not a member, not the owner, a bad block signature, a block that removes the curator.',
  },
  NOT_FOUND: { status: 404, summary: 'No such chain, block, group key, entity key or URI.' },
  METHOD_NOT_ALLOWED: { status: 405, summary: 'The URI exists but does not accept this method.' },
  CONFLICT: { status: 409, summary: 'A stale antecedent (the chain moved on), or a group key already bound to another block.' },
  NOT_BOUND: {
    status: 409,
    summary: 'Get group key: the group key exists but is not bound to a block yet, and the requester did not create it; it may be bound later (retry).',
  },
  TOO_LARGE: { status: 413, summary: 'The message or one of its fields exceeds a configured limit.' },
  INTERNAL: { status: 500, summary: 'An unexpected failure inside the KMS; nothing was changed.' },
  PEER_FAILED: {
    status: 502,
    summary:
      'A request forwarded to a peer KMS (federation) got no valid answer: the peer did not answer, its static key did not validate, or its answer did not verify.',
  },
} as const satisfies Record<string, { status: number; summary: string }>;

/** The failures a client detects itself. They never travel in a response and have no status. */
export const CLIENT_ERRORS = {
  BAD_RESPONSE: {
    summary:
      'A response the client cannot accept: not signed by the KMS, under another ephemeral key, for another request, missing, or not what was asked for.',
  },
  CHAIN_INVALID: { summary: "A chain the KMS returned does not verify: its genesis, a link, a block's creator, operations or signature." },
  IDENTITY_INVALID: {
    summary:
      "The static key the KMS publishes cannot be accepted: no certificate chain to the trust anchors, a certificate for another host, a key that is not the certificate's.",
  },
  STANZA_ERROR: {
    summary: 'The XMPP layer answered with a stanza error, from the component or from the server in its place; no message of the IQ was executed.',
  },
  TIMEOUT: { summary: 'No answer: the IQ timed out or the XMPP connection was lost first. The outcome of the request is unknown.' },
} as const satisfies Record<string, { summary: string }>;

/** A code the KMS answers with (and sends in the "code" member of an error response). */
export type KmsServerCode = keyof typeof KMS_ERRORS;
/** A code of a failure the client detects itself. */
export type KmsClientCode = keyof typeof CLIENT_ERRORS;
/** Every stable error code, server and client. */
export type KmsErrorCode = KmsServerCode | KmsClientCode;

/** True when `code` is one of the KMS's codes (what a response's "code" member may hold). */
function isServerCode(code: unknown): code is KmsServerCode {
  return typeof code === 'string' && Object.hasOwn(KMS_ERRORS, code);
}

/** True when `code` is one of the client-only codes. */
export function isClientCode(code: unknown): code is KmsClientCode {
  return typeof code === 'string' && Object.hasOwn(CLIENT_ERRORS, code);
}

/** A stanza error as the retry rule sees it: its type, and whether the KMS's own condition is in it. */
export interface StanzaErrorFacts {
  /** The error type of RFC 6120 section 8.3.2: auth, cancel, continue, modify or wait. */
  type: string;
  /** True when the error carries an application condition of urn:xmpp:kms:0 (the component answered). */
  fromKms: boolean;
}

/**
 * May the same request succeed if it is sent again after a pause? Decided by code, and for a
 * stanza error by its type:
 *   - TIMEOUT: yes (no answer came);
 *   - STANZA_ERROR: yes when its type is "wait" (XEP "Errors": retry later with a backoff), and
 *     when it has no application condition of the KMS and does not ask for the request to be
 *     modified: the XMPP server answered in place of a component that is not connected (XEP
 *     "Components and Servers": clients treat it like a timeout). Prosody answers
 *     wait/remote-server-timeout, ejabberd with server-to-server disabled auth/forbidden;
 *   - every other code: no. A KMS response is an answer: the request was executed and refused.
 */
export function isRetryable(code: KmsErrorCode, stanza?: StanzaErrorFacts): boolean {
  if (code === 'TIMEOUT') return true;
  if (code !== 'STANZA_ERROR' || !stanza) return false;
  return stanza.type === 'wait' || (!stanza.fromKms && stanza.type !== 'modify');
}

/** A failure with a stable code: thrown by the engine (answered as a response) and by the client library. */
export class KmsError extends Error {
  readonly code: KmsErrorCode;
  /** The HTTP-style status: the registry's for a server code (or the one the response carried); undefined for a client-only code. */
  readonly status: number | undefined;

  constructor(code: KmsErrorCode, reason: string, options?: { cause?: unknown; status?: number }) {
    super(reason, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KmsError';
    this.code = code;
    this.status = options?.status ?? (isServerCode(code) ? KMS_ERRORS[code].status : undefined);
  }

  /** The human-readable reason (sent to the client for a server code). */
  get reason(): string {
    return this.message;
  }

  /** May the same request succeed if sent again after a pause? See isRetryable. */
  get retryable(): boolean {
    return isRetryable(this.code);
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
export const notBound = (reason: string) => new KmsError('NOT_BOUND', reason);
export const tooLarge = (reason: string) => new KmsError('TOO_LARGE', reason);
export const peerFailed = (reason: string, cause?: unknown) => new KmsError('PEER_FAILED', reason, { cause });

/** The members of an error response (XEP "KMS Error Codes"): status, code and reason. */
export type ErrorResponseBody = { status: number; code: KmsServerCode; reason: string };

/**
 * What the engine sends for `err`: its status, code and reason. Only server codes travel; an error
 * with a client-only code (which the engine never means to throw) is answered as INTERNAL.
 */
export function errorResponse(err: KmsError): ErrorResponseBody {
  if (!isServerCode(err.code)) return { status: KMS_ERRORS.INTERNAL.status, code: 'INTERNAL', reason: 'internal error; nothing was changed' };
  return { status: err.status ?? KMS_ERRORS[err.code].status, code: err.code, reason: err.reason };
}

/**
 * The code for a failure status, for responses without a "code" member (or with one this client
 * does not know): the registry's code for that status (BAD_REQUEST for 400, never UNSUPPORTED),
 * otherwise INTERNAL for a 5xx status and BAD_REQUEST for any other.
 */
function codeForStatus(status: number): KmsServerCode {
  for (const [code, entry] of Object.entries(KMS_ERRORS)) {
    if (entry.status === status && code !== 'UNSUPPORTED') return code as KmsServerCode;
  }
  return status >= 500 ? 'INTERNAL' : 'BAD_REQUEST';
}

/** The code of an error response: its "code" member when it is a KMS code, else the code for its status. */
export function responseCode(res: { status: number; code?: unknown }): KmsServerCode {
  return isServerCode(res.code) ? res.code : codeForStatus(res.status);
}
