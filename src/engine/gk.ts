/**
 * Group keys: create (-03 §4.6.6), bind (§4.6.7) and get (§4.6.8). The key material is sealed at
 * rest and only ever leaves the KMS wrapped to an entity's registered public key, inside a GK
 * signed by the KMS.
 */
import { randomBytes, randomUUID, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { badRequest, conflict, forbidden, notBound, notFound } from '../protocol/errors.js';
import { parseBody, sha256Hex } from '../protocol/messages.js';
import { MAX_ENTITY_LENGTH, kmsIdentity, requireCanonicalEntity } from '../protocol/entity.js';
import { absoluteUri } from '../protocol/uri.js';
import { encryptJwe } from '../crypto/jwe.js';
import { encode as b64u } from '../crypto/base64url.js';
import { isMemberAt, type EntityKeyRecord, type GkRecord } from '../store/kms-state.js';
import type { EngineDeps, HandlerResult, RequestContext } from './context.js';
import { KeyedMutex } from '../util/mutex.js';
import { resolveEntityKey } from './entity-keys.js';
import { onBehalfOf, type Principal } from './principal.js';

const createBody = z.looseObject({
  block: sha256Hex.optional(),
  kid: z.string().max(128).optional(),
  entity: z.string().min(1).max(MAX_ENTITY_LENGTH).optional(),
});
const bindBody = z.looseObject({ block: sha256Hex, kid: z.string().max(128).optional() });
const getBody = z.looseObject({ entity: z.string().min(1).max(MAX_ENTITY_LENGTH), kid: z.string().max(128).optional() });

const sealContext = (id: string) => `gk:${id}`;

/** The block a hash names, and whether `owner` is a member at it; 404 / 403 otherwise. */
async function requireMemberAtBlock(deps: EngineDeps, hash: string, entity: string): Promise<string> {
  const ref = await deps.state.blockRef(hash);
  if (!ref) throw notFound(`no block ${hash}`);
  if (!isMemberAt(await deps.state.intervals(ref.chain, entity), ref.seq)) throw forbidden(`${entity} is not a member at block ${hash}`);
  return hash;
}

/** The fields of a GK besides its key (-03 §4.6.6). */
export interface GkFields {
  uri: string;
  creator: string;
  created: string;
  block?: string;
}

/**
 * Signs a GK with its key material wrapped for one recipient key: a single-recipient compact JWE
 * (PCG-01 MTI and XEP "Entity Keys"). Also used for a peer's GK re-wrapped for a user of this
 * KMS (XEP "Federation"): the fields are the peer's, the signature this KMS's.
 */
export function signGk(deps: EngineDeps, fields: GkFields, gkKey: KeyObject, recipient: { kid: string; jwk: EntityKeyRecord['jwk'] }): string {
  const raw = gkKey.export();
  const jwk = JSON.stringify({ kty: 'oct', k: b64u(raw), alg: 'A256GCM', kid: fields.uri });
  raw.fill(0);
  const wrapped = encryptJwe(deps.keyObject(recipient.kid, recipient.jwk), jwk, {
    alg: recipient.jwk.kty === 'EC' ? 'ECDH-ES+A256KW' : 'RSA-OAEP',
    enc: 'A256GCM',
    kid: recipient.kid,
  });
  const payload: Record<string, unknown> = { uri: fields.uri, creator: fields.creator, created: fields.created };
  if (fields.block) payload.block = fields.block;
  payload.key = wrapped;
  return deps.signAsKms(payload);
}

/**
 * Builds the signed GK with its key wrapped for one entity key, or, for a federating KMS
 * (XEP "Federation"), for the key its credential presented: that KMS re-wraps it for its user.
 */
async function issue(
  deps: EngineDeps,
  gk: GkRecord,
  entity: string,
  kid: string | undefined,
  gkKey = deps.unsealedKey(gk, sealContext(gk.id)),
  peer?: Principal,
): Promise<string> {
  const key = peer?.key ? { kid: peer.key.thumbprint, jwk: peer.key.jwk as EntityKeyRecord['jwk'] } : await resolveEntityKey(deps, entity, kid);
  return signGk(deps, { uri: gk.uri, creator: kmsIdentity(deps.config.domain), created: gk.created, ...(gk.block ? { block: gk.block } : {}) }, gkKey, key);
}

/** post /gks: a new GK, unbound or bound at once to a block; wrapped for the requester. */
export async function createGk(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  if (principal.kind !== 'user' && !principal.peer) throw forbidden('only users, and federating KMSes for their users, create group keys');
  const body = parseBody(createBody, ctx.req.body);
  // XEP "Federation": a peer creates for the user it names, who owns the key.
  const owner = onBehalfOf(principal, body.entity)!;
  const id = randomUUID();
  const gk: GkRecord = {
    id,
    uri: absoluteUri(deps.config.domain, 'gks', id),
    created: ctx.now.toISOString(),
    owner,
    clientId: ctx.req.clientId,
    key: '',
  };
  if (body.block !== undefined) gk.block = await requireMemberAtBlock(deps, body.block, owner);
  const raw = randomBytes(32);
  deps.sealKey(gk, raw, sealContext(id));
  raw.fill(0);
  // Wrap before storing: a requester without an entity key gets a 4xx and nothing is kept.
  const signed = await issue(deps, gk, owner, body.kid, undefined, principal.peer ? principal : undefined);
  await deps.state.putGk(gk);
  return { status: 201, body: { gk: signed } };
}

const bindLocks = new KeyedMutex();

async function requireGk(deps: EngineDeps, segments: string[]): Promise<GkRecord> {
  const id = segments[0];
  const gk = id === undefined ? undefined : await deps.state.gk(id);
  if (!gk) throw notFound(`no group key ${id ?? ''}`);
  return gk;
}

/** post <gk uri>: binds an unbound GK to a block; only its owner, at a block where the owner is a member. */
export async function bindGk(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  const body = parseBody(bindBody, ctx.req.body);
  const found = await requireGk(deps, ctx.segments);
  return bindLocks.run(found.id, async () => {
    const gk = (await deps.state.gk(found.id))!;
    if (principal.kind !== 'user') throw forbidden('group keys are bound by their owners themselves, not through federation');
    if (gk.owner !== principal.id) throw forbidden(`only the owner may bind ${gk.uri}`);
    const block = await requireMemberAtBlock(deps, body.block, principal.id);
    if (gk.block !== undefined && gk.block !== block) throw conflict(`${gk.uri} is already bound to another block`);
    const next: GkRecord = { ...gk, block };
    // The key is the one already unsealed for `gk` (`next` is a new record object, unknown to that cache).
    const signed = await issue(deps, next, principal.id, body.kid, deps.unsealedKey(gk, sealContext(gk.id)));
    // Conditional on the GK being still unbound (several instances on one store): one bind wins.
    if (gk.block === undefined && (await deps.state.bindGk(gk.id, block))?.block !== block) throw conflict(`${gk.uri} is already bound to another block`);
    return { status: 200, body: { gk: signed } };
  });
}

/** get <gk uri>: the GK wrapped for `entity`, if the retrieval policy lets that entity have it (-03 §4.6.8). */
export async function getGk(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  const body = parseBody(getBody, ctx.req.body);
  const entity = requireCanonicalEntity(body.entity, 'entity');
  // XEP "Group Key Retrieval Policy": users fetch for themselves; only trusted services act for
  // others, and a federating KMS only for users of the domains it speaks for (XEP "Federation").
  if (principal.kind === 'user' && entity !== principal.id) throw forbidden(`${principal.id} may not fetch keys for ${entity}`);
  onBehalfOf(principal, entity);
  const gk = await requireGk(deps, ctx.segments);
  if (gk.block === undefined) {
    // An unbound GK is its owner's alone until it is bound (-02's unbound keys; XEP "Group Key
    // Retrieval Policy"). Anyone else hears NOT_BOUND (409), not FORBIDDEN: the owner may bind it
    // later (a file shared under a key made ahead of time), and the client retries (XEP "Sharing a File").
    if (entity !== gk.owner) throw notBound(`${gk.uri} is not bound to a block yet`);
  } else if (!(await policyAllows(deps, gk.block, entity))) {
    throw forbidden(`${entity} may not have ${gk.uri} under retrieval policy ${deps.config.policy}`);
  }
  if (body.kid !== undefined && body.kid.length === 0) throw badRequest('kid must not be empty');
  return { status: 200, body: { gk: await issue(deps, gk, entity, body.kid, undefined, principal.peer ? principal : undefined) } };
}

/** -03 §4.6.8 policies: 1 member at the bound block; 2 member at the tail; 3 both. */
async function policyAllows(deps: EngineDeps, block: string, entity: string): Promise<boolean> {
  const ref = await deps.state.blockRef(block);
  if (!ref) return false;
  const chain = await deps.state.chain(ref.chain);
  if (!chain) return false;
  const intervals = await deps.state.intervals(ref.chain, entity);
  const atBlock = isMemberAt(intervals, ref.seq);
  const atTail = isMemberAt(intervals, chain.length - 1);
  switch (deps.config.policy) {
    case 1:
      return atBlock;
    case 2:
      return atTail;
    case 3:
      return atBlock && atTail;
  }
}
