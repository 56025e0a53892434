/**
 * Conformance of the KMS component (src/xmpp/component.ts) to xep/kms.xml "Transport of KMS
 * Messages", in process: the real component around the real engine, with IQs handed to it as the
 * XMPP connection would and its replies caught where it writes them. No XMPP server is involved, so
 * each stanza can be chosen byte for byte (the same rules on real servers: test/e2e/kms-component).
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import xml, { type Element } from '@xmpp/xml';
import parse from '@xmpp/xml/lib/parse.js';
import { KmsFixture, add, payloadOf, AUDIENCE, DOMAIN, type TestUser } from '../support/kms-fixture.js';
import { openRawChannel, type RawChannel } from '../support/raw-channel.js';
import { KmsComponent, type ComponentLimits } from '../../src/xmpp/component.js';
import { componentSettings } from '../../src/server.js';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../../src/util/logger.js';
import { NS, NS_STANZAS } from '../../src/protocol/namespace.js';
import { parseStanzaError } from '../../src/protocol/stanza-errors.js';
import { signatureAlgsFor, verifyCompact } from '../../src/crypto/jws.js';
import { importPublicJwk } from '../../src/crypto/keys.js';
import { encryptDir } from '../../src/crypto/jwe.js';
import { encode as b64u } from '../../src/crypto/base64url.js';
import { blockHash } from '../support/node-client.js';

const ALICE = 'alice@example.com';
const MALLORY = 'mallory@example.com';
/** A long member name: blocks of several KB ("add" of a member changes nothing). */
const PAD = `${'p'.repeat(1000)}@example.com`;

/** The component in process: IQs go in through its 'element' listener, replies are caught at send(). */
class InProcess {
  readonly component: KmsComponent;
  /** Every stanza the component sent, in order. */
  readonly sent: Element[] = [];
  readonly #waiting = new Map<string, (el: Element) => void>();
  #n = 0;

  constructor(kms: KmsFixture, limits: Partial<ComponentLimits> = {}) {
    const defaults = componentSettings(loadConfig({ env: {} }));
    this.component = new KmsComponent(
      { handle: (m, o) => kms.engine.handle(m, o), identity: kms.identity },
      { ...defaults, domain: DOMAIN, keepaliveSec: 0, limits: { ...defaults.limits, ...limits } },
      silentLogger(),
    );
    (this.component.xmpp as unknown as { send: (el: Element) => Promise<void> }).send = async (el: Element) => {
      this.sent.push(el);
      this.#waiting.get(el.attrs.id ?? '')?.(el);
    };
  }

  /** Hands the component an IQ (parsed from its XML, as from the stream) and resolves with the reply. */
  iq(type: 'get' | 'set', child: Element | string, from = `${ALICE}/laptop`): Promise<Element> {
    const id = `iq-${++this.#n}`;
    const reply = new Promise<Element>((resolve) => this.#waiting.set(id, resolve));
    const stanza = parse(`<iq type='${type}' id='${id}' from='${from}' to='${DOMAIN}'>${child.toString()}</iq>`);
    this.component.xmpp.emit('element', stanza);
    return reply;
  }

  /** A <kms/> IQ set holding `messages`; the reply. */
  kms(messages: string[], from?: string): Promise<Element> {
    return this.iq('set', xml('kms', { xmlns: NS }, ...messages.map((m) => xml('message', {}, m))), from);
  }
}

/** The texts of the <message/> children of a result's <kms/>; fails on anything but an IQ result. */
function responses(reply: Element): string[] {
  expect(reply.attrs.type, reply.toString().slice(0, 300)).to.equal('result');
  const kms = reply.getChild('kms', NS);
  expect(kms, 'the result holds one <kms/>').to.not.equal(undefined);
  return kms!.getChildren('message').map((m) => m.getText());
}

/** The application condition of a stanza error reply (undefined when the reply is not one of ours). */
function stanzaErrorKey(reply: Element): string | undefined {
  expect(reply.attrs.type, reply.toString().slice(0, 300)).to.equal('error');
  return parseStanzaError(reply)?.key;
}

describe('conformance: the KMS component (xep/kms.xml, Transport of KMS Messages)', function () {
  this.timeout(60_000);
  let kms: KmsFixture;
  let c: InProcess;
  let alice: TestUser;
  let aliceCh: RawChannel;
  let chainUri: string;
  let tail: string;

  before(async () => {
    kms = await KmsFixture.create();
    c = new InProcess(kms);
    alice = await kms.user(ALICE, { keyType: 'EC' });
    await alice.register();
    const g = await alice.genesis([add(ALICE)]);
    chainUri = g.uri;
    tail = blockHash(g.block);
    aliceCh = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), alice.token);
  });
  after(() => kms.close());

