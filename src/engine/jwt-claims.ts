/**
 * RFC 7519 §4.1 registered-claim checks for access tokens, after the signature has been verified:
 * `iss` equal, `aud` containing ours (RFC 7519 §4.1.3), `exp` in the future and `nbf` in the past
 * (with a clock tolerance), and the claims the KMS needs present. Cross-checked against jose's
 * jwtVerify on the same tokens in test/engine/credentials.test.ts.
 */

/** A claim that fails validation; the message says which and why, without echoing the token. */
export class ClaimError extends Error {
  constructor(
    readonly claim: string,
    reason: string,
  ) {
    super(`claim ${claim} ${reason}`);
    this.name = 'ClaimError';
  }
}

export interface ClaimRules {
  issuer: string;
  audience: string;
  now: Date;
  clockToleranceSec: number;
  /** Claims that must be present besides exp. */
  required: string[];
}

/** Throws a ClaimError for the first claim that is wrong. */
export function checkClaims(payload: unknown, r: ClaimRules): void {
  if (!payload || typeof payload !== 'object' || Array.isArray(payload)) throw new ClaimError('set', 'is not a JSON object');
  const p = payload as Record<string, unknown>;
  const now = Math.floor(r.now.getTime() / 1000);
  for (const name of ['exp', ...r.required]) if (p[name] === undefined) throw new ClaimError(name, 'is missing');
  if (p.iss !== r.issuer) throw new ClaimError('iss', 'is wrong');
  const aud = p.aud;
  const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : undefined;
  if (!audiences?.includes(r.audience)) throw new ClaimError('aud', 'is wrong');
  if (typeof p.exp !== 'number' || !Number.isFinite(p.exp)) throw new ClaimError('exp', 'is not a number');
  if (p.exp <= now - r.clockToleranceSec) throw new ClaimError('exp', 'has passed (expired)');
  if (p.nbf !== undefined) {
    if (typeof p.nbf !== 'number' || !Number.isFinite(p.nbf)) throw new ClaimError('nbf', 'is not a number');
    if (p.nbf > now + r.clockToleranceSec) throw new ClaimError('nbf', 'is in the future (not yet valid)');
  }
  if (p.iat !== undefined && (typeof p.iat !== 'number' || !Number.isFinite(p.iat))) throw new ClaimError('iat', 'is not a number');
}
