/**
 * Conformance of encrypted room messages to xep/kms.xml "Encrypted Messages": what a sender puts in
 * a message (src/client/muc.ts), which group key it uses (src/client/room.ts), and what a receiver
 * checks before it shows a message. The KMS is the real engine in process; the room is a stand-in
 * for the MUC service that reflects presence, delivers the stanzas a test chooses and serves an
 * archive, so that forged and replayed messages can be delivered at will.
 */
import { expect } from 'chai';
import { EventEmitter } from 'node:events';
import xml, { type Element } from '@xmpp/xml';
import parse from '@xmpp/xml/lib/parse.js';
import type { Client } from '@xmpp/client';
import { KmsFixture, AUDIENCE, DOMAIN } from '../support/kms-fixture.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { EncryptedRoom, type RoomMessage, type Undecryptable } from '../../src/client/room.js';
import { encryptRoomMessage, openRoomMessage, readEncrypted, FALLBACK_BODY, NS_SCE, NS_CLIENT } from '../../src/client/muc.js';
import type { GroupKey } from '../../src/client/keys.js';
import { encryptDir } from '../../src/crypto/jwe.js';
import { jwkOf } from '../support/node-client.js';
import { until } from '../support/until.js';

const ROOM = 'planning@conference.example.com';
const NS_MUC_USER = 'http://jabber.org/protocol/muc#user';
const NS_MAM = 'urn:xmpp:mam:2';

/** What the room's occupants see: a stand-in for the MUC service, with an archive. */
class FakeMuc {
  /** Occupant connections by nick. */
  readonly #members = new Map<string, FakeConnection>();
  /** The archive: [nick, the occupant's real JID, message, stamp]. */
  readonly archive: [string, string, Element, string][] = [];

  connection(nick: string, jid: string): FakeConnection {
    const c = new FakeConnection(this, nick, jid);
    this.#members.set(nick, c);
    return c;
  }

