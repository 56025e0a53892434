/**
 * Group membership block chains: post genesis (-03 §4.6.3), append (§4.6.4), get (§4.6.5), with
 * the chain rules of draft-abiggs-saag-primitives-for-conf-group-comms-01 (PCG-01).
 */
import { randomUUID } from 'node:crypto';
import { blockHash } from '../protocol/block-hash.js';
import { z } from 'zod';
import { badRequest, conflict, forbidden, notFound, tooLarge } from '../protocol/errors.js';
import { parseBody, parseJsonOr400, dateTime, sha256Hex } from '../protocol/messages.js';
import { MAX_ENTITY_LENGTH, kmsIdentity, normalizeEntity } from '../protocol/entity.js';
import { absoluteUri } from '../protocol/uri.js';
import { decodeCompactJws, verifyDecoded, type DecodedJws } from '../crypto/jws.js';
import { isMemberAt, type ChainRecord, type Interval, type KmsState } from '../store/kms-state.js';
import { EngineDeps, type HandlerResult, type RequestContext } from './context.js';
import { KeyedMutex } from '../util/mutex.js';

export { blockHash };

const operationSchema = z.looseObject({ entity: z.string().min(1).max(MAX_ENTITY_LENGTH), optype: z.enum(['add', 'remove']) });
export type Operation = { entity: string; optype: 'add' | 'remove' };

const genesisBody = z.looseObject({
  blockPayload: z.looseObject({
    creator: z.string().max(MAX_ENTITY_LENGTH).optional(),
    created: dateTime.optional(),
    operations: z.array(operationSchema),
  }),
});

const appendedBlock = z.looseObject({
  antecedent: sha256Hex,
  creator: z.string().min(1).max(MAX_ENTITY_LENGTH),
  created: dateTime,
  operations: z.array(operationSchema),
});

const appendBody = z.looseObject({ blocks: z.array(z.string().min(1)).min(1) });
const getBody = z.looseObject({ antecedent: z.string().max(128).optional() });

/**
 * Membership of one chain with not-yet-committed changes on top: what an append checks its blocks
 * against before writing anything.
 */
class Membership {
  readonly #state: KmsState;
  readonly #chain: string;
  readonly #curator: string;
  readonly staged = new Map<string, Interval[]>();

  constructor(state: KmsState, chain: string, curator: string) {
    this.#state = state;
    this.#chain = chain;
    this.#curator = curator;
  }

  async #intervals(entity: string): Promise<Interval[]> {
    return this.staged.get(entity) ?? (await this.#state.intervals(this.#chain, entity));
  }

