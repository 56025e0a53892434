/**
 * The KMS as an XMPP external component (XEP-0114). It answers disco#info, publishes its static
 * key and certificate chain (`<identity/>`), and runs `<kms/>` batches of compact JOSE messages
 * through the engine, replying in the same order (xep/kms.xml). XMPP-level problems become
 * stanza errors from src/protocol/stanza-errors.ts; KMS-level failures stay KMS responses.
 *
 * The link survives: `start` retries until the server accepts us, a dropped stream is reopened
 * with exponential backoff (src/xmpp/reconnect-policy.ts: after a link that was healthy, quickly
 * at first, so that a server restart costs about a second), a whitespace keepalive keeps idle
 * links open, and `stop` answers the requests in flight before closing.
 */
// @xmpp/component has no types of its own and no @types package: ours, shipped with the package
// (its declarations reference them: KmsComponent.xmpp is the xmpp.js component).
/// <reference path="../../types/xmpp__component.d.ts" preserve="true" />
import { component, xml, type Component } from '@xmpp/component';
import type { Element } from '@xmpp/xml';
import { NS, NS_STANZAS } from '../protocol/namespace.js';
import { stanzaError, type StanzaErrorKey } from '../protocol/stanza-errors.js';
import { RateLimiter } from './rate-limit.js';
import { coalesceThisTick, type Corkable } from './coalesce.js';
import { ReconnectPolicy } from './reconnect-policy.js';
import { MESSAGE_WRAPPING, messageBudget } from './reply-budget.js';
import type { Logger } from '../util/logger.js';

const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';
const NS_PING = 'urn:xmpp:ping';
/** What the component uses of xmpp.js's TCP socket. */
type StreamSocket = Corkable & { setNoDelay?(on: boolean): void; destroy?(): void };
/** A reconnection attempt gets this many of xmpp.js's timeouts (open, handshake) to come online. */
const ATTEMPT_TIMEOUTS = 3;
/** Compact JOSE: a JWS of 3 base64url parts or a JWE of 5, separated by dots (RFC 7515 §7.1, RFC 7516 §7.1). */
const COMPACT_JOSE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?$/;

/** What the component needs of the KMS. */
export interface KmsBackend {
  /** One response message; `maxResponseBytes` is its share of max-reply-size (see src/xmpp/reply-budget.ts). */
  handle(message: string, opts?: { maxResponseBytes?: number; from?: string }): Promise<string>;
  identity: { kid: string; sigAlg: string; handshakeAlgs: string[]; jwk: Record<string, unknown> & { x5c: string[] } };
}

export interface ComponentLimits {
  maxMessagesPerIq: number;
  maxMessageBytes: number;
  maxStanzaBytes: number;
  /** Largest reply stanza the component sends (max-reply-size, XEP "Transport of KMS Messages"). */
  maxReplyBytes: number;
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
  /**
   * A standby instance (a server that takes one connection per component name, as Prosody): a
   * name already taken (conflict) is retried with backoff, so that this instance takes over when
   * the active one drops, instead of stopping the start.
   */
  standby?: boolean;
}

/** What the component reports of its link for an operator's metrics (src/admin/metrics.ts), when given one. */
export interface LinkMetrics {
  /** The stream went online (true) or was lost (false). */
  linkUp(up: boolean): void;
  /** The stream came back online after the link was lost. */
  reconnected(): void;
}

/** An IQ payload outside our namespace. */
class ForeignPayload extends Error {}

class StanzaFailure extends Error {
  constructor(
    readonly key: StanzaErrorKey,
    text?: string,
  ) {
    super(text ?? key);
  }
}

/** The running component. */
export class KmsComponent {
  readonly xmpp: Component;
  readonly #kms: KmsBackend;
  readonly #s: ComponentSettings;
  readonly #log: Logger;
  readonly #metrics: LinkMetrics | undefined;
  readonly #rate: RateLimiter;
  /** The waits between attempts to reconnect, once online (start() paces the first connection). */
  readonly #backoff: ReconnectPolicy;
  #inFlight = new Set<Promise<unknown>>();
  #stopping = false;
  #keepalive: NodeJS.Timeout | undefined;
  /** Whether the stream is online now, and whether it ever was (start() succeeded). */
  #online = false;
  #started = false;
  /** The last error the connection reported, quoted in the retry log lines. */
  #lastError: string | undefined;
  /** Ends a reconnection attempt that is neither online nor disconnected in time (#watchAttempt). */
  #attemptTimer: NodeJS.Timeout | undefined;
  #stopped: Promise<void> | undefined;
  #stopRequested!: () => void;
  readonly #stopSignal = new Promise<void>((r) => (this.#stopRequested = r));