  /** Someone joined: every occupant learns who is in the room. */
  joined(): void {
    for (const c of this.#members.values()) this.presences(c);
  }

  /** Presence of every occupant to `to`, with real JIDs (a non-anonymous room). */
  presences(to: FakeConnection): void {
    for (const [nick, c] of this.#members) {
      to.emit(
        'stanza',
        parse(
          xml(
            'presence',
            { from: `${ROOM}/${nick}`, to: to.jid },
            xml(
              'x',
              { xmlns: NS_MUC_USER },
              xml('item', { jid: `${c.jid}/device`, affiliation: 'member', role: 'participant' }),
              ...(c === to ? [xml('status', { code: '110' })] : []),
            ),
          ).toString(),
        ),
      );
    }
  }

  /** Delivers a groupchat message as coming from occupant `nick` to every occupant, and archives it. */
  deliver(nick: string, message: Element, at = new Date()): void {
    const m = parse(message.toString());
    m.attrs.from = `${ROOM}/${nick}`;
    delete m.attrs.to;
    this.archive.push([nick, this.#members.get(nick)!.jid, m, at.toISOString()]);
    for (const c of this.#members.values()) c.emit('stanza', parse(m.toString()));
  }
}

/** An occupant's XMPP connection: presence is answered by the room, groupchat messages are delivered. */
class FakeConnection extends EventEmitter {
  readonly sentMessages: Element[] = [];
  constructor(
    readonly muc: FakeMuc,
    readonly nick: string,
    readonly jid: string,
  ) {
    super();
  }

  async send(el: Element): Promise<void> {
    if (el.is('presence')) {
      setImmediate(() => this.muc.joined());
      return;
    }
    if (el.is('message')) {
      this.sentMessages.push(el);
      this.muc.deliver(this.nick, el);
    }
  }

  readonly iqCaller = {
    request: async (iq: Element): Promise<Element> => {
      const query = iq.getChild('query', NS_MAM);
      if (!query) throw new Error(`unexpected IQ ${iq.toString().slice(0, 200)}`);
      const queryid = query.attrs.queryid;
      this.muc.archive.forEach(([nick, jid, m, stamp], i) => {
        // A non-anonymous room's archive keeps the occupant's real JID with the message.
        const archived = parse(m.toString());
        archived.attrs.from = `${ROOM}/${nick}`;
        archived.children.push(xml('x', { xmlns: NS_MUC_USER }, xml('item', { jid })));
        this.emit(
          'stanza',
          parse(
            xml(
              'message',
              { from: ROOM, to: this.jid },
              xml(
                'result',
                { xmlns: NS_MAM, queryid, id: `a${i}` },
                xml('forwarded', { xmlns: 'urn:xmpp:forward:0' }, xml('delay', { xmlns: 'urn:xmpp:delay', stamp }), archived),
              ),
            ).toString(),
          ),
        );
      });
      return parse(xml('iq', { type: 'result', id: iq.attrs.id ?? 'x' }, xml('fin', { xmlns: NS_MAM, complete: 'true' })).toString());
    },
  };
}

interface Person {
  jid: string;
  kms: KmsClient;
  xmpp: FakeConnection;
  room: EncryptedRoom;
  messages: RoomMessage[];
  refused: Undecryptable[];
}

describe('conformance: encrypted room messages (xep/kms.xml, Encrypted Messages)', function () {
  this.timeout(60_000);
  let kms: KmsFixture;
  let muc: FakeMuc;
  const people = new Map<string, Person>();

  async function person(name: string, chain?: string): Promise<Person> {
    const jid = `${name}@example.com`;
    const bearer = await kms.issuer.mint({ subject: jid, audience: AUDIENCE });
    const client = await KmsClient.connect({
      kms: DOMAIN,
      anchors: [],
      bearer: () => bearer,
      transport: kms.transport,
      identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
      entityKeyType: { type: 'EC' },
    });
    const xmpp = muc.connection(name, jid);
    const room = new EncryptedRoom({ xmpp: xmpp as unknown as Client, kms: client, room: ROOM, nick: name, ...(chain ? { chain } : {}) });
    const p: Person = { jid, kms: client, xmpp, room, messages: [], refused: [] };
    room.on('message', (m) => p.messages.push(m));
    room.on('undecryptable', (u) => p.refused.push(u));
    await room.join();
    people.set(name, p);
    return p;
  }

  const read = (p: Person, body: string) => until(`${p.jid} to read "${body}"`, () => p.messages.find((m) => m.body === body), 2_000, 5);
  const refusal = (p: Person, n: number) => until(`${p.jid} to refuse message ${n}`, () => p.refused[n - 1], 2_000, 5);
  /** The group key of the last message `p` sent. */
  const lastSentKey = async (p: Person): Promise<GroupKey> => p.kms.gk(readEncrypted(p.xmpp.sentMessages.at(-1)!)!.gk);

  let alice: Person, bob: Person, carol: Person;
  let chainUri: string;

  before(async () => {
    kms = await KmsFixture.create();
    muc = new FakeMuc();
    alice = await person('alice');
    chainUri = (await alice.room.create(['bob@example.com', 'carol@example.com'])).uri;
    bob = await person('bob', chainUri);
    carol = await person('carol', chainUri);
  });
  after(() => kms.close());

  it("sends under a group key bound to the chain's last block, and under a new one as soon as the membership changes", async () => {
    await alice.room.send('one');
    const first = await lastSentKey(alice);
    expect(first.block).to.equal((await alice.kms.chain(chainUri)).tail);
    await alice.room.send('two');
    expect((await lastSentKey(alice)).uri, 'no change, the same key').to.equal(first.uri);
    // Alice changes the membership herself.
    const added = await alice.room.add(['dave@example.com']);
    await alice.room.send('three');
    const second = await lastSentKey(alice);
    expect(second.uri).to.not.equal(first.uri);
    expect(second.block).to.equal(added.tail);
    // Bob changes it: Alice's next message uses a key bound to the block Bob appended.
    const byBob = await bob.kms.removeMembers(chainUri, ['dave@example.com']);
    await alice.room.send('four');
    const third = await lastSentKey(alice);
    expect(third.block).to.equal(byBob.tail);
    // Bob reads all four, decrypted: the fallback body is not what he is shown.
    for (const body of ['one', 'two', 'three', 'four']) expect((await read(bob, body)).body).to.not.equal(FALLBACK_BODY);
  });

  it('refuses a message whose group key is not bound to a block of the announced chain', async () => {
    // A second chain with the same members, and a group key bound to it, announced as the room's chain.
    const other = await alice.kms.createChain(['bob@example.com', 'carol@example.com']);
    const foreign = await alice.kms.createGk(other.tail);
    muc.deliver('alice', await encryptRoomMessage({ gk: foreign, kms: DOMAIN, chain: chainUri, from: alice.jid, room: ROOM, body: 'from elsewhere' }));
    const refused = await refusal(bob, 1);
    expect(refused.code).to.equal('key-mismatch');
    expect(bob.messages.map((m) => m.body)).to.not.include('from elsewhere');
    // A key bound to a block of the announced chain is read.
    const own = await alice.kms.createGk((await alice.kms.chain(chainUri)).tail);
    muc.deliver('alice', await encryptRoomMessage({ gk: own, kms: DOMAIN, chain: chainUri, from: alice.jid, room: ROOM, body: 'from here' }));
    await read(bob, 'from here');
  });

  it("checks <from/> against the occupant's real JID, and the chain's members at the key's block and, for a live message, now", async () => {
    const before = bob.refused.length;
    const gk = await lastSentKey(alice);
    // Carol, a member, writes a message that claims to be from Alice: the room says the occupant is Carol.
    muc.deliver('carol', await encryptRoomMessage({ gk, kms: DOMAIN, chain: chainUri, from: alice.jid, room: ROOM, body: 'I am alice' }));
    expect((await refusal(bob, before + 1)).code).to.equal('sender-mismatch');
    // A message from Dave under a key bound to a block where he is not a member (he was removed before it).
    muc.connection('dave', 'dave@example.com');
    muc.joined();
    muc.deliver('dave', await encryptRoomMessage({ gk, kms: DOMAIN, chain: chainUri, from: 'dave@example.com', room: ROOM, body: 'dave here' }));
    expect((await refusal(bob, before + 2)).code).to.equal('not-a-member');
    // Carol is removed; a live message from her under the key of a block where she was a member is refused...
    const old = gk;
    await alice.room.remove(['carol@example.com']);
    await bob.room.chain(); // the last block Bob knows is the one that removed Carol
    muc.deliver('carol', await encryptRoomMessage({ gk: old, kms: DOMAIN, chain: chainUri, from: carol.jid, room: ROOM, body: 'still here' }));
    const live = await refusal(bob, before + 3);
    expect(live.code).to.equal('not-a-member');
    expect(live.reason).to.match(/no longer a member/);
    // ...while the same message read from the archive is hers: she was a member at the key's block.
    const history = await bob.room.history();
    const archived = history.find((r) => r.ok && r.message.body === 'still here');
    expect(archived, 'the archived message from a former member').to.not.equal(undefined);
    const forged = history.filter((r) => !r.ok).map((r) => (r as { error: Undecryptable }).error.code);
    expect(forged).to.include.members(['sender-mismatch', 'not-a-member']);
  });

  describe('what a sender builds (src/client/muc.ts)', () => {
    const gk = (host = DOMAIN): GroupKey => ({ uri: `kms://${host}/gks/1`, created: '2026-11-23T09:20:07Z', block: 'ab'.repeat(32), key: Buffer.alloc(32, 7) });
    const chain = (host = DOMAIN) => `kms://${host}/blocks/1`;

    it('encrypts every message with a fresh random 96-bit IV', async () => {
      const ivs = await Promise.all(
        Array.from(
          { length: 500 },
          async () =>
            readEncrypted(await encryptRoomMessage({ gk: gk(), kms: DOMAIN, chain: chain(), from: 'alice@example.com', room: ROOM, body: 'same' }))!.jwe.split(
              '.',
            )[2]!,
        ),
      );
      for (const iv of ivs) expect(Buffer.from(iv, 'base64url')).to.have.length(12);
      expect(new Set(ivs).size).to.equal(ivs.length);
    });

    it('refuses to send under a group key or chain of another host than the kms attribute', async () => {
      const send = (k: GroupKey, c: string) =>
        encryptRoomMessage({ gk: k, kms: DOMAIN, chain: c, from: 'alice@example.com', room: ROOM, body: 'x' }).then(
          () => 'sent',
          (e: Error) => e.message,
        );
      expect(await send(gk(), chain())).to.equal('sent');
      expect(await send(gk('kms.example.org'), chain())).to.match(/must be served by kms\.example\.com/);
      expect(await send(gk(), chain('kms.example.org'))).to.match(/must be served by kms\.example\.com/);
    });

    it('reads a message whatever the length of its <rpad/>, none included', async () => {
      const k = gk();
      for (const rpad of [undefined, '', 'x', 'y'.repeat(10_000)]) {
        const envelope = xml(
          'envelope',
          { xmlns: NS_SCE },
          xml('content', {}, xml('body', { xmlns: NS_CLIENT }, 'padded')),
          ...(rpad === undefined ? [] : [xml('rpad', {}, rpad)]),
          xml('time', { stamp: new Date().toISOString() }),
          xml('from', { jid: 'alice@example.com' }),
          xml('to', { jid: ROOM }),
        );
        const jwe = encryptDir(Buffer.from(k.key), envelope.toString(), { enc: 'A256GCM', kid: k.uri });
        const opened = await openRoomMessage({ gk: k.uri, kms: DOMAIN, chain: chain(), jwe }, k, { room: ROOM, at: new Date() });
        expect(opened.body, `rpad of ${rpad?.length ?? 'none'}`).to.equal('padded');
      }
    });
  });
});
