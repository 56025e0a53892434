import { expect } from 'chai';
import { type X509Certificate, constants, generateKeyPair, sign, verify, webcrypto } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import {
  CertificateError,
  certificateMatchesHost as nodeCertificateMatchesHost,
  createDevIdentity,
  issueCertificate,
  parseCertificate,
  pemOf,
  validateChain as nodeValidateChain,
  x5cOf,
} from '../../src/crypto/x509.js';
import { certificateMatchesHost as clientCertificateMatchesHost, validateChain as clientValidateChain } from '../../src/client/x509.js';
// After src/crypto/x509.js, which loads the Reflect polyfill @peculiar/x509 needs.
import * as px from '@peculiar/x509';

/**
 * Every validation below runs twice: on the server's validator (node:crypto, whose result the
 * test checks) and on the client library's (@peculiar/x509 on WebCrypto, src/client/x509.ts),
 * which must accept and refuse the same chains; its verdicts are awaited after each test.
 */
const clientVerdicts: Promise<void>[] = [];

afterEach(async () => {
  await Promise.all(clientVerdicts.splice(0));
});

function validateChain(...args: Parameters<typeof nodeValidateChain>): ReturnType<typeof nodeValidateChain> {
  const [chain, anchors, opts = {}] = args;
  let error: unknown;
  let result: ReturnType<typeof nodeValidateChain> | undefined;
  try {
    result = nodeValidateChain(chain, anchors, opts);
  } catch (e) {
    error = e;
  }
  // The client validator has a fixed maximum (5) and takes x5c entries (standard base64 DER).
  if (opts.maxLength === undefined) {
    const x5c = chain.map((c) => {
      try {
        return (typeof c === 'string' || Buffer.isBuffer(c) ? parseCertificate(c) : c).raw.toString('base64');
      } catch {
        return Buffer.isBuffer(c) ? c.toString('base64') : String(c);
      }
    });
    const what = `${chain.length} certificate(s), ${anchors.length} anchor(s): the server ${error ? `refuses (${(error as Error).message})` : 'accepts'}`;
    clientVerdicts.push(
      clientValidateChain(x5c, anchors, opts.now).then(
        (r) => {
          expect(error, `the client accepts what the server refuses: ${what}`).to.equal(undefined);
          expect(r.publicJwk).to.deep.include({ kty: result!.publicKey.asymmetricKeyType === 'rsa' ? 'RSA' : 'EC' });
        },
        (e: Error) => {
          expect(error, `the client refuses (${e.message}) what the server accepts: ${what}`).to.not.equal(undefined);
        },
      ),
    );
  }
  if (error) throw error;
  return result!;
}

function certificateMatchesHost(cert: X509Certificate, host: string): boolean {
  const server = nodeCertificateMatchesHost(cert, host);
  expect(clientCertificateMatchesHost(new px.X509Certificate(cert.raw), host), `the client's host check of ${host}`).to.equal(server);
  return server;
}

const NOW = new Date('2026-03-01T12:00:00Z');
const DAY = 86_400_000;
const days = (n: number): Date => new Date(NOW.getTime() + n * DAY);

type KeyPair = { publicKey: KeyObject; privateKey: KeyObject };
type DevIdentity = Awaited<ReturnType<typeof createDevIdentity>>;

const ecKeys = (): Promise<KeyPair> => promisify(generateKeyPair)('ec', { namedCurve: 'P-256' });

/** Asserts that `fn` throws a CertificateError with `code` and a message matching `reason`. */
function expectCertError(fn: () => unknown, code: CertificateError['code'], reason: RegExp): CertificateError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a CertificateError').to.be.instanceOf(CertificateError);
  const err = thrown as CertificateError;
  expect(err.code).to.equal(code);
  expect(err.message).to.match(reason);
  return err;
}

/**
 * A self-signed certificate for `keys`, made through the public API: a throw-away certificate
 * carries the wanted subject name, then the key signs a certificate naming itself as issuer.
 */
