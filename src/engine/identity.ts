/**
 * The KMS's static identity: a key pair and its certificate chain, kid `kms://<domain>`. The
 * embedded default makes a development CA and a leaf on first start and keeps the private keys
 * sealed under the master key; an operator may instead give PEM files.
 */
import type { JsonWebKey } from 'node:crypto';
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Sealer } from '../crypto/seal.js';
import type { JwsAlg } from '../crypto/jws.js';
import { importPrivateJwk, publicJwk } from '../crypto/keys.js';
import { certificateMatchesHost, createDevIdentity, parseCertificate, pemCertificates, x5cOf, type IdentityKeyType } from '../crypto/x509.js';
import { kmsIdentity } from '../protocol/entity.js';

export interface StaticIdentity {
  domain: string;
  /** kms://<domain> */
  kid: string;
  keyType: IdentityKeyType;
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** Public JWK with kid and x5c, as published to clients. */
  jwk: JsonWebKey & { kid: string; x5c: string[] };
  /** Signature algorithm of the KMS: PS256 (or RS256) for RSA, ES256 for EC. */
  sigAlg: JwsAlg;
  /** Key management algorithms accepted for the handshake request JWE. */
  handshakeAlgs: string[];
  chainPem: string[];
}

export interface IdentityOptions {
  domain: string;
  keyType: IdentityKeyType;
  /** RSA only: PS256 (the drafts' MTI, default) or RS256 (what Cisco's node-kms mock uses). */
  rsaSigAlg?: 'PS256' | 'RS256';
  /** Operator-provided PEM files; both or neither. */
  keyFile?: string;
  certFile?: string;
  keyPassphrase?: string;
  /** Where the embedded default keeps its sealed identity. */
  dataDir: string;
}

/** Builds the identity object from a key and chain, checking that they belong together and to the domain. */
export function makeIdentity(domain: string, pemKey: KeyObject, chainPem: string[], rsaSigAlg: 'PS256' | 'RS256' = 'PS256'): StaticIdentity {
  // Re-imported through src/crypto/keys so that an EC key gets its cached ECDH object: the
  // handshake's ECDH-ES decryption then skips importing the sender's epk (about 95 us).
  const privateKey = pemKey.asymmetricKeyType === 'ec' ? importPrivateJwk(pemKey.export({ format: 'jwk' })) : pemKey;
  const leaf = parseCertificate(chainPem[0] ?? '');
  const publicKey = createPublicKey(privateKey);
  if (!leaf.publicKey.equals(publicKey)) throw new Error('the certificate does not belong to the private key');
  if (!certificateMatchesHost(leaf, domain)) throw new Error(`the certificate is not for ${domain} (RFC 6125 host check)`);
  const keyType: IdentityKeyType = privateKey.asymmetricKeyType === 'rsa' ? 'RSA' : 'EC';
  if (keyType === 'EC' && privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') throw new Error('an EC identity key must be on P-256');
  const kid = kmsIdentity(domain);
  return {
    domain,
    kid,
    keyType,
    privateKey,
    publicKey,
    jwk: { ...publicJwk(publicKey), kid, x5c: x5cOf(chainPem) },
    sigAlg: keyType === 'RSA' ? rsaSigAlg : 'ES256',
    handshakeAlgs: keyType === 'RSA' ? ['RSA-OAEP', 'RSA-OAEP-256'] : ['ECDH-ES', 'ECDH-ES+A256KW'],
    chainPem,
  };
}

/** Loads the operator's PEM files, or the embedded default (made on first start). */
export async function loadIdentity(opts: IdentityOptions, sealer: Sealer): Promise<StaticIdentity> {
  if (opts.keyFile || opts.certFile) {
    if (!opts.keyFile || !opts.certFile) throw new Error('identity: give both keyFile and certFile, or neither');
    const keyPem = await readFile(opts.keyFile, 'utf8');
    const privateKey = createPrivateKey(opts.keyPassphrase ? { key: keyPem, passphrase: opts.keyPassphrase } : keyPem);
    const chainPem = pemCertificates(await readFile(opts.certFile, 'utf8'));
    if (chainPem.length === 0) throw new Error(`identity: ${opts.certFile} holds no certificate`);
    return makeIdentity(opts.domain, privateKey, chainPem, opts.rsaSigAlg);
  }
  const file = join(opts.dataDir, `identity-${opts.keyType.toLowerCase()}.json`);
  const context = `identity:${opts.domain}`;
  if (existsSync(file)) {
    const stored = JSON.parse(await readFile(file, 'utf8')) as StoredIdentity;
    if (stored.domain !== opts.domain) throw new Error(`identity: ${file} is for ${stored.domain}, not ${opts.domain}`);
    const privateKey = createPrivateKey(sealer.open(stored.key, context).toString('utf8'));
    return makeIdentity(opts.domain, privateKey, stored.chain, opts.rsaSigAlg);
  }
  const dev = await createDevIdentity({ domain: opts.domain, keyType: opts.keyType });
  const stored: StoredIdentity = {
    domain: opts.domain,
    key: sealer.seal(dev.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, context),
    chain: dev.chainPem,
    caKey: sealer.seal(dev.caPrivateKey.export({ format: 'pem', type: 'pkcs8' }) as string, `${context}:ca`),
    caCert: dev.caCertPem,
  };
  await mkdir(opts.dataDir, { recursive: true });
  await writeFile(file, JSON.stringify(stored, null, 2), { mode: 0o600 });
  // Clients of the embedded default trust this CA (the XMPP server is not trusted to vouch for the key).
  await writeFile(join(opts.dataDir, 'trust-anchor.pem'), dev.caCertPem);
  return makeIdentity(opts.domain, dev.privateKey, dev.chainPem, opts.rsaSigAlg);
}

interface StoredIdentity {
  domain: string;
  key: string;
  chain: string[];
  caKey: string;
  caCert: string;
}
