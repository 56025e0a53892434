// `@xmpp/xml/lib/parse.js` (a file of @xmpp/xml 0.14 that @types/xmpp__xml does not cover): parses
// a whole XML document. Used inside the client library and in tests; no built declaration refers to it.
declare module '@xmpp/xml/lib/parse.js' {
  import type { Element } from '@xmpp/xml';
  /** Parses one complete XML document into an element tree; throws XMLError when it is not well-formed. */
  export default function parse(data: string): Element;
}