  /** Is `entity` a member at seq (the state after block seq)? The curator always is (PCG-01). */
  async isMemberAt(entity: string, seq: number): Promise<boolean> {
    if (entity === this.#curator) return true;
    return isMemberAt(await this.#intervals(entity), seq);
  }

  /** Applies a block's operations, in array order, as block `seq`. */
  async apply(seq: number, ops: Operation[]): Promise<void> {
    for (const op of ops) {
      if (op.entity === this.#curator) continue; // adding the permanent member changes nothing
      const iv = (await this.#intervals(op.entity)).map((i) => [...i] as Interval);
      const last = iv[iv.length - 1];
      const open = last !== undefined && last[1] === null;
      if (op.optype === 'add' && !open) iv.push([seq, null]);
      if (op.optype === 'remove' && open) {
        if (last[0] === seq) iv.pop();
        else last[1] = seq;
      }
      this.staged.set(op.entity, iv);
    }
  }
}

/** Validates and normalises operations; a block that removes the curator is refused (protocol-notes §6 item 11). */
function checkOperations(deps: EngineDeps, raw: { entity: string; optype: 'add' | 'remove' }[], where: string): Operation[] {
  if (raw.length > deps.config.limits.maxOperationsPerBlock) {
    throw tooLarge(`${where}: more than ${deps.config.limits.maxOperationsPerBlock} operations`);
  }
  const curator = kmsIdentity(deps.config.domain);
  return raw.map((op, i) => {
    if (op.entity.toLowerCase() === curator) {
      if (op.optype === 'remove') throw forbidden(`${where}: operation ${i} removes the curator, a permanent member`);
      return { entity: curator, optype: op.optype };
    }
    const entity = normalizeEntity(op.entity);
    if (!entity) throw badRequest(`${where}: operation ${i}: entity must be a user address`);
    return { entity, optype: op.optype };
  });
}

/** The chain id of a genesis URI segment, or 404. */
async function requireChain(deps: EngineDeps, segments: string[]): Promise<ChainRecord> {
  const id = segments[0];
  const chain = id === undefined ? undefined : await deps.state.chain(id);
  if (!chain) throw notFound(`no chain ${id ?? ''}`);
  return chain;
}

/** post /blocks: the KMS makes, signs and stores a genesis block (-03 §4.6.3). */
export async function postGenesis(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  if (principal.kind !== 'user') throw forbidden('only users create chains');
  const body = parseBody(genesisBody, ctx.req.body);
  const operations = checkOperations(deps, body.blockPayload.operations, 'blockPayload');
  // PCG-01: a genesis block adds at least one member.
  const curator = kmsIdentity(deps.config.domain);
  if (!operations.some((o) => o.optype === 'add' && o.entity !== curator)) {
    throw badRequest('blockPayload: a genesis block must add at least one member');
  }
  const id = randomUUID();
  const payload = {
    uri: absoluteUri(deps.config.domain, 'blocks', id),
    nonce: randomUUID(),
    curator,
    creator: curator,
    created: ctx.now.toISOString(),
    operations,
  };
  const jws = deps.signAsKms(payload);
  const hash = blockHash(jws);
  const m = new Membership(deps.state, id, curator);
  await m.apply(0, operations);
  const chain: ChainRecord = { id, uri: payload.uri, created: payload.created, length: 1, tail: hash };
  await deps.state.commitBlocks({ chain, blocks: [{ seq: 0, jws, hash }], members: m.staged });
  return { status: 201, body: { block: jws } };
}

const appendLocks = new KeyedMutex();

/** post <chain uri>: appends client-signed blocks, all or none (-03 §4.6.4). */
export async function appendBlocks(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  const body = parseBody(appendBody, ctx.req.body);
  if (body.blocks.length > deps.config.limits.maxBlocksPerAppend) {
    throw tooLarge(`blocks: more than ${deps.config.limits.maxBlocksPerAppend} blocks in one append`);
  }
  const first = await requireChain(deps, ctx.segments);
  return appendLocks.run(first.id, async () => {
    const chain = (await deps.state.chain(first.id))!;
    const curator = kmsIdentity(deps.config.domain);
    const m = new Membership(deps.state, chain.id, curator);
    // KMS policy (protocol-notes §6 item 12): the requester must be a current member.
    if (principal.kind !== 'user' || !(await m.isMemberAt(principal.id, chain.length - 1))) {
      throw forbidden(`${principal.id} is not a member of ${chain.uri}`);
    }
    const written: { seq: number; jws: string; hash: string }[] = [];
    let expected = chain.tail;
    for (const [i, jws] of body.blocks.entries()) {
      const seq = chain.length + i;
      const where = `blocks[${i}]`;
      const decoded = decodeJwsOr400(jws, where);
      const block = parseBody(appendedBlock, parseJsonOr400(decoded.payload, where));
      // -03 §4.6.4: the first antecedent is the tail's hash; a mismatch means the chain moved on.
      if (block.antecedent.toLowerCase() !== expected) {
        if (i === 0) throw conflict(`${where}: antecedent is not the hash of the chain's last block (the chain has ${chain.length} blocks)`);
        throw badRequest(`${where}: antecedent is not the hash of blocks[${i - 1}]`);
      }
      const creator = normalizeEntity(block.creator);
      if (!creator) throw badRequest(`${where}: creator must be a user address`);
      // PCG-01: the creator must be a member before its block.
      if (!(await m.isMemberAt(creator, seq - 1))) throw forbidden(`${where}: ${creator} is not a member before this block`);
      await verifyBlockSignature(deps, decoded, creator, where);
      const ops = checkOperations(deps, block.operations, where);
      await m.apply(seq, ops);
      const hash = blockHash(jws);
      if ((await deps.state.blockRef(hash)) || written.some((w) => w.hash === hash)) throw conflict(`${where}: this block is already stored`);
      written.push({ seq, jws, hash });
      expected = hash;
    }
    const next: ChainRecord = { ...chain, length: chain.length + written.length, tail: expected };
    await deps.state.commitBlocks({ chain: next, blocks: written, members: m.staged });
    return { status: 200 };
  });
}

/** The block is signed by one of the creator's registered keys (the header's kid picks it). */
async function verifyBlockSignature(deps: EngineDeps, jws: DecodedJws, creator: string, where: string): Promise<void> {
  const keys = await deps.state.entityKeys(creator);
  const kid = jws.header.kid;
  const candidates = typeof kid === 'string' ? keys.filter((k) => k.kid === kid) : keys;
  if (candidates.length === 0) throw forbidden(`${where}: no registered key of ${creator}${typeof kid === 'string' ? ` with kid ${kid}` : ''}`);
  for (const k of candidates) {
    try {
      verifyDecoded(jws, deps.keyObject(k.kid, k.jwk), EngineDeps.entityAlgs(k.jwk));
      return;
    } catch {
      // try the next key
    }
  }
  throw forbidden(`${where}: the signature does not verify with ${creator}'s key`);
}

/** get <chain uri>: the whole chain, or the blocks after a given antecedent (-03 §4.6.5). */
export async function getChain(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  const body = parseBody(getBody, ctx.req.body);
  const chain = await requireChain(deps, ctx.segments);
  const intervals = principal.kind === 'user' ? await deps.state.intervals(chain.id, principal.id) : [];
  const allowed = deps.config.chainReadPolicy === 'ever' ? intervals.length > 0 : isMemberAt(intervals, chain.length - 1);
  if (!allowed) throw forbidden(`${principal.id} may not read ${chain.uri}`);
  let from = 0;
  const a = body.antecedent;
  if (a !== undefined && a !== '' && a !== '0x0') {
    if (!/^[0-9a-fA-F]{64}$/.test(a)) throw badRequest('antecedent must be a hex SHA-256');
    const ref = await deps.state.blockRef(a);
    if (!ref || ref.chain !== chain.id) throw notFound(`no block ${a} in ${chain.uri}`);
    from = ref.seq + 1;
  }
  return { status: 200, body: { blocks: from >= chain.length ? [] : await deps.state.blocks(chain.id, from) } };
}

function decodeJwsOr400(jws: string, where: string) {
  try {
    return decodeCompactJws(jws);
  } catch (e) {
    throw badRequest(`${where}: not a compact JWS`, e);
  }
}
