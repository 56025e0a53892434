// The transport under KMS federation: two XMPP domains on two real servers (a.test on Prosody,
// b.test on Prosody or ejabberd) joined by server-to-server links over STARTTLS with certificates
// from a test CA. Checks user chat, component-to-component IQs (kms.a.test <-> kms.b.test), a
// remote user in a MUC room, that the links are authenticated by certificate, and that a peer
// with a certificate from another CA is refused. Needs root (the harness writes /etc/hosts).
import { expect } from 'chai';
import { xml, type Client } from '@xmpp/client';
import type { Component } from '@xmpp/component';
import type { Element } from '@xmpp/xml';

import { disconnect } from './harness/clients.js';
import {
  connectFederatedClient,
  connectFederatedComponent,
  federationPairs,
  startFederation,
  type Domain,
  type DomainName,
  type Federation,
} from './harness/federation.js';
import { until } from '../support/until.js';

const MUC_NS = 'http://jabber.org/protocol/muc';
const MUC_USER_NS = 'http://jabber.org/protocol/muc#user';
const MAM_NS = 'urn:xmpp:mam:2';
const FORWARD_NS = 'urn:xmpp:forward:0';
const PROBE_NS = 'urn:xmpp-kms:test:federation-probe';
const ALICE = { username: 'alice', password: 'alice-secret' };
const BOB = { username: 'bob', password: 'bob-secret' };

/** Records every stanza an entity receives. */
function record(entity: Client | Component): Element[] {
  const seen: Element[] = [];
  entity.on('stanza', (stanza: Element) => seen.push(stanza));
  return seen;
}

/** The number of lines of the domain's logs that match `pattern`. */
async function logMatches(domain: Domain, pattern: RegExp): Promise<string[]> {
  return (await domain.readLogs()).split('\n').filter((line) => pattern.test(line));
}

