/**
 * The errors of the client library. Each is a KmsError (src/protocol/errors.ts) with a stable
 * code: KMS refusals are rebuilt from the response's "code" member with the engine's own codes
 * (XEP "KMS Error Codes"); the client's own failures have a client-only code and no status.
 */
import { KmsError, isRetryable, responseCode, type KmsServerCode } from '../protocol/errors.js';
import type { ParsedStanzaError } from '../protocol/stanza-errors.js';

/** A KMS response with a failure status: the KMS executed the request and refused it. */
export class KmsResponseError extends KmsError {
  declare readonly code: KmsServerCode;
  declare readonly status: number;

  /** `code` is the response's code; `status` the status it carried. */
  constructor(code: KmsServerCode, status: number, reason: string) {
    super(code, reason, { status });
    this.name = 'KmsResponseError';
  }

  /** Rebuilds the error of a response: from its "code" member, or from its status when the code is absent or unknown. */
  static from(res: { status: number; code?: unknown; reason?: unknown }): KmsResponseError {
    const reason = typeof res.reason === 'string' ? res.reason : `status ${res.status}`;
    return new KmsResponseError(responseCode(res), res.status, reason);
  }
}

/** A response the client cannot accept (not signed by the KMS, under another key, for another request, missing, not what was asked for). */
export class BadResponseError extends KmsError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super('BAD_RESPONSE', reason, options);
    this.name = 'BadResponseError';
  }
}

/** A chain from the KMS that does not verify (XEP "Chains and Membership"). `block` is the index of the first bad block, when known. */
export class ChainVerificationError extends KmsError {
  readonly block: number | undefined;

  constructor(reason: string, options?: { block?: number; cause?: unknown }) {
    super('CHAIN_INVALID', reason, options);
    this.name = 'ChainVerificationError';
    this.block = options?.block;
  }
}

/** A published static key that fails the checks of XEP "Validating the Static Key": the client must not use this KMS. */
export class IdentityValidationError extends KmsError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super('IDENTITY_INVALID', reason, options);
    this.name = 'IdentityValidationError';
  }
}

/** No answer: the IQ timed out, or the XMPP connection was lost or not online. The outcome of the request is unknown. */
export class KmsTimeoutError extends KmsError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super('TIMEOUT', reason, options);
    this.name = 'KmsTimeoutError';
  }
}

/**
 * An XMPP-level refusal (a stanza error, XEP "Errors"), from the component or from the XMPP server
 * in its place. `key` is the binding's application condition, undefined when the error has none
 * (e.g. Prosody's remote-server-timeout while the component is not connected).
 */
export class KmsStanzaError extends KmsError {
  readonly key: ParsedStanzaError['key'] | undefined;
  /** The defined condition of RFC 6120 section 8.3.3, e.g. 'resource-constraint'. */
  readonly condition: string;
  /** The error type of RFC 6120 section 8.3.2: auth, cancel, continue, modify or wait. */
  readonly type: string;

  constructor(parsed: ParsedStanzaError | undefined, condition: string, type: string, text?: string) {
    super('STANZA_ERROR', text || parsed?.text || condition);
    this.name = 'KmsStanzaError';
    this.key = parsed?.key;
    this.condition = parsed?.condition ?? condition;
    this.type = parsed?.type || type;
  }

  /** Retried when its type is wait, or when the XMPP server answered for an absent component (see isRetryable). */
  override get retryable(): boolean {
    return isRetryable(this.code, { type: this.type, fromKms: this.key !== undefined });
  }
}
