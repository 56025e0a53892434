/**
 * The XMPP binding on the client side (xep/kms.xml): fetch and validate the KMS's static key,
 * and a transport that carries compact JOSE messages to the component in `<kms/>` IQs. Works with
 * any xmpp.js entity (an `@xmpp/client` connection); the XMPP server is not trusted, so the key
 * is only accepted with a certificate chain to the caller's trust anchors for the kid's host.
 */
import xml, { type Element } from '@xmpp/xml';
import { NS } from '../protocol/namespace.js';
import { parseStanzaError } from '../protocol/stanza-errors.js';
import { b64uDecode, publicJwk, type JWK } from './webcrypto.js';
import { certificateMatchesHost, validateChain, type TrustAnchor, type ValidatedChain } from './x509.js';
import type { Transport } from './session.js';
import { BadResponseError, IdentityValidationError, KmsStanzaError, KmsTimeoutError } from './errors.js';

export { KmsStanzaError } from './errors.js';

/** The part of an xmpp.js entity the binding uses. */
export interface XmppEntity {
  iqCaller: { request(stanza: Element, timeout?: number): Promise<Element> };
  /** The connection's status ('online' when stanzas can be sent), as an @xmpp/client entity has it. */
  readonly status?: string;
}

/** Node's codes for a socket that failed or was closed under a write (ECONNRESET, EPIPE, a destroyed stream). */
const CONNECTION_LOST = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ENOTCONN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ERR_STREAM_DESTROYED',
  'ERR_STREAM_WRITE_AFTER_END',
  'ERR_SOCKET_CLOSED',
]);

/** True for Node's error of a socket that failed or closed (by its `code`, never by its message). */
export function isConnectionLost(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && CONNECTION_LOST.has(code);
}

/**
 * Turns what an xmpp.js IQ request rejects with into the library's errors, by class and code:
 *   - a StanzaError (@xmpp/middleware builds it from the reply's `<error/>` element, with the
 *     element as `element` and its type as `type`) becomes a KmsStanzaError;
 *   - @xmpp/events' TimeoutError, a socket error, or any failure while the connection is not
 *     online (xmpp.js writes to a closed or missing socket) becomes a KmsTimeoutError;
 *   - anything else is rethrown as it is.
 */
function rethrow(e: unknown, entity: XmppEntity, to: string, timeoutMs: number): never {
  const err = e as (Error & { element?: Element; condition?: string; text?: string; type?: string }) | undefined;
  if (err?.name === 'StanzaError' && err.element) {
    // err.element is the <error/> element itself, not the IQ.
    const parsed = parseStanzaError(err.element);
    throw new KmsStanzaError(parsed, err.condition ?? 'undefined-condition', err.type ?? err.element.attrs.type ?? '', err.text);
  }
  if (err?.name === 'TimeoutError') throw new KmsTimeoutError(`no answer from ${to} within ${timeoutMs} ms`, { cause: e });
  if (isConnectionLost(e)) throw new KmsTimeoutError(`the XMPP connection was lost before ${to} answered`, { cause: e });
  if (entity.status !== undefined && entity.status !== 'online') {
    throw new KmsTimeoutError(`the XMPP connection is ${entity.status}, not online: no answer from ${to}`, { cause: e });
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
    rethrow(e, entity, domain, timeoutMs);
  }
  const jids = (items.getChild('query', NS_DISCO_ITEMS)?.getChildren('item') ?? []).map((i) => i.attrs.jid).filter((j): j is string => !!j);
  for (const jid of jids) {
    const info = await entity.iqCaller.request(xml('iq', { type: 'get', to: jid }, xml('query', { xmlns: NS_DISCO_INFO })), timeoutMs).catch(() => undefined);
    if (
      info
        ?.getChild('query', NS_DISCO_INFO)
        ?.getChildren('feature')
        .some((f) => f.attrs.var === NS)
    )
      return jid;
  }
  return undefined;
}

export interface KmsIdentityInfo {
  kid: string;
  /** The validated static key, a public JWK. */
  key: JWK;
  sigAlg: string;
  encAlg: string;
}

/**
 * Asks the component for its static key and accepts it only after the checks of XEP "Validating
 * the Static Key": a certificate chain to `anchors`, a first certificate for the kid's host, that
 * host the component's own domain, and the published key the certificate's. Any failed check is
 * an IdentityValidationError (a KmsStanzaError or KmsTimeoutError when the component did not answer).
 */
