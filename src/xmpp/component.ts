/**
 * The KMS as an XMPP external component (XEP-0114). It answers disco#info, publishes its static
 * key and certificate chain (`<identity/>`), and runs `<kms/>` batches of compact JOSE messages
 * through the engine, replying in the same order (xep/kms.xml). XMPP-level problems become
 * stanza errors from src/xmpp/stanza-errors.ts; KMS-level failures stay KMS responses.
 *
 * The link survives: `start` retries until the server accepts us, a dropped stream is reopened
 * with exponential backoff, a whitespace keepalive keeps idle links open, and `stop` answers the
 * requests in flight before closing.
 */
import { component, xml, type Component, type IncomingContext } from '@xmpp/component';
import type { Element } from '@xmpp/xml';
import { NS, NS_STANZAS } from './namespace.js';
import { stanzaError, type StanzaErrorKey } from './stanza-errors.js';
import { RateLimiter } from './rate-limit.js';
import type { Logger } from '../util/logger.js';

const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';
const NS_PING = 'urn:xmpp:ping';
/** Compact JWS/JWE: base64url parts separated by dots. */
const COMPACT_JOSE = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){2,4}$/;

/** What the component needs of the KMS. */
export interface KmsBackend {
  handle(message: string): Promise<string>;
  identity: { kid: string; sigAlg: string; handshakeAlgs: string[]; jwk: Record<string, unknown> & { x5c: string[] } };
}

export interface ComponentLimits {
  maxMessagesPerIq: number;
  maxMessageBytes: number;
  maxStanzaBytes: number;
  /** Requests (messages) per second per sender, and the burst allowed. */
  ratePerSec: number;
  rateBurst: number;
}

export interface ComponentSettings {
  /** xmpp://host:port of the server's component listener. */
  service: string;
  /** The component's domain; the KMS's kid host. */
  domain: string;
  secret: string;
  limits: ComponentLimits;
  keepaliveSec: number;
  reconnect: { initialMs: number; maxMs: number };
  /** How long `stop` waits for requests in flight. */
  drainMs: number;
}

export const DEFAULT_COMPONENT_LIMITS: ComponentLimits = {
  maxMessagesPerIq: 16,
  maxMessageBytes: 64 * 1024,
  maxStanzaBytes: 256 * 1024,
  ratePerSec: 200,
  rateBurst: 400,
};

/** An IQ payload outside our namespace. */
class ForeignPayload extends Error {}

class StanzaFailure extends Error {
  constructor(readonly key: StanzaErrorKey, text?: string) {
    super(text ?? key);
  }
}

/** The running component. */
export class KmsComponent {
  readonly xmpp: Component;
  readonly #kms: KmsBackend;
  readonly #s: ComponentSettings;
  readonly #log: Logger;
  readonly #rate: RateLimiter;
  #inFlight = new Set<Promise<unknown>>();
  #stopping = false;
  #keepalive: NodeJS.Timeout | undefined;
  #backoff: number;

