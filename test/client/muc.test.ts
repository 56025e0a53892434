// The encrypted room message of xep/kms.xml, built and read by src/client/muc.ts: the shape the
// XEP requires (checked against its schema and its example), and every way a receiver refuses a
// message (tampered, wrong key, replayed, wrong room, mismatched hosts).
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { validateXML } from 'xmllint-wasm';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import parse from '@xmpp/xml/lib/parse.js';
import { encryptRoomMessage, readEncrypted, openRoomMessage, UndecryptableError, FALLBACK_BODY, NS_EME, NS_HINTS } from '../../src/client/muc.js';
import type { GroupKey } from '../../src/client/keys.js';
import { NS } from '../../src/protocol/namespace.js';
import { encryptDir } from '../../src/crypto/jwe.js';

const XEP = resolve(import.meta.dirname, '../../xep');
const KMS = 'kms.example.com';
const CHAIN = 'kms://kms.example.com/blocks/7f35c3eb-5c1a-4b8e-9d43-1f0e6f2a9b11';
const ROOM = 'planning@conference.example.com';
const gkOf = (id = 'a'): GroupKey => ({
  uri: `kms://kms.example.com/gks/${id}`,
  created: '2026-11-23T09:20:07Z',
  block: 'ab'.repeat(32),
  key: randomBytes(32),
});

function send(gk: GroupKey, body = 'The draft agenda is in the shared folder.', now = new Date()) {
  return encryptRoomMessage({ gk, kms: KMS, chain: CHAIN, from: 'alice@example.com', room: ROOM, body, now });
}

async function refusal(fn: () => unknown): Promise<UndecryptableError> {
  try {
    await fn();
  } catch (e) {
    expect(e).to.be.instanceOf(UndecryptableError);
    return e as UndecryptableError;
  }
  return expect.fail('no error') as never;
}

