/**
 * Validation of the KMS's certificate chain on the client, with @peculiar/x509 on WebCrypto, so
 * that it runs in browsers and in Node (the server's src/crypto/x509.ts is on node:crypto). The
 * same checks: each certificate valid now, an end-entity leaf, each issuer a CA (keyCertSign when it
 * has keyUsage) whose name and signature bind the certificate below it, a chain ending at (or issued
 * by) a trust anchor, pathLenConstraint, no unrecognised critical extension; and RFC 6125 host names.
 */
// @peculiar/x509 (through tsyringe) needs the Reflect metadata API: a polyfill, in browsers too.
import 'reflect-metadata';
import * as px from '@peculiar/x509';
import { publicJwk, type JWK } from './webcrypto.js';

/**
 * A trust anchor: a PEM certificate, a @peculiar/x509 certificate, or anything that holds the DER
 * bytes in `raw` (as Node's X509Certificate does).
 */
export type TrustAnchor = string | px.X509Certificate | { readonly raw: Uint8Array };

/** A validated chain: its leaf certificate and the leaf's public key as a public JWK. */
export interface ValidatedChain {
  leaf: px.X509Certificate;
  publicJwk: JWK;
}

const MAX_CHAIN = 5;

/** Extensions this validator processes; any other extension marked critical is rejected. */
const RECOGNISED_EXTENSIONS = new Set(['2.5.29.14', '2.5.29.15', '2.5.29.17', '2.5.29.19', '2.5.29.35', '2.5.29.37']);

interface Cert {
  px: px.X509Certificate;
  der: Uint8Array;
  label: string;
}

function labelOf(cert: px.X509Certificate, position: string): string {
  // The subject is attacker-controlled text that ends up in reasons: keep it short and printable.
  const cn = cert.subjectName.getField('CN')[0];
  const name = (cn === undefined ? cert.subject : `CN=${cn}`).replace(/[\u0000-\u001f\u007f]/g, '?');
  return `${position} (${name.length > 80 ? `${name.slice(0, 77)}...` : name})`;
}

function fromDer(der: Uint8Array, position: string): Cert {
  let cert: px.X509Certificate;
  try {
    cert = new px.X509Certificate(der as Uint8Array<ArrayBuffer>);
  } catch (e) {
    throw new Error(`${position}: not a parsable X.509 certificate`, { cause: e });
  }
  // DER is a single encoding: trailing bytes after the certificate mean the input is not one.
  if (cert.rawData.byteLength !== der.length) throw new Error(`${position}: trailing data after the certificate`);
  return { px: cert, der: new Uint8Array(cert.rawData), label: labelOf(cert, position) };
}

/** An `x5c` entry: standard base64 DER (RFC 7517 §4.7). */
function fromX5c(entry: string, position: string): Cert {
  if (typeof entry !== 'string' || entry.length === 0 || entry.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(entry)) {
    throw new Error(`${position}: not standard base64 DER`);
  }
  return fromDer(
    Uint8Array.from(atob(entry), (c) => c.charCodeAt(0)),
    position,
  );
}

