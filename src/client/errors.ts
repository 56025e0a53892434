/** Errors the client library raises, rebuilt from KMS responses with the same codes as the engine's registry. */
import { codeForStatus, type KmsErrorCode } from '../protocol/errors.js';

/** A KMS response with a failure status (or a response the client could not trust). */
export class KmsResponseError extends Error {
  readonly status: number;
  readonly code: KmsErrorCode | 'BAD_RESPONSE';

  constructor(status: number, reason: string) {
    super(reason);
    this.name = 'KmsResponseError';
    this.status = status;
    this.code = status === 502 ? 'BAD_RESPONSE' : codeForStatus(status);
  }

  /** Rebuilds the error from a response payload. */
  static from(res: { status: number; reason?: string }): KmsResponseError {
    return new KmsResponseError(res.status, res.reason ?? `status ${res.status}`);
  }
}