  /** Blocks of the chain as the KMS holds it now. */
  async function chainNow(): Promise<string[]> {
    return (aliceCh.open(await kms.engine.handle(aliceCh.seal('get', chainUri), { maxResponseBytes: 10_000_000 })) as { blocks: string[] }).blocks;
  }

  it('answers an IQ get with an empty <identity/> from any sender, without a channel: kid kms://<domain>, sig-alg, enc-alg, a public <jwk/> and the <x5c/> chain', async () => {
    for (const from of [`${ALICE}/laptop`, 'stranger@elsewhere.example/x', 'elsewhere.example']) {
      const reply = await c.iq('get', xml('identity', { xmlns: NS }), from);
      expect(reply.attrs.type).to.equal('result');
      expect(reply.attrs.to).to.equal(from);
      const id = reply.getChild('identity', NS)!;
      expect(id.attrs.kid).to.equal(`kms://${DOMAIN}`);
      expect(id.attrs['sig-alg']).to.equal(kms.identity.sigAlg);
      expect(kms.identity.handshakeAlgs).to.include(id.attrs['enc-alg']);
      const jwk = JSON.parse(id.getChildText('jwk')!) as Record<string, unknown>;
      for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']) expect(jwk, member).to.not.have.property(member);
      expect(importPublicJwk(jwk).equals(kms.identity.publicKey)).to.equal(true);
      const x5c = id.getChildren('x5c').map((e) => e.getText());
      expect(x5c.length).to.be.at.least(1);
      expect(x5c).to.deep.equal(kms.identity.jwk.x5c);
    }
  });

  it('answers a <kms/> IQ set with one <message/> per request, in order, the n-th response answering the n-th request', async () => {
    const ids = ['r0', 'r1', 'r2', 'r3', 'r4'];
    const requests: [string, string, Record<string, unknown>][] = [
      ['update', '/ping', {}],
      ['get', '/nowhere', {}],
      ['update', '/ping', {}],
      ['get', `/entity-keys/${ALICE}`, {}],
      ['get', `/gks/${randomUUID()}`, { entity: ALICE }],
    ];
    const reply = await c.kms(requests.map(([method, uri, body], i) => aliceCh.seal(method, uri, body, ids[i])));
    const out = responses(reply).map((m) => aliceCh.open(m));
    expect(out.map((r) => r.requestId)).to.deep.equal(ids);
    expect(out.map((r) => r.status)).to.deep.equal([200, 404, 200, 200, 404]);
  });

  it('executes the messages of one IQ in document order, each seeing the effects of those before it', async () => {
    // Append a block, then create a group key bound to it, then read the chain: each needs the one before.
    const b1 = alice.block(tail, [add('bob@example.com')]);
    const [appended, created, read] = responses(
      await c.kms([
        aliceCh.seal('post', chainUri, { blocks: [b1] }),
        aliceCh.seal('post', '/gks', { block: blockHash(b1) }),
        aliceCh.seal('get', chainUri, { antecedent: tail }),
      ]),
    ).map((m) => aliceCh.open(m));
    expect(appended!.status).to.equal(200);
    expect(created!.status, String(created!.reason)).to.equal(201);
    expect(payloadOf(created!.gk as string).block).to.equal(blockHash(b1));
    expect(read!.blocks).to.deep.equal([b1]);
    tail = blockHash(b1);
    // The other way round, the group key comes first and finds no block; the append still goes through.
    const b2 = alice.block(tail, [add('carol@example.com')]);
    const [early, late] = responses(
      await c.kms([aliceCh.seal('post', '/gks', { block: blockHash(b2) }), aliceCh.seal('post', chainUri, { blocks: [b2] })]),
    ).map((m) => aliceCh.open(m));
    expect([early!.status, late!.status]).to.deep.equal([404, 200]);
    tail = blockHash(b2);
  });

