/**
 * The XMPP-level error table of the KMS binding (xep/kms.xml, "Error Handling"): failures of the
 * transport binding itself, answered as stanza errors with an application-specific condition in
 * our namespace (RFC 6120 §8.3.2). KMS-level failures never come here: they stay KMS responses
 * inside `<message/>` (see src/protocol/errors.ts). A test keeps this table and the XEP's table in step.
 */
import xml, { type Element } from '@xmpp/xml';
import { NS, NS_STANZAS } from './namespace.js';

/** The error types of RFC 6120 §8.3.2. */
export type StanzaErrorType = 'auth' | 'cancel' | 'continue' | 'modify' | 'wait';

/** The defined conditions of RFC 6120 §8.3.3. */
export type StanzaErrorCondition =
  | 'bad-request'
  | 'conflict'
  | 'feature-not-implemented'
  | 'forbidden'
  | 'gone'
  | 'internal-server-error'
  | 'item-not-found'
  | 'jid-malformed'
  | 'not-acceptable'
  | 'not-allowed'
  | 'not-authorized'
  | 'policy-violation'
  | 'recipient-unavailable'
  | 'redirect'
  | 'registration-required'
  | 'remote-server-not-found'
  | 'remote-server-timeout'
  | 'resource-constraint'
  | 'service-unavailable'
  | 'subscription-required'
  | 'undefined-condition'
  | 'unexpected-request';

/** Every XMPP-level error of the binding: key (the application-specific element), type, condition, default text. */
export const STANZA_ERRORS = {
  'unknown-payload': {
    type: 'cancel',
    condition: 'feature-not-implemented',
    text: 'This component does not handle that payload.',
  },
  'malformed-payload': {
    type: 'modify',
    condition: 'bad-request',
    text: 'The payload does not follow urn:xmpp:kms:0.',
  },
  'payload-too-large': {
    type: 'modify',
    condition: 'not-acceptable',
    text: 'A message or the stanza exceeds the size limit.',
  },
  'too-many-messages': {
    type: 'modify',
    condition: 'policy-violation',
    text: 'Too many messages in one request.',
  },
  'rate-limited': {
    type: 'wait',
    condition: 'resource-constraint',
    text: 'Request rate exceeded; retry later.',
  },
  'shutting-down': {
    type: 'wait',
    condition: 'service-unavailable',
    text: 'The key management service is stopping; retry later.',
  },
  'internal-error': {
    type: 'wait',
    condition: 'internal-server-error',
    text: 'Unexpected failure; nothing was changed.',
  },
} as const satisfies Record<string, { type: StanzaErrorType; condition: StanzaErrorCondition; text: string }>;

/** The application-specific condition of an XMPP-level error, e.g. `'rate-limited'`. */
export type StanzaErrorKey = keyof typeof STANZA_ERRORS;

/** An XMPP-level error as read back from a reply. */
export interface ParsedStanzaError {
  key: StanzaErrorKey;
  type: string;
  condition: string;
  text: string | undefined;
}

/** True when `name` is one of the binding's application-specific error conditions. */
export function isStanzaErrorKey(name: string): name is StanzaErrorKey {
  return Object.hasOwn(STANZA_ERRORS, name);
}

/**
 * Builds the `<error/>` child of an IQ error reply: the defined condition, a text, then the
 * application-specific condition (the order RFC 6120 §8.3.2 gives).
 *
 * @example iq.append(stanzaError('too-many-messages', 'at most 16 messages per request'))
 */
export function stanzaError(key: StanzaErrorKey, text?: string): Element {
  const entry = STANZA_ERRORS[key];
  return xml(
    'error',
    { type: entry.type },
    xml(entry.condition, { xmlns: NS_STANZAS }),
    xml('text', { xmlns: NS_STANZAS }, text ?? entry.text),
    xml(key, { xmlns: NS }),
  );
}

/**
 * Reads a binding error back from an `<iq type='error'/>` (or its `<error/>` child), so that a
 * client can rethrow the same error. Returns `undefined` when the error carries no condition of
 * ours, e.g. `<remote-server-timeout/>` from the XMPP server while the component is offline.
 *
 * @example const e = parseStanzaError(reply); if (e?.key === 'rate-limited') await backOff();
 */
export function parseStanzaError(el: Element): ParsedStanzaError | undefined {
  const error = el.is('error') ? el : el.getChild('error');
  if (!error) return undefined;
  const children = error.getChildElements();
  const app = children.find((c) => c.getNS() === NS && isStanzaErrorKey(c.getName()));
  if (!app) return undefined;
  const condition = children.find((c) => c.getNS() === NS_STANZAS && c.getName() !== 'text');
  const text = error.getChild('text', NS_STANZAS);
  return {
    key: app.getName() as StanzaErrorKey,
    type: error.attrs.type ?? '',
    condition: condition?.getName() ?? 'undefined-condition',
    text: text ? text.getText() : undefined,
  };
}
