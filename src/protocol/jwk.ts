/** Rules on the JWKs a request carries, shared by the KMS and clients. */
import { badRequest } from './errors.js';

/** Private JWK members (RFC 7518 §6.2.2, §6.3.2, §6.4): never accepted where a public key is expected. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

/**
 * A 400 when a JWK carries private key members (XEP "Entity Keys" and "Establishing a Secure
 * Channel"): a client that sends its private key by mistake must learn it, not lose the key's
 * secrecy silently.
 */
export function refusePrivateMembers(jwk: Record<string, unknown>, field: string): void {
  const found = PRIVATE_MEMBERS.filter((m) => Object.hasOwn(jwk, m));
  if (found.length > 0) throw badRequest(`${field}: carries private key members (${found.join(', ')}); send the public key only`);
}