export async function fetchKmsIdentity(entity: XmppEntity, component: string, anchors: TrustAnchor[], timeoutMs = 10_000): Promise<KmsIdentityInfo> {
  let reply: Element;
  try {
    reply = await entity.iqCaller.request(xml('iq', { type: 'get', to: component }, xml('identity', { xmlns: NS })), timeoutMs);
  } catch (e) {
    rethrow(e, entity, component, timeoutMs);
  }
  const id = reply.getChild('identity', NS);
  if (!id) throw new IdentityValidationError(`${component} sent no <identity/>`);
  const kid = id.attrs.kid ?? '';
  if (!kid.startsWith('kms://')) throw new IdentityValidationError(`${component} published a kid that is not kms://<domain>`);
  const host = kid.slice('kms://'.length);
  if (host.toLowerCase() !== component.toLowerCase()) throw new IdentityValidationError(`${component} published the key of another KMS (${kid})`);
  const x5c = id.getChildren('x5c').map((c) => c.getText().trim());
  let chain: ValidatedChain;
  try {
    chain = await validateChain(x5c, anchors);
  } catch (e) {
    throw new IdentityValidationError(`the KMS certificate chain does not validate: ${(e as Error).message}`, { cause: e });
  }
  if (!certificateMatchesHost(chain.leaf, host)) throw new IdentityValidationError(`the KMS certificate is not for ${host}`);
  let jwk: JWK;
  let published: unknown;
  try {
    published = JSON.parse(id.getChildText('jwk') ?? 'null');
    jwk = publicJwk(published as JWK);
  } catch (e) {
    throw new IdentityValidationError(`${component} published a <jwk/> that is not a public key: ${(e as Error).message}`, { cause: e });
  }
  const key = chain.publicJwk;
  if (!sameKey(jwk, key)) throw new IdentityValidationError("the published key is not the certificate's key");
  // XEP "Validating the Static Key" rules 3 and 4: the JWK's own kid, if any, is the kid; the
  // algorithms fit the key type (PS256 and RSA-OAEP for RSA of 2048 bits or more, ES256 and ECDH-ES for P-256).
  const jwkKid = (published as { kid?: unknown }).kid;
  if (jwkKid !== undefined && jwkKid !== kid) throw new IdentityValidationError(`the <jwk/> names kid ${String(jwkKid).slice(0, 100)}, not ${kid}`);
  const sigAlg = id.attrs['sig-alg'] ?? '';
  const encAlg = id.attrs['enc-alg'] ?? '';
  const fits =
    key.kty === 'RSA'
      ? rsaBits(key) >= 2048 && (sigAlg === 'PS256' || sigAlg === 'RS256') && encAlg === 'RSA-OAEP'
      : key.kty === 'EC' && key.crv === 'P-256' && sigAlg === 'ES256' && encAlg === 'ECDH-ES';
  if (!fits) throw new IdentityValidationError(`sig-alg ${sigAlg} and enc-alg ${encAlg} do not fit the static key (${key.kty?.toLowerCase()})`);
  return { kid, key, sigAlg, encAlg };
}

/** Are two public JWKs the same key? */
function sameKey(a: JWK, b: JWK): boolean {
  return a.kty === b.kty && (a.kty === 'RSA' ? a.n === b.n && a.e === b.e : a.crv === b.crv && a.x === b.x && a.y === b.y);
}

/** The modulus length of an RSA public JWK in bits. */
function rsaBits(jwk: JWK): number {
  const n = b64uDecode(jwk.n ?? '');
  return n.length === 0 ? 0 : (n.length - 1) * 8 + (32 - Math.clz32(n[0]!));
}

/** A Transport over XMPP: one `<kms/>` IQ per batch, replies in order. */
export function xmppTransport(entity: XmppEntity, component: string, timeoutMs = 15_000): Transport {
  return async (messages) => {
    const iq = xml('iq', { type: 'set', to: component }, xml('kms', { xmlns: NS }, ...messages.map((m) => xml('message', {}, m))));
    let reply: Element;
    try {
      reply = await entity.iqCaller.request(iq, timeoutMs);
    } catch (e) {
      rethrow(e, entity, component, timeoutMs);
    }
    const kms = reply.getChild('kms', NS);
    const out = kms ? kms.getChildren('message').map((m) => m.getText().trim()) : [];
    if (out.length !== messages.length) throw new BadResponseError(`the KMS answered ${out.length} of ${messages.length} messages`);
    return out;
  };
}
