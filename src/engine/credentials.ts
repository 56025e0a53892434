/**
 * Credential verification (-03 §4.5.1, §4.6.1): a bearer OAuth 2.0 access token (a JWT checked
 * against the identity provider's JWKS), or a `jwk` carrying an `x5c` chain validated against the
 * KMS's trust anchors (for trusted services such as a federating KMS).
 */
import { createHash, KeyObject, type X509Certificate } from 'node:crypto';
import { errors as joseErrors, type JWTVerifyGetKey } from 'jose';
import { unauthenticated, forbidden, type KmsError } from '../protocol/errors.js';
import { canonicalEntity } from '../protocol/entity.js';
import type { KmsRequest } from '../protocol/messages.js';
import { importPublicJwk, thumbprint } from '../crypto/keys.js';
import { decodeCompactJws, verifyDecoded, type JwsAlg } from '../crypto/jws.js';
import { checkClaims, ClaimError } from './jwt-claims.js';
import { validateChain } from '../crypto/x509.js';
import { Lru } from '../util/lru.js';
import type { Principal } from './principal.js';

export interface BearerSettings {
  /** Resolves the IdP's verification key for a token (jose's createLocalJWKSet / createRemoteJWKSet). */
  keys: JWTVerifyGetKey;
  issuer: string;
  /** The KMS's own audience; tokens for anything else are refused. */
  audience: string;
  /** Accepted signature algorithms: never `none`, never HS* with a public key. */
  algorithms: string[];
  /** The claim that names the user, normalised to a bare JID. */
  userClaim: string;
  clockToleranceSec: number;
}

/** A KMS this one federates with (xep/kms.xml "Federation"). */
export interface PeerSettings {
  /** Its component domain: its identity is kms://<kms>, its certificate names <kms>. */
  kms: string;
  /** The user domains it speaks for. */
  domains: string[];
  /** The anchors its certificate chain must lead to. */
  anchors: X509Certificate[];
}

export interface AuthenticatorSettings {
  bearer: BearerSettings;
  /** Trust anchors for `jwk` credentials (services); empty disables them. */
  serviceAnchors: X509Certificate[];
  /** Federating KMSes; a jwk credential whose certificate names one of them, under its anchors, is that peer. */
  peers?: PeerSettings[];
  /** When set, only users of these domains may use the KMS (-03 §4.6.1 "authorized user"). */
  allowedDomains?: string[];
}

const TOKEN_CACHE_SIZE = 10_000;

/** Turns a request's credential into a Principal, or a 401/403 that says why not. */
export class Authenticator {
  readonly #s: AuthenticatorSettings;
  readonly #cache = new Lru<string, Principal>(TOKEN_CACHE_SIZE);

  constructor(settings: AuthenticatorSettings) {
    this.#s = settings;
  }

  /** Verifies the credential; results are cached until the credential's own expiry. */
  async authenticate(credential: KmsRequest['credential'], now: Date): Promise<Principal> {
    const cacheKey = 'bearer' in credential ? `b:${credential.bearer}` : `j:${digest(JSON.stringify(credential.jwk))}`;
    const hit = this.#cache.get(cacheKey);
    if (hit && (hit.expiresAt === undefined || hit.expiresAt > now.getTime())) return hit;
    const p = 'bearer' in credential ? await this.#bearer(credential.bearer, now) : this.#service(credential.jwk, now);
    this.#checkDomain(p);
    this.#cache.set(cacheKey, p);
    return p;
  }

