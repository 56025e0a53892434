/**
 * Group membership block chains: post genesis (-03 §4.6.3), append (§4.6.4), get (§4.6.5), with
 * the chain rules of draft-abiggs-saag-primitives-for-conf-group-comms-01 (PCG-01). What a block
 * may contain and how it changes the membership are src/protocol/blocks.ts, which clients use too.
 */
import { randomUUID } from 'node:crypto';
import { blockHash } from '../protocol/block-hash.js';
import { z } from 'zod';
import { badRequest, conflict, forbidden, notFound, tooLarge } from '../protocol/errors.js';
import { parseBody, parseJsonOr400 } from '../protocol/messages.js';
import { MAX_ENTITY_LENGTH, kmsIdentity, requireBlockHash, requireCanonicalEntity } from '../protocol/entity.js';
import { applyOperations, parseAppendedBlock, requireFirstMember, type Operation } from '../protocol/blocks.js';
import { absoluteUri } from '../protocol/uri.js';
import { decodeCompactJws, verifyDecoded, type DecodedJws } from '../crypto/jws.js';
import { isMemberAt, type ChainRecord, type Interval, type KmsState } from '../store/kms-state.js';
import { EngineDeps, type HandlerResult, type RequestContext } from './context.js';
import { KeyedMutex } from '../util/mutex.js';
import { onBehalfOf } from './principal.js';

// XEP "Failure Responses": the genesis request's creator and created are ignored (the KMS is the
// genesis block's creator), but must be strings when present.
const genesisBody = z.looseObject({
  blockPayload: z.looseObject({
    creator: z.string().max(MAX_ENTITY_LENGTH).optional(),
    created: z.string().max(64).optional(),
    operations: z.array(z.looseObject({ entity: z.string().min(1).max(MAX_ENTITY_LENGTH), optype: z.enum(['add', 'remove']) })),
  }),
});

const appendBody = z.looseObject({ blocks: z.array(z.string().min(1)).min(1) });
const getBody = z.looseObject({ antecedent: z.string().max(128).optional(), entity: z.string().min(1).max(MAX_ENTITY_LENGTH).optional() });

/**
 * Membership of one chain with not-yet-committed changes on top: what an append checks its blocks
 * against before writing anything. Stored as intervals of block numbers per entity; each block's
 * change is computed by the shared applyOperations.
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
    return seq >= 0 && isMemberAt(await this.#intervals(entity), seq);
  }

  /** Applies a block's operations as block `seq`; returns the members it leaves among those it names. */
  async apply(seq: number, ops: readonly Operation[], where: string): Promise<Set<string>> {
    const named = [...new Set(ops.map((o) => o.entity))].filter((e) => e !== this.#curator);
    const before = new Set<string>();
    for (const e of named) if (await this.isMemberAt(e, seq - 1)) before.add(e);
    const after = applyOperations(before, ops, this.#curator, where);
    for (const e of named) {
      const was = before.has(e);
      const is = after.has(e);
      if (was === is) continue;
      const iv = (await this.#intervals(e)).map((i) => [...i] as Interval);
      if (is) iv.push([seq, null]);
      else iv[iv.length - 1]![1] = seq;
      this.staged.set(e, iv);
    }
    return after;
  }
}

/** Checks the size of a block's operations; their form is checked by src/protocol/blocks.ts. */
function checkOperationCount(deps: EngineDeps, ops: readonly unknown[], where: string): void {
  if (ops.length > deps.config.limits.maxOperationsPerBlock) {
    throw tooLarge(`${where}: more than ${deps.config.limits.maxOperationsPerBlock} operations`);
  }
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
  const raw = body.blockPayload.operations;
  checkOperationCount(deps, raw, 'blockPayload');
  const curator = kmsIdentity(deps.config.domain);
  // XEP "Entities and Hashes": entities are canonical on the wire; the curator may be named as itself.
  const operations: Operation[] = raw.map((op, i) => ({
    entity: op.entity === curator ? curator : requireCanonicalEntity(op.entity, `blockPayload.operations[${i}].entity`),
    optype: op.optype,
  }));
  const id = randomUUID();
  const m = new Membership(deps.state, id, curator);
  // PCG-01: a genesis block adds at least one member.
  requireFirstMember(await m.apply(0, operations, 'blockPayload'), 'blockPayload');
  const payload = {
    uri: absoluteUri(deps.config.domain, 'blocks', id),
    nonce: randomUUID(),
    curator,
    creator: curator,
    created: ctx.now.toISOString(),
    operations,
  };
  const jws = deps.signAsKms(payload);
  // A genesis block with many members may not fit what is left of the reply (XEP "Transport of
  // KMS Messages"): refused before anything is stored, so that the 413 changes nothing.
  const r = ctx.response;
  if (r.encryptedBytes(r.plaintextBytes(201, { block: jws })) > r.budget) {
    throw tooLarge('the genesis block does not fit in what is left of this reply; send this request in an IQ of its own');
  }
  const hash = blockHash(jws);
  const chain: ChainRecord = { id, uri: payload.uri, created: payload.created, length: 1, tail: hash };
  if (!(await deps.state.commitBlocks({ chain, blocks: [{ seq: 0, jws, hash }], members: m.staged }))) throw conflict('this genesis block is already stored');
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
    // XEP "Failure Responses": only a current member may append (stricter than the drafts).
    if (principal.kind !== 'user' || !(await m.isMemberAt(principal.id, chain.length - 1))) {
      throw forbidden(`${principal.id} is not a member of ${chain.uri}`);
    }
    const written: { seq: number; jws: string; hash: string }[] = [];
    let expected = chain.tail;
    for (const [i, jws] of body.blocks.entries()) {
      const seq = chain.length + i;
      const where = `blocks[${i}]`;
      const decoded = decodeJwsOr400(jws, where);
      const payload = parseJsonOr400(decoded.payload, where);
      if (payload && typeof payload === 'object' && Array.isArray((payload as { operations?: unknown }).operations)) {
        checkOperationCount(deps, (payload as { operations: unknown[] }).operations, where);
      }
      // The one block rule clients verify with (src/protocol/blocks.ts): kid, lowercase antecedent, canonical entities.
      const block = parseAppendedBlock(decoded.header, payload, curator, where);
      // -03 §4.6.4: the first antecedent is the tail's hash; a mismatch means the chain moved on.
      if (block.antecedent !== expected) {
        if (i === 0) throw conflict(`${where}: antecedent is not the hash of the chain's last block (the chain has ${chain.length} blocks)`);
        throw badRequest(`${where}: antecedent is not the hash of blocks[${i - 1}]`);
      }
      // PCG-01: the creator must be a member before its block.
      if (!(await m.isMemberAt(block.creator, seq - 1))) throw forbidden(`${where}: ${block.creator} is not a member before this block`);
      await verifyBlockSignature(deps, decoded, block.creator, block.kid, where);
      await m.apply(seq, block.operations, where);
      const hash = blockHash(jws);
      if ((await deps.state.blockRef(hash)) || written.some((w) => w.hash === hash)) throw conflict(`${where}: this block is already stored`);
      written.push({ seq, jws, hash });
      expected = hash;
    }
    const next: ChainRecord = { ...chain, length: chain.length + written.length, tail: expected };
    // Several instances on one store (src/store/kms-state.ts): the write is conditional on the tail
    // checked above; another instance's append that landed meanwhile makes this one a 409, as here.
    if (!(await deps.state.commitBlocks({ chain: next, blocks: written, members: m.staged }))) {
      throw conflict(`blocks[0]: antecedent is not the hash of the chain's last block (the chain moved on while this append was checked)`);
    }
    return { status: 200 };
  });
}

