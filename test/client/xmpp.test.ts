// The client's XMPP binding against xmpp.js's own IQ caller: replies are real stanzas (as Prosody,
// ejabberd and the component send them) routed through @xmpp/iq's caller, so the errors it rejects
// with are the objects xmpp.js really builds (@xmpp/middleware's StanzaError, @xmpp/events'
// TimeoutError). Checks how they become the library's typed errors, and which are retried.
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import iqCaller from '@xmpp/iq/caller.js';
import type { Entity, Middleware } from '@xmpp/middleware';
import parse from '@xmpp/xml/lib/parse.js';
import xml, { type Element } from '@xmpp/xml';
import { fetchKmsIdentity, xmppTransport, type XmppEntity } from '../../src/client/xmpp.js';
import { IdentityValidationError, KmsStanzaError, KmsTimeoutError } from '../../src/client/errors.js';
import { isTransient, retrying, type RetryOptions } from '../../src/client/retry.js';
import type { Transport } from '../../src/client/session.js';

/** A transport whose failures are retried by `retrying`, as the session retries its exchanges. */
const withRetry =
  (t: Transport, o: RetryOptions): Transport =>
  (m) =>
    retrying(() => t(m), o);
import { KmsError } from '../../src/protocol/errors.js';
import { NS } from '../../src/protocol/namespace.js';
import { stanzaError } from '../../src/protocol/stanza-errors.js';
import { makeIdentity } from '../../src/engine/identity.js';
import { sharedIdentity, DOMAIN } from '../support/kms-fixture.js';

const STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas';

/**
 * What each server answered, recorded on Prosody 0.12 and ejabberd 23.01 (the e2e harness's
 * servers) for an IQ to kms.localhost while no component was connected.
 */
const PROSODY_COMPONENT_AWAY =
  `<error type="wait"><remote-server-timeout xmlns="${STANZAS}"/><text xmlns="${STANZAS}">Component unavailable</text>` +
  `<not-connected xmlns="xmpp:prosody.im/protocol/component"/></error>`;
const EJABBERD_COMPONENT_AWAY = `<error type="auth"><forbidden xmlns="${STANZAS}"/><text xml:lang="en" xmlns="${STANZAS}">Access denied by service policy</text></error>`;

type Answer = Element | string | Error | undefined;

/**
 * An xmpp.js-like entity whose IQ caller is @xmpp/iq's own: `answer` returns the reply to each
 * request (an `<error/>` element or its XML makes an error reply, an Element a result), an Error
 * that send() throws, or undefined for silence.
 */
function entity(answer: (iq: Element, n: number) => Answer, status = 'online'): XmppEntity & { status: string; sent: number } {
  /** The middleware context iq-caller routes: the reply stanza with its name, type and id. */
  type IqContext = { name: string; type: string | undefined; id: string | undefined; stanza: Element };
  let route: ((ctx: IqContext, next: () => unknown) => unknown) | undefined;
  const self = {
    status,
    sent: 0,
    iqCaller: iqCaller({
      // Only what @xmpp/iq's caller uses of an entity and its middleware.
      entity: {
        async send(iq: Element) {
          const a = answer(iq, self.sent++);
          if (a instanceof Error) throw a;
          if (a === undefined) return;
          const el = typeof a === 'string' ? parse(a) : a;
          const reply = el.is('error')
            ? xml('iq', { type: 'error', from: iq.attrs.to, to: 'alice@localhost/t', id: iq.attrs.id }, el)
            : xml('iq', { type: 'result', from: iq.attrs.to, to: 'alice@localhost/t', id: iq.attrs.id }, el);
          setImmediate(() => route!({ name: 'iq', type: reply.attrs.type, id: reply.attrs.id, stanza: reply }, () => undefined));
        },
      } as unknown as Entity,
      middleware: { use: (fn: typeof route) => (route = fn) } as unknown as Middleware<Entity>,
    }),
  };
  return self;
}

async function failure(p: Promise<unknown>): Promise<Error> {
  return p.then(
    () => expect.fail('expected a failure'),
    (e: Error) => e,
  );
}

const kmsReply = (n: number) => xml('kms', { xmlns: NS }, ...Array.from({ length: n }, () => xml('message', {}, 'a.b.c')));

