/**
 * Conformance of the client library (src/client) to what xep/kms.xml asks of clients: discovery by
 * feature, validation of the static key before any request, the form of what it sends, fresh
 * requestIds, and the responses it must refuse. The KMS is the real engine in process; where an XMPP
 * connection is needed, a stand-in answers disco and <identity/> and hands <kms/> IQs to the engine,
 * recording every stanza the client sends. The client's requests are read back by decrypting them
 * with the KMS's keys, which only a test can do.
 */
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import xml, { type Element } from '@xmpp/xml';
import parse from '@xmpp/xml/lib/parse.js';
import { KmsFixture, sharedIdentity, AUDIENCE, DOMAIN } from '../support/kms-fixture.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { KmsSession, type Transport } from '../../src/client/session.js';
import { discoverKms, fetchKmsIdentity, xmppTransport, type XmppEntity } from '../../src/client/xmpp.js';
import { BadResponseError, IdentityValidationError, KmsTimeoutError } from '../../src/client/errors.js';
import { makeIdentity } from '../../src/engine/identity.js';
import { decryptDir, decryptJwe, encryptDir, readJweHeader } from '../../src/crypto/jwe.js';
import { NS } from '../../src/protocol/namespace.js';
import { jwkOf } from '../support/node-client.js';

const NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items';
const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

/** Channel keys seen so far, by ephemeral key URI: a request under a key the KMS has since deleted can still be read. */
const channelKeys = new Map<string, Buffer>();

/** The channel key of an ephemeral key URI, from the KMS's store (tests only). */
async function channelKey(kms: KmsFixture, kid: string): Promise<Buffer | undefined> {
  const eph = await kms.deps.state.ephemeral(kid.split('/').pop()!);
  if (eph) channelKeys.set(kid, kms.deps.sealer.open(eph.key, `ecdhe:${eph.id}`));
  return channelKeys.get(kid);
}

/** Decrypts a request message as the KMS would: the handshake with the static key, others with their channel key. */
async function readRequest(kms: KmsFixture, message: string): Promise<Record<string, unknown>> {
  const header = readJweHeader(message);
  if (header.alg !== 'dir') {
    return JSON.parse(decryptJwe(message, kms.identity.privateKey, { alg: kms.identity.handshakeAlgs, enc: ['A256GCM'] }).plaintext.toString('utf8'));
  }
  const key = await channelKey(kms, String(header.kid));
  if (!key) throw new Error(`no channel ${String(header.kid)}`);
  return JSON.parse(decryptDir(message, key, ['A256GCM']).plaintext.toString('utf8'));
}

/** A transport to the engine that records the decrypted requests it carries. */
function spying(kms: KmsFixture): { transport: Transport; requests: Record<string, unknown>[] } {
  const requests: Record<string, unknown>[] = [];
  const transport: Transport = async (messages) => {
    for (const m of messages) requests.push(await readRequest(kms, m));
    return kms.transport(messages);
  };
  return { transport, requests };
}

/** The <identity/> the component publishes (see test/conformance/component.test.ts), with any part replaced. */
async function published(o: { kid?: string; jwk?: Record<string, unknown>; sigAlg?: string; encAlg?: string; chainPem?: string[] } = {}) {
  const id = await sharedIdentity('EC');
  const identity = makeIdentity(DOMAIN, id.privateKey, id.chainPem);
  const { x5c, ...jwk } = identity.jwk;
  const chain = o.chainPem ? o.chainPem.map((p) => new X509Certificate(p).raw.toString('base64')) : x5c;
  return xml(
    'identity',
    { xmlns: NS, kid: o.kid ?? identity.kid, 'sig-alg': o.sigAlg ?? identity.sigAlg, 'enc-alg': o.encAlg ?? identity.handshakeAlgs[0] },
    xml('jwk', {}, JSON.stringify(o.jwk ?? jwk)),
    ...chain.map((c) => xml('x5c', {}, c)),
  );
}