async function selfSigned(
  keys: KeyPair,
  commonName: string,
  opts: { isCa?: boolean; pathLength?: number; notBefore?: Date; notAfter?: Date } = {},
): Promise<string> {
  const isCa = opts.isCa ?? true;
  const nameCarrier = await issueCertificate({
    issuerKey: keys.privateKey,
    issuerCertPem: dev.caCertPem,
    subjectPublicKey: keys.publicKey,
    commonName,
    notBefore: days(-1),
    notAfter: days(1),
  });
  return issueCertificate({
    issuerKey: keys.privateKey,
    issuerCertPem: nameCarrier,
    subjectPublicKey: keys.publicKey,
    commonName,
    isCa,
    ...(opts.pathLength === undefined ? {} : { pathLength: opts.pathLength }),
    notBefore: opts.notBefore ?? days(-30),
    notAfter: opts.notAfter ?? days(365),
  });
}

let dev: DevIdentity; // EC, kms.example.com
let devRsa: DevIdentity; // RSA, kms.example.com
let other: DevIdentity; // EC, another domain and CA
let devAnchor: X509Certificate;
let root: KeyPair; // an unconstrained root (no pathLen)
let rootPem: string;
let rootAnchor: X509Certificate;

before(async () => {
  [dev, devRsa, other] = await Promise.all([
    createDevIdentity({ domain: 'kms.example.com', keyType: 'EC', now: NOW }),
    createDevIdentity({ domain: 'kms.example.com', keyType: 'RSA', now: NOW }),
    createDevIdentity({ domain: 'kms.other.example', keyType: 'EC', now: NOW }),
  ]);
  devAnchor = parseCertificate(dev.caCertPem);
  root = await ecKeys();
  rootPem = await selfSigned(root, 'Test Root CA');
  rootAnchor = parseCertificate(rootPem);
});

/** Issues a leaf for a fresh key under `issuer`. */
async function leafUnder(issuerKey: KeyObject, issuerCertPem: string, extra: Partial<Parameters<typeof issueCertificate>[0]> = {}): Promise<string> {
  const keys = await ecKeys();
  return issueCertificate({
    issuerKey,
    issuerCertPem,
    subjectPublicKey: keys.publicKey,
    commonName: 'leaf.example.com',
    dnsNames: ['leaf.example.com'],
    notBefore: days(-1),
    notAfter: days(30),
    ...extra,
  });
}

/** An intermediate CA (fresh key) under `issuer`. */
async function intermediateUnder(
  issuerKey: KeyObject,
  issuerCertPem: string,
  extra: Partial<Parameters<typeof issueCertificate>[0]> = {},
): Promise<{ keys: KeyPair; pem: string }> {
  const keys = await ecKeys();
  const pem = await issueCertificate({
    issuerKey,
    issuerCertPem,
    subjectPublicKey: keys.publicKey,
    commonName: 'Test Intermediate CA',
    isCa: true,
    notBefore: days(-10),
    notAfter: days(100),
    ...extra,
  });
  return { keys, pem };
}

