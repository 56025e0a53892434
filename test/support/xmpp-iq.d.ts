// Minimal types for the xmpp.js internals the client tests drive directly (the packages ship none):
// the IQ caller of @xmpp/iq, with the StanzaError of @xmpp/middleware it rejects with.
declare module '@xmpp/iq/caller.js' {
  type Element = import('@xmpp/xml').Element;
  /** The middleware context iq-caller routes: the reply stanza with its name, type and id. */
  export interface IqContext {
    name: string;
    type: string | undefined;
    id: string | undefined;
    stanza: Element;
  }
  export interface IqCaller {
    request(stanza: Element, timeout?: number): Promise<Element>;
  }
  export default function iqCaller(o: {
    entity: { send(stanza: Element): Promise<void> };
    middleware: { use(fn: (ctx: IqContext, next: () => unknown) => unknown): void };
  }): IqCaller;
}

declare module '@xmpp/middleware/lib/StanzaError.js' {
  type Element = import('@xmpp/xml').Element;
  export default class StanzaError extends Error {
    condition: string;
    text: string;
    type: string;
    element: Element;
    static fromElement(element: Element): StanzaError;
  }
}
