/**
 * The KMS identity certificates (draft-abiggs-saag-key-management-service-03 §3: the KMS signs
 * with a key certified to its domain) and X.509 certification path validation (RFC 5280 §6) for
 * the `x5c` chains that accompany KMS and federated-service keys (RFC 7517 §4.7).
 *
 * Parsing, issuance and signature checks use node:crypto's `X509Certificate`; `@peculiar/x509`
 * reads what node does not expose (pathLenConstraint, keyUsage bits, SAN entries, extension
 * criticality) and creates certificates. No ASN.1 is encoded or decoded by hand here.
 */
// @peculiar/x509 depends on tsyringe, which needs the Reflect metadata polyfill loaded first.
import 'reflect-metadata';
import * as px from '@peculiar/x509';
import { X509Certificate, generateKeyPair, randomBytes, webcrypto } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { promisify } from 'node:util';

px.cryptoProvider.set(webcrypto as unknown as Parameters<typeof px.cryptoProvider.set>[0]);

// ---------------------------------------------------------------------------------------------
// Errors and types
// ---------------------------------------------------------------------------------------------

/** A certificate that cannot be parsed (`CERT_MALFORMED`) or does not validate (`CERT_INVALID`). */
export class CertificateError extends Error {
  readonly code: 'CERT_MALFORMED' | 'CERT_INVALID';

  constructor(code: 'CERT_MALFORMED' | 'CERT_INVALID', message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CertificateError';
    this.code = code;
  }
}

/** Key type of a KMS identity: RSA 2048 (for PS256) or EC P-256 (for ES256). */
export type IdentityKeyType = 'RSA' | 'EC';

/** A key usage bit (RFC 5280 §4.2.1.3) that {@link issueCertificate} can assert. */
type KeyUsageName = 'digitalSignature' | 'keyEncipherment' | 'keyAgreement' | 'keyCertSign' | 'cRLSign';

/** The result of {@link validateChain}: the validated leaf and what it certifies. */
export interface ValidatedChain {
  leaf: X509Certificate;
  publicKey: KeyObject;
  dnsNames: string[];
  uris: string[];
  commonName?: string;
}

/** Options of {@link issueCertificate}. */
export interface IssueCertificateOptions {
  /** The issuer's private key. It is NOT checked against `issuerCertPem` (negative tests rely on that). */
  issuerKey: KeyObject;
  issuerCertPem: string;
  subjectPublicKey: KeyObject;
  commonName: string;
  dnsNames?: string[];
  uris?: string[];
  isCa?: boolean;
  /** pathLenConstraint; only with `isCa` (RFC 5280 §4.2.1.9). */
  pathLength?: number;
  /** Defaults: CA → keyCertSign, cRLSign; otherwise digitalSignature + keyEncipherment (RSA) or keyAgreement (EC). */
  keyUsage?: KeyUsageName[];
  /** Default: now. */
  notBefore?: Date;
  /** Default: `notBefore` + 825 days. */
  notAfter?: Date;
}

const DAY_MS = 86_400_000;
const DEFAULT_VALIDITY_DAYS = 825;
const DEFAULT_MAX_CHAIN = 5;
const DEV_BACKDATE_MS = 5 * 60_000;

const KEY_USAGE_BITS: Record<KeyUsageName, number> = {
  digitalSignature: px.KeyUsageFlags.digitalSignature,
  keyEncipherment: px.KeyUsageFlags.keyEncipherment,
  keyAgreement: px.KeyUsageFlags.keyAgreement,
  keyCertSign: px.KeyUsageFlags.keyCertSign,
  cRLSign: px.KeyUsageFlags.cRLSign,
};

/** Extensions this validator processes; any other extension marked critical is rejected. */
const RECOGNISED_EXTENSIONS = new Set([
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.15', // keyUsage
  '2.5.29.17', // subjectAltName
  '2.5.29.19', // basicConstraints
  '2.5.29.35', // authorityKeyIdentifier
  '2.5.29.37', // extKeyUsage (accepted; KMS identities have no defined purpose OID)
]);

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i;

