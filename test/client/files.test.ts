// Encrypted file sharing (XEP "Sharing a File"): the file's JWE under a group key, the <file/>
// element, safe file names, and a receiver who asks for the group key before its creator bound it
// (NOT_BOUND, asked again until the bind lands) against the real engine in process.
import { expect } from 'chai';
import { KmsFixture, AUDIENCE } from '../support/kms-fixture.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { KmsResponseError } from '../../src/client/errors.js';
import { decryptFile, encryptFile, fileMessage, readFile, safeFileName, type FileRef } from '../../src/client/files.js';
import { decodeJweHeader, randomBytes } from '../../src/client/webcrypto.js';
import { UndecryptableError } from '../../src/client/muc.js';
import { jwkOf } from '../support/node-client.js';
import type { GroupKey } from '../../src/client/keys.js';

async function clientFor(kms: KmsFixture, jid: string, extra: object = {}) {
  const token = await kms.issuer.mint({ subject: jid, audience: AUDIENCE });
  return KmsClient.connect({
    kms: 'kms.example.com',
    anchors: [],
    bearer: () => token,
    transport: kms.transport,
    identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
    backoffMs: 1,
    entityKeyType: { type: 'EC' },
    ...extra,
  });
}

const GK: GroupKey = { uri: 'kms://kms.example.com/gks/11111111-2222-4333-8444-555555555555', key: randomBytes(32) } as GroupKey;
const refOf = (size: number): FileRef => ({
  gk: GK.uri,
  kms: 'kms.example.com',
  chain: 'kms://kms.example.com/blocks/11111111-2222-4333-8444-666666666666',
  url: 'https://upload.example.com/abc/x.jwe',
  name: 'plan.pdf',
  size,
  type: 'application/pdf',
});

describe('client: encrypted file sharing', function () {
  it('encrypts a file as a JWE dir + A256GCM whose kid is the group key URI, and decrypts it', async function () {
    const data = randomBytes(5000);
    const jwe = await encryptFile(GK, data);
    expect(decodeJweHeader(jwe)).to.deep.equal({ alg: 'dir', kid: GK.uri, enc: 'A256GCM' });
    expect(Buffer.from(await decryptFile(refOf(data.length), GK, jwe)).equals(Buffer.from(data))).to.equal(true);
  });

  it('refuses a file under another kid, a tampered file, and a size other than the announced one', async function () {
    const data = randomBytes(100);
    const jwe = await encryptFile(GK, data);
    const other = { ...GK, uri: `${GK.uri.slice(0, -1)}6` } as GroupKey;
    const code = async (p: Promise<unknown>) =>
      p.then(
        () => 'ok',
        (e: UndecryptableError) => e.code,
      );
    expect(await code(decryptFile(refOf(100), GK, await encryptFile(other, data)))).to.equal('malformed');
    const parts = jwe.split('.');
    parts[3] = `${parts[3]!.slice(0, -2)}${parts[3]!.endsWith('AA') ? 'BA' : 'AA'}`;
    expect(await code(decryptFile(refOf(100), GK, parts.join('.')))).to.equal('decrypt-failed');
    expect(await code(decryptFile(refOf(101), GK, jwe))).to.equal('malformed');
    expect(await code(decryptFile(refOf(100), GK, 'not a jwe'))).to.equal('malformed');
  });

  it('carries the group key URI and the URL in <file/>, never a key, and reads it back', function () {
    const ref = refOf(42);
    const msg = fileMessage({ room: 'r@conference.example.com', ref });
    expect(msg.toString()).not.to.contain(Buffer.from(GK.key).toString('base64url'));
    expect(readFile(msg)).to.deep.equal(ref);
    const bad = fileMessage({ room: 'r@conference.example.com', ref });
    bad.getChild('file', 'urn:xmpp:kms:0')!.attrs.size = '-1';
    expect(() => readFile(bad)).to.throw(UndecryptableError, /size/);
    bad.getChild('file', 'urn:xmpp:kms:0')!.attrs.size = '1';
    bad.getChild('file', 'urn:xmpp:kms:0')!.attrs.url = 'file:///etc/passwd';
    expect(() => readFile(bad)).to.throw(UndecryptableError, /http/);
  });

  it('saves under a safe file name: no directories, control characters or leading dots', function () {
    expect(safeFileName('../../etc/passwd')).to.equal('passwd');
    expect(safeFileName('..\\..\\boot.ini')).to.equal('boot.ini');
    expect(safeFileName('.bashrc')).to.equal('bashrc');
    expect(safeFileName('a\u0000b\u202e.txt')).to.equal('a_b_.txt');
    expect(safeFileName('..')).to.equal('file');
    expect(safeFileName('x'.repeat(500))).to.have.length(120);
  });

  describe('a group key made ahead of time (in process, real engine)', function () {
    let kms: KmsFixture;
    afterEach(async () => kms?.close());

    it('a receiver asking before the bind hears NOT_BOUND (409), and the library asks again until the bind lands', async function () {
      kms = await KmsFixture.create();
      const alice = await clientFor(kms, 'alice@example.com');
      const bob = await clientFor(kms, 'bob@example.com', { notBoundWaitMs: 10_000 });
      const impatient = await clientFor(kms, 'bob@example.com', { notBoundWaitMs: 0 });
      const chain = await alice.createChain(['bob@example.com']);
      const pool = await alice.createUnboundGks(2);
      expect(pool.map((g) => g.block)).to.deep.equal([undefined, undefined]);
      const data = randomBytes(1000);
      const jwe = await encryptFile(pool[0]!, data);

      // Without retrying, the answer is the one the XEP specifies: 409 NOT_BOUND.
      const refused = await impatient.gk(pool[0]!.uri).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(refused).to.be.instanceOf(KmsResponseError);
      expect([(refused as KmsResponseError).status, (refused as KmsResponseError).code]).to.deep.equal([409, 'NOT_BOUND']);

      const fetching = bob.gk(pool[0]!.uri);
      await new Promise((r) => setTimeout(r, 300));
      await alice.bindGk(pool[0]!.uri, chain.tail);
      const gk = await fetching;
      expect(gk.block).to.equal(chain.tail);
      const ref = { ...refOf(data.length), gk: gk.uri, chain: chain.uri };
      expect(Buffer.from(await decryptFile(ref, gk, jwe)).equals(Buffer.from(data))).to.equal(true);

      // A key still unbound when the wait is over: the NOT_BOUND refusal reaches the caller.
      const short = await clientFor(kms, 'bob@example.com', { notBoundWaitMs: 300 });
      const late = await short.gk(pool[1]!.uri).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((late as KmsResponseError).code).to.equal('NOT_BOUND');
      for (const c of [alice, bob, impatient, short]) await c.close();
    });
  });
});