/** Polls the logs until `pattern` matches; returns the matching lines. */
async function untilLogged(domain: Domain, pattern: RegExp, timeoutMs = 10_000): Promise<string[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const lines = await logMatches(domain, pattern);
    if (lines.length > 0) return lines;
    if (Date.now() > end) throw new Error(`no line matching ${pattern} in the ${domain.kind} log of ${domain.name} (${domain.logFiles.join(', ')})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Log lines showing that `peer` authenticated an s2s stream to `domain` by its certificate (SASL EXTERNAL). */
function inboundCertAuth(domain: Domain, peer: string): RegExp {
  const p = peer.replace(/\./g, '\\.');
  const d = domain.name.replace(/\./g, '\\.');
  return domain.kind === 'prosody'
    ? new RegExp(`Accepting SASL EXTERNAL identity from ${p}$`)
    : new RegExp(`Accepted inbound s2s EXTERNAL authentication ${p} -> ${d}\\b`);
}

for (const pair of federationPairs()) {
  describe(`federation transport (${pair}: a.test on Prosody, b.test on ${pair.split('-')[1]})`, function () {
    this.timeout(30_000);
    let fed: Federation;
    let alice: Client;
    let bob: Client;
    let aliceInbox: Element[];
    let bobInbox: Element[];
    const entities: (Client | Component)[] = [];

    before(async function () {
      this.timeout(120_000);
      fed = await startFederation(pair);
      await fed.a.registerUsers([ALICE]);
      await fed.b.registerUsers([BOB]);
      alice = await connectFederatedClient(fed.a, ALICE);
      entities.push(alice);
      bob = await connectFederatedClient(fed.b, BOB);
      entities.push(bob);
      aliceInbox = record(alice);
      bobInbox = record(bob);
      await alice.send(xml('presence'));
      await bob.send(xml('presence'));
    });

    after(async function () {
      this.timeout(60_000);
      await Promise.all(entities.map((e) => disconnect(e)));
      await fed?.stop();
    });

    it('delivers a chat message from alice@a.test to bob@b.test and the reply back', async () => {
      const text = `hello from a.test ${Date.now()}`;
      await alice.send(xml('message', { to: 'bob@b.test', type: 'chat', id: 'm1' }, xml('body', {}, text)));
      const got = await until('the message at bob@b.test', () => bobInbox.find((s) => s.is('message') && s.getChildText('body') === text), 20_000);
      expect(String(got.attrs.from)).to.match(/^alice@a\.test\//);

      const reply = `hello back from b.test ${Date.now()}`;
      await bob.send(xml('message', { to: String(got.attrs.from), type: 'chat' }, xml('body', {}, reply)));
      const back = await until('the reply at alice@a.test', () => aliceInbox.find((s) => s.is('message') && s.getChildText('body') === reply), 20_000);
      expect(String(back.attrs.from)).to.match(/^bob@b\.test\//);
      expect(aliceInbox.filter((s) => s.attrs.type === 'error')).to.deep.equal([]);
    });

    it('routes an IQ from the component kms.a.test to the component kms.b.test and its result back (KMS to KMS)', async () => {
      const kmsA = await connectFederatedComponent(fed.a);
      entities.push(kmsA);
      const kmsB = await connectFederatedComponent(fed.b);
      entities.push(kmsB);
      const askedBy: string[] = [];
      kmsB.iqCallee.get(PROBE_NS, 'probe', (ctx) => {
        askedBy.push(String(ctx.stanza.attrs.from));
        return xml('probe', { xmlns: PROBE_NS, answeredBy: 'kms.b.test', echo: ctx.element.attrs.nonce });
      });
      const nonce = Math.random().toString(36).slice(2);
      const result = await kmsA.iqCaller.request(
        xml('iq', { type: 'get', from: 'kms.a.test', to: 'kms.b.test', id: `probe-${nonce}` }, xml('probe', { xmlns: PROBE_NS, nonce })),
        20_000,
      );
      expect(result.attrs.type).to.equal('result');
      expect(result.attrs.from).to.equal('kms.b.test');
      const probe = result.getChild('probe', PROBE_NS);
      expect(probe?.attrs.answeredBy).to.equal('kms.b.test');
      expect(probe?.attrs.echo).to.equal(nonce);
      expect(askedBy).to.deep.equal(['kms.a.test']);

      // And the other way round, over the b.test -> a.test link.
      kmsA.iqCallee.get(PROBE_NS, 'probe', () => xml('probe', { xmlns: PROBE_NS, answeredBy: 'kms.a.test' }));
      const back = await kmsB.iqCaller.request(xml('iq', { type: 'get', from: 'kms.b.test', to: 'kms.a.test' }, xml('probe', { xmlns: PROBE_NS })), 20_000);
      expect(back.getChild('probe', PROBE_NS)?.attrs.answeredBy).to.equal('kms.a.test');
    });

    it('lets bob@b.test join a room on conference.a.test and receive alice’s groupchat message, live and from the room archive', async () => {
      const room = `fed-${Date.now()}@${fed.a.mucDomain}`;
      const selfPresence = (inbox: Element[], nick: string) => () =>
        inbox.find(
          (s) =>
            s.is('presence') &&
            s.attrs.from === `${room}/${nick}` &&
            s.attrs.type !== 'error' &&
            (s
              .getChild('x', MUC_USER_NS)
              ?.getChildren('status')
              .some((st) => st.attrs.code === '110') ??
              false),
        );
      await alice.send(xml('presence', { to: `${room}/alice` }, xml('x', { xmlns: MUC_NS })));
      await until('alice in the room', selfPresence(aliceInbox, 'alice'), 10_000);
      await bob.send(xml('presence', { to: `${room}/bob` }, xml('x', { xmlns: MUC_NS }, xml('history', { maxstanzas: '0' }))));
      await until(
        'bob@b.test in the room on conference.a.test',
        () => {
          const error = bobInbox.find((s) => s.is('presence') && s.attrs.from === `${room}/bob` && s.attrs.type === 'error');
          if (error) throw new Error(`bob could not join: ${error.toString()}`);
          return selfPresence(bobInbox, 'bob')();
        },
        20_000,
      );
      const text = `groupchat ${Date.now()}`;
      await alice.send(xml('message', { to: room, type: 'groupchat' }, xml('body', {}, text)));
      const got = await until(
        'the groupchat message at bob@b.test',
        () => bobInbox.find((s) => s.is('message') && s.attrs.type === 'groupchat' && s.getChildText('body') === text),
        20_000,
      );
      expect(got.attrs.from).to.equal(`${room}/alice`);

      // The room's archive (MAM on conference.a.test) answers bob@b.test across the link too.
      const queryid = `q${Date.now()}`;
      const fin = await bob.iqCaller.request(xml('iq', { type: 'set', to: room }, xml('query', { xmlns: MAM_NS, queryid })), 20_000);
      expect(fin.getChild('fin', MAM_NS)).to.not.equal(undefined);
      const archived = bobInbox
        .filter((s) => s.is('message') && s.getChild('result', MAM_NS)?.attrs.queryid === queryid)
        .map((s) => s.getChild('result', MAM_NS)?.getChild('forwarded', FORWARD_NS)?.getChild('message')?.getChildText('body'));
      expect(archived).to.include(text);
    });

    it('authenticates both s2s directions by certificate over TLS (SASL EXTERNAL, no dialback)', async () => {
      // The tests above sent stanzas both ways, so both links exist by now.
      const aSawB = await untilLogged(fed.a, inboundCertAuth(fed.a, 'b.test'));
      const bSawA = await untilLogged(fed.b, inboundCertAuth(fed.b, 'a.test'));
      expect(aSawB.length).to.be.greaterThan(0);
      expect(bSawA.length).to.be.greaterThan(0);
      // No dialback anywhere: dialback would accept a peer without a valid certificate.
      expect(await logMatches(fed.a, /dialback/i)).to.deep.equal([]);
      expect(await logMatches(fed.b, /dialback/i)).to.deep.equal([]);
    });
  });
}

/** Log lines the refusing server writes, for the incoming and the outgoing link, when the peer's certificate does not verify. */
function refusedCert(domain: Domain, peer: string): RegExp[] {
  const p = peer.replace(/\./g, '\\.');
  const d = domain.name.replace(/\./g, '\\.');
  return domain.kind === 'prosody'
    ? [
        new RegExp(`s2sin\\S*\\s+warn\\s+Forbidding insecure connection to/from ${p} because its certificate is not trusted`),
        new RegExp(`s2sout\\S*\\s+warn\\s+Forbidding insecure connection to/from ${p} because its certificate is not trusted`),
      ]
    : [
        new RegExp(`Failed inbound s2s EXTERNAL authentication ${p} -> ${d} .*: unable to verify the first certificate`),
        new RegExp(`Failed to establish outbound s2s connection ${d} -> ${p}: Peer certificate rejected: unable to verify the first certificate`),
      ];
}

for (const pair of federationPairs()) {
  for (const rogue of ['b.test', 'a.test'] satisfies DomainName[]) {
    const honest = rogue === 'a.test' ? 'b.test' : 'a.test';
    describe(`federation transport (${pair}): ${rogue} with a certificate from another CA`, function () {
      this.timeout(30_000);
      let fed: Federation;
      const entities: Client[] = [];

      before(async function () {
        this.timeout(120_000);
        fed = await startFederation(pair, { certFromOtherCa: rogue });
        await fed.a.registerUsers([ALICE]);
        await fed.b.registerUsers([BOB]);
      });

      after(async function () {
        this.timeout(60_000);
        await Promise.all(entities.map((e) => disconnect(e)));
        await fed?.stop();
      });

      it(`is refused by ${honest} in both directions: chat messages bounce, nothing arrives`, async () => {
        const alice = await connectFederatedClient(fed.a, ALICE);
        entities.push(alice);
        const bob = await connectFederatedClient(fed.b, BOB);
        entities.push(bob);
        const aliceInbox = record(alice);
        const bobInbox = record(bob);
        await alice.send(xml('message', { to: 'bob@b.test', type: 'chat', id: 'a-to-b' }, xml('body', {}, 'must not arrive')));
        await bob.send(xml('message', { to: 'alice@a.test', type: 'chat', id: 'b-to-a' }, xml('body', {}, 'must not arrive')));
        const bounceA = await until(
          'the error bounce at alice',
          () => aliceInbox.find((s) => s.is('message') && s.attrs.id === 'a-to-b' && s.attrs.type === 'error'),
          25_000,
        );
        const bounceB = await until(
          'the error bounce at bob',
          () => bobInbox.find((s) => s.is('message') && s.attrs.id === 'b-to-a' && s.attrs.type === 'error'),
          25_000,
        );
        expect(bounceA.attrs.from).to.equal('bob@b.test');
        expect(bounceB.attrs.from).to.equal('alice@a.test');
        expect(aliceInbox.filter((s) => s.is('message') && s.attrs.type !== 'error')).to.deep.equal([]);
        expect(bobInbox.filter((s) => s.is('message') && s.attrs.type !== 'error')).to.deep.equal([]);
        // The honest server says why: the rogue certificate does not chain to the CA it trusts.
        const refusing = honest === 'a.test' ? fed.a : fed.b;
        for (const pattern of refusedCert(refusing, rogue)) expect(await untilLogged(refusing, pattern)).to.not.be.empty;
        // And no s2s stream between the two was authenticated.
        expect(await logMatches(fed.a, inboundCertAuth(fed.a, 'b.test'))).to.deep.equal([]);
        expect(await logMatches(fed.b, inboundCertAuth(fed.b, 'a.test'))).to.deep.equal([]);
      });
    });
  }
}

if (federationPairs().length === 0) {
  describe('federation transport', () => {
    it.skip('needs root (it writes /etc/hosts) and Prosody installed (scripts/install-system-deps.sh)');
  });
}
