// Minimal types for `@xmpp/component` 0.13.1 (CommonJS, ships no types, no @types package exists).
// Shipped with the package: src/xmpp/component.ts references this file, and so does its built
// declaration (dist/xmpp/component.d.ts). Only what this project uses is declared; widen it when you need more. Elements are ltx elements
// from the component's own @xmpp/xml 0.13, which interoperate with the 0.14 `xml()` of @xmpp/client.
// Source of truth: node_modules/@xmpp/component/index.js, @xmpp/component-core/lib/Component.js,
// @xmpp/connection (0.13), @xmpp/middleware (0.13), @xmpp/iq/{caller,callee}.js (0.13),
// @xmpp/reconnect (0.13).

declare module '@xmpp/component' {
  import type { EventEmitter } from 'node:events';

  type Element = import('@xmpp/xml').Element;

  /** The XMPP address type of @xmpp/jid 0.13. */
  export interface JID {
    local: string;
    domain: string;
    resource: string;
    toString(): string;
    bare(): JID;
    equals(other: JID): boolean;
  }

  export type ConnectionStatus =
    | 'offline'
    | 'connecting'
    | 'connect'
    | 'opening'
    | 'open'
    | 'online'
    | 'closing'
    | 'close'
    | 'disconnecting'
    | 'disconnect';

  export interface ComponentOptions {
    /** e.g. `xmpp://127.0.0.1:5347` (the port defaults to 5347). */
    service: string;
    /** The component's own domain, e.g. `kms.localhost`. */
    domain: string;
    /** The XEP-0114 shared secret, or a function that hands it to `authenticate`. */
    password: string | ((authenticate: (password: string) => Promise<void>) => Promise<void>);
  }

  /** Incoming stanza context of @xmpp/middleware 0.13. */
  export interface IncomingContext {
    stanza: Element;
    entity: Component;
    name: string;
    id: string;
    type: string;
    from: JID | null;
    to: JID | null;
    local: string;
    domain: string;
    resource: string;
    /** The single child of an IQ get/set, set by the iqCallee middleware. */
    element?: Element;
  }

  /** A middleware returns the reply to send (an element), or calls `next()` to pass. */
  export type Middleware = (ctx: IncomingContext, next: () => Promise<unknown>) => unknown;

  export interface MiddlewareApi {
    use(fn: Middleware): Middleware;
    filter(fn: Middleware): Middleware;
  }

  /** A handler returns the reply child, `true`/`{}` for an empty result, or an `<error/>`. */
  export type IqHandler = (ctx: IncomingContext & { element: Element }, next: () => Promise<unknown>) => unknown;

  export interface IqCallee {
    get(ns: string, name: string, handler: IqHandler): void;
    set(ns: string, name: string, handler: IqHandler): void;
  }

  export interface IqCaller {
    request(stanza: Element, timeout?: number): Promise<Element>;
    get(element: Element, to?: string, timeout?: number): Promise<Element | undefined>;
    set(element: Element, to?: string, timeout?: number): Promise<Element | undefined>;
  }

  /** Reconnects `delay` ms after every `disconnect` event, until `stop()`. Started on creation. */
  export interface Reconnect extends EventEmitter {
    delay: number;
    start(): void;
    stop(): void;
    reconnect(): Promise<void>;
    on(event: 'reconnecting' | 'reconnected', listener: () => void): this;
    on(event: 'error', listener: (err: Error) => void): this;
  }

  export interface Component extends EventEmitter {
    readonly status: ConnectionStatus;
    readonly jid: JID | null;
    readonly options: ComponentOptions;
    /** Default timeout (ms) of stream opening/closing and `sendReceive`. */
    timeout: number;
    entity: Component;
    reconnect: Reconnect;
    middleware: MiddlewareApi;
    iqCaller: IqCaller;
    iqCallee: IqCallee;

    /** Connects, opens the stream, authenticates; resolves when online. */
    start(): Promise<JID>;
    /** Closes the stream and the socket; resolves when offline. Does not stop `reconnect`. */
    stop(): Promise<Element | undefined>;
    /** Adds `from` (the component's JID) when missing, then writes the stanza. */
    send(element: Element): Promise<void>;
    sendReceive(element: Element, timeout?: number): Promise<Element>;
    write(data: string): Promise<void>;
    disconnect(timeout?: number): Promise<void>;

    on(event: 'online', listener: (jid: JID) => void): this;
    on(event: 'offline' | 'disconnect' | 'close', listener: (arg?: unknown) => void): this;
    on(event: 'status', listener: (status: ConnectionStatus, ...args: unknown[]) => void): this;
    on(event: 'stanza' | 'element' | 'nonza', listener: (element: Element) => void): this;
    on(event: 'error', listener: (err: Error & { condition?: string }) => void): this;
    on(event: 'input' | 'output', listener: (data: string) => void): this;
    on(event: string, listener: (...args: any[]) => void): this;
  }

  export function component(options: ComponentOptions): Component;
  export const xml: typeof import('@xmpp/xml').default;
  export function jid(address: string): JID;
  export function jid(local: string | null, domain: string, resource?: string): JID;
}
