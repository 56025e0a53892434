// The KMS component on a real Prosody and a real ejabberd: every KMS operation over real stanzas,
// batches, the XMPP error table, hostile stanzas, and a server restart in the middle of traffic.
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { xml, type Client } from '@xmpp/client';
import type { Element } from '@xmpp/xml';
import { connectClient, disconnect } from './harness/clients.js';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';
import { startTestKms } from './harness/kms.js';
import { startKms, type RunningKms } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { isRetryable } from '../../src/protocol/errors.js';
import { fetchKmsIdentity, xmppTransport, KmsStanzaError, type KmsIdentityInfo } from '../../src/client/xmpp.js';
import { KmsSession } from '../../src/client/session.js';
import { generateEntityKey, openGk, registrationProof, type EntityKey } from '../support/node-client.js';
import { verifyChain } from '../../src/client/chain.js';
import { entityKeyFromJwk } from '../../src/client/keys.js';
import type { JWK } from '../../src/client/webcrypto.js';
import { blockHash, jwkOf, signBlock } from '../support/node-client.js';
import { importPublicJwk } from '../../src/crypto/keys.js';
import { NS } from '../../src/protocol/namespace.js';
import { STANZA_ERRORS } from '../../src/protocol/stanza-errors.js';

const USERS = ['alice', 'bob', 'carol'].map((u) => ({ username: u, password: `${u}-pw` }));

interface Person {
  jid: string;
  xmpp: Client;
  session: KmsSession;
  key: EntityKey;
}