const generateKeyPairAsync = promisify(generateKeyPair);

// ---------------------------------------------------------------------------------------------
// Creating certificates
// ---------------------------------------------------------------------------------------------

/** Creates a development root CA and a KMS identity certificate for `domain`, signed by it. */
export async function createDevIdentity(opts: {
  domain: string;
  keyType: IdentityKeyType;
  validityDays?: number;
  now?: Date;
}): Promise<{ privateKey: KeyObject; chainPem: string[]; caPrivateKey: KeyObject; caCertPem: string }> {
  const { domain, keyType } = opts;
  if (!DNS_NAME.test(domain)) throw new TypeError(`not a DNS domain name: ${JSON.stringify(domain)}`);
  const validityDays = opts.validityDays ?? DEFAULT_VALIDITY_DAYS;
  if (!Number.isInteger(validityDays) || validityDays < 1) throw new RangeError('validityDays must be a positive integer');
  const now = opts.now ?? new Date();
  // Backdated a little so that peers whose clocks lag accept a freshly made identity.
  const notBefore = new Date(now.getTime() - DEV_BACKDATE_MS);
  const notAfter = new Date(now.getTime() + validityDays * DAY_MS);

  const [ca, leaf] = await Promise.all([generateIdentityKeyPair(keyType), generateIdentityKeyPair(keyType)]);
  const caSpki = ca.publicKey.export({ type: 'spki', format: 'der' });
  const caName = new px.Name([{ CN: [`${domain} KMS development CA`] }]);
  const caKeyId = (await px.SubjectKeyIdentifierExtension.create(caSpki)).keyId;
  const caCertPem = await buildCertificate({
    subject: caName,
    issuer: caName,
    subjectSpki: caSpki,
    signer: ca.privateKey,
    isCa: true,
    pathLength: 0,
    keyUsage: px.KeyUsageFlags.keyCertSign | px.KeyUsageFlags.cRLSign,
    dnsNames: [],
    uris: [],
    notBefore,
    notAfter,
    authorityKeyId: caKeyId,
  });
  const leafPem = await issueCertificate({
    issuerKey: ca.privateKey,
    issuerCertPem: caCertPem,
    subjectPublicKey: leaf.publicKey,
    commonName: domain,
    dnsNames: [domain],
    uris: [`kms://${domain}`],
    notBefore,
    notAfter,
  });
  return { privateKey: leaf.privateKey, chainPem: [leafPem, caCertPem], caPrivateKey: ca.privateKey, caCertPem };
}

/** Issues a certificate for `subjectPublicKey`, signed by `issuerKey` under `issuerCertPem`'s subject name. */
export async function issueCertificate(opts: IssueCertificateOptions): Promise<string> {
  const isCa = opts.isCa ?? false;
  if (opts.pathLength !== undefined) {
    // RFC 5280 §4.2.1.9: CAs MUST NOT include pathLenConstraint unless cA is asserted.
    if (!isCa) throw new TypeError('pathLength is only allowed on a CA certificate');
    if (!Number.isInteger(opts.pathLength) || opts.pathLength < 0) throw new RangeError('pathLength must be a non-negative integer');
  }
  const issuer = new px.X509Certificate(parseCertificate(opts.issuerCertPem).raw);
  const authorityKeyId =
    issuer.getExtension(px.SubjectKeyIdentifierExtension)?.keyId ?? (await px.SubjectKeyIdentifierExtension.create(issuer.publicKey.rawData)).keyId;
  const notBefore = opts.notBefore ?? new Date();
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + DEFAULT_VALIDITY_DAYS * DAY_MS);
  const keyUsage = opts.keyUsage
    ? opts.keyUsage.reduce((bits, u) => bits | KEY_USAGE_BITS[u], 0)
    : isCa
      ? px.KeyUsageFlags.keyCertSign | px.KeyUsageFlags.cRLSign
      : px.KeyUsageFlags.digitalSignature |
        (opts.subjectPublicKey.asymmetricKeyType === 'ec' ? px.KeyUsageFlags.keyAgreement : px.KeyUsageFlags.keyEncipherment);
  return buildCertificate({
    subject: new px.Name([{ CN: [opts.commonName] }]),
    issuer: issuer.subjectName,
    subjectSpki: opts.subjectPublicKey.export({ type: 'spki', format: 'der' }),
    signer: opts.issuerKey,
    isCa,
    pathLength: opts.pathLength,
    keyUsage,
    dnsNames: opts.dnsNames ?? [],
    uris: opts.uris ?? [],
    notBefore,
    notAfter,
    authorityKeyId,
  });
}