/**
 * An XMPP connection of `jid` on example.com whose server lists `items` (jid -> its disco#info
 * <query/>), whose KMS publishes `identity`, and whose <kms/> IQs the engine answers. Records
 * every IQ the client sends, as XML.
 */
function connection(
  kms: KmsFixture,
  o: { items?: Record<string, Element>; identity?: Element } = {},
): XmppEntity & { jid: { domain: string }; sent: string[] } {
  const sent: string[] = [];
  const result = (iq: Element, child?: Element) =>
    parse(xml('iq', { type: 'result', id: iq.attrs.id ?? 'x', from: iq.attrs.to }, ...(child ? [child] : [])).toString());
  return {
    jid: { domain: 'example.com' },
    status: 'online',
    sent,
    iqCaller: {
      async request(iq: Element): Promise<Element> {
        const stanza = parse(iq.toString());
        sent.push(stanza.toString());
        const child = stanza.getChildElements()[0]!;
        if (child.is('query', NS_DISCO_ITEMS)) {
          return result(stanza, xml('query', { xmlns: NS_DISCO_ITEMS }, ...Object.keys(o.items ?? {}).map((jid) => xml('item', { jid }))));
        }
        if (child.is('query', NS_DISCO_INFO)) return result(stanza, o.items?.[stanza.attrs.to ?? '']);
        if (child.is('identity', NS)) return result(stanza, o.identity ?? (await published()));
        if (child.is('kms', NS)) {
          const out = await kms.transport(child.getChildren('message').map((m) => m.getText()));
          return result(stanza, xml('kms', { xmlns: NS }, ...out.map((m) => xml('message', {}, m))));
        }
        throw new Error(`unexpected IQ ${stanza.toString().slice(0, 200)}`);
      },
    },
  };
}

const info = (identity: { category: string; type: string; name?: string }, ...features: string[]) =>
  xml('query', { xmlns: NS_DISCO_INFO }, xml('identity', identity), ...features.map((f) => xml('feature', { var: f })));

async function failure(p: Promise<unknown>): Promise<Error> {
  return p.then(
    () => expect.fail('expected a failure'),
    (e: Error) => e,
  );
}

