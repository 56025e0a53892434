// Use case 3.2 of -03 end to end, on a real Prosody and a real ejabberd: people chat in a MUC room
// whose messages are encrypted with KMS group keys. The XMPP server, its MUC service and its
// archive carry only ciphertext; every byte between the clients, the server and the KMS component
// is recorded by loopback proxies (harness/wiretap.ts) and searched for plaintext and keys at the end.
import { expect } from 'chai';
import { X509Certificate, type KeyObject } from 'node:crypto';
import { importPrivateJwk } from '../../src/crypto/keys.js';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Client } from '@xmpp/client';
import { connectClient, disconnect } from './harness/clients.js';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';
import { startTestKms } from './harness/kms.js';
import { startWiretap, type Wiretap } from './harness/wiretap.js';
import type { RunningKms } from '../../src/server.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { EncryptedRoom, type RoomMessage, type Undecryptable } from '../../src/client/room.js';
import type { GroupKey } from '../../src/client/keys.js';
import { FALLBACK_BODY } from '../../src/client/muc.js';
import { until } from '../support/until.js';

const NAMES = ['alice', 'bob', 'carol', 'dave'] as const;
type Name = (typeof NAMES)[number];
const USERS = NAMES.map((u) => ({ username: u, password: `${u}-pw` }));
const jidOf = (n: Name) => `${n}@localhost`;

interface Device {
  name: Name;
  xmpp: Client;
  kms: KmsClient;
  room: EncryptedRoom;
  messages: RoomMessage[];
  refused: Undecryptable[];
  /** Members after each membership change the device learnt of. */
  memberships: string[][];
}

/** Every plaintext sent, and every key whose bytes must never cross the server. */
const secrets = { texts: new Set<string>(), keys: new Map<string, Buffer>() };

function remember(gk: GroupKey | undefined) {
  if (gk) secrets.keys.set(`group key ${gk.uri}`, Buffer.from(gk.key));
}

function privateScalar(key: KeyObject): Buffer {
  return Buffer.from(key.export({ format: 'jwk' }).d as string, 'base64url');
}