describe('crypto/x509', () => {
  describe('createDevIdentity', () => {
    it('makes an RSA 2048 / e=65537 identity that validates against its CA and signs PS256', () => {
      const result = validateChain(devRsa.chainPem, [parseCertificate(devRsa.caCertPem)], { now: NOW });
      const details = result.publicKey.asymmetricKeyDetails!;
      expect(result.publicKey.asymmetricKeyType).to.equal('rsa');
      expect(details.modulusLength).to.equal(2048);
      expect(details.publicExponent).to.equal(65537n);
      expect(result.leaf.checkPrivateKey(devRsa.privateKey)).to.equal(true);

      const data = Buffer.from('kms identity proof');
      const pss = { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
      const sig = sign('sha256', data, { key: devRsa.privateKey, ...pss });
      expect(verify('sha256', data, { key: result.publicKey, ...pss }, sig)).to.equal(true);
      expect(verify('sha256', Buffer.from('other'), { key: result.publicKey, ...pss }, sig)).to.equal(false);

      expect(result.commonName).to.equal('kms.example.com');
      expect(result.dnsNames).to.deep.equal(['kms.example.com']);
      expect(result.uris).to.deep.equal(['kms://kms.example.com']);
    });

    it('makes an EC P-256 identity that validates against its CA and signs ES256', () => {
      const result = validateChain(dev.chainPem, [devAnchor], { now: NOW });
      expect(result.publicKey.asymmetricKeyType).to.equal('ec');
      expect(result.publicKey.asymmetricKeyDetails!.namedCurve).to.equal('prime256v1');
      expect(result.leaf.checkPrivateKey(dev.privateKey)).to.equal(true);
      expect(result.leaf.checkPrivateKey(other.privateKey)).to.equal(false);

      const data = Buffer.from('kms identity proof');
      const sig = sign('sha256', data, { key: dev.privateKey, dsaEncoding: 'ieee-p1363' });
      expect(sig.length).to.equal(64);
      expect(verify('sha256', data, { key: result.publicKey, dsaEncoding: 'ieee-p1363' }, sig)).to.equal(true);

      expect(result.dnsNames).to.deep.equal(['kms.example.com']);
      expect(result.uris).to.deep.equal(['kms://kms.example.com']);
      expect(result.leaf.subjectAltName).to.equal('DNS:kms.example.com, URI:kms://kms.example.com');
    });

    it('returns [leaf, root] with a root CA that is self-signed, pathLen 0 and named after the domain', () => {
      expect(dev.chainPem).to.have.length(2);
      expect(dev.chainPem[1]).to.equal(dev.caCertPem);
      const [leaf, ca] = dev.chainPem.map((p) => parseCertificate(p)) as [X509Certificate, X509Certificate];
      expect(ca.ca).to.equal(true);
      expect(leaf.ca).to.equal(false);
      expect(ca.subject).to.equal('CN=kms.example.com KMS development CA');
      expect(ca.issuer).to.equal(ca.subject);
      expect(ca.verify(ca.publicKey)).to.equal(true);
      expect(ca.checkPrivateKey(dev.caPrivateKey)).to.equal(true);
      expect(leaf.subject).to.equal('CN=kms.example.com');
      expect(leaf.issuer).to.equal(ca.subject);
      expect(leaf.checkIssued(ca)).to.equal(true);
    });

    it('uses random positive 16-byte serial numbers and the default 825-day validity', () => {
      const serials = [dev, devRsa, other].flatMap((d) => d.chainPem.map((p) => parseCertificate(p).serialNumber));
      expect(new Set(serials).size).to.equal(serials.length);
      for (const s of serials) {
        expect(s).to.match(/^[0-9A-F]{32}$/);
        expect(parseInt(s.slice(0, 2), 16)).to.be.below(0x80);
      }
      const leaf = parseCertificate(dev.chainPem[0]!);
      expect(new Date(leaf.validTo).getTime()).to.equal(NOW.getTime() + 825 * DAY);
      expect(new Date(leaf.validFrom).getTime()).to.be.at.most(NOW.getTime());
    });

    it('honours validityDays and rejects bad domains and validity', async () => {
      const short = await createDevIdentity({ domain: 'kms.example.com', keyType: 'EC', validityDays: 1, now: NOW });
      expect(new Date(parseCertificate(short.chainPem[0]!).validTo).getTime()).to.equal(NOW.getTime() + DAY);
      expectCertError(() => validateChain(short.chainPem, [parseCertificate(short.caCertPem)], { now: days(2) }), 'CERT_INVALID', /expired/);
      for (const domain of ['', 'kms example.com', 'CN=x,O=y', 'kms.example.com/evil']) {
        let err: unknown;
        await createDevIdentity({ domain, keyType: 'EC', now: NOW }).catch((e: unknown) => (err = e));
        expect(err, domain).to.be.instanceOf(TypeError);
      }
      let err: unknown;
      await createDevIdentity({ domain: 'kms.example.com', keyType: 'EC', validityDays: 0 }).catch((e: unknown) => (err = e));
      expect(err).to.be.instanceOf(RangeError);
    });
  });

  describe('certificateMatchesHost', () => {
    it('matches the identity domain case-insensitively and nothing else', () => {
      const leaf = parseCertificate(dev.chainPem[0]!);
      expect(certificateMatchesHost(leaf, 'kms.example.com')).to.equal(true);
      expect(certificateMatchesHost(leaf, 'KMS.Example.COM')).to.equal(true);
      expect(certificateMatchesHost(leaf, 'kms.other.example')).to.equal(false);
      expect(certificateMatchesHost(leaf, 'example.com')).to.equal(false);
      expect(certificateMatchesHost(leaf, 'x.kms.example.com')).to.equal(false);
      expect(certificateMatchesHost(leaf, '')).to.equal(false);
      expect(certificateMatchesHost(parseCertificate(other.chainPem[0]!), 'kms.example.com')).to.equal(false);
    });

    it('allows only a whole leftmost-label wildcard', async () => {
      const wild = parseCertificate(await leafUnder(root.privateKey, rootPem, { dnsNames: ['*.example.com', 'k*.example.net'] }));
      expect(certificateMatchesHost(wild, 'kms.example.com')).to.equal(true);
      expect(certificateMatchesHost(wild, 'a.b.example.com')).to.equal(false);
      expect(certificateMatchesHost(wild, 'example.com')).to.equal(false);
      expect(certificateMatchesHost(wild, 'kms.example.net')).to.equal(false); // partial wildcard refused
    });

    it('falls back to the CN only when there is no dNSName SAN', async () => {
      const noSan = parseCertificate(await leafUnder(root.privateKey, rootPem, { commonName: 'cn.example.com', dnsNames: [] }));
      expect(noSan.subjectAltName).to.equal(undefined);
      expect(certificateMatchesHost(noSan, 'cn.example.com')).to.equal(true);

      const uriOnly = parseCertificate(
        await leafUnder(root.privateKey, rootPem, { commonName: 'cn.example.com', dnsNames: [], uris: ['kms://cn.example.com'] }),
      );
      expect(certificateMatchesHost(uriOnly, 'cn.example.com')).to.equal(true);

      const sanElsewhere = parseCertificate(await leafUnder(root.privateKey, rootPem, { commonName: 'cn.example.com', dnsNames: ['san.example.com'] }));
      expect(certificateMatchesHost(sanElsewhere, 'san.example.com')).to.equal(true);
      expect(certificateMatchesHost(sanElsewhere, 'cn.example.com')).to.equal(false);
    });
  });

  describe('parseCertificate, x5cOf, pemOf', () => {
    it('round-trips a chain through x5c (standard base64 DER) and back', () => {
      const x5c = x5cOf(dev.chainPem);
      expect(x5c).to.have.length(2);
      for (const [i, entry] of x5c.entries()) {
        expect(entry).to.match(/^[A-Za-z0-9+/]+={0,2}$/);
        const cert = parseCertificate(entry);
        expect(cert.fingerprint256).to.equal(parseCertificate(dev.chainPem[i]!).fingerprint256);
        expect(pemOf(cert)).to.equal(dev.chainPem[i]);
        expect(parseCertificate(cert.raw).fingerprint256).to.equal(cert.fingerprint256); // DER
        expect(parseCertificate(Buffer.from(pemOf(cert))).fingerprint256).to.equal(cert.fingerprint256); // PEM bytes
      }
      const result = validateChain(x5c, [devAnchor], { now: NOW });
      expect(result.dnsNames).to.deep.equal(['kms.example.com']);
    });

    it('rejects garbage, empty input, base64url, trailing data and multiple PEM blocks as CERT_MALFORMED', () => {
      const der = parseCertificate(dev.chainPem[0]!).raw;
      const b64 = der.toString('base64');
      const b64url = der.toString('base64url');
      expect(b64url, 'fixture must contain base64url-only characters').to.match(/[-_]/);
      const cases: (string | Buffer)[] = [
        '',
        'not a certificate',
        'AAAA',
        Buffer.alloc(0),
        Buffer.from('30820101deadbeef', 'hex'),
        b64url,
        Buffer.concat([der, Buffer.from([0])]),
        dev.chainPem.join(''),
        `-----BEGIN PUBLIC KEY-----\n${b64}\n-----END PUBLIC KEY-----\n`,
        dev.chainPem[0]!.replace(/[A-Za-z]{8}\n/, 'AAAAAAAA\n'),
      ];
      for (const input of cases) expectCertError(() => parseCertificate(input), 'CERT_MALFORMED', /malformed certificate/);
      expectCertError(() => parseCertificate(b64url), 'CERT_MALFORMED', /base64url/);
      expectCertError(() => parseCertificate(dev.chainPem.join('')), 'CERT_MALFORMED', /exactly one PEM/);
    });
  });

  describe('validateChain', () => {
    it('accepts a chain whose last certificate is an anchor, or is issued by one, and returns the leaf', async () => {
      const withRoot = validateChain(dev.chainPem, [devAnchor], { now: NOW });
      const withoutRoot = validateChain([dev.chainPem[0]!], [rootAnchor, devAnchor], { now: NOW });
      expect(withoutRoot.leaf.fingerprint256).to.equal(withRoot.leaf.fingerprint256);
      expect(withRoot.commonName).to.equal('kms.example.com');

      const inter = await intermediateUnder(root.privateKey, rootPem);
      const leaf = await leafUnder(inter.keys.privateKey, inter.pem);
      const three = validateChain([leaf, inter.pem, rootPem], [rootAnchor], { now: NOW });
      expect(three.commonName).to.equal('leaf.example.com');
      expect(three.dnsNames).to.deep.equal(['leaf.example.com']);
      expect(three.uris).to.deep.equal([]);
      validateChain([leaf, inter.pem], [rootAnchor], { now: NOW });
      validateChain([leaf, parseCertificate(inter.pem)], [parseCertificate(inter.pem)], { now: NOW });
    });

    it('rejects an expired leaf', async () => {
      const leaf = await leafUnder(root.privateKey, rootPem, { notBefore: days(-20), notAfter: days(-1) });
      expectCertError(
        () => validateChain([leaf, rootPem], [rootAnchor], { now: NOW }),
        'CERT_INVALID',
        /^certificate 0 \(CN=leaf\.example\.com\) expired at \d{4}-\d\d-\d\dT/,
      );
      // Still valid at notAfter itself (RFC 5280 §4.1.2.5: inclusive), so the check is on the date.
      validateChain([leaf, rootPem], [rootAnchor], { now: days(-1) });
    });

    it('rejects a not-yet-valid leaf', async () => {
      const leaf = await leafUnder(dev.caPrivateKey, dev.caCertPem, { notBefore: days(1), notAfter: days(30) });
      expectCertError(
        () => validateChain([leaf, dev.caCertPem], [devAnchor], { now: NOW }),
        'CERT_INVALID',
        /^certificate 0 \(CN=leaf\.example\.com\) is not valid before /,
      );
      validateChain([leaf, dev.caCertPem], [devAnchor], { now: days(2) });
    });

    it('rejects a leaf signed by a different key than its issuer certificate holds', async () => {
      const forger = await ecKeys();
      const forged = await leafUnder(forger.privateKey, dev.caCertPem, { commonName: 'kms.example.com', dnsNames: ['kms.example.com'] });
      expect(parseCertificate(forged).checkIssued(devAnchor), 'names and key ids claim the dev CA').to.equal(true);
      expectCertError(
        () => validateChain([forged, dev.caCertPem], [devAnchor], { now: NOW }),
        'CERT_INVALID',
        /signature of certificate 0 \(CN=kms\.example\.com\) does not verify with the public key of certificate 1/,
      );
      expectCertError(() => validateChain([forged], [devAnchor], { now: NOW }), 'CERT_INVALID', /does not end at a trust anchor/);
    });

    it('rejects an issuer that is not a CA', async () => {
      const notCa = await intermediateUnder(root.privateKey, rootPem, { isCa: false, keyUsage: ['digitalSignature', 'keyCertSign'] });
      const leaf = await leafUnder(notCa.keys.privateKey, notCa.pem);
      expectCertError(
        () => validateChain([leaf, notCa.pem, rootPem], [rootAnchor], { now: NOW }),
        'CERT_INVALID',
        /^certificate 1 \(CN=Test Intermediate CA\) is not a CA/,
      );
    });

    it('rejects an issuer whose keyUsage lacks keyCertSign', async () => {
      const noCertSign = await intermediateUnder(root.privateKey, rootPem, { keyUsage: ['digitalSignature', 'cRLSign'] });
      const leaf = await leafUnder(noCertSign.keys.privateKey, noCertSign.pem);
      expectCertError(
        () => validateChain([leaf, noCertSign.pem, rootPem], [rootAnchor], { now: NOW }),
        'CERT_INVALID',
        /^certificate 1 \(CN=Test Intermediate CA\) has a keyUsage without keyCertSign/,
      );
    });

    it('enforces pathLen: a pathLen-0 CA may not certify an intermediate CA', async () => {
      const inter = await intermediateUnder(dev.caPrivateKey, dev.caCertPem);
      const leaf = await leafUnder(inter.keys.privateKey, inter.pem);
      const reason = /kms\.example\.com KMS development CA\) allows 0 intermediate CA certificate\(s\) below it \(pathLen\) but 1 follow/;
      expectCertError(() => validateChain([leaf, inter.pem, dev.caCertPem], [devAnchor], { now: NOW }), 'CERT_INVALID', reason);
      expectCertError(() => validateChain([leaf, inter.pem], [devAnchor], { now: NOW }), 'CERT_INVALID', reason);

      // pathLen on an intermediate counts only the intermediates below it.
      const capped = await intermediateUnder(root.privateKey, rootPem, { pathLength: 0 });
      const sub = await intermediateUnder(capped.keys.privateKey, capped.pem, { commonName: 'Test Sub CA' });
      const deepLeaf = await leafUnder(sub.keys.privateKey, sub.pem);
      expectCertError(
        () => validateChain([deepLeaf, sub.pem, capped.pem, rootPem], [rootAnchor], { now: NOW }),
        'CERT_INVALID',
        /certificate 2 \(CN=Test Intermediate CA\) allows 0 .* but 1 follow/,
      );
      validateChain([await leafUnder(capped.keys.privateKey, capped.pem), capped.pem, rootPem], [rootAnchor], { now: NOW });

      const rootKeys1 = await ecKeys();
      const root1 = await selfSigned(rootKeys1, 'Root pathLen 1', { pathLength: 1 });
      const inter1 = await intermediateUnder(rootKeys1.privateKey, root1);
      validateChain([await leafUnder(inter1.keys.privateKey, inter1.pem), inter1.pem, root1], [parseCertificate(root1)], { now: NOW });

      // A self-issued CA certificate (same name, new key: a key rollover) is not counted (RFC 5280 §6.1.4 (l)).
      const rolloverKeys = await ecKeys();
      const rolloverRoot = await selfSigned(rolloverKeys, 'Rollover Root', { pathLength: 0 });
      const rolled = await intermediateUnder(rolloverKeys.privateKey, rolloverRoot, { commonName: 'Rollover Root' });
      expect(parseCertificate(rolled.pem).issuer).to.equal(parseCertificate(rolled.pem).subject);
      const rolledLeaf = await leafUnder(rolled.keys.privateKey, rolled.pem);
      validateChain([rolledLeaf, rolled.pem, rolloverRoot], [parseCertificate(rolloverRoot)], { now: NOW });
    });

    it('rejects a chain that does not end at a trust anchor', async () => {
      const keys = await ecKeys();
      const selfSignedLeaf = await selfSigned(keys, 'kms.example.com', { isCa: false });
      expect(parseCertificate(selfSignedLeaf).verify(keys.publicKey)).to.equal(true);
      const reason = /^chain does not end at a trust anchor: certificate 0 \(CN=kms\.example\.com\) is neither a trust anchor nor signed by one/;
      expectCertError(() => validateChain([selfSignedLeaf], [devAnchor, rootAnchor], { now: NOW }), 'CERT_INVALID', reason);
      // Pinned directly, the same certificate is acceptable.
      validateChain([selfSignedLeaf], [parseCertificate(selfSignedLeaf)], { now: NOW });

      // A complete chain under a CA that is not trusted.
      expectCertError(
        () => validateChain(other.chainPem, [devAnchor, rootAnchor], { now: NOW }),
        'CERT_INVALID',
        /chain does not end at a trust anchor: certificate 1 \(CN=kms\.other\.example KMS development CA\)/,
      );
      expectCertError(() => validateChain([other.chainPem[0]!], [devAnchor], { now: NOW }), 'CERT_INVALID', /does not end at a trust anchor/);
      expectCertError(() => validateChain(dev.chainPem, [], { now: NOW }), 'CERT_INVALID', /does not end at a trust anchor/);
    });

    it('rejects a chain whose issuer names do not link', () => {
      expectCertError(
        () => validateChain([dev.chainPem[0]!, other.caCertPem], [parseCertificate(other.caCertPem)], { now: NOW }),
        'CERT_INVALID',
        /^certificate 0 \(CN=kms\.example\.com\) was not issued by certificate 1/,
      );
    });

    it('rejects an expired trust anchor', async () => {
      const keys = await ecKeys();
      const oldRoot = await selfSigned(keys, 'Old Root', { notBefore: days(-400), notAfter: days(-1) });
      const leaf = await leafUnder(keys.privateKey, oldRoot, { notBefore: days(-10) });
      expectCertError(() => validateChain([leaf], [parseCertificate(oldRoot)], { now: NOW }), 'CERT_INVALID', /trust anchor 0 \(CN=Old Root\) expired at /);
      expectCertError(
        () => validateChain([leaf, oldRoot], [parseCertificate(oldRoot)], { now: NOW }),
        'CERT_INVALID',
        /^certificate 1 \(CN=Old Root\) expired at /,
      );
      validateChain([leaf], [parseCertificate(oldRoot)], { now: days(-2) });
    });

    it('rejects a trust anchor that is not a CA', async () => {
      const keys = await ecKeys();
      const eeRoot = await selfSigned(keys, 'EE Root', { isCa: false });
      const leaf = await leafUnder(keys.privateKey, eeRoot);
      expectCertError(() => validateChain([leaf], [parseCertificate(eeRoot)], { now: NOW }), 'CERT_INVALID', /trust anchor 0 \(CN=EE Root\) is not a CA/);
    });

    it('rejects a leaf that is a CA', async () => {
      const inter = await intermediateUnder(root.privateKey, rootPem);
      expectCertError(
        () => validateChain([inter.pem, rootPem], [rootAnchor], { now: NOW }),
        'CERT_INVALID',
        /^certificate 0 \(CN=Test Intermediate CA\) is a CA certificate and cannot be the end-entity/,
      );
      expectCertError(() => validateChain([dev.caCertPem], [devAnchor], { now: NOW }), 'CERT_INVALID', /is a CA certificate/);
    });

    it('rejects a certificate with an unrecognised critical extension', async () => {
      const px = await import('@peculiar/x509');
      const keys = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
      const make = async (critical: boolean): Promise<X509Certificate> => {
        const cert = await px.X509CertificateGenerator.createSelfSigned({
          name: [{ CN: ['policy.example.com'] }],
          keys,
          signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
          notBefore: days(-1),
          notAfter: days(1),
          extensions: [new px.BasicConstraintsExtension(false, undefined, true), new px.CertificatePolicyExtension(['1.3.6.1.4.1.55555.1'], critical)],
        });
        return parseCertificate(cert.toString('pem'));
      };
      const critical = await make(true);
      expectCertError(
        () => validateChain([critical], [critical], { now: NOW }),
        'CERT_INVALID',
        /certificate 0 \(CN=policy\.example\.com\) has an unrecognised critical extension 2\.5\.29\.32/,
      );
      const plain = await make(false);
      validateChain([plain], [plain], { now: NOW });
    });

    it('rejects empty and garbage chains', () => {
      expectCertError(() => validateChain([], [devAnchor], { now: NOW }), 'CERT_INVALID', /chain is empty/);
      expectCertError(() => validateChain(['garbage'], [devAnchor], { now: NOW }), 'CERT_MALFORMED', /^certificate 0: malformed certificate/);
      expectCertError(
        () => validateChain([dev.chainPem[0]!, Buffer.from('junk')], [devAnchor], { now: NOW }),
        'CERT_MALFORMED',
        /^certificate 1: malformed certificate/,
      );
    });

    it('rejects a chain longer than maxLength (default 5)', () => {
      const six = [...dev.chainPem, ...dev.chainPem, ...dev.chainPem];
      expectCertError(() => validateChain(six, [devAnchor], { now: NOW }), 'CERT_INVALID', /has 6 certificates; at most 5 are accepted/);
      expectCertError(() => validateChain(dev.chainPem, [devAnchor], { now: NOW, maxLength: 1 }), 'CERT_INVALID', /at most 1 are accepted/);
      validateChain(dev.chainPem, [devAnchor], { now: NOW, maxLength: 2 });
    });
  });
});