  constructor(kms: KmsBackend, settings: ComponentSettings, logger: Logger) {
    this.#kms = kms;
    this.#s = settings;
    this.#log = logger;
    this.#rate = new RateLimiter(settings.limits.ratePerSec, settings.limits.rateBurst);
    this.#backoff = settings.reconnect.initialMs;
    this.xmpp = component({ service: settings.service, domain: settings.domain, password: settings.secret });
    this.xmpp.reconnect.delay = settings.reconnect.initialMs;
    this.xmpp.on('error', (err) => this.#log.warn({ event: 'xmpp-error', err: { message: err.message, condition: err.condition } }, 'XMPP error'));
    this.xmpp.on('offline', () => this.#log.info({ event: 'offline' }, 'component offline'));
    this.xmpp.on('disconnect', () => {
      if (this.#stopping) return;
      this.#log.warn({ event: 'disconnect', retryInMs: this.xmpp.reconnect.delay }, 'lost the server; reconnecting');
      // Exponential backoff for the next attempt, reset once online.
      this.#backoff = Math.min(this.#backoff * 2, this.#s.reconnect.maxMs);
      this.xmpp.reconnect.delay = this.#backoff;
    });
    this.xmpp.on('online', () => {
      this.#backoff = this.#s.reconnect.initialMs;
      this.xmpp.reconnect.delay = this.#backoff;
      this.#log.info({ event: 'online', domain: settings.domain, service: settings.service }, 'component online');
    });
    this.xmpp.middleware.use((ctx, next) => this.#onStanza(ctx, next));
  }

  /** Connects, retrying with backoff while the server is not up (or until `stop`). */
  async start(): Promise<void> {
    let delay = this.#s.reconnect.initialMs;
    for (;;) {
      try {
        await this.xmpp.start();
        break;
      } catch (e) {
        const err = e as Error & { condition?: string };
        // A refused secret or a name already taken will not fix itself: fail loudly.
        if (err.condition === 'not-authorized' || err.condition === 'conflict' || err.condition === 'host-unknown') {
          throw new Error(`the server refused the component ${this.#s.domain}: ${err.condition} (check the component name and secret)`);
        }
        if (this.#stopping) throw new Error('stopped before the component came online');
        this.#log.warn({ event: 'connect-failed', reason: err.message, retryInMs: delay }, 'server not reachable yet; retrying');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, this.#s.reconnect.maxMs);
        // xmpp.js leaves the entity "offline" after a failed start; start() may be called again.
      }
    }
    if (this.#s.keepaliveSec > 0) {
      this.#keepalive = setInterval(() => {
        if (this.xmpp.status === 'online') this.xmpp.write(' ').catch(() => undefined);
      }, this.#s.keepaliveSec * 1000);
      this.#keepalive.unref();
    }
  }

  /** Stops taking requests, answers those in flight (up to drainMs), then closes the stream. */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#keepalive) clearInterval(this.#keepalive);
    this.xmpp.reconnect.stop();
    const drain = Promise.allSettled([...this.#inFlight]);
    await Promise.race([drain, new Promise((r) => setTimeout(r, this.#s.drainMs).unref())]);
    try {
      await this.xmpp.stop();
    } catch {
      // already offline
    }
  }

  /** Requests being handled right now. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  async #onStanza(ctx: IncomingContext, next: () => Promise<unknown>): Promise<unknown> {
    const { stanza } = ctx;
    if (stanza.name !== 'iq' || (stanza.attrs.type !== 'get' && stanza.attrs.type !== 'set')) return next();
    const task = this.#answer(stanza);
    this.#inFlight.add(task);
    try {
      await task;
    } finally {
      this.#inFlight.delete(task);
    }
    return undefined;
  }

  async #answer(iq: Element): Promise<void> {
    let reply: Element;
    try {
      const child = this.#onlyChild(iq);
      reply = result(iq, await this.#dispatch(iq, child));
    } catch (e) {
      if (e instanceof StanzaFailure) reply = errorReply(iq, stanzaError(e.key, e.message === e.key ? undefined : e.message));
      else if (e instanceof ForeignPayload) reply = errorReply(iq, xml('error', { type: 'cancel' }, xml('service-unavailable', { xmlns: NS_STANZAS })));
      else {
        this.#log.error({ event: 'internal-error', err: { name: (e as Error)?.name, message: (e as Error)?.message } }, 'unexpected failure');
        reply = errorReply(iq, stanzaError('internal-error'));
      }
    }
    try {
      await this.xmpp.send(reply);
    } catch (e) {
      // The link dropped before the reply went out. The request's effects are stored; the
      // client's retry finds them (a duplicate append gets 409, a GK get is idempotent).
      this.#log.warn({ event: 'reply-lost', id: iq.attrs.id, reason: (e as Error).message }, 'could not send a reply');
    }
  }

  #onlyChild(iq: Element): Element {
    const children = iq.getChildElements();
    // RFC 6120 §8.2.3: an IQ get or set has exactly one payload child.
    if (children.length !== 1) throw new StanzaFailure('malformed-payload', 'an IQ get or set must have exactly one child element');
    return children[0]!;
  }

  async #dispatch(iq: Element, child: Element): Promise<Element | undefined> {
    const type = iq.attrs.type;
    const ns = child.getNS();
    if (ns === NS_DISCO_INFO && child.name === 'query' && type === 'get') return this.#discoInfo(child);
    if (ns === NS_PING && child.name === 'ping' && type === 'get') return undefined;
    // RFC 6120 §8.4: an IQ in a namespace we do not serve gets <service-unavailable/>.
    if (ns !== NS) throw new ForeignPayload();
    if (child.name !== 'kms' && child.name !== 'identity') {
      throw new StanzaFailure('unknown-payload', `urn:xmpp:kms:0 has no <${child.name}/> request`);
    }
    if (this.#stopping) throw new StanzaFailure('shutting-down');
    if (child.name === 'identity') {
      if (type !== 'get') throw new StanzaFailure('malformed-payload', '<identity/> is read with an IQ get');
      return this.#identity();
    }
    if (type !== 'set') throw new StanzaFailure('malformed-payload', '<kms/> is sent with an IQ set');
    const messages = this.#messages(child);
    const sender = bare(iq.attrs.from ?? '');
    if (!this.#rate.take(sender, messages.length)) {
      this.#log.info({ event: 'rate-limited', sender }, 'sender over its rate');
      throw new StanzaFailure('rate-limited', `at most ${this.#s.limits.ratePerSec} requests per second`);
    }
    const out: Element[] = [];
    // In order: a batch may hold requests that depend on each other (create then bind).
    for (const m of messages) out.push(xml('message', {}, await this.#kms.handle(m)));
    return xml('kms', { xmlns: NS }, ...out);
  }

  #messages(kms: Element): string[] {
    const l = this.#s.limits;
    const children = kms.getChildElements();
    if (children.length === 0) throw new StanzaFailure('malformed-payload', '<kms/> carries no <message/>');
    if (children.length > l.maxMessagesPerIq) throw new StanzaFailure('too-many-messages', `at most ${l.maxMessagesPerIq} messages per request`);
    let total = 0;
    return children.map((c, i) => {
      if (c.name !== 'message' || (c.getNS() ?? NS) !== NS || c.getChildElements().length > 0) {
        throw new StanzaFailure('malformed-payload', `child ${i} of <kms/> is not a <message/> of text`);
      }
      const text = c.getText().trim();
      total += text.length;
      if (text.length > l.maxMessageBytes) throw new StanzaFailure('payload-too-large', `message ${i} is over ${l.maxMessageBytes} bytes`);
      if (total > l.maxStanzaBytes) throw new StanzaFailure('payload-too-large', `the request is over ${l.maxStanzaBytes} bytes`);
      if (!COMPACT_JOSE.test(text)) throw new StanzaFailure('malformed-payload', `message ${i} is not a compact JWS or JWE`);
      return text;
    });
  }

  #identity(): Element {
    const id = this.#kms.identity;
    const { x5c, ...jwk } = id.jwk;
    return xml(
      'identity',
      { xmlns: NS, kid: id.kid, 'sig-alg': id.sigAlg, 'enc-alg': id.handshakeAlgs[0] },
      xml('jwk', {}, JSON.stringify(jwk)),
      ...x5c.map((c) => xml('x5c', {}, c)),
    );
  }

  #discoInfo(query: Element): Element {
    const l = this.#s.limits;
    const field = (v: string, value: string) => xml('field', { var: v }, xml('value', {}, value));
    return xml(
      'query',
      { xmlns: NS_DISCO_INFO, ...(query.attrs.node ? { node: query.attrs.node } : {}) },
      xml('identity', { category: 'component', type: 'generic', name: 'Key Management Service' }),
      xml('feature', { var: NS_DISCO_INFO }),
      xml('feature', { var: NS_PING }),
      xml('feature', { var: NS }),
      xml(
        'x',
        { xmlns: 'jabber:x:data', type: 'result' },
        xml('field', { var: 'FORM_TYPE', type: 'hidden' }, xml('value', {}, NS)),
        field('max-messages', String(l.maxMessagesPerIq)),
        field('max-message-size', String(l.maxMessageBytes)),
        field('max-stanza-size', String(l.maxStanzaBytes)),
      ),
    );
  }
}

function bare(jid: string): string {
  const slash = jid.indexOf('/');
  return (slash < 0 ? jid : jid.slice(0, slash)).toLowerCase();
}

function result(iq: Element, child: Element | undefined): Element {
  return xml('iq', { type: 'result', id: iq.attrs.id, to: iq.attrs.from, from: iq.attrs.to }, child);
}

function errorReply(iq: Element, error: Element): Element {
  return xml('iq', { type: 'error', id: iq.attrs.id, to: iq.attrs.from, from: iq.attrs.to }, error);
}