describe('client: the XMPP binding reads xmpp.js errors', function () {
  it("reads the type of a stanza error from the <error/> element xmpp.js gives: Prosody's wait while the component is away is retried", async function () {
    const e = await failure(
      xmppTransport(
        entity(() => PROSODY_COMPONENT_AWAY),
        'kms.localhost',
      )(['a.b.c']),
    );
    expect(e).to.be.instanceOf(KmsStanzaError).and.instanceOf(KmsError);
    const s = e as KmsStanzaError;
    expect([s.type, s.condition, s.key, s.code, s.status]).to.deep.equal(['wait', 'remote-server-timeout', undefined, 'STANZA_ERROR', undefined]);
    expect(s.message).to.equal('Component unavailable');
    expect(s.retryable).to.equal(true);
    expect(isTransient(s)).to.equal(true);
  });

  it("retries ejabberd's answer while the component is away (no KMS condition: the server answered in its place)", async function () {
    const e = (await failure(
      xmppTransport(
        entity(() => EJABBERD_COMPONENT_AWAY),
        'kms.localhost',
      )(['a.b.c']),
    )) as KmsStanzaError;
    expect([e.type, e.condition, e.key]).to.deep.equal(['auth', 'forbidden', undefined]);
    expect(isTransient(e)).to.equal(true);
  });

  it("keeps the component's own errors: rate-limited (wait) is retried, malformed-payload and unknown-payload are not", async function () {
    for (const [key, type, retried] of [
      ['rate-limited', 'wait', true],
      ['shutting-down', 'wait', true],
      ['malformed-payload', 'modify', false],
      ['unknown-payload', 'cancel', false],
    ] as const) {
      const e = (await failure(
        xmppTransport(
          entity(() => stanzaError(key)),
          'kms.localhost',
        )(['a.b.c']),
      )) as KmsStanzaError;
      expect([e.key, e.type, isTransient(e)], key).to.deep.equal([key, type, retried]);
    }
    // A server error that asks for the request to be changed is not retried either.
    const modify = await failure(
      xmppTransport(
        entity(() => `<error type="modify"><bad-request xmlns="${STANZAS}"/></error>`),
        'kms.localhost',
      )(['a.b.c']),
    );
    expect(isTransient(modify)).to.equal(false);
  });

  it("turns xmpp.js's timeout, a lost socket and a connection that is not online into a KmsTimeoutError, which is retried", async function () {
    const silent = await failure(
      xmppTransport(
        entity(() => undefined),
        'kms.localhost',
        30,
      )(['a.b.c']),
    );
    expect(silent).to.be.instanceOf(KmsTimeoutError);
    expect((silent as KmsTimeoutError).cause).to.have.property('name', 'TimeoutError');
    expect([(silent as KmsTimeoutError).code, (silent as KmsTimeoutError).status, isTransient(silent)]).to.deep.equal(['TIMEOUT', undefined, true]);
    const epipe = Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
    expect(
      await failure(
        xmppTransport(
          entity(() => epipe),
          'kms.localhost',
        )(['a.b.c']),
      ),
    ).to.be.instanceOf(KmsTimeoutError);
    // xmpp.js offline: its socket is null, and writing to it is a TypeError.
    const offline = entity(() => new TypeError("Cannot read properties of null (reading 'write')"), 'offline');
    const e = await failure(xmppTransport(offline, 'kms.localhost')(['a.b.c']));
    expect(e).to.be.instanceOf(KmsTimeoutError);
    expect(isTransient(e)).to.equal(true);
  });

  it('never decides by message text: an unknown error while online is neither converted nor retried', async function () {
    const e = await failure(
      xmppTransport(
        entity(() => new Error('socket connection offline disconnect')),
        'kms.localhost',
      )(['a.b.c']),
    );
    expect(e).to.not.be.instanceOf(KmsError);
    expect(isTransient(e)).to.equal(false);
  });

  it('retried, a request made while the component is away succeeds once it is back', async function () {
    for (const away of [PROSODY_COMPONENT_AWAY, EJABBERD_COMPONENT_AWAY]) {
      const e = entity((_, n) => (n < 2 ? away : kmsReply(1)));
      const out = await withRetry(xmppTransport(e, 'kms.localhost'), { retries: 3, backoffMs: 1 })(['a.b.c']);
      expect(out).to.deep.equal(['a.b.c']);
      expect(e.sent).to.equal(3);
    }
  });
});

describe('client: fetchKmsIdentity refuses a static key with an IdentityValidationError', function () {
  async function published() {
    const id = await sharedIdentity('EC');
    const identity = makeIdentity(DOMAIN, id.privateKey, id.chainPem);
    const { x5c, ...jwk } = identity.jwk;
    const el = (kid = identity.kid, jwkText = JSON.stringify(jwk)) =>
      xml(
        'identity',
        { xmlns: NS, kid, 'sig-alg': identity.sigAlg, 'enc-alg': identity.handshakeAlgs[0] },
        xml('jwk', {}, jwkText),
        ...x5c.map((c) => xml('x5c', {}, c)),
      );
    return { el, anchors: [new X509Certificate(id.caCertPem)] };
  }

  it('accepts the published key with the anchor', async function () {
    const { el, anchors } = await published();
    const info = await fetchKmsIdentity(
      entity(() => el()),
      DOMAIN,
      anchors,
    );
    expect(info.kid).to.equal(`kms://${DOMAIN}`);
  });

  it("refuses: no anchor, no <identity/>, a kid that is not kms://, the key of another KMS, a jwk that is not the certificate's", async function () {
    const { el, anchors } = await published();
    const other = JSON.stringify({
      kty: 'EC',
      crv: 'P-256',
      x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU',
      y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0',
    });
    const cases: [string, Answer, X509Certificate[], string][] = [
      ['no anchor', el(), [], DOMAIN],
      ['no <identity/>', xml('query', { xmlns: 'urn:example:other' }), anchors, DOMAIN],
      ['kid not kms://', el(DOMAIN), anchors, DOMAIN],
      ['another KMS', el('kms://kms.example.org'), anchors, DOMAIN],
      ['asked another component', el(), anchors, 'kms.example.org'],
      ['another key', el(undefined, other), anchors, DOMAIN],
      ['not a key', el(undefined, '{"kty":"EC"}'), anchors, DOMAIN],
    ];
    for (const [what, answer, a, component] of cases) {
      const e = await failure(
        fetchKmsIdentity(
          entity(() => answer),
          component,
          a,
        ),
      );
      expect(e, what).to.be.instanceOf(IdentityValidationError);
      expect([(e as IdentityValidationError).code, (e as IdentityValidationError).status], what).to.deep.equal(['IDENTITY_INVALID', undefined]);
    }
  });
});
