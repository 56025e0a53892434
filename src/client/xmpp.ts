/**
 * The XMPP binding on the client side (xep/kms.xml): fetch and validate the KMS's static key,
 * and a transport that carries compact JOSE messages to the component in `<kms/>` IQs. Works with
 * any xmpp.js entity (an `@xmpp/client` connection); the XMPP server is not trusted, so the key
 * is only accepted with a certificate chain to the caller's trust anchors for the kid's host.
 */
import type { KeyObject, X509Certificate } from 'node:crypto';
import { xml, type Element } from '@xmpp/xml';
import { NS } from '../protocol/namespace.js';
import { parseStanzaError, type ParsedStanzaError } from '../protocol/stanza-errors.js';
import { importPublicJwk } from '../crypto/keys.js';
import { certificateMatchesHost, validateChain } from '../crypto/x509.js';
import type { Transport } from './session.js';

/** The part of an xmpp.js entity the binding uses. */
export interface XmppEntity {
  iqCaller: { request(stanza: Element, timeout?: number): Promise<Element> };
}

/** An XMPP-level refusal (a stanza error), rebuilt from the reply. */
export class KmsStanzaError extends Error {
  readonly key: ParsedStanzaError['key'] | undefined;
  readonly condition: string;
  readonly type: string;

  constructor(parsed: ParsedStanzaError | undefined, condition: string, type: string, text?: string) {
    super(text ?? parsed?.text ?? condition);
    this.name = 'KmsStanzaError';
    this.key = parsed?.key;
    this.condition = parsed?.condition ?? condition;
    this.type = parsed?.type ?? type;
  }
}

/** Turns the error xmpp.js raises for an `<iq type='error'/>` into a KmsStanzaError. */
function rethrow(e: unknown): never {
  const err = e as Error & { element?: Element; condition?: string; text?: string };
  if (err && err.element) {
    const parsed = parseStanzaError(err.element);
    const errorEl = err.element.getChild('error');
    throw new KmsStanzaError(parsed, err.condition ?? 'undefined-condition', errorEl?.attrs.type ?? 'cancel', err.text);
  }
  throw e;
}

const NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items';
const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';

/**
 * Finds a KMS on an XMPP domain (xep/kms.xml, Discovering the KMS): the domain's disco#items,
 * then disco#info of each item until one has the feature urn:xmpp:kms:0. By feature, never by
 * name or identity. Returns the component's JID, or undefined when the domain offers none.
 */
export async function discoverKms(entity: XmppEntity, domain: string, timeoutMs = 10_000): Promise<string | undefined> {
  let items: Element;
  try {
    items = await entity.iqCaller.request(xml('iq', { type: 'get', to: domain }, xml('query', { xmlns: NS_DISCO_ITEMS })), timeoutMs);
  } catch (e) {
    rethrow(e);
  }
  const jids = (items.getChild('query', NS_DISCO_ITEMS)?.getChildren('item') ?? []).map((i) => i.attrs.jid).filter((j): j is string => !!j);
  for (const jid of jids) {
    const info = await entity.iqCaller
      .request(xml('iq', { type: 'get', to: jid }, xml('query', { xmlns: NS_DISCO_INFO })), timeoutMs)
      .catch(() => undefined);
    if (info?.getChild('query', NS_DISCO_INFO)?.getChildren('feature').some((f) => f.attrs.var === NS)) return jid;
  }
  return undefined;
}

export interface KmsIdentityInfo {
  kid: string;
  key: KeyObject;
  sigAlg: string;
  encAlg: string;
}

/** Asks the component for its static key and accepts it only if the chain validates for the kid's host. */
export async function fetchKmsIdentity(entity: XmppEntity, component: string, anchors: X509Certificate[], timeoutMs = 10_000): Promise<KmsIdentityInfo> {
  let reply: Element;
  try {
    reply = await entity.iqCaller.request(xml('iq', { type: 'get', to: component }, xml('identity', { xmlns: NS })), timeoutMs);
  } catch (e) {
    rethrow(e);
  }
  const id = reply.getChild('identity', NS);
  if (!id) throw new Error(`${component} sent no <identity/>`);
  const kid = id.attrs.kid ?? '';
  if (!kid.startsWith('kms://')) throw new Error(`${component} published a kid that is not kms://<domain>`);
  const x5c = id.getChildren('x5c').map((c) => c.getText().trim());
  const chain = validateChain(x5c, anchors);
  const host = kid.slice('kms://'.length);
  if (!certificateMatchesHost(chain.leaf, host)) throw new Error(`the KMS certificate is not for ${host}`);
  const jwk = importPublicJwk(JSON.parse(id.getChildText('jwk') ?? 'null'));
  if (!jwk.equals(chain.publicKey)) throw new Error('the published key is not the certificate\'s key');
  return { kid, key: chain.publicKey, sigAlg: id.attrs['sig-alg'] ?? '', encAlg: id.attrs['enc-alg'] ?? '' };
}

/** A Transport over XMPP: one `<kms/>` IQ per batch, replies in order. */
export function xmppTransport(entity: XmppEntity, component: string, timeoutMs = 15_000): Transport {
  return async (messages) => {
    const iq = xml('iq', { type: 'set', to: component }, xml('kms', { xmlns: NS }, ...messages.map((m) => xml('message', {}, m))));
    let reply: Element;
    try {
      reply = await entity.iqCaller.request(iq, timeoutMs);
    } catch (e) {
      rethrow(e);
    }
    const kms = reply.getChild('kms', NS);
    const out = kms ? kms.getChildren('message').map((m) => m.getText().trim()) : [];
    if (out.length !== messages.length) throw new Error(`the KMS answered ${out.length} of ${messages.length} messages`);
    return out;
  };
}
