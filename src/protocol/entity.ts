/**
 * Entity identifiers (XEP "Entities and Hashes"). An entity is a user, written on the wire in one
 * canonical spelling only: a bare JID `local@domain`, Unicode NFC, lower-cased, with no `acct:` or
 * `xmpp:` prefix and no resource. The KMS refuses any other spelling in a request or a block with
 * 400, so that the KMS and every client apply the same strings to membership and can never
 * disagree about who is a member. `canonicalEntity` turns what a person types (or what an identity
 * provider puts in a token) into that spelling; both sides use this one function.
 */
import { badRequest } from './errors.js';

/** RFC 7622: a localpart and a domainpart of at most 1023 octets each (in UTF-8), and the '@'. */
const MAX_PART_OCTETS = 1023;
/** The longest entity in UTF-16 code units (each is at least one UTF-8 octet). */
export const MAX_ENTITY_LENGTH = 2 * MAX_PART_OCTETS + 1;
/** The longest entity in UTF-8 octets: what a URI segment carrying it percent-encodes (3 characters an octet). */
export const MAX_ENTITY_OCTETS = 2 * MAX_PART_OCTETS + 1;

/**
 * Characters no part may hold: separators, controls, format, private-use and surrogate code points,
 * and XML/JID delimiters. Unassigned code points (\p{Cn}) are not checked here: which are unassigned
 * depends on the runtime's Unicode version, and a client on an older one must accept what the KMS
 * accepted.
 */
const FORBIDDEN = /[\p{Cc}\p{Cf}\p{Co}\p{Cs}\p{Z}@/<>'"&]/u;

const octets = (s: string) => new TextEncoder().encode(s).length;

/** The canonical spelling of an entity, or undefined when `value` is not a user address at all. Idempotent. */
export function canonicalEntity(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length === 0 || value.length > 4 * MAX_ENTITY_LENGTH) return undefined;
  let v = value.trim();
  const prefix = v.slice(0, 5).toLowerCase();
  if (prefix === 'acct:' || prefix === 'xmpp:') v = v.slice(5);
  const slash = v.indexOf('/');
  if (slash >= 0) v = v.slice(0, slash);
  v = fold(v);
  const at = v.indexOf('@');
  if (at <= 0 || at === v.length - 1) return undefined;
  const local = v.slice(0, at);
  const domain = v.slice(at + 1);
  if (octets(local) > MAX_PART_OCTETS || octets(domain) > MAX_PART_OCTETS) return undefined;
  if (FORBIDDEN.test(local) || local.includes(':') || FORBIDDEN.test(domain)) return undefined;
  if (domain.startsWith('.') || domain.endsWith('.') || domain.includes('..')) return undefined;
  return v;
}

/**
 * Lower case code point by code point (String.prototype.toLowerCase depends on context: a final
 * capital sigma becomes ς, elsewhere σ), with ς folded to σ as Unicode case folding does, so that
 * one name has one spelling wherever its letters stand.
 */
const lower = (s: string) =>
  Array.from(s, (c) => c.toLowerCase())
    .join('')
    .replaceAll('ς', 'σ');

/** NFC and lower case, repeated until stable (one pass is not always a fixed point in Unicode). */
function fold(s: string): string {
  let v = s;
  for (let i = 0; i < 4; i++) {
    const next = lower(v.normalize('NFC')).normalize('NFC');
    if (next === v) return v;
    v = next;
  }
  return v;
}

/** True when `value` is an entity written canonically (what the wire requires). */
export function isCanonicalEntity(value: unknown): value is string {
  return typeof value === 'string' && canonicalEntity(value) === value;
}

/**
 * The entity a request field names, which must already be canonical; otherwise a 400 that names
 * the field and, when there is one, the canonical spelling the sender should have used.
 */
export function requireCanonicalEntity(value: unknown, field: string): string {
  if (isCanonicalEntity(value)) return value;
  const c = canonicalEntity(value);
  if (c !== undefined) throw badRequest(`${field} must be written canonically: "${c}" (a lower-case bare JID, no prefix, no resource)`);
  throw badRequest(`${field} must be a user address (a bare JID: user@domain)`);
}

/** The KMS's own identity as it appears in blocks and GKs. */
export function kmsIdentity(domain: string): string {
  return `kms://${domain}`;
}

/** A lowercase hex SHA-256, the only spelling of a block hash (XEP "Entities and Hashes"). */
export const BLOCK_HASH = /^[0-9a-f]{64}$/;

/** The block hash a request field names, which must be lowercase hex; otherwise a 400. */
export function requireBlockHash(value: unknown, field: string): string {
  if (typeof value === 'string' && BLOCK_HASH.test(value)) return value;
  if (typeof value === 'string' && /^[0-9a-fA-F]{64}$/.test(value)) throw badRequest(`${field} must be written in lowercase hex`);
  throw badRequest(`${field} must be a block hash (64 lowercase hex digits)`);
}