async function generateIdentityKeyPair(keyType: IdentityKeyType): Promise<{ publicKey: KeyObject; privateKey: KeyObject }> {
  if (keyType === 'RSA') return generateKeyPairAsync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
  if (keyType === 'EC') return generateKeyPairAsync('ec', { namedCurve: 'P-256' });
  throw new TypeError(`unsupported identity key type: ${String(keyType)}`);
}

async function buildCertificate(p: {
  subject: InstanceType<typeof px.Name>;
  issuer: InstanceType<typeof px.Name>;
  subjectSpki: Buffer;
  signer: KeyObject;
  isCa: boolean;
  pathLength: number | undefined;
  keyUsage: number;
  dnsNames: string[];
  uris: string[];
  notBefore: Date;
  notAfter: Date;
  authorityKeyId: string;
}): Promise<string> {
  if (!(p.notAfter.getTime() > p.notBefore.getTime())) throw new RangeError('notAfter must be later than notBefore');
  const extensions: InstanceType<typeof px.Extension>[] = [
    new px.BasicConstraintsExtension(p.isCa, p.isCa ? p.pathLength : undefined, true),
    new px.KeyUsagesExtension(p.keyUsage, true),
    await px.SubjectKeyIdentifierExtension.create(p.subjectSpki),
    new px.AuthorityKeyIdentifierExtension(p.authorityKeyId),
  ];
  const names = [...p.dnsNames.map((value) => ({ type: 'dns' as const, value })), ...p.uris.map((value) => ({ type: 'url' as const, value }))];
  // Non-critical: the subject DN is never empty here (RFC 5280 §4.2.1.6).
  if (names.length > 0) extensions.push(new px.SubjectAlternativeNameExtension(names, false));
  const { signingKey, signingAlgorithm } = await toSigningKey(p.signer);
  const cert = await px.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: p.subject,
    issuer: p.issuer,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    publicKey: p.subjectSpki,
    signingKey,
    signingAlgorithm,
    extensions,
  });
  return `${cert.toString('pem')}\n`;
}

/** A random positive 16-byte serial number (RFC 5280 §4.1.2.2: positive, at most 20 octets). */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40; // positive, and no leading zero octet
  return bytes.toString('hex');
}

/** Imports a node private key into WebCrypto for @peculiar/x509 to sign with. */
async function toSigningKey(key: KeyObject): Promise<{ signingKey: webcrypto.CryptoKey; signingAlgorithm: { name: string; hash: string } }> {
  if (key.type !== 'private') throw new TypeError('the issuer key must be a private key');
  const pkcs8 = key.export({ type: 'pkcs8', format: 'der' });
  if (key.asymmetricKeyType === 'rsa') {
    const algorithm = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    return { signingKey: await webcrypto.subtle.importKey('pkcs8', pkcs8, algorithm, false, ['sign']), signingAlgorithm: algorithm };
  }
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const params = curve ? EC_CURVES[curve] : undefined;
    if (!params) throw new TypeError(`unsupported issuer curve: ${String(curve)}`);
    const signingKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'ECDSA', namedCurve: params.namedCurve }, false, ['sign']);
    return { signingKey, signingAlgorithm: { name: 'ECDSA', hash: params.hash } };
  }
  throw new TypeError(`unsupported issuer key type: ${String(key.asymmetricKeyType)}`);
}

