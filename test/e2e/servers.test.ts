// Smoke test of the e2e harness against every installed server kind: accounts, component routing,
// MUC, and a component surviving a server crash and restart.
import { expect } from 'chai';
import { xml, type Client } from '@xmpp/client';
import type { Component } from '@xmpp/component';
import type { Element } from '@xmpp/xml';

import { ECHO_NS, startEchoComponent } from '../../bench/xmpp-echo.js';
import { connectClient, disconnect } from './harness/clients.js';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';

const MUC_NS = 'http://jabber.org/protocol/muc';
const MUC_USER_NS = 'http://jabber.org/protocol/muc#user';

/** Resolves with the first stanza `entity` receives that matches, or rejects after `ms`. */
function nextStanza(entity: Client, match: (stanza: Element) => boolean, ms = 5_000): Promise<Element> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      entity.removeListener('stanza', onStanza);
      reject(new Error(`no matching stanza within ${ms} ms`));
    }, ms);
    function onStanza(stanza: Element): void {
      if (!match(stanza)) return;
      clearTimeout(timer);
      entity.removeListener('stanza', onStanza);
      resolve(stanza);
    }
    entity.on('stanza', onStanza);
  });
}

/** Joins `room` as `nick` and resolves when the room reflects the user's own presence (status 110). */
async function joinRoom(entity: Client, room: string, nick: string): Promise<void> {
  const joined = nextStanza(
    entity,
    (s) =>
      s.is('presence') &&
      s.attrs.from === `${room}/${nick}` &&
      (s
        .getChild('x', MUC_USER_NS)
        ?.getChildren('status')
        .some((st) => st.attrs.code === '110') ??
        false),
  );
  await entity.send(xml('presence', { to: `${room}/${nick}` }, xml('x', { xmlns: MUC_NS })));
  await joined;
}

function echoIq(to: string, n: number): Element {
  return xml('iq', { type: 'get', to }, xml('ping', { xmlns: ECHO_NS, n: String(n) }, `payload-${n}`));
}

const kinds = serverKinds();

describe('e2e harness servers', function () {
  if (kinds.length === 0) {
    it('needs Prosody or ejabberd (run scripts/install-system-deps.sh)');
  }

  for (const kind of kinds) {
    describe(kind, function () {
      this.timeout(30_000);
      let server: XmppServer | undefined;
      let echo: Component | undefined;
      const clients: Client[] = [];
      const alice = { username: 'alice', password: 'alice-pass' };
      const bob = { username: 'bob', password: 'bob-pass' };

      async function login(account: { username: string; password: string }): Promise<Client> {
        const entity = await connectClient(server!, account);
        clients.push(entity);
        return entity;
      }

      before(async function () {
        server = await startServer(kind);
        await server.registerUsers([alice, bob]);
        echo = await startEchoComponent(server);
      });

      after(async function () {
        await Promise.all(clients.map((c) => disconnect(c)));
        if (echo) await disconnect(echo);
        await server?.stop();
      });

      it('routes 50 IQs from a client to the component and back with their payloads', async function () {
        const a = await login(alice);
        const replies = await Promise.all(Array.from({ length: 50 }, (_, n) => a.iqCaller.request(echoIq(server!.componentDomain, n))));
        replies.forEach((reply: Element, n: number) => {
          expect(reply.attrs.type).to.equal('result');
          const ping = reply.getChild('ping', ECHO_NS);
          expect(ping?.attrs.n).to.equal(String(n));
          expect(ping?.text()).to.equal(`payload-${n}`);
        });
      });

      it('delivers a groupchat message from one occupant of room1 to another', async function () {
        const room = `room1@${server!.mucDomain}`;
        const a = await login(alice);
        const b = await login(bob);
        await joinRoom(a, room, 'alice');
        await joinRoom(b, room, 'bob');
        const received = nextStanza(b, (s) => s.is('message') && s.attrs.type === 'groupchat' && s.attrs.from === `${room}/alice` && !!s.getChild('body'));
        await a.send(xml('message', { to: room, type: 'groupchat' }, xml('body', {}, 'hello room')));
        expect((await received).getChildText('body')).to.equal('hello room');
      });

      it('lets the component reach clients again after the server is killed and restarted', async function () {
        await server!.kill();
        const restarted = Date.now();
        await server!.start();
        const a = await login(alice);
        // @xmpp/component retries every second; the IQ fails (component offline) until it is back.
        let lastError: unknown;
        for (let n = 0; Date.now() - restarted < 8_000; n++) {
          try {
            const reply = await a.iqCaller.request(echoIq(server!.componentDomain, n), 2_000);
            expect(reply.getChild('ping', ECHO_NS)?.attrs.n).to.equal(String(n));
            lastError = undefined;
            break;
          } catch (err) {
            lastError = err;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
        expect(lastError, 'component reachable again').to.equal(undefined);
        expect(echo!.status).to.equal('online');
      });
    });
  }
});
