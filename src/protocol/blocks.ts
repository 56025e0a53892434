/**
 * What a GMBC block must look like (XEP "Entities and Hashes" and "Changing the Membership"), and
 * how its operations change the membership. The KMS checks every block it stores with these
 * functions, and a client verifying a chain checks every block it reads with the same ones, so
 * that the two can never disagree on whether a block is valid or on who is a member after it.
 * A failure is a KmsError: the engine answers it, the client reports the chain as invalid.
 */
import { z } from 'zod';
import { badRequest, forbidden } from './errors.js';
import { BLOCK_HASH, MAX_ENTITY_LENGTH, canonicalEntity, isCanonicalEntity } from './entity.js';

/** One membership change of a block. */
export type Operation = { entity: string; optype: 'add' | 'remove' };

/** The payload of an appended block (PCG-01 gmbc-appended-block), as signed by its creator. */
export interface AppendedBlock {
  antecedent: string;
  creator: string;
  created: string;
  operations: Operation[];
}

/** The payload of a genesis block, made and signed by the KMS. */
export interface GenesisBlock {
  uri: string;
  nonce: string;
  curator: string;
  creator: string;
  created: string;
  operations: Operation[];
}

/** RFC 3339 date-time, as -03 uses for created, createDate, expirationDate. */
const dateTime = z
  .string()
  .max(64)
  .refine((s) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i.test(s) && !Number.isNaN(Date.parse(s)), 'must be an RFC 3339 date-time');

/** An operation's entity: a canonical entity, or the curator exactly as the genesis names it. */
const operationsOf = (curator: string) =>
  z.array(
    z.looseObject({
      entity: z
        .string()
        .max(MAX_ENTITY_LENGTH)
        .refine((e) => e === curator || isCanonicalEntity(e), 'must be a canonical entity (a lower-case bare JID) or the curator'),
      optype: z.enum(['add', 'remove']),
    }),
  );

const appendedSchema = (curator: string) =>
  z.looseObject({
    antecedent: z.string().regex(BLOCK_HASH, 'must be a block hash in lowercase hex'),
    creator: z.string().max(MAX_ENTITY_LENGTH).refine(isCanonicalEntity, 'must be a canonical entity (a lower-case bare JID)'),
    created: dateTime,
    operations: operationsOf(curator),
  });

const genesisSchema = (curator: string) =>
  z.looseObject({
    uri: z.string().min(1).max(2048),
    nonce: z.string().min(1).max(256),
    curator: z.literal(curator),
    creator: z.literal(curator),
    created: dateTime,
    operations: operationsOf(curator),
  });

function check<T>(schema: z.ZodType<T>, value: unknown, where: string): T {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    // For an entity in another spelling, say which spelling the block should have carried.
    let at: unknown = value;
    for (const k of issue.path) at = at !== null && typeof at === 'object' ? (at as Record<PropertyKey, unknown>)[k as PropertyKey] : undefined;
    const c = typeof at === 'string' ? canonicalEntity(at) : undefined;
    const hint = c !== undefined && c !== at ? `; write "${c}"` : '';
    throw badRequest(`${where}: ${issue.path.join('.') || '(payload)'}: ${issue.message}${hint}`);
  }
  return r.data;
}

/**
 * Checks an appended block's protected header and payload: the header names the signing key
 * (`kid`, the thumbprint of one of the creator's entity keys), the antecedent is a lowercase hash,
 * the creator and every entity are canonical. Returns the payload's members with the header's kid.
 */
export function parseAppendedBlock(header: Record<string, unknown>, payload: unknown, curator: string, where: string): AppendedBlock & { kid: string } {
  const kid = header.kid;
  if (typeof kid !== 'string' || kid.length === 0 || kid.length > 128) {
    throw badRequest(`${where}: the JWS header must carry kid, the thumbprint of the creator's entity key`);
  }
  const b = check(appendedSchema(curator), payload, where);
  return { antecedent: b.antecedent, creator: b.creator, created: b.created, operations: b.operations.map(op), kid };
}

/** Checks a genesis block's payload: made by the KMS `curator`, with canonical entities. */
export function parseGenesisBlock(payload: unknown, curator: string, where = 'block 0'): GenesisBlock {
  const b = check(genesisSchema(curator), payload, where);
  return { uri: b.uri, nonce: b.nonce, curator: b.curator, creator: b.creator, created: b.created, operations: b.operations.map(op) };
}

const op = (o: { entity: string; optype: 'add' | 'remove' }): Operation => ({ entity: o.entity, optype: o.optype });

/**
 * The members after a block, given the members before it (the curator never listed). Operations
 * apply in array order; adding a member or removing a non-member changes nothing; adding the
 * curator changes nothing, removing it is forbidden (PCG-01: the curator is a permanent member).
 */
export function applyOperations(before: ReadonlySet<string>, ops: readonly Operation[], curator: string, where?: string): Set<string> {
  const next = new Set(before);
  ops.forEach((o, i) => {
    if (o.entity === curator) {
      if (o.optype === 'remove') throw forbidden(`${where ? `${where}: ` : ''}operation ${i} removes the curator, a permanent member`);
      return;
    }
    if (o.optype === 'add') next.add(o.entity);
    else next.delete(o.entity);
  });
  return next;
}

/** A genesis block must add at least one member besides the curator (PCG-01). */
export function requireFirstMember(members: ReadonlySet<string>, where: string): void {
  if (members.size === 0) throw badRequest(`${where}: a genesis block must add at least one member`);
}