const EC_CURVES: Record<string, { namedCurve: string; hash: string }> = {
  prime256v1: { namedCurve: 'P-256', hash: 'SHA-256' },
  secp384r1: { namedCurve: 'P-384', hash: 'SHA-384' },
  secp521r1: { namedCurve: 'P-521', hash: 'SHA-512' },
};

// ---------------------------------------------------------------------------------------------
// Parsing and encoding
// ---------------------------------------------------------------------------------------------

/** The PEM certificate blocks of a file's text, in order (other text between them is ignored). */
export function pemCertificates(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** Parses one certificate given as PEM, DER, or standard-base64 DER (an `x5c` entry). */
export function parseCertificate(pemOrDerOrB64: string | Buffer): X509Certificate {
  let input: string | Buffer;
  let der: Buffer | undefined;
  if (Buffer.isBuffer(pemOrDerOrB64)) {
    const head = pemOrDerOrB64.subarray(0, 64).toString('latin1').trimStart();
    if (head.startsWith('-----BEGIN')) input = pemOrDerOrB64.toString('latin1');
    else {
      der = pemOrDerOrB64;
      input = der;
    }
  } else if (typeof pemOrDerOrB64 === 'string') {
    input = pemOrDerOrB64.trim();
    if (!input.startsWith('-----BEGIN')) {
      if (/[-_]/.test(input)) throw malformed('base64url is not accepted; x5c entries are standard base64 (RFC 7517 §4.7)');
      if (input.length === 0 || input.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(input)) {
        throw malformed('not a PEM certificate or base64 DER');
      }
      input = der = Buffer.from(input, 'base64');
    }
  } else {
    throw malformed('a certificate must be a string or a Buffer');
  }
  if (typeof input === 'string') {
    const blocks = input.match(/-----BEGIN [^-]*-----/g) ?? [];
    if (blocks.length !== 1 || blocks[0] !== '-----BEGIN CERTIFICATE-----') {
      throw malformed('expected exactly one PEM "CERTIFICATE" block');
    }
  }
  if (der?.length === 0) throw malformed('empty certificate');
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(input);
  } catch (err) {
    throw malformed(`not a parsable X.509 certificate (${(err as Error).message})`, err);
  }
  // DER is a single encoding: trailing bytes after the certificate mean the input is not one.
  if (der && cert.raw.length !== der.length) throw malformed('trailing data after the certificate');
  return cert;
}

/** Encodes a PEM chain as a JWK `x5c` array: standard base64 DER, leaf first (RFC 7517 §4.7). */
export function x5cOf(chainPem: string[]): string[] {
  return chainPem.map((pem) => parseCertificate(pem).raw.toString('base64'));
}

/** Encodes a certificate as PEM. */
export function pemOf(cert: X509Certificate): string {
  return cert.toString();
}

