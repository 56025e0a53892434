/**
 * The engine's handlers for requests that belong to a peer KMS (xep/kms.xml "Federation"): a user
 * of this KMS asks it for a group key or a chain whose URI has the peer's authority, for the keys
 * of a peer's user, or for a peer's static key. This KMS asks the peer on the user's behalf
 * (src/federation/peers.ts), checks what comes back, and answers the user as for its own objects:
 * a group key is unwrapped with this KMS's static key, wrapped again for the user's entity key and
 * signed by this KMS; chains and entity keys pass as they are (the user verifies them).
 */
import { createSecretKey, type JsonWebKey } from 'node:crypto';
import { z } from 'zod';
import { KmsError, badRequest, forbidden, peerFailed, type KmsServerCode } from '../protocol/errors.js';
import { parseBody, sha256Hex } from '../protocol/messages.js';
import { MAX_ENTITY_LENGTH, requireCanonicalEntity } from '../protocol/entity.js';
import { kmsAuthority } from '../protocol/federation.js';
import { encodeSegment } from '../protocol/uri.js';
import { decryptJwe } from '../crypto/jwe.js';
import { decodeCompactJws, signatureAlgsFor, verifyDecoded } from '../crypto/jws.js';
import { importPublicJwk } from '../crypto/keys.js';
import { decode as b64uDecode } from '../crypto/base64url.js';
import { KmsResponseError } from '../client/errors.js';
import type { HandlerResult, RequestContext } from '../engine/context.js';
import { resolveEntityKey } from '../engine/entity-keys.js';
import { signGk } from '../engine/gk.js';
import { onBehalfOf } from '../engine/principal.js';
import type { FederationPeer, PeerLinks } from './peers.js';

const getGkBody = z.looseObject({ entity: z.string().min(1).max(MAX_ENTITY_LENGTH), kid: z.string().max(128).optional() });
const createGkBody = z.looseObject({ block: sha256Hex, kid: z.string().max(128).optional() });
const getChainBody = z.looseObject({ antecedent: z.string().max(128).optional() });

/** The peer's answer, or its refusal as this KMS's (same code and status, the reason naming the peer); no answer is 502. */
async function ask(links: PeerLinks, peer: FederationPeer, method: string, uri: string, body: Record<string, unknown>) {
  try {
    return await links.request(peer, method, uri, body);
  } catch (e) {
    // A 401 is the peer refusing this KMS's own credential: the user's request is not at fault (XEP "Federation").
    if (e instanceof KmsResponseError && e.status === 401) throw peerFailed(`${peer.kms} refused this KMS's credential: ${e.message}`, e);
    if (e instanceof KmsResponseError) {
      const code = e.code as KmsServerCode;
      throw new KmsError(code === 'PEER_FAILED' ? 'PEER_FAILED' : code, `${peer.kms}: ${e.message}`, { status: e.status });
    }
    throw peerFailed(`no valid answer from ${peer.kms}: ${(e as Error).message}`, e);
  }
}

/** A request for an object of `peer` (an absolute URI with its authority), made for the requesting user. */
export async function forwardToPeer(
  ctx: RequestContext,
  links: PeerLinks,
  peer: FederationPeer,
  verb: 'create' | 'read' | 'update' | 'delete',
): Promise<HandlerResult> {
  const { principal, req } = ctx;
  // Requests a peer makes for its users are answered here, never passed on to a third KMS.
  if (principal.kind !== 'user') throw forbidden('a request made through federation is not forwarded again');
  const [collection, id, ...rest] = ctx.segments;
  if (rest.length > 0) throw badRequest(`no such resource ${req.uri}`);
  const user = principal.id;
  if (collection === 'gks' && id !== undefined && verb === 'read') {
    const body = parseBody(getGkBody, req.body);
    onBehalfOf(principal, body.entity);
    const res = await ask(links, peer, 'get', req.uri, { entity: user });
    return { status: 200, body: { gk: await rewrap(ctx, links, peer, res.gk, body.kid, req.uri) } };
  }
  if (collection === 'gks' && id === undefined && verb === 'create') {
    const body = parseBody(createGkBody, req.body);
    const res = await ask(links, peer, 'post', `kms://${peer.kms}/gks`, { block: body.block, entity: user });
    return { status: 201, body: { gk: await rewrap(ctx, links, peer, res.gk, body.kid) } };
  }
  if (collection === 'blocks' && id !== undefined && verb === 'read') {
    const body = parseBody(getChainBody, req.body);
    const res = await ask(links, peer, 'get', req.uri, { entity: user, ...(body.antecedent !== undefined ? { antecedent: body.antecedent } : {}) });
    if (!Array.isArray(res.blocks) || !res.blocks.every((b) => typeof b === 'string')) throw peerFailed(`${peer.kms} answered a chain without "blocks"`);
    return { status: 200, body: { blocks: res.blocks, more: res.more === true } };
  }
  // Appends and binds go to the KMS that keeps the chain, by its own users (XEP "Federation").
  throw forbidden(
    `${req.method} on ${collection ?? '/'} of ${peer.kms} is not available through federation: only reading chains and creating and getting group keys are`,
  );
}

