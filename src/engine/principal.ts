import { badRequest, forbidden } from '../protocol/errors.js';
import { requireCanonicalEntity } from '../protocol/entity.js';
import { speaksFor } from '../protocol/federation.js';

/** Who sent a request, as established from its credential. */
export interface Principal {
  /** A bare JID for users; kms://<domain> for a trusted service (a federating KMS). */
  id: string;
  /** Users act for themselves; trusted services (jwk credential with an x5c chain) may act for others. */
  kind: 'user' | 'service';
  /** Until when the credential is good (the token's exp, the certificate's notAfter). */
  expiresAt?: number;
  /** A service's key, as its jwk credential presented it (public members only). */
  key?: { jwk: Record<string, unknown>; thumbprint: string };
  /** A federating KMS (xep/kms.xml "Federation"): its component domain and the user domains it speaks for. */
  peer?: { kms: string; domains: string[] };
}

/**
 * Whom a request acts for, given its optional "entity" (XEP "Federation"): a user acts for itself
 * (naming another entity is 403); a federating KMS acts for the entity it names, which must be a
 * user of a domain it speaks for (403 otherwise; 400 when it names none). Another trusted service
 * acts for the entity it names. Undefined: a service that named no one.
 */
export function onBehalfOf(principal: Principal, entity: unknown): string | undefined {
  if (principal.kind === 'user') {
    if (entity !== undefined && requireCanonicalEntity(entity, 'entity') !== principal.id) throw forbidden(`${principal.id} may not act for ${String(entity)}`);
    return principal.id;
  }
  if (entity === undefined) {
    if (principal.peer) throw badRequest('a federating KMS names the user it asks for in "entity"');
    return undefined;
  }
  const e = requireCanonicalEntity(entity, 'entity');
  if (principal.peer && !speaksFor(principal.peer.domains, e)) throw forbidden(`${principal.peer.kms} does not speak for ${e}`);
  return e;
}