  /**
   * RFC 7519 validation of an access token. The JWKS is resolved by jose (local set or remote URL
   * with its caching); the signature is checked with node:crypto through src/crypto/jws.ts, which
   * is cross-checked against jose (test/engine/credentials.test.ts), because jose's WebCrypto
   * verification was a third of the handshake's cost.
   */
  async #bearer(token: string, now: Date): Promise<Principal> {
    const b = this.#s.bearer;
    let payload: Record<string, unknown>;
    try {
      const decoded = decodeCompactJws(token);
      const alg = decoded.header.alg;
      if (typeof alg !== 'string' || !b.algorithms.includes(alg))
        throw new joseErrors.JOSEAlgNotAllowed('"alg" (Algorithm) Header Parameter value not allowed');
      const key = await this.#verificationKey(decoded.header);
      verifyDecoded(decoded, key, [alg as JwsAlg]);
      payload = JSON.parse(decoded.payload.toString('utf8')) as Record<string, unknown>;
      checkClaims(payload, { issuer: b.issuer, audience: b.audience, now, clockToleranceSec: b.clockToleranceSec, required: [b.userClaim] });
    } catch (e) {
      throw unauthenticated(`bearer token rejected: ${describeJoseError(e)}`, e);
    }
    const raw = payload[b.userClaim];
    // XEP "Authentication of Users": the user claim is canonicalised (prefix and resource dropped,
    // NFC, lower case); a claim that is not a user address, e.g. one holding a NUL, is refused.
    const user = canonicalEntity(raw);
    if (!user) throw unauthenticated(`bearer token rejected: claim ${b.userClaim} is not a user address`);
    const p: Principal = { id: user, kind: 'user' };
    if (typeof payload.exp === 'number') p.expiresAt = payload.exp * 1000;
    return p;
  }

  /** The IdP key for this token's header, as a KeyObject (converted once per key). */
  async #verificationKey(header: Record<string, unknown>): Promise<KeyObject> {
    // jose's key resolvers read the protected header only.
    const k = await this.#s.bearer.keys(header as never, { payload: '', signature: '' } as never);
    if (k instanceof KeyObject) return k;
    let ko = keyObjects.get(k as object);
    if (!ko) {
      ko = KeyObject.from(k as never);
      keyObjects.set(k as object, ko);
    }
    return ko;
  }

  #service(jwk: Record<string, unknown> & { x5c: string[] }, now: Date): Principal {
    const peers = this.#s.peers ?? [];
    if (this.#s.serviceAnchors.length === 0 && peers.length === 0) throw unauthenticated('jwk credentials are not accepted by this KMS');
    // A federation peer is the one whose anchors the chain leads to and whose name the certificate
    // carries; a chain that leads to a peer's anchors but names another KMS is no peer (403 below).
    let chain: ReturnType<typeof validateChain> | undefined;
    let failure: unknown;
    let peer: PeerSettings | undefined;
    for (const p of peers) {
      try {
        chain = validateChain(jwk.x5c, p.anchors, { now });
      } catch (e) {
        failure ??= e;
        continue;
      }
      const host = (chain.dnsNames[0] ?? chain.commonName ?? '').toLowerCase();
      if (host === p.kms) {
        peer = p;
        break;
      }
    }
    if (!peer && this.#s.serviceAnchors.length > 0) {
      try {
        chain = validateChain(jwk.x5c, this.#s.serviceAnchors, { now });
      } catch (e) {
        failure ??= e;
        chain = undefined;
      }
    }
    if (!chain) throw unauthenticated(`jwk credential rejected: ${(failure as Error | undefined)?.message ?? 'no trust anchor'}`, failure);
    let presented: KeyObject;
    try {
      presented = importPublicJwk(jwk);
    } catch (e) {
      throw unauthenticated(`jwk credential rejected: ${(e as Error).message}`, e);
    }
    if (!presented.equals(chain.publicKey)) throw unauthenticated("jwk credential rejected: the key is not the certificate's key");
    const host = chain.dnsNames[0] ?? chain.commonName;
    if (!host) throw unauthenticated('jwk credential rejected: the certificate names no host');
    const id = `kms://${host.toLowerCase()}`;
    if (!peer && this.#s.serviceAnchors.length === 0) throw forbidden(`${id} is not a KMS this KMS federates with`) as KmsError;
    const { x5c: _chain, ...publicMembers } = jwk;
    return {
      id,
      kind: 'service',
      expiresAt: Date.parse(chain.leaf.validTo),
      key: { jwk: publicMembers, thumbprint: thumbprint(presented) },
      ...(peer ? { peer: { kms: peer.kms, domains: peer.domains } } : {}),
    };
  }

  #checkDomain(p: Principal): void {
    const allowed = this.#s.allowedDomains;
    if (!allowed || p.kind !== 'user') return;
    const domain = p.id.slice(p.id.indexOf('@') + 1);
    if (!allowed.includes(domain)) throw forbidden(`${p.id} is not a user of a domain this KMS serves`) as KmsError;
  }
}

const keyObjects = new WeakMap<object, KeyObject>();

function digest(s: string): string {
  return createHash('sha256').update(s).digest('base64url');
}

/** A short, non-sensitive description of why jose refused a token. */
function describeJoseError(e: unknown): string {
  if (e instanceof ClaimError) return e.message;
  // src/auth/discovery.ts: the identity provider's discovery document could not be read or is not for this issuer.
  if (e instanceof Error && e.name === 'DiscoveryError') return `the identity provider's keys are unavailable (${e.message})`;
  if (e instanceof Error && 'code' in e && String((e as { code: unknown }).code).startsWith('JOSE_')) {
    return (e as { code: string }).code === 'JOSE_SIGNATURE_INVALID'
      ? 'bad signature'
      : (e as { code: string }).code === 'JOSE_ALG_NOT_ALLOWED'
        ? 'algorithm not allowed'
        : 'malformed token';
  }
  if (e instanceof SyntaxError) return 'malformed token';
  if (e instanceof joseErrors.JWTExpired) return 'expired';
  if (e instanceof joseErrors.JWTClaimValidationFailed) return `claim ${e.claim} ${e.reason === 'check_failed' ? 'is wrong' : e.reason}`;
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return 'algorithm not allowed';
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'bad signature';
  if (e instanceof joseErrors.JWKSNoMatchingKey) return 'signed by an unknown key';
  if (e instanceof joseErrors.JWSInvalid || e instanceof joseErrors.JWTInvalid) return 'malformed token';
  if (e instanceof joseErrors.JOSENotSupported) return 'unsupported algorithm';
  return 'invalid token';
}