/** get /entity-keys/<entity> for a user of a peer's domain: the peer's answer as it is. */
export async function forwardEntityKeys(ctx: RequestContext, links: PeerLinks, peer: FederationPeer, entity: string): Promise<HandlerResult> {
  if (ctx.principal.kind !== 'user') throw forbidden('a request made through federation is not forwarded again');
  const res = await ask(links, peer, 'get', `/entity-keys/${encodeSegment(entity)}`, {});
  if (!Array.isArray(res.entityKeys)) throw peerFailed(`${peer.kms} answered without "entityKeys"`);
  return { status: 200, body: { entityKeys: res.entityKeys } };
}

/** get /peers/<kms>: a peer's static key as this KMS validated it (users verify the peer's genesis blocks with it). */
export async function peerKey(links: PeerLinks, peer: FederationPeer): Promise<HandlerResult> {
  let identity: Awaited<ReturnType<PeerLinks['identity']>>;
  try {
    identity = await links.identity(peer);
  } catch (e) {
    throw peerFailed(`the static key of ${peer.kms} is not available: ${(e as Error).message}`, e);
  }
  return { status: 200, body: { kid: identity.kid, jwk: identity.key } };
}

/**
 * The peer's signed GK, checked (its signature by the peer's validated static key, its URI of
 * the peer, the one asked for) and unwrapped with this KMS's static key, then wrapped for the
 * user's entity key and signed by this KMS.
 */
async function rewrap(
  ctx: RequestContext,
  links: PeerLinks,
  peer: FederationPeer,
  gkJws: unknown,
  kid: string | undefined,
  expected?: string,
): Promise<string> {
  const { deps, principal } = ctx;
  if (typeof gkJws !== 'string') throw peerFailed(`${peer.kms} answered without a group key`);
  const identity = await links.identity(peer);
  let payload: Record<string, unknown>;
  try {
    const decoded = decodeCompactJws(gkJws);
    const key = importPublicJwk(identity.key);
    verifyDecoded(decoded, key, signatureAlgsFor(key));
    payload = JSON.parse(decoded.payload.toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    throw peerFailed(`the group key from ${peer.kms} is not signed by its static key`, e);
  }
  const { uri, creator, created, block, key } = payload;
  if (typeof uri !== 'string' || kmsAuthority(uri) !== peer.kms || (expected !== undefined && uri !== expected)) {
    throw peerFailed(`${peer.kms} answered with another group key (${String(uri).slice(0, 100)})`);
  }
  if (creator !== `kms://${peer.kms}` || typeof created !== 'string' || typeof key !== 'string' || (block !== undefined && typeof block !== 'string')) {
    throw peerFailed(`the group key from ${peer.kms} is malformed`);
  }
  let secret: Buffer;
  try {
    const { plaintext } = decryptJwe(key, deps.identity.privateKey, { alg: deps.identity.handshakeAlgs, enc: ['A256GCM'] });
    const jwk = JSON.parse(plaintext.toString('utf8')) as { kty?: unknown; k?: unknown; kid?: unknown };
    if (jwk.kty !== 'oct' || jwk.kid !== uri || typeof jwk.k !== 'string') throw new Error('not this group key');
    secret = b64uDecode(jwk.k);
    if (secret.length !== 32) throw new Error('not a 256-bit key');
  } catch (e) {
    throw peerFailed(`the group key from ${peer.kms} does not open with this KMS's key`, e);
  }
  const recipient = await resolveEntityKey(deps, requireCanonicalEntity(principal.id, 'entity'), kid);
  const gkKey = createSecretKey(secret);
  secret.fill(0);
  return signGk(deps, { uri, creator, created, ...(block ? { block } : {}) }, gkKey, {
    kid: recipient.kid,
    jwk: recipient.jwk as JsonWebKey & typeof recipient.jwk,
  });
}
