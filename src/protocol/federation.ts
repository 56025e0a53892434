/**
 * The rules two federating KMSes must agree on (xep/kms.xml "Federation"), in one place for both
 * sides: the one that asks on behalf of its user (src/federation/forwarder.ts) and the one that
 * answers (src/engine). No I/O and no keys here.
 *
 * - A KMS speaks for the users of the domains its peer configured for it, and for no one else.
 * - Its "jwk" credential carries an "x5c" chain and a "proof": a JWS by the credential's key over
 *   {"aud": <the receiving KMS's identity>, "ecdhe": <RFC 7638 thumbprint of the handshake's
 *   ephemeral "jwk">, "iat": <seconds>}, so that a captured credential opens no other channel and
 *   no channel at another KMS.
 */
import { badRequest, forbidden } from './errors.js';

/** How far a proof's iat may be from the receiver's clock, in seconds. */
const PROOF_MAX_SKEW_SEC = 300;

/** The claims of a federation credential's proof. */
export interface PeerProofClaims {
  aud: string;
  ecdhe: string;
  iat: number;
}

/** The domain of a canonical entity (a bare JID). */
function entityDomain(entity: string): string {
  return entity.slice(entity.lastIndexOf('@') + 1);
}

/** May a peer configured for `domains` act for `entity`? Its domain must be one of them exactly. */
export function speaksFor(domains: readonly string[], entity: string): boolean {
  return domains.includes(entityDomain(entity));
}

/** The authority (the KMS's domain) of an absolute kms:// URI; undefined for a relative one. */
export function kmsAuthority(uri: string): string | undefined {
  const m = /^kms:\/\/([^/?#]+)(?:[/?#]|$)/i.exec(uri);
  return m ? m[1]!.toLowerCase() : undefined;
}

/** The proof's claims for a handshake to `receiver` (kms://<domain>) with the ephemeral key of thumbprint `ecdhe`. */
export function peerProofClaims(receiver: string, ecdhe: string, now: Date): PeerProofClaims {
  return { aud: receiver, ecdhe, iat: Math.floor(now.getTime() / 1000) };
}

/**
 * Checks a proof's claims (its signature is the caller's): for this KMS, for this handshake's
 * ephemeral key, fresh. A malformed claim set is 400, a mismatch 403.
 */
export function checkPeerProofClaims(claims: unknown, expected: { receiver: string; ecdhe: string; now: Date }): void {
  if (!claims || typeof claims !== 'object' || Array.isArray(claims)) throw badRequest('credential.proof: the payload must be a JSON object');
  const c = claims as Record<string, unknown>;
  if (typeof c.aud !== 'string' || typeof c.ecdhe !== 'string' || typeof c.iat !== 'number' || !Number.isFinite(c.iat)) {
    throw badRequest('credential.proof: the payload needs aud (string), ecdhe (string) and iat (number)');
  }
  if (c.aud !== expected.receiver) throw forbidden(`credential.proof: made for ${c.aud.slice(0, 100)}, not for ${expected.receiver}`);
  if (c.ecdhe !== expected.ecdhe) throw forbidden("credential.proof: made for another handshake's ephemeral key");
  if (Math.abs(c.iat - expected.now.getTime() / 1000) > PROOF_MAX_SKEW_SEC) throw forbidden('credential.proof: iat is not fresh');
}
