/**
 * Minimal types for `@xmpp/xml` 0.14 (the package ships none): the parts this project uses of
 * ltx's Element, the `xml()` factory and the parser. Extend as needed; keep it to what exists.
 */
declare module '@xmpp/xml' {
  export type Node = Element | string;
  export type Attrs = Record<string, string | number | null | undefined>;
  export type Child = Node | number | null | undefined | false | true | Child[];

  export class Element {
    constructor(name: string, attrs?: Attrs);
    name: string;
    parent: Element | null;
    children: Node[];
    attrs: Record<string, string>;
    /** True when the element has this local name and, if given, this namespace. */
    is(name: string, xmlns?: string): boolean;
    getName(): string;
    getNS(): string | undefined;
    getAttr(name: string, xmlns?: string): string | undefined;
    getChild(name: string, xmlns?: string): Element | undefined;
    getChildren(name: string, xmlns?: string): Element[];
    getChildElements(): Element[];
    getChildText(name: string, xmlns?: string): string | null;
    getText(): string;
    text(): string;
    text(value: string): this;
    attr(name: string): string | undefined;
    attr(name: string, value: string | null): this;
    append(...nodes: Child[]): this;
    c(name: string, attrs?: Attrs): Element;
    t(text: string): this;
    up(): Element;
    root(): Element;
    toString(): string;
  }

  /** Builds an element: `xml('iq', { type: 'get' }, xml('query', { xmlns }))`. */
  export function xml(name: string, attrs?: Attrs | null, ...children: Child[]): Element;
  export default xml;

  export class XMLError extends Error {}

  export class Parser {
    constructor();
    on(event: 'start' | 'element' | 'end', listener: (el: Element) => void): this;
    on(event: 'error', listener: (err: Error) => void): this;
    write(data: string): void;
    end(data?: string): void;
  }

  export function escapeXML(s: string): string;
  export function unescapeXML(s: string): string;
  export function escapeXMLText(s: string): string;
  export function unescapeXMLText(s: string): string;
}

declare module '@xmpp/xml/lib/parse.js' {
  import type { Element } from '@xmpp/xml';
  /** Parses one complete XML document into an element tree; throws XMLError when it is not well-formed. */
  export default function parse(data: string): Element;
}