/** The block is signed by the creator's registered key that the header's kid names. */
async function verifyBlockSignature(deps: EngineDeps, jws: DecodedJws, creator: string, kid: string, where: string): Promise<void> {
  const key = (await deps.state.entityKeys(creator)).find((k) => k.kid === kid);
  if (!key) throw forbidden(`${where}: ${creator} has no registered key with kid ${kid}`);
  try {
    verifyDecoded(jws, deps.keyObject(key.kid, key.jwk), EngineDeps.entityAlgs(key.jwk));
  } catch {
    throw forbidden(`${where}: the signature does not verify with ${creator}'s key ${kid}`);
  }
}

/** get <chain uri>: the chain, or the blocks after a given antecedent (-03 §4.6.5), a page at a time (XEP "Reading a Chain"). */
export async function getChain(ctx: RequestContext): Promise<HandlerResult> {
  const { deps, principal } = ctx;
  const body = parseBody(getBody, ctx.req.body);
  const chain = await requireChain(deps, ctx.segments);
  // XEP "Federation": a peer reads on behalf of one of its users ("entity"), under that user's rights.
  const reader = onBehalfOf(principal, body.entity);
  const intervals = reader ? await deps.state.intervals(chain.id, reader) : [];
  const allowed = deps.config.chainReadPolicy === 'ever' ? intervals.length > 0 : isMemberAt(intervals, chain.length - 1);
  if (!allowed) throw forbidden(`${reader ?? principal.id} may not read ${chain.uri}`);
  let from = 0;
  const a = body.antecedent;
  if (a !== undefined) {
    // XEP "Entities and Hashes": a hash has one spelling, lowercase hex; no antecedent means from the genesis.
    requireBlockHash(a, 'antecedent');
    const ref = await deps.state.blockRef(a);
    if (!ref || ref.chain !== chain.id) throw notFound(`no block ${a} in ${chain.uri}`);
    from = ref.seq + 1;
  }
  if (from >= chain.length) return { status: 200, body: { blocks: [], more: false } };
  // XEP "Reading a Chain": the blocks that fit the response's budget, in order; "more" when the rest were left out.
  // Sized exactly, with "more": false (the longer value); a block is strict base64url (decodeCompactJws),
  // so it takes its length and two quotes in the JSON, and a comma after the first.
  const { response } = ctx;
  let plaintext = response.plaintextBytes(200, { blocks: [], more: false });
  const blocks: string[] = [];
  let more = false;
  for await (const jws of deps.state.blocksFrom(chain.id, from)) {
    const bytes = /^[A-Za-z0-9_.-]*$/.test(jws) ? jws.length + 2 : Buffer.byteLength(JSON.stringify(jws));
    const next = plaintext + bytes + (blocks.length > 0 ? 1 : 0);
    if (response.encryptedBytes(next) > response.budget) {
      more = true;
      break;
    }
    blocks.push(jws);
    plaintext = next;
  }
  return { status: 200, body: { blocks, more } };
}

function decodeJwsOr400(jws: string, where: string) {
  try {
    return decodeCompactJws(jws);
  } catch (e) {
    throw badRequest(`${where}: not a compact JWS`, e);
  }
}
