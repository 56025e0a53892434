/**
 * KMS request URIs: relative (`/ecdhe/…`, `/ping`) or absolute (`kms://<domain>/blocks/…`) as
 * the -03 examples mix both (XEP "Sending KMS Requests"). Routing uses the path only.
 */
import { MAX_ENTITY_OCTETS } from './entity.js';
import { badRequest, notFound } from './errors.js';

/** The path segments of a request URI addressed to this KMS. */
export interface ParsedUri {
  /** e.g. ['blocks', '7f35c3eb-…'] */
  segments: string[];
  /** The authority of an absolute URI of another KMS (only with `foreign` allowed). */
  foreign?: string;
}

/** A path segment: long enough for any entity percent-encoded (3 characters per UTF-8 octet). */
const SEGMENT = new RegExp(`^[A-Za-z0-9._~%@+-]{1,${3 * MAX_ENTITY_OCTETS}}$`);
/** The longest request URI: an absolute URI with an entity segment at its end. */
export const MAX_URI_LENGTH = 3 * MAX_ENTITY_OCTETS + 2048;

/**
 * Parses `uri` and checks that it is addressed to `domain`; with `foreign`, an absolute URI of
 * another KMS is parsed too and its authority returned (XEP "Federation": it may be a peer's).
 */
export function parseKmsUri(uri: string, domain: string, foreign = false): ParsedUri {
  if (uri.length > MAX_URI_LENGTH) throw badRequest('uri is too long');
  let path: string;
  let other: string | undefined;
  if (uri.startsWith('kms://')) {
    const rest = uri.slice('kms://'.length);
    const slash = rest.indexOf('/');
    const authority = (slash < 0 ? rest : rest.slice(0, slash)).toLowerCase();
    if (authority !== domain) {
      // -03 §3.3 federation: a foreign authority is forwarded to its KMS when it is a peer.
      if (!foreign) throw notFound(`${uri} belongs to another KMS (kms://${authority}) and federation is not enabled`);
      if (!/^[a-z0-9.-]{1,253}$/.test(authority)) throw badRequest('uri has an invalid authority');
      other = authority;
    }
    path = slash < 0 ? '/' : rest.slice(slash);
  } else if (uri.startsWith('/')) {
    path = uri;
  } else {
    throw badRequest('uri must be a path (/…) or a kms:// URI');
  }
  const q = path.search(/[?#]/);
  if (q >= 0) path = path.slice(0, q);
  const segments = path.split('/').filter((s) => s.length > 0);
  for (const s of segments) {
    if (!SEGMENT.test(s)) throw badRequest('uri has an invalid path segment');
  }
  try {
    return { segments: segments.map((s) => decodeURIComponent(s)), ...(other ? { foreign: other } : {}) };
  } catch {
    throw badRequest('uri has an invalid percent-encoding');
  }
}

/** The absolute URI of an object of this KMS. */
export function absoluteUri(domain: string, collection: string, id: string): string {
  return `kms://${domain}/${collection}/${id}`;
}

/**
 * A URI path segment for `value` (an entity in `/entity-keys/{entity}`): every UTF-8 byte
 * percent-encoded except the characters a segment may carry as they are, ASCII letters, digits and
 * `-._~@+` (XEP "Entities and Hashes"). encodeURIComponent leaves `!*'()` as they are, which the
 * KMS refuses in a segment.
 */
export function encodeSegment(value: string): string {
  let out = '';
  for (const byte of new TextEncoder().encode(value)) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9\-._~@+]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
