// Minimal types for `@xmpp/client` 0.14 (the package ships none): what this project uses.
declare module '@xmpp/client' {
  import type { EventEmitter } from 'node:events';
  type Element = import('@xmpp/xml').Element;

  export interface ClientOptions {
    service: string;
    domain: string;
    resource?: string;
    username?: string;
    password?: string;
    /** Chooses the SASL mechanism and hands over the credentials (e.g. PLAIN on loopback). */
    credentials?: (authenticate: (creds: { username: string; password: string }, mechanism: string, userAgent?: unknown) => Promise<void>, mechanisms: string[], fast?: unknown) => Promise<void>;
  }

  export interface Client extends EventEmitter {
    readonly status: string;
    readonly jid: { toString(): string; bare(): { toString(): string } } | null;
    timeout: number;
    reconnect: { delay: number; stop(): void };
    iqCaller: { request(stanza: Element, timeout?: number): Promise<Element>; get(el: Element, to?: string, timeout?: number): Promise<Element | undefined>; set(el: Element, to?: string, timeout?: number): Promise<Element | undefined> };
    start(): Promise<unknown>;
    stop(): Promise<unknown>;
    send(el: Element): Promise<void>;
    write(data: string): Promise<void>;
    on(event: 'stanza', listener: (el: Element) => void): this;
    on(event: 'error', listener: (err: Error) => void): this;
    on(event: 'online', listener: (jid: unknown) => void): this;
    on(event: string, listener: (...args: any[]) => void): this;
  }

  export function client(options: ClientOptions): Client;
  export const xml: typeof import('@xmpp/xml').xml;
}