function fromAnchor(a: TrustAnchor, position: string): Cert {
  if (a instanceof px.X509Certificate) return { px: a, der: new Uint8Array(a.rawData), label: labelOf(a, position) };
  if (typeof a === 'string') {
    let cert: px.X509Certificate;
    try {
      cert = new px.X509Certificate(a.trim());
    } catch (e) {
      throw new Error(`${position}: not a PEM certificate`, { cause: e });
    }
    return { px: cert, der: new Uint8Array(cert.rawData), label: labelOf(cert, position) };
  }
  return fromDer(new Uint8Array(a.raw), position);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function checkValidity(c: Cert, now: Date): void {
  if (now < c.px.notBefore) throw new Error(`${c.label} is not valid before ${c.px.notBefore.toISOString()}`);
  if (now > c.px.notAfter) throw new Error(`${c.label} expired at ${c.px.notAfter.toISOString()}`);
}

function assertsCa(c: Cert): boolean {
  return c.px.getExtension(px.BasicConstraintsExtension)?.ca === true;
}

function checkIssuerConstraints(c: Cert): void {
  if (!assertsCa(c)) throw new Error(`${c.label} is not a CA (basicConstraints cA is not asserted)`);
  const ku = c.px.getExtension(px.KeyUsagesExtension);
  if (ku && (ku.usages & px.KeyUsageFlags.keyCertSign) === 0) throw new Error(`${c.label} has a keyUsage without keyCertSign`);
}

async function signedBy(child: Cert, issuer: Cert): Promise<boolean> {
  try {
    return await child.px.verify({ publicKey: issuer.px.publicKey, signatureOnly: true });
  } catch {
    return false;
  }
}

async function checkIssuedBy(child: Cert, issuer: Cert): Promise<void> {
  if (child.px.issuer !== issuer.px.subject) throw new Error(`${child.label} was not issued by ${issuer.label} (issuer name does not match)`);
  if (!(await signedBy(child, issuer))) throw new Error(`the signature of ${child.label} does not verify with the public key of ${issuer.label}`);
}

/**
 * Validates an `x5c` chain (leaf first, standard base64 DER) at `now` against trust anchors;
 * throws an Error naming the first failed check.
 */
export async function validateChain(x5c: string[], anchors: TrustAnchor[], now = new Date()): Promise<ValidatedChain> {
  if (!Array.isArray(x5c) || x5c.length === 0) throw new Error('the certificate chain is empty');
  if (x5c.length > MAX_CHAIN) throw new Error(`the certificate chain has ${x5c.length} certificates; at most ${MAX_CHAIN} are accepted`);
  const certs = x5c.map((e, i) => fromX5c(e, `certificate ${i}`));
  for (const c of certs) checkValidity(c, now);
  if (assertsCa(certs[0]!)) throw new Error(`${certs[0]!.label} is a CA certificate and cannot be the end-entity certificate`);
  for (let i = 0; i + 1 < certs.length; i++) {
    checkIssuerConstraints(certs[i + 1]!);
    await checkIssuedBy(certs[i]!, certs[i + 1]!);
  }
  const trusted = anchors.map((a, k) => fromAnchor(a, `trust anchor ${k}`));
  const path = [...certs];
  const last = certs[certs.length - 1]!;
  if (!trusted.some((a) => sameBytes(a.der, last.der))) path.push(await issuingAnchor(last, trusted, now));
  // RFC 5280 §6.1.4 (l)-(m): a pathLenConstraint bounds the non-self-issued intermediates below a CA.
  for (let j = 1; j < path.length; j++) {
    const pathLen = path[j]!.px.getExtension(px.BasicConstraintsExtension)?.pathLength;
    if (pathLen === undefined) continue;
    const intermediates = path.slice(1, j).filter((c) => c.px.subject !== c.px.issuer).length;
    if (intermediates > pathLen) throw new Error(`${path[j]!.label} allows ${pathLen} intermediate CA certificate(s) below it but ${intermediates} follow`);
  }
  // RFC 5280 §4.2: reject a certificate with a critical extension that is not processed.
  for (const c of path) {
    const unknown = c.px.extensions.find((e) => e.critical && !RECOGNISED_EXTENSIONS.has(e.type));
    if (unknown) throw new Error(`${c.label} has an unrecognised critical extension ${unknown.type}`);
  }
  const leaf = certs[0]!.px;
  return { leaf, publicJwk: await publicJwkOf(leaf) };
}

/** The anchor that issued and signed `last`; it must itself be valid now and a CA. */
async function issuingAnchor(last: Cert, anchors: Cert[], now: Date): Promise<Cert> {
  let firstFailure: Error | undefined;
  for (const a of anchors) {
    if (!(await signedBy(last, a))) continue;
    try {
      checkValidity(a, now);
      checkIssuerConstraints(a);
      if (last.px.issuer !== a.px.subject) throw new Error(`${last.label} was not issued by ${a.label} (issuer name does not match)`);
      return a;
    } catch (e) {
      firstFailure ??= e as Error;
    }
  }
  if (firstFailure) throw new Error(`chain does not end at a usable trust anchor: ${firstFailure.message}`, { cause: firstFailure });
  throw new Error(`chain does not end at a trust anchor: ${last.label} is neither a trust anchor nor signed by one`);
}

/** A certificate's RSA or P-256 public key as a public JWK. */
async function publicJwkOf(cert: px.X509Certificate): Promise<JWK> {
  const alg = cert.publicKey.algorithm as { name: string };
  const params = alg.name === 'ECDSA' || alg.name === 'ECDH' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  let key: Awaited<ReturnType<typeof cert.publicKey.export>>;
  try {
    key = await cert.publicKey.export(params, ['verify']);
  } catch (e) {
    throw new Error('the certificate key is neither RSA nor P-256', { cause: e });
  }
  return publicJwk((await globalThis.crypto.subtle.exportKey('jwk', key)) as JWK);
}

/** Does `cert` name `host` (RFC 6125: dNSName SANs, else the CN; a leftmost `*.` wildcard for one label)? */
export function certificateMatchesHost(cert: px.X509Certificate, host: string): boolean {
  if (typeof host !== 'string' || host.length === 0) return false;
  const h = host.toLowerCase().replace(/\.$/, '');
  const san = cert.getExtension(px.SubjectAlternativeNameExtension)?.names.items ?? [];
  const dns = san.filter((g) => g.type === 'dns').map((g) => g.value);
  const names = dns.length > 0 ? dns : cert.subjectName.getField('CN');
  return names.some((n) => {
    const name = n.toLowerCase().replace(/\.$/, '');
    if (!name.startsWith('*.')) return name === h;
    const rest = name.slice(2);
    // A wildcard stands for exactly one whole label, under at least two labels.
    if (!rest.includes('.') || rest.includes('*')) return false;
    const dot = h.indexOf('.');
    return dot > 0 && h.slice(dot + 1) === rest;
  });
}