for (const kind of serverKinds()) {
  describe(`encrypted multi-user chat through the KMS on ${kind}`, function () {
    this.timeout(120_000);
    let server: XmppServer;
    /** Every byte between the clients and the server, and between the KMS component and the server. */
    let c2sTap: Wiretap;
    let componentTap: Wiretap;
    /** The server as the clients see it: its c2s port behind the wiretap. */
    let tapped: XmppServer;

    before(async () => {
      server = await startServer(kind);
      await server.registerUsers(USERS);
      c2sTap = await startWiretap(server.c2sPort);
      componentTap = await startWiretap(server.componentPort);
      tapped = Object.create(server, { c2sPort: { value: c2sTap.port } }) as XmppServer;
    });

    after(async () => {
      await c2sTap?.close();
      await componentTap?.close();
      await server?.stop();
    });

    for (const policy of [1, 2, 3] as const) {
      describe(`retrieval policy ${policy}`, function () {
        let kms: RunningKms;
        let dataDir: string;
        let anchors: X509Certificate[];
        const roomJid = `planning-p${policy}-${Date.now().toString(36)}@conference.localhost`;
        const devices = new Map<string, Device>();
        let chainUri: string;

        async function device(name: Name, label: string = name): Promise<Device> {
          const xmpp = await connectClient(tapped, USERS[NAMES.indexOf(name)]!);
          const token = await kms.issuer!.mint({ subject: jidOf(name), audience: 'kms://kms.localhost' });
          // Alice names her KMS; everyone else finds it with disco on their domain, by its feature.
          const client = await KmsClient.connect({ xmpp, ...(name === 'alice' ? { kms: 'kms.localhost' } : {}), anchors, bearer: () => token });
          expect(client.kmsJid).to.equal('kms.localhost');
          secrets.keys.set(`entity key of ${label}`, privateScalar(importPrivateJwk(client.entityKey.privateJwk)));
          const room = new EncryptedRoom({ xmpp, kms: client, room: roomJid, nick: label });
          const d: Device = { name, xmpp, kms: client, room, messages: [], refused: [], memberships: [] };
          room.on('membership', (c) => d.memberships.push([...c.members[c.members.length - 1]!].sort()));
          room.on('message', (m) => d.messages.push(m));
          room.on('undecryptable', (u) => d.refused.push(u));
          devices.set(label, d);
          return d;
        }
        const dev = (label: string) => devices.get(label)!;

        async function say(d: Device, text: string) {
          secrets.texts.add(text);
          await d.room.send(text);
          remember(d.room.sendKey);
        }

        const received = (d: Device, text: string) => until(`${d.name} to read "${text}"`, () => d.messages.find((m) => m.body === text));
        const refusedCount = (d: Device, n: number) => until(`${d.name} to refuse ${n} messages`, () => (d.refused.length >= n ? d.refused : undefined));

        /** The room's archive as the device reads it, once it holds `n` messages (archives may lag a little). */
        async function archived(d: Device, n: number) {
          const end = Date.now() + 10_000;
          for (;;) {
            const results = await d.room.history();
            if (results.length >= n || Date.now() > end) return results;
            await new Promise((r) => setTimeout(r, 200));
          }
        }

        before(async () => {
          ({ kms, dataDir } = await startTestKms(server, {
            componentPort: componentTap.port,
            dataPrefix: `kms-muc-p${policy}-`,
            tune: (c) => (c.policy = policy),
          }));
          anchors = [new X509Certificate(await readFile(join(dataDir, 'trust-anchor.pem')))];
          for (const name of ['alice', 'bob', 'carol'] as const) await device(name);
          // Alice joins first and so creates the room (instant, non-anonymous, persistent).
          for (const name of ['alice', 'bob', 'carol'] as const) await dev(name).room.join();
        });

        after(async () => {
          for (const d of devices.values()) {
            await d.room.leave();
            await d.kms.close();
            await disconnect(d.xmpp);
          }
          await kms?.stop();
          await rm(dataDir, { recursive: true, force: true });
        });

        it('Alice creates the chain with Bob and Carol and sends under a group key bound to it: Bob and Carol read it', async function () {
          const chain = await dev('alice').room.create([jidOf('bob'), jidOf('carol')]);
          chainUri = chain.uri;
          expect([...chain.members[0]!].sort()).to.deep.equal(['alice@localhost', 'bob@localhost', 'carol@localhost']);
          await say(dev('alice'), `p${policy}: the draft agenda is in the shared folder`);
          for (const name of ['bob', 'carol'] as const) {
            const m = await received(dev(name), `p${policy}: the draft agenda is in the shared folder`);
            expect(m.from).to.equal('alice@localhost');
            expect(m.senderVerified, 'the room shows real JIDs: the envelope sender is checked against it').to.equal(true);
            expect(m.block).to.equal(chain.tail);
          }
        });

        it('Alice removes Carol and sends again under a new group key: Bob reads it, the KMS refuses Carol the key', async function () {
          const before = dev('alice').room.sendKey!;
          const chain = await dev('alice').room.remove([jidOf('carol')]);
          await say(dev('alice'), `p${policy}: carol is no longer on the project`);
          const after = dev('alice').room.sendKey!;
          expect(after.uri).to.not.equal(before.uri);
          expect(after.block).to.equal(chain.tail);
          const m = await received(dev('bob'), `p${policy}: carol is no longer on the project`);
          expect(m.gk).to.equal(after.uri);
          // Bob learnt of the change from the message itself (a key bound to a block he had not seen).
          expect(dev('bob').memberships.at(-1)).to.deep.equal(['alice@localhost', 'bob@localhost']);
          const [refusal] = await refusedCount(dev('carol'), 1);
          expect(refusal!.code).to.equal('key-refused');
          expect(refusal!.reason).to.match(/carol@localhost may not have/);
          expect(dev('carol').messages.map((x) => x.body)).to.not.include(`p${policy}: carol is no longer on the project`);
          // Carol's client will not send under her old key either: she is not a member any more.
          await dev('carol')
            .room.send('let me back in')
            .then(
              () => expect.fail('Carol sent'),
              (e: Error) => expect(e.message).to.match(/no longer a member/),
            );
        });

        it(`Dave joins later: he reads new messages, and of the older history what policy ${policy} allows`, async function () {
          await dev('alice').room.add([jidOf('dave')]);
          const dave = await device('dave');
          await dave.room.join();
          await say(dev('alice'), `p${policy}: welcome dave`);
          await received(dave, `p${policy}: welcome dave`);
          const results = await archived(dave, 3);
          const readable = results.filter((r) => r.ok).map((r) => (r as { message: RoomMessage }).message.body);
          const refused = results.filter((r) => !r.ok).map((r) => (r as { error: Undecryptable }).error);
          expect(results).to.have.length(3);
          // Policy 2 (member now): the whole history. Policies 1 and 3 (member at the key's block): only since he joined.
          const expected =
            policy === 2
              ? [`p${policy}: the draft agenda is in the shared folder`, `p${policy}: carol is no longer on the project`, `p${policy}: welcome dave`]
              : [`p${policy}: welcome dave`];
          expect(readable).to.deep.equal(expected);
          for (const r of refused) expect(r.code).to.equal('key-refused');
        });

        it('Carol, on a new device without cached keys, reads of the archive what the policy still allows a former member', async function () {
          const carol2 = await device('carol', 'carol-tablet');
          await carol2.room.join();
          const results = await archived(carol2, 3);
          const readable = results.filter((r) => r.ok).map((r) => (r as { message: RoomMessage }).message.body);
          // Policy 1 (member at the key's block): the message from while she was a member. Policies 2 and 3 (member now): nothing.
          expect(readable).to.deep.equal(policy === 1 ? [`p${policy}: the draft agenda is in the shared folder`] : []);
        });

        it('Bob on a second device reads the whole archived history', async function () {
          const bob2 = await device('bob', 'bob-phone');
          await bob2.room.join();
          const results = await archived(bob2, 3);
          expect(
            results.every((r) => r.ok),
            JSON.stringify(results.filter((r) => !r.ok)),
          ).to.equal(true);
          const messages = results.map((r) => (r as { message: RoomMessage }).message);
          expect(messages.map((m) => m.body)).to.deep.equal([
            `p${policy}: the draft agenda is in the shared folder`,
            `p${policy}: carol is no longer on the project`,
            `p${policy}: welcome dave`,
          ]);
          expect(messages.every((m) => m.archived && m.from === 'alice@localhost')).to.equal(true);
          // Three messages under three group keys (one per membership state), each fetched once.
          expect(new Set(messages.map((m) => m.gk)).size).to.equal(3);
          expect(chainUri).to.be.a('string');
        });
      });
    }

    // Last (mocha runs a describe's own tests before its nested ones): after every scenario above.
    describe('the capture of all traffic', function () {
      it('no byte between the clients, the server and the KMS component carried a plaintext or a key', function () {
        expect(c2sTap.bytes()).to.be.greaterThan(10_000);
        expect(componentTap.bytes()).to.be.greaterThan(10_000);
        const all = `${c2sTap.text()}\n${componentTap.text()}`;
        // The ciphertext is there (the test would be vacuous if the capture had missed the messages).
        expect(all).to.match(/<encrypted xmlns=["']urn:xmpp:kms:0["'] gk=/);
        // What is sent in clear is seen in clear: the fallback body of every message.
        expect(all).to.contain(FALLBACK_BODY);
        expect(secrets.texts.size).to.be.at.least(9);
        for (const text of secrets.texts) expect(all.includes(text), `plaintext "${text}" crossed the server`).to.equal(false);
        expect(secrets.keys.size).to.be.at.least(9);
        for (const [what, key] of secrets.keys) {
          for (const encoded of [key.toString('base64url'), key.toString('base64'), key.toString('hex')]) {
            expect(all.includes(encoded), `${what} crossed the server`).to.equal(false);
          }
        }
      });
    });
  });
}