describe('conformance: the client library (xep/kms.xml)', function () {
  this.timeout(60_000);
  let kms: KmsFixture;
  let anchors: X509Certificate[];
  before(async () => {
    kms = await KmsFixture.create({ keyType: 'EC' });
    anchors = [new X509Certificate((await sharedIdentity('EC')).caCertPem)];
  });
  after(() => kms.close());

  const token = () => kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE });
  const kmsIqs = (sent: string[]) => sent.filter((s) => s.includes(`<kms xmlns="${NS}"`) || s.includes(`<kms xmlns='${NS}'`));
  const servers = {
    'conference.example.com': info({ category: 'conference', type: 'text' }, NS_DISCO_INFO, 'http://jabber.org/protocol/muc'),
    // Looks like a KMS by its name and type, but does not have the feature.
    'decoy.example.com': info({ category: 'component', type: 'generic', name: 'Key Management Service' }, NS_DISCO_INFO),
    'kms-type.example.com': info({ category: 'component', type: 'kms', name: 'KMS' }, NS_DISCO_INFO),
    [DOMAIN]: info({ category: 'component', type: 'generic' }, NS_DISCO_INFO, NS),
  };

  it('finds a KMS by the disco feature urn:xmpp:kms:0, never by its identity', async () => {
    expect(await discoverKms(connection(kms, { items: servers }), 'example.com')).to.equal(DOMAIN);
    const { [DOMAIN]: _, ...decoys } = servers;
    expect(await discoverKms(connection(kms, { items: decoys }), 'example.com')).to.equal(undefined);
  });

  it('uses a KMS, discovered or named, only after validating its static key: a key that fails a check stops it before any request', async () => {
    const bearer = await token();
    // Discovered, and validated to the client's anchor: the first <kms/> IQ follows the <identity/> check.
    const good = connection(kms, { items: servers });
    const client = await KmsClient.connect({ xmpp: good, anchors, bearer: () => bearer });
    expect(client.kmsJid).to.equal(DOMAIN);
    const firstKms = good.sent.findIndex((s) => kmsIqs([s]).length > 0);
    const identityAt = good.sent.findIndex((s) => s.includes('<identity'));
    expect(identityAt).to.be.at.least(0);
    expect(firstKms).to.be.greaterThan(identityAt);
    // Discovered but anchored elsewhere (another CA), or named with a key that is not its certificate's: no request at all.
    const otherCa = [new X509Certificate((await sharedIdentity('RSA')).caCertPem)];
    const strangerKey = { kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0' };
    const attempts: [string, ReturnType<typeof connection>, X509Certificate[], string | undefined][] = [
      ['discovered, another CA', connection(kms, { items: servers }), otherCa, undefined],
      ['discovered, no anchor', connection(kms, { items: servers }), [], undefined],
      ["named, a key that is not the certificate's", connection(kms, { identity: await published({ jwk: strangerKey }) }), anchors, DOMAIN],
    ];
    for (const [what, xmpp, a, named] of attempts) {
      const e = await failure(KmsClient.connect({ xmpp, anchors: a, bearer: () => bearer, ...(named ? { kms: named } : {}) }));
      expect(e, what).to.be.instanceOf(IdentityValidationError);
      expect(kmsIqs(xmpp.sent), `${what}: no KMS request was sent`).to.deep.equal([]);
    }
  });

  it('refuses a static key whose certificate names another host than the kid, though its chain validates', async () => {
    // A KMS of kms.example.org publishing the certificate of kms.example.com, issued by a trusted CA.
    const e = await failure(fetchKmsIdentity(connection(kms, { identity: await published({ kid: 'kms://kms.example.org' }) }), 'kms.example.org', anchors));
    expect(e).to.be.instanceOf(IdentityValidationError);
    expect(e.message).to.match(/not for kms\.example\.org/);
  });

  it('refuses a static key whose <jwk/> carries a kid other than the kid attribute', async () => {
    const id = await sharedIdentity('EC');
    const { x5c: _, ...jwk } = makeIdentity(DOMAIN, id.privateKey, id.chainPem).jwk;
    expect((await fetchKmsIdentity(connection(kms, { identity: await published({ jwk }) }), DOMAIN, anchors)).kid).to.equal(`kms://${DOMAIN}`);
    const e = await failure(
      fetchKmsIdentity(connection(kms, { identity: await published({ jwk: { ...jwk, kid: 'kms://kms.example.org' } }) }), DOMAIN, anchors),
    );
    expect(e).to.be.instanceOf(IdentityValidationError);
  });

  it('refuses a static key whose sig-alg or enc-alg does not fit its key type', async () => {
    for (const algs of [{ sigAlg: 'PS256' }, { encAlg: 'RSA-OAEP' }, { sigAlg: 'HS256' }, { encAlg: 'dir' }]) {
      const e = await failure(fetchKmsIdentity(connection(kms, { identity: await published(algs) }), DOMAIN, anchors));
      expect(e, JSON.stringify(algs)).to.be.instanceOf(IdentityValidationError);
    }
  });

  it('puts each KMS message, as it is, in a <message/> of one <kms/> in an IQ set: no attributes, no whitespace', async () => {
    const xmpp = connection(kms);
    const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: jwkOf(kms.identity.publicKey), transport: xmppTransport(xmpp, DOMAIN), bearer: token });
    await session.handshake();
    await session.batch([
      { method: 'update', uri: '/ping' },
      { method: 'get', uri: '/nowhere' },
    ]);
    const iqs = kmsIqs(xmpp.sent).map((s) => parse(s));
    expect(iqs).to.have.length(2);
    for (const iq of iqs) {
      expect(iq.attrs.type).to.equal('set');
      expect(iq.attrs.to).to.equal(DOMAIN);
      expect(iq.getChildElements().map((e) => e.getName())).to.deep.equal(['kms']);
      for (const m of iq.getChild('kms')!.getChildElements()) {
        expect(m.getName()).to.equal('message');
        expect(m.attrs).to.deep.equal({});
        expect(m.children).to.have.length(1);
        expect(m.getText()).to.match(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){4}$/);
      }
    }
    expect(iqs.map((iq) => iq.getChild('kms')!.getChildren('message').length)).to.deep.equal([1, 2]);
  });

  it('sends its bearer token only inside encrypted KMS messages, never in a stanza', async () => {
    const bearer = await token();
    const xmpp = connection(kms, { items: servers });
    const client = await KmsClient.connect({ xmpp, anchors, bearer: () => bearer });
    const chain = await client.createChain(['bob@example.com']);
    await client.createGk(chain.tail);
    expect(kmsIqs(xmpp.sent).length).to.be.greaterThan(2);
    for (const stanza of xmpp.sent) {
      for (const part of bearer.split('.')) expect(stanza.includes(part), stanza.slice(0, 200)).to.equal(false);
    }
    // It is in the requests, encrypted: the KMS reads it there.
    const requests = await Promise.all(
      kmsIqs(xmpp.sent)
        .flatMap((s) =>
          parse(s)
            .getChild('kms')!
            .getChildren('message')
            .map((m) => m.getText()),
        )
        .slice(-1)
        .map((m) => readRequest(kms, m)),
    );
    expect((requests[0]!.client as { credential: { bearer: string } }).credential.bearer).to.equal(bearer);
  });

  it('registers its entity key with the public members only, RSA and P-256', async () => {
    for (const type of ['RSA', 'EC'] as const) {
      const spy = spying(kms);
      const bearer = await token();
      await KmsClient.connect({
        kms: DOMAIN,
        anchors: [],
        bearer: () => bearer,
        transport: spy.transport,
        identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
        entityKeyType: { type },
      });
      const register = spy.requests.find((r) => r.uri === '/entity-keys' && r.method === 'post')!;
      const jwk = register.jwk as Record<string, unknown>;
      expect(jwk.kty, type).to.equal(type);
      for (const member of PRIVATE_MEMBERS) expect(jwk, `${type} ${member}`).to.not.have.property(member);
      // The handshake's key, too.
      const handshake = spy.requests.find((r) => r.uri === '/ecdhe')!;
      expect(Object.keys(handshake.jwk as object).sort(), 'the handshake jwk').to.deep.equal(['crv', 'kty', 'x', 'y']);
    }
  });

  it('uses a fresh requestId for every request, the one sent again after a lost channel included', async () => {
    const spy = spying(kms);
    const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: jwkOf(kms.identity.publicKey), transport: spy.transport, bearer: token });
    for (let i = 0; i < 5; i++) await session.request('update', '/ping');
    await session.batch([
      { method: 'update', uri: '/ping' },
      { method: 'update', uri: '/ping' },
      { method: 'get', uri: '/nowhere' },
    ]);
    // The KMS loses the channel: the session makes a new handshake and sends the request again.
    await kms.deps.state.deleteEphemeral(session.ephemeral!.uri.split('/').pop()!);
    const before = spy.requests.length;
    await session.request('update', '/ping');
    expect(spy.requests.slice(before).map((r) => r.uri)).to.deep.equal(['/ping', '/ecdhe', '/ping']);
    const ids = spy.requests.map((r) => r.requestId);
    expect(ids.every((id) => typeof id === 'string' && id.length > 0)).to.equal(true);
    expect(new Set(ids).size, 'no requestId used twice').to.equal(ids.length);
  });

  it('uses a fresh requestId when it sends a request again after a timeout', async () => {
    const requests: Record<string, unknown>[] = [];
    let timeouts = 0;
    const bearer = await token();
    const client = await KmsClient.connect({
      kms: DOMAIN,
      anchors: [],
      bearer: () => bearer,
      backoffMs: 1,
      identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
      entityKeyType: { type: 'EC' },
      transport: async (messages) => {
        for (const m of messages) requests.push(await readRequest(kms, m));
        if (requests.at(-1)!.uri === '/ping' && timeouts++ === 0) throw new KmsTimeoutError('no answer');
        return kms.transport(messages);
      },
    });
    expect((await client.ping()).status).to.equal(200);
    const pings = requests.filter((r) => r.uri === '/ping');
    expect(pings).to.have.length(2);
    expect(pings[0]!.requestId).to.not.equal(pings[1]!.requestId);
  });

  it("rejects a response whose kid is not its request's, even one that decrypts under the channel key", async () => {
    let respell = false;
    const transport: Transport = async (messages) => {
      const out = await kms.transport(messages);
      if (!respell) return out;
      return Promise.all(
        out.map(async (m) => {
          const kid = String(readJweHeader(m).kid);
          const key = (await channelKey(kms, kid))!;
          return encryptDir(key, decryptDir(m, key, ['A256GCM']).plaintext, { enc: 'A256GCM', kid: `kms://${DOMAIN}${kid}` });
        }),
      );
    };
    const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: jwkOf(kms.identity.publicKey), transport, bearer: token });
    expect((await session.request('update', '/ping')).status).to.equal(200);
    respell = true;
    const e = await failure(session.request('update', '/ping'));
    expect(e).to.be.instanceOf(BadResponseError);
    expect(e.message).to.match(/another ephemeral key/);
  });

  it('discards a response whose requestId matches none of its requests: a replayed response is not taken for the answer', async () => {
    let replay: string | undefined;
    let mode: 'record' | 'replay' | 'pass' = 'pass';
    const transport: Transport = async (messages) => {
      const out = await kms.transport(messages);
      if (mode === 'record') replay = out[0];
      return mode === 'replay' ? [replay!] : out;
    };
    const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: jwkOf(kms.identity.publicKey), transport, bearer: token });
    await session.handshake();
    mode = 'record';
    expect((await session.request('get', `/entity-keys/${encodeURIComponent('alice@example.com')}`)).status).to.equal(200);
    // The server replays that response, under the same channel key, as the answer to a ping.
    mode = 'replay';
    const e = await failure(session.request('update', '/ping'));
    expect(e).to.be.instanceOf(BadResponseError);
  });

  it('percent-encodes every character of an entity in a URI but ASCII letters, digits and -._~@+', async () => {
    const odd = 'dan!(1)*@example.com';
    const spy = spying(kms);
    const connect = async (jid: string, transport: Transport = kms.transport) => {
      const bearer = await kms.issuer.mint({ subject: jid, audience: AUDIENCE });
      return KmsClient.connect({
        kms: DOMAIN,
        anchors: [],
        bearer: () => bearer,
        transport,
        identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
        entityKeyType: { type: 'EC' },
      });
    };
    const alice = await connect('alice@example.com', spy.transport);
    const dan = await connect(odd);
    const chain = await alice.createChain([odd]);
    await dan.addMembers(chain.uri, ['erin@example.com']);
    const view = await alice.chain(chain.uri);
    expect(view.hashes).to.have.length(2);
    const lists = spy.requests.map((r) => String(r.uri)).filter((u) => u.startsWith('/entity-keys/'));
    expect(lists.length).to.be.greaterThan(0);
    for (const uri of lists) expect(uri.slice('/entity-keys/'.length)).to.match(/^([A-Za-z0-9._~@+-]|%[0-9A-F]{2})+$/);
  });
});
