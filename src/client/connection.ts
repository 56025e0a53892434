/**
 * The XMPP connection the library needs, from any XMPP client library. KmsClient needs IQs
 * (`XmppEntity`), EncryptedRoom also stanzas in and out (`RoomConnection`); an @xmpp/client
 * `Client` is both. Another client (Strophe.js, Converse, a native bridge) gives serialized
 * stanzas instead, through `xmlConnection`.
 */
import type { Element } from '@xmpp/xml';
import parseXml from '@xmpp/xml/lib/parse.js';
import type { RoomConnection } from './room.js';
import type { XmppEntity } from './xmpp.js';
import { NS_STANZAS } from '../protocol/namespace.js';

/** An XMPP connection that speaks in serialized stanzas (XML text). */
export interface XmlConnection {
  /** Sends one stanza. */
  send(stanza: string): unknown;
  /** Delivers every stanza received to `listener`; returns the function that stops it. */
  subscribe(listener: (stanza: string) => void): () => void;
  /**
   * Sends an IQ of type get or set and resolves with its reply, of type result or error. On a
   * timeout, rejects with an Error named 'TimeoutError' (so that the library retries it).
   */
  request(iq: string, timeoutMs?: number): Promise<string>;
}

/** An IQ error reply, in the shape xmpp.js gives it (the library reads it as a KmsStanzaError). */
class StanzaError extends Error {
  constructor(
    readonly element: Element,
    readonly condition: string,
    readonly type: string,
    readonly text: string | undefined,
  ) {
    super(text || condition);
    this.name = 'StanzaError';
  }
}

/** A connection for KmsClient and EncryptedRoom over a client that speaks in serialized stanzas. */
export function xmlConnection(c: XmlConnection): RoomConnection & XmppEntity {
  const subscriptions = new Map<(el: Element) => void, () => void>();
  return {
    on(_event: 'stanza', listener: (el: Element) => void) {
      if (subscriptions.has(listener)) return;
      const stop = c.subscribe((text) => {
        let el: Element;
        try {
          el = parseXml(text);
        } catch {
          return; // not one stanza: not for us
        }
        listener(el);
      });
      subscriptions.set(listener, stop);
    },
    off(_event: 'stanza', listener: (el: Element) => void) {
      subscriptions.get(listener)?.();
      subscriptions.delete(listener);
    },
    async send(stanza: Element) {
      await c.send(stanza.toString());
    },
    iqCaller: {
      async request(iq: Element, timeoutMs?: number): Promise<Element> {
        const reply = parseXml(await c.request(iq.toString(), timeoutMs));
        if (reply.attrs.type === 'error') {
          const error = reply.getChild('error');
          if (!error) throw new Error('an IQ error reply without <error/>');
          const condition = error.getChildElements().find((e) => e.attrs.xmlns === NS_STANZAS && e.name !== 'text')?.name ?? 'undefined-condition';
          throw new StanzaError(error, condition, error.attrs.type ?? '', error.getChildText('text', NS_STANZAS) ?? undefined);
        }
        return reply;
      },
    },
  };
}