  constructor(kms: KmsBackend, settings: ComponentSettings, logger: Logger, metrics?: LinkMetrics) {
    this.#kms = kms;
    this.#s = settings;
    this.#log = logger;
    this.#metrics = metrics;
    this.#rate = new RateLimiter(settings.limits.ratePerSec, settings.limits.rateBurst);
    this.xmpp = component({ service: settings.service, domain: settings.domain, password: settings.secret });
    this.#backoff = new ReconnectPolicy({ initialMs: settings.reconnect.initialMs, maxMs: settings.reconnect.maxMs });
    this.xmpp.reconnect.delay = settings.reconnect.initialMs;
    // start() retries the first connection itself; @xmpp/reconnect takes over once online.
    this.xmpp.reconnect.stop();
    this.xmpp.on('error', (err) => {
      this.#lastError = err.condition ? `${err.condition}${err.message && err.message !== err.condition ? `: ${err.message}` : ''}` : err.message;
      // While not online, the retry lines (start(), 'disconnect') quote the error instead.
      if (this.#online) this.#log.warn({ event: 'xmpp-error', reason: err.message, condition: err.condition }, `XMPP error: ${this.#lastError}`);
    });
    this.xmpp.on('offline', () => {
      if (this.#started) this.#log.info({ event: 'offline' }, 'component offline');
    });
    this.xmpp.on('disconnect', () => {
      clearTimeout(this.#attemptTimer);
      const wasOnline = this.#online;
      this.#online = false;
      if (wasOnline) this.#metrics?.linkUp(false);
      if (this.#stopping || !this.#started) return;
      // Runs before @xmpp/reconnect's own 'disconnect' listener (added by start()), which schedules
      // the next attempt after reconnect.delay: the wait the policy gives.
      const retryInMs = this.#backoff.disconnected();
      this.xmpp.reconnect.delay = retryInMs;
      if (wasOnline) {
        this.#log.warn(
          { event: 'disconnect', service: settings.service, retryInMs },
          `lost the XMPP server at ${settings.service}; reconnecting in ${retryInMs} ms`,
        );
      } else {
        this.#log.warn(
          { event: 'reconnect-failed', service: settings.service, reason: this.#lastError, retryInMs },
          `cannot reach the XMPP server at ${settings.service} (${this.#lastError ?? 'connection closed'}); retrying in ${retryInMs} ms`,
        );
      }
    });
    this.xmpp.reconnect.on('reconnecting', () => this.#watchAttempt());
    this.xmpp.on('online', () => {
      clearTimeout(this.#attemptTimer);
      this.#online = true;
      // start() sets #started once the first connection is online: any later 'online' is a reconnection.
      if (this.#started) this.#metrics?.reconnected();
      this.#metrics?.linkUp(true);
      this.#lastError = undefined;
      this.#backoff.online();
      this.#log.info({ event: 'online', domain: settings.domain, service: settings.service }, `component ${settings.domain} online at ${settings.service}`);
    });
    // Each reply is one whole stanza: send it at once. With Nagle's algorithm a reply written
    // while the previous one is still unacknowledged waits for the server's delayed ACK (~40 ms).
    this.xmpp.on('connect', () => this.#socket?.setNoDelay?.(true));
    // IQ requests come to us before @xmpp/component's middleware. Its chain starts with iqCallee,
    // which answers every IQ get/set that no later middleware *returns* a reply for; we send our
    // replies ourselves (after the engine, tracked for draining), so each request also drew a
    // second reply, a service-unavailable error carrying the whole request back through the
    // server. Everything else (IQ results for iqCaller, stream errors, messages) still goes
    // through the middleware.
    const middleware = this.xmpp.listeners('element') as ((el: Element) => void)[];
    this.xmpp.removeAllListeners('element');
    this.xmpp.on('element', (el: Element) => {
      if (el.name === 'iq' && (el.attrs.type === 'get' || el.attrs.type === 'set')) this.#onIq(el);
      else for (const l of middleware) l.call(this.xmpp, el);
    });
  }

  /**
   * Connects, retrying with backoff while the server is not up. Rejects when the server refuses
   * the component (wrong secret or name: retrying cannot help) or when `stop` is called first.
   */
  async start(): Promise<void> {
    const service = this.#s.service;
    let delay = this.#s.reconnect.initialMs;
    this.#log.info({ event: 'connecting', service, domain: this.#s.domain }, `connecting to the XMPP server at ${service} as ${this.#s.domain}`);
    for (let attempt = 1; ; attempt++) {
      if (this.#stopping) throw new Error('stopped before the component came online');
      try {
        const connecting = this.xmpp.start().then(() => 'online' as const);
        // When stop() wins the race, the attempt still settles later: never as an unhandled rejection.
        connecting.catch(() => undefined);
        const outcome = await Promise.race([connecting, this.#stopSignal.then(() => 'stopped' as const)]);
        if (outcome === 'stopped') throw new Error('stopped before the component came online');
        break;
      } catch (e) {
        const err = e as Error & { condition?: string };
        if (this.#stopping) throw new Error('stopped before the component came online');
        // A refused secret or a name already taken will not fix itself: fail loudly.
        const standing = err.condition === 'conflict' && this.#s.standby === true;
        if (!standing && (err.condition === 'not-authorized' || err.condition === 'conflict' || err.condition === 'host-unknown')) {
          await this.xmpp.stop().catch(() => undefined);
          throw new Error(`the server refused the component ${this.#s.domain}: ${err.condition} (check the component name and secret)`);
        }
        const reason = err.condition ?? err.message;
        if (standing) {
          // The active instance holds the name: wait for it to go, trying again at most reconnectMaxMs apart.
          if (attempt === 1)
            this.#log.info({ event: 'standby', service, domain: this.#s.domain }, `${this.#s.domain} is served by another instance: standing by`);
        } else {
          this.#log.warn(
            { event: 'connect-failed', service, attempt, reason, retryInMs: delay },
            `cannot reach the XMPP server at ${service} (${reason}); retrying in ${delay} ms`,
          );
        }
        // A failed attempt leaves the connection half-open ("connecting", "opening"): close it so
        // that the next start() begins from "offline".
        await this.xmpp.stop().catch(() => undefined);
        await Promise.race([new Promise((r) => setTimeout(r, delay)), this.#stopSignal]);
        delay = Math.min(delay * 2, this.#s.reconnect.maxMs);
      }
    }
    this.#started = true;
    this.xmpp.reconnect.start();
    if (this.#s.keepaliveSec > 0) {
      this.#keepalive = setInterval(() => {
        if (this.xmpp.status === 'online') this.xmpp.write(' ').catch(() => undefined);
      }, this.#s.keepaliveSec * 1000);
      this.#keepalive.unref();
    }
  }

  /**
   * @xmpp/reconnect schedules its next attempt on 'disconnect' only. An attempt whose TCP connection
   * succeeds but whose stream is never opened (a server still starting, or wedged) fails on
   * xmpp.js's open timeout without a disconnect, and nothing would try again. So an attempt that is
   * neither online nor disconnected after ATTEMPT_TIMEOUTS of xmpp.js's timeouts has its socket
   * destroyed: the 'disconnect' that follows schedules the next attempt, with backoff.
   */
  #watchAttempt(): void {
    clearTimeout(this.#attemptTimer);
    const ms = ATTEMPT_TIMEOUTS * this.xmpp.timeout;
    this.#attemptTimer = setTimeout(() => {
      const status = this.xmpp.status;
      if (this.#stopping || this.#online || status === 'disconnect' || status === 'offline') return;
      this.#lastError = `no stream from the server within ${ms} ms (status ${status})`;
      this.#socket?.destroy?.();
    }, ms);
    this.#attemptTimer.unref();
  }

  /** Stops taking requests, answers those in flight (up to drainMs), then closes the stream. Idempotent. */
  stop(): Promise<void> {
    this.#stopped ??= this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<void> {
    this.#stopping = true;
    this.#stopRequested();
    clearTimeout(this.#attemptTimer);
    if (this.#keepalive) clearInterval(this.#keepalive);
    this.xmpp.reconnect.stop();
    const inFlight = this.#inFlight.size;
    const drain = Promise.allSettled([...this.#inFlight]);
    const drained = await Promise.race([drain.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), this.#s.drainMs).unref())]);
    if (inFlight > 0) {
      if (drained) this.#log.info({ event: 'drained', answered: inFlight }, `answered the ${inFlight} request(s) in flight`);
      else
        this.#log.warn(
          { event: 'drain-timeout', drainMs: this.#s.drainMs, unanswered: this.#inFlight.size },
          `${this.#inFlight.size} request(s) still unanswered after ${this.#s.drainMs} ms`,
        );
    }
    try {
      await this.xmpp.stop();
    } catch {
      // already offline
    }
  }

  /** The stream's TCP socket (an xmpp.js internal: the one place this component reaches for it). */
  get #socket(): StreamSocket | undefined {
    return (this.xmpp as unknown as { socket?: StreamSocket }).socket;
  }

  /** Whether the stream to the XMPP server is online now. */
  get online(): boolean {
    return this.#online;
  }

  /** Requests being handled right now. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** An IQ get or set: answered exactly once, tracked until the reply is written. */
  #onIq(iq: Element): void {
    const task: Promise<void> = this.#answer(iq)
      .catch((e) => this.#log.error({ event: 'internal-error', err: { message: (e as Error)?.message } }, 'unanswered request'))
      .finally(() => this.#inFlight.delete(task));
    this.#inFlight.add(task);
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
      // Replies to requests that came in one read leave in one write (src/xmpp/coalesce.ts).
      coalesceThisTick(this.#socket);
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
    // XEP "Transport of KMS Messages": no reply over max-reply-size. Each message gets what is left of it, less 8 KiB for each
    // message still to come (src/xmpp/reply-budget.ts); responses are base64url, one byte a character.
    const limit = this.#s.limits.maxReplyBytes;
    let used = replyEnvelopeBytes(iq);
    const out: Element[] = [];
    // In order: a batch may hold requests that depend on each other (create then bind).
    for (const [i, m] of messages.entries()) {
      const response = await this.#kms.handle(m, { maxResponseBytes: messageBudget(limit, used, i, messages.length), from: sender });
      used += MESSAGE_WRAPPING + Buffer.byteLength(response);
      out.push(xml('message', {}, response));
    }
    if (used > limit) {
      // Only an envelope (the IQ's id, the requester's JID) too large for any budget gets here: the
      // server would close the component's stream on a stanza over its limit, so it is never sent.
      this.#log.warn({ event: 'reply-too-large', id: iq.attrs.id, bytes: used, maxReplyBytes: limit }, 'a reply would exceed max-reply-size');
      throw new StanzaFailure('payload-too-large', `the reply would exceed ${limit} bytes (max-reply-size)`);
    }
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
      // XEP "Transport of KMS Messages": a <message/> has no attributes (a namespace declaration aside).
      if (Object.keys(c.attrs).some((a) => a !== 'xmlns')) {
        throw new StanzaFailure('malformed-payload', `message ${i} has attributes; a <message/> carries only its text`);
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
        field('max-reply-size', String(l.maxReplyBytes)),
      ),
    );
  }
}

function bare(jid: string): string {
  const slash = jid.indexOf('/');
  return (slash < 0 ? jid : jid.slice(0, slash)).toLowerCase();
}

function result(iq: Element, child: Element | undefined): Element {
  return xml('iq', { type: 'result', id: iq.attrs.id, to: iq.attrs.from, from: iq.attrs.to }, ...(child ? [child] : []));
}

/** Bytes of the reply to `iq` with an empty `<kms/>` (its start and end tags written out), as the stream carries it. */
function replyEnvelopeBytes(iq: Element): number {
  const one = result(iq, xml('kms', { xmlns: NS }, xml('message', {}, 'x'))).toString();
  return Buffer.byteLength(one) - MESSAGE_WRAPPING - 1;
}

function errorReply(iq: Element, error: Element): Element {
  return xml('iq', { type: 'error', id: iq.attrs.id, to: iq.attrs.from, from: iq.attrs.to }, error);
}
