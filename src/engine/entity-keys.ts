/**
 * Entity keys: an extension to -03, which never says where members' public keys come from
 * (XEP "Registering an Entity Key"). A key becomes an entity's key only through that entity's own
 * authenticated channel and a proof of possession: a JWS by the key over the entity, the channel's
 * ephemeral key URI and a fresh `iat`. The transport's word is never enough.
 *
 *   post /entity-keys { jwk, proof }   register (201; 200 when already registered)
 *   get  /entity-keys/<entity>         list an entity's public keys (200)
 *   delete /entity-keys/<kid>          the owner removes one of its keys (204)
 */
import { z } from 'zod';
import { badRequest, forbidden, notFound, unsupported } from '../protocol/errors.js';
import { parseBody, parseJsonOr400 } from '../protocol/messages.js';
import { requireCanonicalEntity } from '../protocol/entity.js';
import { refusePrivateMembers } from '../protocol/jwk.js';
import { importPublicJwk, publicJwk, thumbprint } from '../crypto/keys.js';
import { decodeCompactJws, verifyDecoded } from '../crypto/jws.js';
import type { EntityKeyRecord } from '../store/kms-state.js';
import { EngineDeps, type HandlerResult, type RequestContext } from './context.js';
import { KeyedMutex } from '../util/mutex.js';

const registerBody = z.looseObject({
  jwk: z.looseObject({ kty: z.string() }),
  proof: z.string().min(1).max(8192),
});

const proofPayload = z.looseObject({
  entity: z.string(),
  ephemeralKey: z.string(),
  iat: z.number(),
});

/** The public view of a registered key. */
function view(r: EntityKeyRecord) {
  return { entity: r.entity, kid: r.kid, jwk: r.jwk, created: r.created };
}

const registerLocks = new KeyedMutex();

/** post /entity-keys: registers the authenticated user's public key after checking possession. */
export async function registerEntityKey(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  if (principal.kind !== 'user') throw forbidden('only users register entity keys');
  const body = parseBody(registerBody, ctx.req.body);
  refusePrivateMembers(body.jwk, 'jwk');
  let key: ReturnType<typeof importPublicJwk>;
  try {
    key = importPublicJwk(body.jwk);
  } catch (e) {
    throw unsupported(`jwk: ${(e as Error).message}`);
  }
  const jwk = publicJwk(key);
  if (jwk.kty === 'EC' && jwk.crv !== 'P-256') throw unsupported('jwk: EC entity keys must be on P-256');
  const kid = thumbprint(jwk);
  // XEP "Entity Keys": a malformed proof is a 400; a well-formed one that does not match is a 403.
  let proof: ReturnType<typeof decodeCompactJws>;
  try {
    proof = decodeCompactJws(body.proof);
  } catch (e) {
    throw badRequest(`proof: not a compact JWS (${(e as Error).message})`, e);
  }
  const claims = parseBody(proofPayload, parseJsonOr400(proof.payload, 'proof'));
  const entity = requireCanonicalEntity(claims.entity, 'proof.entity');
  try {
    verifyDecoded(proof, key, EngineDeps.entityAlgs(jwk));
  } catch (e) {
    throw forbidden(`proof: not a valid signature by the key being registered (${(e as Error).message})`);
  }
  if (entity !== principal.id) throw forbidden('proof: signed for another entity');
  if (claims.ephemeralKey !== ctx.ephemeral.uri) throw forbidden('proof: signed for another channel');
  if (Math.abs(claims.iat - ctx.now.getTime() / 1000) > deps.config.clockSkewSec) throw forbidden('proof: iat is not fresh');

  return registerLocks.run(principal.id, async () => {
    const existing = await deps.state.entityKeys(principal.id);
    const same = existing.find((k) => k.kid === kid);
    if (same) return { status: 200, body: { entityKey: view(same) } };
    if (existing.length >= deps.config.limits.maxKeysPerEntity) {
      throw forbidden(`${principal.id} already has ${existing.length} keys; delete one first`);
    }
    const seq = existing.reduce((m, k) => Math.max(m, k.seq), 0) + 1;
    const record: EntityKeyRecord = { entity: principal.id, kid, jwk, created: ctx.now.toISOString(), seq };
    await deps.state.putEntityKey(record);
    return { status: 201, body: { entityKey: view(record) } };
  });
}

/** get /entity-keys/<entity>: the entity's public keys, oldest first. */
export async function listEntityKeys(ctx: RequestContext): Promise<HandlerResult> {
  const entity = requireCanonicalEntity(ctx.segments[0], 'uri entity');
  const keys = await ctx.deps.state.entityKeys(entity);
  return { status: 200, body: { entityKeys: keys.map(view) } };
}

/** delete /entity-keys/<kid>: the owner removes one of its keys. */
export async function deleteEntityKey(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  const kid = ctx.segments[0] ?? '';
  const keys = await deps.state.entityKeys(principal.id);
  if (!keys.some((k) => k.kid === kid)) throw notFound(`${principal.id} has no key ${kid}`);
  await deps.state.deleteEntityKey(principal.id, kid);
  return { status: 204 };
}

/** The key a GK is wrapped to: the one named by kid, else the entity's newest. */
export async function resolveEntityKey(deps: EngineDeps, entity: string, kid: string | undefined): Promise<EntityKeyRecord> {
  const keys = await deps.state.entityKeys(entity);
  const key = kid === undefined ? keys[keys.length - 1] : keys.find((k) => k.kid === kid);
  if (!key) throw notFound(kid === undefined ? `${entity} has no registered entity key` : `${entity} has no key ${kid}`);
  return key;
}