function malformed(reason: string, cause?: unknown): CertificateError {
  return new CertificateError('CERT_MALFORMED', `malformed certificate: ${reason}`, cause === undefined ? undefined : { cause });
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/** Checks whether `cert` names `host` per RFC 6125 (dNSName SANs, else the CN; leftmost `*.` wildcard). */
export function certificateMatchesHost(cert: X509Certificate, host: string): boolean {
  if (typeof host !== 'string' || host.length === 0) return false;
  try {
    // 'default': the subject CN is consulted only when the certificate has no dNSName SAN (RFC 6125 §6.4.4).
    const matched = cert.checkHost(host, {
      subject: 'default',
      wildcards: true,
      partialWildcards: false,
      multiLabelWildcards: false,
      singleLabelSubdomains: false,
    });
    return matched !== undefined;
  } catch {
    return false;
  }
}

/** Validates an `x5c`-ordered chain (leaf first) at `now` against trust anchors; throws {@link CertificateError}. */
export function validateChain(
  chain: (string | Buffer | X509Certificate)[],
  anchors: X509Certificate[],
  opts: { now?: Date; maxLength?: number } = {},
): ValidatedChain {
  const now = opts.now ?? new Date();
  if (Number.isNaN(now.getTime())) throw new TypeError('now must be a valid date');
  const maxLength = opts.maxLength ?? DEFAULT_MAX_CHAIN;
  if (!Array.isArray(chain) || chain.length === 0) throw invalid('the certificate chain is empty');
  if (chain.length > maxLength) {
    throw invalid(`the certificate chain has ${chain.length} certificates; at most ${maxLength} are accepted`);
  }
  const certs = chain.map((c, i) => inspect(c, `certificate ${i}`));
  const n = certs.length;

  for (const c of certs) checkValidity(c, now);

  // The leaf is an end entity: the KMS identity must not be able to issue certificates.
  if (assertsCa(certs[0]!)) throw invalid(`${certs[0]!.label} is a CA certificate and cannot be the end-entity certificate`);

  for (let i = 0; i + 1 < n; i++) {
    checkIssuerConstraints(certs[i + 1]!);
    checkIssuedBy(certs[i]!, certs[i + 1]!);
  }

  const path = [...certs];
  const last = certs[n - 1]!;
  if (!anchors.some((a) => a.fingerprint256 === last.cert.fingerprint256)) {
    path.push(findIssuingAnchor(last, anchors, now));
  }

  // RFC 5280 §6.1.4 (l)-(m): a pathLenConstraint bounds the non-self-issued intermediate
  // certificates that follow the CA (the leaf is not counted).
  for (let j = 1; j < path.length; j++) {
    const pathLen = path[j]!.px.getExtension(px.BasicConstraintsExtension)?.pathLength;
    if (pathLen === undefined) continue;
    const intermediates = path.slice(1, j).filter((c) => c.cert.subject !== c.cert.issuer).length;
    if (intermediates > pathLen) {
      throw invalid(`${path[j]!.label} allows ${pathLen} intermediate CA certificate(s) below it (pathLen) but ${intermediates} follow`);
    }
  }

  // RFC 5280 §4.2: a certificate-using system MUST reject a certificate with a critical
  // extension it does not recognise or cannot process.
  for (const c of path) {
    const unknown = c.px.extensions.find((e) => e.critical && !RECOGNISED_EXTENSIONS.has(e.type));
    if (unknown) throw invalid(`${c.label} has an unrecognised critical extension ${unknown.type}`);
  }

  const leaf = certs[0]!;
  const san = leaf.px.getExtension(px.SubjectAlternativeNameExtension)?.names.items ?? [];
  const commonName = leaf.px.subjectName.getField('CN')[0];
  return {
    leaf: leaf.cert,
    publicKey: leaf.cert.publicKey,
    dnsNames: san.filter((g) => g.type === 'dns').map((g) => g.value),
    uris: san.filter((g) => g.type === 'url').map((g) => g.value),
    ...(commonName === undefined ? {} : { commonName }),
  };
}

/** A certificate under validation, its @peculiar view and the label used in reasons. */
interface Inspected {
  cert: X509Certificate;
  px: InstanceType<typeof px.X509Certificate>;
  label: string;
}

function inspect(input: string | Buffer | X509Certificate, position: string): Inspected {
  let cert: X509Certificate;
  let view: InstanceType<typeof px.X509Certificate>;
  try {
    cert = input instanceof X509Certificate ? input : parseCertificate(input);
    view = new px.X509Certificate(cert.raw);
  } catch (err) {
    const reason = err instanceof CertificateError ? err.message : `malformed certificate: ${(err as Error).message}`;
    throw new CertificateError('CERT_MALFORMED', `${position}: ${reason}`, { cause: err });
  }
  // The subject is attacker-controlled text that ends up in reasons and logs: keep it short and printable.
  const cn = view.subjectName.getField('CN')[0];
  const name = (cn === undefined ? cert.subject.replace(/\n/g, ', ') : `CN=${cn}`).replace(/[\u0000-\u001f\u007f]/g, '?');
  return { cert, px: view, label: `${position} (${name.length > 80 ? `${name.slice(0, 77)}...` : name})` };
}

/** RFC 5280 §6.1.3 (a)(2): the certificate validity period includes the current time. */
function checkValidity(c: Inspected, now: Date): void {
  const notBefore = new Date(c.cert.validFrom);
  const notAfter = new Date(c.cert.validTo);
  if (Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) {
    throw invalid(`${c.label} has an unreadable validity period`);
  }
  if (now.getTime() < notBefore.getTime()) throw invalid(`${c.label} is not valid before ${notBefore.toISOString()}`);
  if (now.getTime() > notAfter.getTime()) throw invalid(`${c.label} expired at ${notAfter.toISOString()}`);
}

/** RFC 5280 §6.1.4 (k) and (n): an issuer is a CA, and asserts keyCertSign if it has keyUsage. */
function checkIssuerConstraints(c: Inspected): void {
  if (!assertsCa(c)) throw invalid(`${c.label} is not a CA (basicConstraints cA is not asserted)`);
  const ku = c.px.getExtension(px.KeyUsagesExtension);
  if (ku && (ku.usages & px.KeyUsageFlags.keyCertSign) === 0) {
    throw invalid(`${c.label} has a keyUsage without keyCertSign`);
  }
}

/**
 * Whether basicConstraints asserts cA (RFC 5280 §4.2.1.9). Node's `X509Certificate.ca` is not
 * used: it is OpenSSL's X509_check_ca, which also folds in keyUsage and accepts self-signed v1
 * certificates, so it cannot tell "not a CA" from "a CA without keyCertSign".
 */
function assertsCa(c: Inspected): boolean {
  return c.px.getExtension(px.BasicConstraintsExtension)?.ca === true;
}

/** RFC 5280 §6.1.3 (a)(4): the child's issuer name (and key identifier) is the issuer's. */
function checkNamedIssuer(child: Inspected, issuer: Inspected): void {
  if (!child.cert.checkIssued(issuer.cert)) {
    throw invalid(`${child.label} was not issued by ${issuer.label} (issuer name or key identifier does not match)`);
  }
}

/** RFC 5280 §6.1.3 (a)(1) and (a)(4): names chain and the signature verifies under the issuer's key. */
function checkIssuedBy(child: Inspected, issuer: Inspected): void {
  checkNamedIssuer(child, issuer);
  if (!signedBy(child.cert, issuer.cert)) {
    throw invalid(`the signature of ${child.label} does not verify with the public key of ${issuer.label}`);
  }
}

function signedBy(child: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return child.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/** The anchor that issued and signed `last`; it must itself be currently valid and a CA. */
function findIssuingAnchor(last: Inspected, anchors: X509Certificate[], now: Date): Inspected {
  let firstFailure: CertificateError | undefined;
  for (const [k, anchor] of anchors.entries()) {
    if (!signedBy(last.cert, anchor)) continue;
    try {
      const a = inspect(anchor, `trust anchor ${k}`);
      checkValidity(a, now);
      checkIssuerConstraints(a);
      // The signature was verified above, to pick this anchor.
      checkNamedIssuer(last, a);
      return a;
    } catch (err) {
      firstFailure ??= err instanceof CertificateError ? err : invalid(String(err));
    }
  }
  if (firstFailure) throw invalid(`chain does not end at a usable trust anchor: ${firstFailure.message}`, firstFailure);
  throw invalid(`chain does not end at a trust anchor: ${last.label} is neither a trust anchor nor signed by one`);
}

function invalid(reason: string, cause?: unknown): CertificateError {
  return new CertificateError('CERT_INVALID', reason, cause === undefined ? undefined : { cause });
}
