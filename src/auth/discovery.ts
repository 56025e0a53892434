/**
 * Token signing keys found through an OpenID Connect issuer's discovery document
 * (`<issuer>/.well-known/openid-configuration`, OpenID Connect Discovery 1.0 §4): the document's
 * `issuer` must be the configured one exactly (§4.3), and its `jwks_uri` is read with jose's
 * remote JWKS (cached, refetched for an unknown `kid` at most once per cooldown). Discovery
 * happens at the first token, and again after a failure (not more often than once per cooldown),
 * so that a KMS started before its identity provider still comes to trust it.
 */
import { createRemoteJWKSet, type JWTVerifyGetKey } from 'jose';

/** Discovery failed: the identity provider is unreachable or its document is not for this issuer. */
export class DiscoveryError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DiscoveryError';
  }
}

/** The discovery document's URL for an issuer (a trailing `/` of the issuer is not doubled). */
function discoveryUrl(issuer: string): URL {
  return new URL(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
}

/** Reads and checks an issuer's discovery document; resolves with its JWKS URL. */
export async function discoverJwksUri(issuer: string, timeoutMs = 5000): Promise<URL> {
  const url = discoveryUrl(issuer);
  let doc: { issuer?: unknown; jwks_uri?: unknown };
  try {
    const res = await fetch(url, { headers: { accept: 'application/json' }, redirect: 'error', signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    doc = (await res.json()) as typeof doc;
  } catch (e) {
    throw new DiscoveryError(`cannot read ${url.href}: ${(e as Error).message}`, { cause: e });
  }
  if (doc.issuer !== issuer) throw new DiscoveryError(`${url.href} is for the issuer ${JSON.stringify(doc.issuer)}, not ${issuer}`);
  if (typeof doc.jwks_uri !== 'string') throw new DiscoveryError(`${url.href} has no jwks_uri`);
  let jwks: URL;
  try {
    jwks = new URL(doc.jwks_uri);
  } catch {
    throw new DiscoveryError(`${url.href}: jwks_uri is not a URL`);
  }
  if (jwks.protocol !== 'https:' && jwks.protocol !== 'http:') throw new DiscoveryError(`${url.href}: jwks_uri is not http(s)`);
  return jwks;
}

export interface DiscoveredKeysOptions {
  /** Least time between two discoveries, or two JWKS fetches for an unknown key (default 30 s). */
  cooldownMs?: number;
  /** How long fetched keys are used before they are fetched again (default 10 min). */
  cacheMaxAgeMs?: number;
}

/** A key resolver for the Authenticator that finds the issuer's keys through its discovery document. */
export function discoveredKeys(issuer: string, o: DiscoveredKeysOptions = {}): JWTVerifyGetKey {
  const cooldownMs = o.cooldownMs ?? 30_000;
  let keys: Promise<JWTVerifyGetKey> | undefined;
  let failedAt = 0;
  let lastError: unknown;
  const resolve = (): Promise<JWTVerifyGetKey> => {
    if (keys) return keys;
    if (Date.now() - failedAt < cooldownMs) return Promise.reject(lastError);
    keys = discoverJwksUri(issuer).then(
      (uri) => createRemoteJWKSet(uri, { cooldownDuration: cooldownMs, cacheMaxAge: o.cacheMaxAgeMs ?? 600_000 }),
      (e: unknown) => {
        keys = undefined;
        failedAt = Date.now();
        lastError = e;
        throw e;
      },
    );
    return keys;
  };
  return async (header, token) => (await resolve())(header, token);
}