  it('refuses a <kms/> or <message/> that breaks the transport rules with malformed-payload, and executes nothing', async () => {
    const before = await kms.digest();
    const length = (await chainNow()).length;
    const append = aliceCh.seal('post', chainUri, { blocks: [alice.block(tail, [add('dave@example.com')])] });
    const cases: [string, 'get' | 'set', string][] = [
      ['<kms/> in an IQ get', 'get', `<kms xmlns='${NS}'><message>${append}</message></kms>`],
      ['<kms/> without <message/>', 'set', `<kms xmlns='${NS}'/>`],
      ['a foreign child of <kms/>', 'set', `<kms xmlns='${NS}'><message>${append}</message><note>x</note></kms>`],
      ['a <message/> with an attribute', 'set', `<kms xmlns='${NS}'><message id='1'>${append}</message></kms>`],
      ['a <message/> with a child element', 'set', `<kms xmlns='${NS}'><message><b>${append}</b></message></kms>`],
      ['four parts', 'set', `<kms xmlns='${NS}'><message>${append}</message><message>a.b.c.d</message></kms>`],
      ['two parts', 'set', `<kms xmlns='${NS}'><message>${append}</message><message>a.b</message></kms>`],
      ['six parts', 'set', `<kms xmlns='${NS}'><message>${append}</message><message>a.b.c.d.e.f</message></kms>`],
      ['base64, not base64url', 'set', `<kms xmlns='${NS}'><message>${append}</message><message>a+b.c/d.e=</message></kms>`],
      ['an empty <message/>', 'set', `<kms xmlns='${NS}'><message>${append}</message><message/></kms>`],
      ['<identity/> in an IQ set', 'set', `<identity xmlns='${NS}'/>`],
    ];
    for (const [what, type, child] of cases) {
      expect(stanzaErrorKey(await c.iq(type, child)), what).to.equal('malformed-payload');
    }
    expect(await kms.digest(), 'nothing was executed').to.equal(before);
    expect(await chainNow()).to.have.length(length);
  });

  it("checks the whole IQ before executing any message: an append followed by a malformed, oversized or surplus message, or over the sender's rate, is a stanza error and changes nothing", async () => {
    const before = await kms.digest();
    const append = () => aliceCh.seal('post', chainUri, { blocks: [alice.block(tail, [add('erin@example.com')])] });
    const ping = () => aliceCh.seal('update', '/ping');
    const huge = `a.${'b'.repeat(70_000)}.c`;
    expect(stanzaErrorKey(await c.kms([append(), 'not jose']))).to.equal('malformed-payload');
    expect(stanzaErrorKey(await c.kms([append(), huge]))).to.equal('payload-too-large');
    expect(stanzaErrorKey(await c.kms([append(), ...Array.from({ length: 16 }, ping)]))).to.equal('too-many-messages');
    // A sender over its rate: a component that takes 3 messages at once from a sender.
    const slow = new InProcess(kms, { ratePerSec: 1, rateBurst: 3 });
    expect(stanzaErrorKey(await slow.kms([append(), ping(), ping(), ping()]))).to.equal('rate-limited');
    expect(await kms.digest(), 'no message of those IQs was executed').to.equal(before);
    // The same append alone goes through: the refusals were about the IQ.
    const [ok] = responses(await c.kms([append()])).map((m) => aliceCh.open(m));
    expect(ok!.status).to.equal(200);
    tail = blockHash((await chainNow()).at(-1)!);
  });

  it('answers KMS-level failures as KMS responses in an IQ result, never as stanza errors', async () => {
    const stale = await kms.issuer.mint({ subject: ALICE, audience: AUDIENCE, ttlSec: -3600 });
    const body = { client: { clientId: aliceCh.clientId, credential: { bearer: stale } }, method: 'update', uri: '/ping', requestId: 'stale' };
    const unknownKey = b64u(JSON.stringify({ alg: 'dir', enc: 'A256GCM', kid: `/ecdhe/${randomUUID()}` }));
    const messages = [
      encryptDir(aliceCh.key, JSON.stringify(body), { enc: 'A256GCM', kid: aliceCh.uri }), // a refused credential: encrypted 401
      aliceCh.seal('get', `${chainUri}x`), // an unknown chain: encrypted 404
      aliceCh.seal('update', '/ping').replace(/^[^.]+/, unknownKey), // an unknown ephemeral key: signed 401
      'eyJhbGciOiJub25lIn0.e30.', // a JWS as a request: signed 400
      aliceCh.seal('update', '/ping'), // and the IQ's other messages are answered as usual
    ];
    const out = responses(await c.kms(messages));
    expect(out).to.have.length(messages.length);
    const algs = signatureAlgsFor(kms.identity.publicKey);
    const opened = out.map((m) =>
      m.split('.').length === 3 ? JSON.parse(verifyCompact(m, kms.identity.publicKey, algs).payload.toString('utf8')) : aliceCh.open(m),
    );
    expect(opened.map((r) => [r.status, r.code])).to.deep.equal([
      [401, 'UNAUTHENTICATED'],
      [404, 'NOT_FOUND'],
      [401, 'UNAUTHENTICATED'],
      [400, 'BAD_REQUEST'],
      [200, undefined],
    ]);
    expect(out.map((m) => m.split('.').length)).to.deep.equal([5, 5, 3, 3, 5]);
  });

