/**
 * Entity identifiers. PCG-01 uses acct URIs, the -03 examples bare `user@domain`, and the KMS
 * calls itself `kms://<domain>`. We compare entities as bare JIDs: `acct:`/`xmpp:` prefixes and
 * any resource are dropped and the whole JID is lower-cased (protocol-notes §6 item 9).
 */
import { badRequest } from './errors.js';

export const MAX_ENTITY_LENGTH = 3071; // RFC 7622: localpart 1023 + '@' + domainpart 1023 (+ slack)
const BARE_JID = /^[^@/\s<>'"&:]{1,1023}@[^@/\s<>'"&]{1,1023}$/u;

/** Normalises an entity to a bare JID, or returns undefined when it is not one. */
export function normalizeEntity(value: string): string | undefined {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_ENTITY_LENGTH) return undefined;
  let v = value.trim();
  if (v.startsWith('acct:')) v = v.slice(5);
  else if (v.startsWith('xmpp:')) v = v.slice(5);
  const slash = v.indexOf('/');
  if (slash >= 0) v = v.slice(0, slash);
  v = v.toLowerCase();
  return BARE_JID.test(v) ? v : undefined;
}

/** Like normalizeEntity, but a bad value is a 400 naming the field. */
export function requireEntity(value: unknown, field: string): string {
  const e = typeof value === 'string' ? normalizeEntity(value) : undefined;
  if (e === undefined) throw badRequest(`${field} must be a user address (user@domain)`);
  return e;
}

/** The KMS's own identity as it appears in blocks and GKs. */
export function kmsIdentity(domain: string): string {
  return `kms://${domain}`;
}
