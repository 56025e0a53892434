/**
 * A local token issuer, so that the embedded default needs no outside identity provider: an ES256
 * key made on first start (sealed under the master key), its public JWKS beside it, and a `mint`
 * that makes short-lived access tokens for development and tests. Production deployments point
 * the KMS at their identity provider's JWKS instead.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createLocalJWKSet, exportJWK, generateKeyPair, importJWK, SignJWT, type JSONWebKeySet, type JWK, type JWTVerifyGetKey } from 'jose';
import type { webcrypto } from 'node:crypto';
import type { Sealer } from '../crypto/seal.js';

type CryptoKey = webcrypto.CryptoKey;

export interface MintOptions {
  /** The user, a bare JID. */
  subject: string;
  audience: string | string[];
  /** Lifetime in seconds (default one hour). */
  ttlSec?: number;
  /** Extra claims, e.g. to test how the KMS treats them. */
  claims?: Record<string, unknown>;
}

/** Mints ES256 access tokens under a fixed issuer name. */
export class LocalIssuer {
  readonly issuer: string;
  readonly jwks: JSONWebKeySet;
  readonly #privateKey: CryptoKey;
  readonly #kid: string;

  private constructor(issuer: string, privateKey: CryptoKey, publicJwk: JWK) {
    this.issuer = issuer;
    this.#privateKey = privateKey;
    this.#kid = publicJwk.kid!;
    this.jwks = { keys: [publicJwk] };
  }

  /** A fresh ES256 signing key and its public JWK as the JWKS lists it. */
  static async #generate(): Promise<{ privateKey: CryptoKey; pub: JWK }> {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const pub: JWK = { ...(await exportJWK(publicKey)), kid: `local-${Date.now().toString(36)}`, alg: 'ES256', use: 'sig' };
    return { privateKey: privateKey as CryptoKey, pub };
  }

  /** A fresh issuer held in memory only (tests). */
  static async ephemeral(issuer: string): Promise<LocalIssuer> {
    const { privateKey, pub } = await LocalIssuer.#generate();
    return new LocalIssuer(issuer, privateKey, pub);
  }

  /** Loads the issuer kept in `dir`, making it on first use. Writes `issuer-jwks.json` for the KMS to trust. */
  static async open(dir: string, issuer: string, sealer: Sealer): Promise<LocalIssuer> {
    const file = join(dir, 'issuer.json');
    const context = `issuer:${issuer}`;
    if (existsSync(file)) {
      const stored = JSON.parse(await readFile(file, 'utf8')) as { issuer: string; key: string; jwk: JWK };
      if (stored.issuer !== issuer) throw new Error(`token issuer: ${file} is for ${stored.issuer}, not ${issuer}`);
      const priv = JSON.parse(sealer.open(stored.key, context).toString('utf8')) as JWK;
      return new LocalIssuer(issuer, (await importJWK(priv, 'ES256')) as CryptoKey, stored.jwk);
    }
    const { privateKey, pub } = await LocalIssuer.#generate();
    const priv = await exportJWK(privateKey);
    await mkdir(dir, { recursive: true });
    await writeFile(file, JSON.stringify({ issuer, key: sealer.seal(JSON.stringify(priv), context), jwk: pub }, null, 2), { mode: 0o600 });
    await writeFile(join(dir, 'issuer-jwks.json'), JSON.stringify({ keys: [pub] }, null, 2));
    return new LocalIssuer(issuer, privateKey, pub);
  }

  /** The verification keys, in the form the KMS's authenticator takes. */
  keys(): JWTVerifyGetKey {
    return createLocalJWKSet(this.jwks);
  }

  /** A signed access token for `subject`. */
  async mint(opts: MintOptions): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ ...(opts.claims ?? {}) })
      .setProtectedHeader({ alg: 'ES256', kid: this.#kid, typ: 'at+jwt' })
      .setIssuer(this.issuer)
      .setSubject(opts.subject)
      .setAudience(opts.audience)
      .setIssuedAt(now)
      .setExpirationTime(now + (opts.ttlSec ?? 3600))
      .sign(this.#privateKey);
  }
}