  it("takes the requester from the credential, never from the stanza's from address", async () => {
    const mallory = await kms.user(MALLORY, { keyType: 'EC' });
    await mallory.register();
    const malloryCh = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), mallory.token);
    const gk = payloadOf(await alice.createGk(tail)).uri as string;
    // Alice's request, sent from Mallory's address, is Alice's: she gets her key.
    const [asAlice] = responses(await c.kms([aliceCh.seal('get', gk, { entity: ALICE })], `${MALLORY}/phone`)).map((m) => aliceCh.open(m));
    expect(asAlice!.status).to.equal(200);
    // Mallory's request, sent from Alice's address, is Mallory's: not a member, so refused; and
    // naming Alice as the entity does not help.
    const [asMallory, forAlice] = responses(
      await c.kms([malloryCh.seal('get', gk, { entity: MALLORY }), malloryCh.seal('get', gk, { entity: ALICE })], `${ALICE}/laptop`),
    ).map((m) => malloryCh.open(m));
    expect([asMallory!.status, forAlice!.status]).to.deep.equal([403, 403]);
    expect(String(forAlice!.reason)).to.match(/mallory@example\.com may not fetch keys for alice@example\.com/);
  });

  it('never sends a reply larger than max-reply-size: a long chain read through it in pages, four gets at once or one at a time', async () => {
    // 24 blocks of about 8 KB (190 KB), read through a component whose replies are at most 60 KB.
    const limit = 60_000;
    const paged = new InProcess(kms, { maxMessagesPerIq: 4, maxReplyBytes: limit });
    const reader = await kms.user(ALICE, { keyType: 'EC' });
    const ch = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), reader.token);
    const g = await alice.genesis([add(ALICE)]);
    const blocks = [g.block];
    for (let i = 0; i < 24; i += 4) {
      const batch: string[] = [];
      for (let j = 0; j < 4; j++)
        batch.push(
          alice.block(
            blockHash((batch.at(-1) ?? blocks.at(-1))!),
            Array.from({ length: 8 }, () => add(PAD)),
          ),
        );
      expect((await alice.append(g.uri, batch)).status).to.equal(200);
      blocks.push(...batch);
    }
    expect(blocks.reduce((n, b) => n + b.length, 0)).to.be.greaterThan(3 * limit);
    const size = (el: Element) => Buffer.byteLength(el.toString());
    // Four gets of the whole chain in one IQ: each response holds what fits its budget.
    const four = await paged.kms(Array.from({ length: 4 }, () => ch.seal('get', g.uri)));
    expect(size(four)).to.be.at.most(limit);
    const pages = responses(four).map((m) => ch.open(m) as { status: number; blocks: string[]; more: boolean });
    expect(pages.every((p) => p.status === 200 && p.more === true)).to.equal(true);
    expect(pages[0]!.blocks.length).to.be.greaterThan(0);
    // One get per IQ, following "more": every reply within the limit, and the pages make the chain.
    const got: string[] = [];
    for (let n = 0; n < 100; n++) {
      const reply = await paged.kms([ch.seal('get', g.uri, got.length > 0 ? { antecedent: blockHash(got.at(-1)!) } : {})]);
      expect(size(reply)).to.be.at.most(limit);
      const [page] = responses(reply).map((m) => ch.open(m) as { blocks: string[]; more: boolean });
      expect(page!.blocks.length, 'a get alone in its IQ receives at least one block').to.be.greaterThan(0);
      got.push(...page!.blocks);
      if (!page!.more) break;
    }
    expect(got).to.deep.equal(blocks);
    expect(
      paged.sent.every((el) => size(el) <= limit),
      'no reply over max-reply-size',
    ).to.equal(true);
  });

  it('answers an IQ in a namespace it does not implement with <service-unavailable/>, and an unknown element of its own namespace with unknown-payload', async () => {
    const foreign = await c.iq('set', `<query xmlns='urn:example:nothing'/>`);
    expect(foreign.attrs.type).to.equal('error');
    const error = foreign.getChild('error')!;
    expect(error.getChild('service-unavailable', NS_STANZAS)).to.not.equal(undefined);
    expect(parseStanzaError(foreign)).to.equal(undefined);
    expect(stanzaErrorKey(await c.iq('set', `<bogus xmlns='${NS}'/>`))).to.equal('unknown-payload');
  });
});