describe('client: encrypted room messages (xep/kms.xml, Encrypted Messages)', async function () {
  it('carry the fallback body, the EME declaration, <encrypted gk kms chain/> and the store hint', async function () {
    const gk = gkOf();
    const m = await send(gk);
    expect(m.attrs.type).to.equal('groupchat');
    expect(m.attrs.to).to.equal(ROOM);
    expect(m.getChildText('body')).to.equal(FALLBACK_BODY);
    expect(m.getChild('encryption', NS_EME)?.attrs).to.include({ namespace: NS, name: 'KMS group key' });
    expect(m.getChild('store', NS_HINTS)).to.not.equal(undefined);
    const enc = m.getChild('encrypted', NS)!;
    expect(enc.attrs).to.include({ gk: gk.uri, kms: KMS, chain: CHAIN });
    const header = JSON.parse(Buffer.from(enc.getText().split('.')[0]!, 'base64url').toString());
    expect(header).to.deep.equal({ alg: 'dir', enc: 'A256GCM', kid: gk.uri });
    expect(m.toString()).to.not.contain('agenda');
  });

  it("validate against xep/kms.xsd like the XEP's own examples", async function () {
    const enc = parse((await send(gkOf())).getChild('encrypted', NS)!.toString());
    enc.attrs.xmlns = NS;
    const schema = { fileName: 'kms.xsd', contents: readFileSync(join(XEP, 'kms.xsd'), 'utf8') };
    const ok = await validateXML({ xml: { fileName: 'encrypted.xml', contents: enc.toString() }, schema });
    expect(ok.valid, ok.errors.map((e) => e.rawMessage).join('\n')).to.equal(true);
    // The same element without its gk is refused: the check can fail.
    delete enc.attrs.gk;
    expect((await validateXML({ xml: { fileName: 'bad.xml', contents: enc.toString() }, schema })).valid).to.equal(false);
  });

  it("read the XEP's example message (13-muc-message.xml)", async function () {
    const ref = readEncrypted(parse(readFileSync(join(XEP, 'examples/13-muc-message.xml'), 'utf8')))!;
    expect(ref.gk).to.equal('kms://kms.example.com/gks/8ed72cd2-66a3-4f3e-b8f4-0c2f9e61d7a5');
    expect(ref.kms).to.equal(KMS);
    expect(ref.chain).to.equal(CHAIN);
  });

  it('open with the right key: body, sender and time from the envelope', async function () {
    const gk = gkOf();
    const now = new Date();
    const opened = await openRoomMessage(readEncrypted(await send(gk, 'hello', now))!, gk, { room: ROOM, at: new Date() });
    expect(opened).to.deep.include({ body: 'hello', from: 'alice@example.com' });
    expect(opened.time.getTime()).to.equal(now.getTime());
  });

  it('pad the envelope with random content, so equal bodies give ciphertexts of different lengths', async function () {
    const gk = gkOf();
    const lengths = new Set(await Promise.all(Array.from({ length: 20 }, async () => readEncrypted(await send(gk, 'same'))!.jwe.length)));
    expect(lengths.size).to.be.greaterThan(5);
  });

  it('a message without <encrypted/> is not ours: undefined', async function () {
    expect(readEncrypted(parse("<message type='groupchat'><body>hi</body></message>"))).to.equal(undefined);
  });

  describe('are refused, with a reason', async function () {
    it('tampered ciphertext or tag: decrypt-failed', async function () {
      const gk = gkOf();
      const ref = readEncrypted(await send(gk))!;
      const parts = ref.jwe.split('.');
      const flip = (s: string) => (s[5] === 'A' ? `${s.slice(0, 5)}B${s.slice(6)}` : `${s.slice(0, 5)}A${s.slice(6)}`);
      for (const i of [3, 4]) {
        const bad = parts.map((p, j) => (j === i ? flip(p) : p)).join('.');
        expect((await refusal(() => openRoomMessage({ ...ref, jwe: bad }, gk, { room: ROOM, at: new Date() }))).code).to.equal('decrypt-failed');
      }
    });

    it('another key with the same URI: decrypt-failed; another key URI: key-mismatch', async function () {
      const gk = gkOf();
      const ref = readEncrypted(await send(gk))!;
      expect((await refusal(() => openRoomMessage(ref, { ...gk, key: randomBytes(32) }, { room: ROOM, at: new Date() }))).code).to.equal('decrypt-failed');
      expect((await refusal(() => openRoomMessage(ref, gkOf('b'), { room: ROOM, at: new Date() }))).code).to.equal('key-mismatch');
    });

    it('sent long before it was received (a replay): replay-suspect', async function () {
      const gk = gkOf();
      const ref = readEncrypted(await send(gk, 'old', new Date(Date.now() - 3600_000)))!;
      expect((await refusal(() => openRoomMessage(ref, gk, { room: ROOM, at: new Date() }))).code).to.equal('replay-suspect');
    });

    it('replayed into another room: wrong-room', async function () {
      const gk = gkOf();
      const ref = readEncrypted(await send(gk))!;
      expect((await refusal(() => openRoomMessage(ref, gk, { room: 'other@conference.example.com', at: new Date() }))).code).to.equal('wrong-room');
    });

    it('a group key or chain of another host than the kms attribute: malformed', async function () {
      const m = await send(gkOf());
      m.getChild('encrypted', NS)!.attrs.kms = 'evil.example.net';
      expect((await refusal(() => readEncrypted(m))).code).to.equal('malformed');
    });

    it('a JWE whose kid is not the gk attribute, or not dir/A256GCM: malformed', async function () {
      const gk = gkOf();
      const m = await send(gk);
      const enc = m.getChild('encrypted', NS)!;
      enc.children = [encryptDir(Buffer.from(gk.key), '<envelope/>', { enc: 'A256GCM', kid: 'kms://kms.example.com/gks/other' })];
      expect((await refusal(() => readEncrypted(m))).code).to.equal('malformed');
      enc.children = ['not a jwe'];
      expect((await refusal(() => readEncrypted(m))).code).to.equal('malformed');
    });

    it('a decrypted payload that is not an XEP-0420 envelope: malformed', async function () {
      const gk = gkOf();
      const m = await send(gk);
      const enc = m.getChild('encrypted', NS)!;
      enc.children = [encryptDir(Buffer.from(gk.key), '<html>hi</html>', { enc: 'A256GCM', kid: gk.uri })];
      expect((await refusal(() => openRoomMessage(readEncrypted(m)!, gk, { room: ROOM, at: new Date() }))).code).to.equal('malformed');
    });
  });
});
