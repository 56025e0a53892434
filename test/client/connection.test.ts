/**
 * KmsClient and EncryptedRoom over another XMPP client's connection (src/client/connection.ts):
 * a stand-in that speaks only in serialized stanzas, as Strophe.js or a native bridge would, in
 * front of the real engine; the KMS certificate validated against an anchor given as PEM text.
 */
import { expect } from 'chai';
import xml, { type Element } from '@xmpp/xml';
import parse from '@xmpp/xml/lib/parse.js';
import { KmsFixture, sharedIdentity, AUDIENCE, DOMAIN } from '../support/kms-fixture.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { xmlConnection, type XmlConnection } from '../../src/client/connection.js';
import { fetchKmsIdentity } from '../../src/client/xmpp.js';
import { KmsStanzaError } from '../../src/client/errors.js';
import { NS } from '../../src/protocol/namespace.js';

/** A connection that only knows XML text: <identity/> and <kms/> IQs to the engine, an error for anything else. */
function textConnection(kms: KmsFixture): XmlConnection & { deliver(stanza: string): void } {
  const listeners = new Set<(s: string) => void>();
  const reply = (iq: Element, type: string, ...children: Element[]) => xml('iq', { type, id: iq.attrs.id ?? 'x', from: iq.attrs.to }, ...children).toString();
  return {
    send: () => undefined,
    subscribe(listener) {
      const own = (s: string) => listener(s);
      listeners.add(own);
      return () => listeners.delete(own);
    },
    deliver(stanza) {
      for (const l of [...listeners]) l(stanza);
    },
    async request(text) {
      const iq = parse(text);
      const child = iq.getChildElements()[0]!;
      if (iq.attrs.to !== DOMAIN) {
        return reply(iq, 'error', xml('error', { type: 'cancel' }, xml('service-unavailable', { xmlns: 'urn:ietf:params:xml:ns:xmpp-stanzas' })));
      }
      if (child.is('identity', NS)) {
        const { x5c, ...jwk } = kms.identity.jwk;
        const id = xml(
          'identity',
          { xmlns: NS, kid: kms.identity.kid, 'sig-alg': kms.identity.sigAlg, 'enc-alg': kms.identity.handshakeAlgs[0]! },
          xml('jwk', {}, JSON.stringify(jwk)),
          ...x5c.map((c) => xml('x5c', {}, c)),
        );
        return reply(iq, 'result', id);
      }
      const out = await kms.transport(child.getChildren('message').map((m) => m.getText()));
      return reply(iq, 'result', xml('kms', { xmlns: NS }, ...out.map((m) => xml('message', {}, m))));
    },
  };
}

describe('client: over a connection that speaks serialized stanzas (xmlConnection)', function () {
  this.timeout(30_000);
  let kms: KmsFixture;
  let anchor: string;
  before(async () => {
    kms = await KmsFixture.create({ keyType: 'EC' });
    anchor = (await sharedIdentity('EC')).caCertPem;
  });
  after(() => kms.close());

  it('validates the KMS key to a PEM anchor, registers, makes a chain and a group key', async () => {
    const token = await kms.issuer.mint({ subject: 'alice@example.com', audience: AUDIENCE });
    const client = await KmsClient.connect({ xmpp: xmlConnection(textConnection(kms)), kms: DOMAIN, anchors: [anchor], bearer: () => token });
    const chain = await client.createChain(['bob@example.com']);
    const gk = await client.createGk(chain.tail);
    expect(gk.block).to.equal(chain.tail);
    expect(gk.key).to.have.length(32);
    await client.close();
  });

  it('turns an IQ error reply into a KmsStanzaError', async () => {
    const e = await fetchKmsIdentity(xmlConnection(textConnection(kms)), 'kms.example.org', [anchor]).then(
      () => expect.fail('expected an error'),
      (err: Error) => err,
    );
    expect(e).to.be.instanceOf(KmsStanzaError);
    expect((e as KmsStanzaError).condition).to.equal('service-unavailable');
    expect((e as KmsStanzaError).type).to.equal('cancel');
  });

  it('delivers received stanzas as elements until the listener is removed', () => {
    const text = textConnection(kms);
    const conn = xmlConnection(text);
    const got: string[] = [];
    const listener = (el: Element) => got.push(el.attrs.id);
    conn.on('stanza', listener);
    text.deliver("<message xmlns='jabber:client' id='1'/>");
    text.deliver('not xml <');
    conn.off('stanza', listener);
    text.deliver("<message xmlns='jabber:client' id='2'/>");
    expect(got).to.deep.equal(['1']);
  });
});