for (const kind of serverKinds()) {
  describe(`KMS component on ${kind}`, function () {
    this.timeout(120_000);
    let server: XmppServer;
    let kms: RunningKms;
    let dataDir: string;
    let anchors: X509Certificate[];
    let identity: KmsIdentityInfo;
    const people: Person[] = [];

    async function person(i: number): Promise<Person> {
      const u = USERS[i]!;
      const jid = `${u.username}@localhost`;
      const xmpp = await connectClient(server, u);
      const token = await kms.issuer!.mint({ subject: jid, audience: 'kms://kms.localhost' });
      const session = new KmsSession({ kmsKid: identity.kid, kmsKey: identity.key, transport: xmppTransport(xmpp, 'kms.localhost'), bearer: () => token });
      return { jid, xmpp, session, key: generateEntityKey() };
    }

    async function raw(p: Person, child: Element, type: 'get' | 'set' = 'set'): Promise<Element> {
      return p.xmpp.iqCaller.request(xml('iq', { type, to: 'kms.localhost' }, child), 10_000);
    }

    async function stanzaErrorOf(p: Person, child: Element, type: 'get' | 'set' = 'set'): Promise<KmsStanzaError | Error> {
      try {
        await xmppTransport({ iqCaller: { request: () => raw(p, child, type) } }, 'kms.localhost')([]);
      } catch (e) {
        return e as Error;
      }
      throw new Error('expected a stanza error');
    }

    /**
     * After the server came back: the people log in again (their old sessions died with it) and
     * Alice pings until the component, which reconnects by itself, answers; false after 30 s from `since`.
     */
    async function answersAgain(since: number): Promise<boolean> {
      for (const p of people) await disconnect(p.xmpp).catch(() => undefined);
      people.length = 0;
      for (let i = 0; i < USERS.length; i++) people.push(await person(i));
      while (Date.now() - since < 30_000) {
        try {
          await people[0]!.session.request('update', '/ping');
          return true;
        } catch {
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      return false;
    }

    before(async () => {
      server = await startServer(kind);
      await server.registerUsers(USERS);
      ({ kms, dataDir } = await startTestKms(server, {
        tune: (c) => {
          c.xmpp.ratePerSec = 100;
          c.xmpp.rateBurst = 200;
          c.xmpp.reconnectInitialMs = 200;
          c.xmpp.reconnectMaxMs = 1000;
        },
      }));
      anchors = [new X509Certificate(await readFile(join(dataDir, 'trust-anchor.pem')))];
      const first = await connectClient(server, USERS[0]!);
      identity = await fetchKmsIdentity(first, 'kms.localhost', anchors);
      await disconnect(first);
      for (let i = 0; i < USERS.length; i++) people.push(await person(i));
    });

    after(async () => {
      for (const p of people) await disconnect(p.xmpp).catch(() => undefined);
      await kms?.stop();
      await server?.stop();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    });

    it('answers disco#info with its identity, features and limits', async () => {
      const reply = await raw(people[0]!, xml('query', { xmlns: 'http://jabber.org/protocol/disco#info' }), 'get');
      const q = reply.getChild('query')!;
      expect(q.getChild('identity')!.attrs).to.include({ category: 'component', type: 'generic' });
      expect(q.getChildren('feature').map((f) => f.attrs.var)).to.include(NS);
      expect(
        q
          .getChild('x')!
          .getChildren('field')
          .find((f) => f.attrs.var === 'max-messages')!
          .getChildText('value'),
      ).to.equal('16');
      expect(
        q
          .getChild('x')!
          .getChildren('field')
          .find((f) => f.attrs.var === 'max-reply-size')!
          .getChildText('value'),
      ).to.equal(String(512 * 1024));
    });

    it('publishes a static key that validates to the trust anchor, and refuses it without the anchor', async () => {
      expect(identity.kid).to.equal('kms://kms.localhost');
      let refused: Error | undefined;
      try {
        await fetchKmsIdentity(people[0]!.xmpp, 'kms.localhost', []);
      } catch (e) {
        refused = e as Error;
      }
      expect(refused?.message).to.match(/anchor/);
    });

    it('runs every KMS operation over real stanzas', async () => {
      const [alice, bob, carol] = people as [Person, Person, Person];
      for (const p of people) {
        const eph = await p.session.handshake();
        await p.session.request('post', '/entity-keys', { jwk: p.key.publicJwk, proof: registrationProof(p.key, p.jid, eph.uri) });
      }
      expect((await alice.session.request('update', '/ping')).status).to.equal(200);
      const genesis = (
        await alice.session.request('post', 'kms://kms.localhost/blocks', {
          blockPayload: {
            operations: [
              { entity: alice.jid, optype: 'add' },
              { entity: bob.jid, optype: 'add' },
            ],
          },
        })
      ).block as string;
      const chainUri = JSON.parse(Buffer.from(genesis.split('.')[1]!, 'base64url').toString()).uri as string;
      const gk = openGk((await alice.session.request('post', 'kms://kms.localhost/gks')).gk as string, identity.key, alice.key);
      const b1 = signBlock(alice.key, alice.jid, blockHash(genesis), [{ entity: carol.jid, optype: 'add' }]);
      expect((await alice.session.request('post', chainUri, { blocks: [b1] })).status).to.equal(200);
      const bound = openGk((await alice.session.request('post', gk.uri, { block: blockHash(b1) })).gk as string, identity.key, alice.key);
      expect(bound.block).to.equal(blockHash(b1));
      for (const p of [bob, carol]) {
        const got = openGk((await p.session.request('get', gk.uri, { entity: p.jid })).gk as string, identity.key, p.key);
        expect(got.key.equals(gk.key)).to.equal(true);
      }
      const blocks = (await carol.session.request('get', chainUri)).blocks as string[];
      const keysOf = async (entity: string) =>
        ((await carol.session.request('get', `/entity-keys/${entity}`)).entityKeys as { kid: string; jwk: unknown }[]).map((k) => ({
          kid: k.kid,
          key: jwkOf(importPublicJwk(k.jwk)),
        }));
      const verified = await verifyChain(blocks, { kmsKey: identity.key, kmsId: identity.kid, keysOf });
      expect([...verified.members[1]!].sort()).to.deep.equal([alice.jid, bob.jid, carol.jid]);
    });

    it('answers a batch of several messages in one IQ, in order', async () => {
      const res = await people[1]!.session.batch([
        { method: 'update', uri: '/ping' },
        { method: 'get', uri: 'kms://kms.localhost/gks/00000000-0000-0000-0000-000000000000', body: { entity: people[1]!.jid } },
        { method: 'get', uri: '/nowhere' },
      ]);
      expect(res.map((r) => r.status)).to.deep.equal([200, 404, 404]);
    });

    it('reads a chain far larger than one stanza through the client library, in pages, and stays online', async () => {
      // 30 blocks of about 44 KB (1.3 MB) would make one get-chain response of 1.76 MB,
      // over both servers' 1 MiB stanza limit for components: the server would close the
      // component's stream, losing every request in flight. In pages, no reply exceeds
      // max-reply-size (512 KiB) and the component stays online.
      const [alice, bob] = people as [Person, Person];
      const clientOf = async (p: Person) => {
        const token = await kms.issuer!.mint({ subject: p.jid, audience: 'kms://kms.localhost' });
        return KmsClient.connect({
          xmpp: p.xmpp,
          kms: 'kms.localhost',
          anchors,
          bearer: () => token,
          entityKey: await entityKeyFromJwk(p.key.privateJwk as JWK),
        });
      };
      const writer = await clientOf(alice);
      const { uri } = await writer.createChain([bob.jid]);
      // 31 operations on a member with a 1000-character name ("add" of a member changes nothing):
      // a block of about 44 KB, appended in a message under the 64 KiB limit.
      const ops = Array.from({ length: 31 }, () => ({ entity: `${'p'.repeat(1000)}@localhost`, optype: 'add' as const }));
      for (let i = 0; i < 30; i++) await writer.append(uri, ops);

      const reader = await clientOf(bob);
      const component = kms.component!.xmpp;
      const replies: number[] = [];
      let drops = 0;
      const onSend = (el: Element) => {
        if (el.is('iq') && el.attrs.to === bob.xmpp.jid!.toString()) replies.push(Buffer.byteLength(el.toString()));
      };
      const onDisconnect = () => drops++;
      component.on('send', onSend);
      component.on('disconnect', onDisconnect);
      try {
        const view = await reader.chain(uri);
        expect(view.hashes).to.have.length(31);
        expect(
          view.blocks.slice(1).every((b) => b.length > 43_000 && b.length < 45_000),
          'blocks of about 44 KB',
        ).to.equal(true);
        expect(view.blocks.reduce((n, b) => n + b.length, 0)).to.be.greaterThan(1.3e6);
        expect(view.tail).to.equal((await writer.chain(uri)).tail);
        // In a full IQ, a page leaves 8 KiB for each of the 15 messages after it (pings here).
        const batch = await bob.session.batch([{ method: 'get', uri }, ...Array.from({ length: 15 }, () => ({ method: 'update', uri: '/ping' }))]);
        expect(batch[0]).to.include({ status: 200, more: true });
        expect((batch[0]!.blocks as string[]).length).to.be.within(1, 30);
        expect(batch.slice(1).map((r) => r.status)).to.deep.equal(Array(15).fill(200));
        // Still online, on the same stream: a ping answers.
        expect((await reader.ping()).status).to.equal(200);
      } finally {
        component.off('send', onSend);
        component.off('disconnect', onDisconnect);
      }
      expect(drops, 'the component kept its stream').to.equal(0);
      expect(component.status).to.equal('online');
      // Each reply within max-reply-size; the chain came in several full pages.
      expect(Math.max(...replies)).to.be.at.most(512 * 1024);
      expect(replies.filter((n) => n > 400 * 1024).length, 'full pages').to.be.at.least(3);
    });

    it('answers each IQ exactly once (no second, automatic error reply from the XMPP library)', async () => {
      const p = people[1]!;
      const seen: Element[] = [];
      const listen = (el: Element) => {
        if (el.is('iq') && (el.attrs.from ?? '') === 'kms.localhost') seen.push(el);
      };
      p.xmpp.on('stanza', listen);
      try {
        await p.session.request('update', '/ping');
        await raw(p, xml('identity', { xmlns: NS }), 'get');
        await new Promise((r) => setTimeout(r, 500)); // time for a duplicate to arrive
      } finally {
        p.xmpp.off('stanza', listen);
      }
      expect(seen.map((el) => el.attrs.type)).to.deep.equal(['result', 'result']);
      expect(new Set(seen.map((el) => el.attrs.id)).size).to.equal(2);
    });

    it('refuses bad payloads with the stanza errors of the table', async () => {
      const p = people[2]!;
      const cases: [string, Element, 'get' | 'set'][] = [
        ['unknown-payload', xml('bogus', { xmlns: NS }), 'set'],
        ['malformed-payload', xml('kms', { xmlns: NS }), 'set'],
        ['malformed-payload', xml('kms', { xmlns: NS }, xml('message', {}, 'not jose at all')), 'set'],
        ['malformed-payload', xml('kms', { xmlns: NS }, xml('message', {}, 'a.b.c')), 'get'],
        ['malformed-payload', xml('identity', { xmlns: NS }), 'set'],
        // XEP "Transport of KMS Messages": a message is 3 (JWS) or 5 (JWE) parts, and carries no attributes.
        ['malformed-payload', xml('kms', { xmlns: NS }, xml('message', {}, 'a.b.c.d')), 'set'],
        ['malformed-payload', xml('kms', { xmlns: NS }, xml('message', {}, 'a.b.c.d.e.f')), 'set'],
        ['malformed-payload', xml('kms', { xmlns: NS }, xml('message', { id: '1' }, 'a.b.c')), 'set'],
        ['too-many-messages', xml('kms', { xmlns: NS }, ...Array.from({ length: 17 }, () => xml('message', {}, 'a.b.c'))), 'set'],
        ['payload-too-large', xml('kms', { xmlns: NS }, xml('message', {}, `a.${'b'.repeat(70_000)}.c`)), 'set'],
      ];
      for (const [key, child, type] of cases) {
        const e = await stanzaErrorOf(p, child, type);
        expect(e, key).to.be.instanceOf(KmsStanzaError);
        expect((e as KmsStanzaError).key, key).to.equal(key);
        expect((e as KmsStanzaError).condition, key).to.equal(STANZA_ERRORS[key as keyof typeof STANZA_ERRORS].condition);
      }
      // RFC 6120 §8.4: a namespace the component does not serve is service-unavailable.
      const foreign = await stanzaErrorOf(p, xml('query', { xmlns: 'urn:example:nothing' }), 'set');
      expect((foreign as KmsStanzaError).condition).to.equal('service-unavailable');
      expect((foreign as KmsStanzaError).key).to.equal(undefined);
      // A KMS-level failure is a KMS response, not a stanza error.
      const [signed] = await xmppTransport(p.xmpp, 'kms.localhost')(['eyJhbGciOiJub25lIn0.e30.']);
      expect(signed!.split('.')).to.have.length(3);
    });

    it('retries a KmsClient request made while the component is away, which succeeds once the component is back', async () => {
      // What each server answers for an IQ to the component while it is not connected (recorded on
      // Prosody 0.12 and ejabberd 23.01 with the harness's configs, where ejabberd has no s2s).
      const AWAY = {
        prosody: { type: 'wait', condition: 'remote-server-timeout' },
        ejabberd: { type: 'auth', condition: 'forbidden' },
      } as const;
      const p = people[0]!;
      const token = await kms.issuer!.mint({ subject: p.jid, audience: 'kms://kms.localhost' });
      const client = await KmsClient.connect({
        xmpp: p.xmpp,
        kms: 'kms.localhost',
        anchors,
        bearer: () => token,
        entityKey: await entityKeyFromJwk(p.key.privateJwk as JWK),
        retries: 40,
        backoffMs: 100,
        maxBackoffMs: 500,
      });
      const away: Element[] = [];
      const listen = (el: Element) => {
        if (el.is('iq') && el.attrs.type === 'error' && el.attrs.from === 'kms.localhost') away.push(el.getChild('error')!);
      };
      p.xmpp.on('stanza', listen);
      try {
        const config = kms.config;
        await kms.stop();
        const t0 = Date.now();
        const ping = client.ping();
        ping.catch(() => undefined); // awaited below, once the component is back
        while (away.length === 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
        expect(away.length, `${kind} answered for the absent component`).to.be.at.least(1);
        kms = await startKms(config, silentLogger());
        expect((await ping).status).to.equal(200);
        const answer = away[0]!;
        const condition = answer.getChildElements().find((c) => c.getNS() === 'urn:ietf:params:xml:ns:xmpp-stanzas' && c.name !== 'text')?.name;
        expect({ type: answer.attrs.type, condition }, answer.toString()).to.deep.equal(AWAY[kind]);
        expect(isRetryable('STANZA_ERROR', { type: answer.attrs.type!, fromKms: false })).to.equal(true);
      } finally {
        p.xmpp.off('stanza', listen);
        await client.close();
      }
    });

    it('survives hostile stanzas and rate-limits a flood from one sender', async () => {
      // Hostile stanzas from a throwaway connection: the server may well close it for them.
      const hostile = await person(2);
      let nested = xml('x', { xmlns: 'urn:example:deep' });
      for (let i = 0; i < 200; i++) nested = xml('x', {}, nested);
      await raw(hostile, xml('kms', { xmlns: NS }, xml('message', {}, nested)), 'set').catch(() => undefined);
      await raw(hostile, xml('kms', { xmlns: NS }, xml('message', {}, '\u0001\u0002junk\uFFFD')), 'set').catch(() => undefined);
      await hostile.xmpp
        .write('<iq type="set" to="kms.localhost" id="junk"><kms xmlns="urn:xmpp:kms:0"><message>\u0000\u0007</message></kms></iq>')
        .catch(() => undefined);
      await disconnect(hostile.xmpp).catch(() => undefined);
      const p = people[0]!;
      // The flood: 20 IQs of 16 messages at once, over the 200-message burst.
      const flood = await Promise.allSettled(
        Array.from({ length: 20 }, () => xmppTransport(p.xmpp, 'kms.localhost')(Array.from({ length: 16 }, () => 'eyJhbGciOiJub25lIn0.e30.'))),
      );
      const limited = flood.filter((r) => r.status === 'rejected' && (r.reason as KmsStanzaError).key === 'rate-limited');
      expect(limited.length).to.be.greaterThan(0);
      expect(flood.filter((r) => r.status === 'fulfilled').length).to.be.greaterThan(0);
      await new Promise((r) => setTimeout(r, 2500));
      expect((await p.session.request('update', '/ping')).status).to.equal(200);
    });

    it('comes back after the server is killed and restarted, with every acknowledged request stored', async () => {
      const alice = people[0]!;
      const genesis = (
        await alice.session.request('post', 'kms://kms.localhost/blocks', {
          blockPayload: { operations: [{ entity: alice.jid, optype: 'add' }] },
        })
      ).block as string;
      const chainUri = JSON.parse(Buffer.from(genesis.split('.')[1]!, 'base64url').toString()).uri as string;
      let tail = blockHash(genesis);
      const acknowledged: string[] = [];
      // Traffic while the server dies: appends in a loop until failures begin.
      const traffic = (async () => {
        for (let i = 0; i < 200; i++) {
          const b = signBlock(alice.key, alice.jid, tail, [{ entity: `n${i}@localhost`, optype: 'add' }]);
          try {
            await alice.session.request('post', chainUri, { blocks: [b] });
          } catch {
            return;
          }
          acknowledged.push(b);
          tail = blockHash(b);
        }
      })();
      await new Promise((r) => setTimeout(r, 300));
      await server.kill();
      await traffic;
      const t0 = Date.now();
      await server.start();
      expect(await answersAgain(t0), 'component answers within 30 s of the restart').to.equal(true);
      const blocks = (await people[0]!.session.request('get', chainUri)).blocks as string[];
      expect(acknowledged.length).to.be.greaterThan(0);
      expect(blocks.slice(1, 1 + acknowledged.length)).to.deep.equal(acknowledged);
    });

    it('keeps reconnecting through a server that accepts the connection but never opens the stream', async () => {
      // A server still starting up, or wedged: TCP connects, the stream header is never answered,
      // so xmpp.js's open times out without a disconnect. The component must drop that connection
      // and try again, not wait on it for ever.
      await server.kill();
      const accepted: Socket[] = [];
      let closedByComponent = 0;
      const silent = createServer((s) => {
        accepted.push(s);
        s.on('close', () => closedByComponent++);
        s.resume();
      });
      await new Promise<void>((r) => silent.listen(server.componentPort, '127.0.0.1', r));
      try {
        const t0 = Date.now();
        while (accepted.length < 2 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 100));
        expect(accepted.length, 'connections the component made to the silent server in 20 s').to.be.at.least(2);
        // Each connection given up is closed by the component (the silent server never closes one).
        expect(closedByComponent, 'connections the component closed').to.be.at.least(1);
      } finally {
        for (const s of accepted) s.destroy();
        await new Promise((r) => silent.close(r));
        await server.start();
      }
      expect(await answersAgain(Date.now()), 'component answers within 30 s of the real server starting').to.equal(true);
    });
  });
}
