/**
 * Client-side GMBC work: signing appended blocks, and verifying a fetched chain the way PCG-01
 * defines validity (KMS signature on the genesis, every antecedent, every signer a member before
 * its block, every signature), so that a client need not trust the KMS's word about membership.
 */
import { applyOperations, parseAppendedBlock, parseGenesisBlock, requireFirstMember, type Operation } from '../protocol/blocks.js';
import { KmsError } from '../protocol/errors.js';
import { ChainVerificationError } from './errors.js';
import { parseJsonOr400 } from '../protocol/messages.js';
import { decodeJws, sha256Hex, signJws, verifyJws, type DecodedJws, type JWK } from './webcrypto.js';

export type { Operation };

/** hex(SHA-256(compact JWS as stored)): how blocks are named (XEP "Entities and Hashes"), for antecedents and GK bindings. */
export function blockHash(jws: string): Promise<string> {
  return sha256Hex(jws);
}

/** An entity's signing key: its private JWK, the RFC 7638 thumbprint the KMS knows it by, and the alg. */
export interface SigningKey {
  privateJwk: JWK;
  kid: string;
  alg: 'PS256' | 'ES256';
}

/** Signs an appended block (PCG-01 gmbc-appended-block) over `antecedent`. */
export function signBlock(key: SigningKey, creator: string, antecedent: string, operations: Operation[], created = new Date()): Promise<string> {
  const payload = { antecedent, creator, created: created.toISOString(), operations };
  return signJws(key.privateJwk, key.alg, JSON.stringify(payload), { kid: key.kid });
}

/** A verified chain: its URI, its blocks' hashes and membership after every block. */
export interface VerifiedChain {
  uri: string;
  hashes: string[];
  /** members[i] = the members after block i (curator excluded). */
  members: Set<string>[];
  tail: string;
}

export interface VerifyOptions {
  /** The KMS's validated static key and its identity (kms://<domain>). */
  kmsKey: JWK;
  kmsId: string;
  /** Public keys of an entity by kid (from get /entity-keys/<entity>). */
  keysOf: (entity: string) => Promise<{ kid: string; key: JWK }[]>;
}

/** A chain is invalid at block `index`: the first block that breaks a rule. */
function invalid(index: number, reason: string, cause?: unknown): ChainVerificationError {
  return new ChainVerificationError(`block ${index}: ${reason}`, { block: index, cause });
}

/** Runs a shared block rule (src/protocol/blocks.ts), reporting its failure as block `index`'s. */
function rule<T>(index: number, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof KmsError) throw invalid(index, e.message, e);
    throw e;
  }
}

/**
 * Verifies a chain per PCG-01 and throws a ChainVerificationError naming the first bad block: a whole chain,
 * genesis first, or, with `from` (a chain verified before), only the blocks that follow it. Each
 * block must pass the same rule the KMS applied when it stored it (src/protocol/blocks.ts), and
 * membership is computed by the same applyOperations, so that the client and the KMS agree on
 * who is a member after every block.
 */
export async function verifyChain(blocks: string[], o: VerifyOptions, from?: VerifiedChain): Promise<VerifiedChain> {
  let uri: string;
  let hashes: string[];
  let all: Set<string>[];
  let rest = blocks;
  if (from) {
    uri = from.uri;
    hashes = [...from.hashes];
    all = [...from.members];
  } else {
    if (blocks.length === 0) throw invalid(0, 'the chain is empty');
    let payload: Uint8Array;
    try {
      ({ payload } = await verifyJws(blocks[0]!, o.kmsKey));
    } catch {
      throw invalid(0, 'the genesis block is not signed by the KMS');
    }
    const genesis = rule(0, () => parseGenesisBlock(parseJsonOr400(payload, 'block 0'), o.kmsId));
    uri = genesis.uri;
    hashes = [await blockHash(blocks[0]!)];
    const first = rule(0, () => applyOperations(new Set<string>(), genesis.operations, o.kmsId));
    rule(0, () => requireFirstMember(first, 'block 0'));
    all = [first];
    rest = blocks.slice(1);
  }
  let members = all[all.length - 1]!;
  for (const jws of rest) {
    const i = hashes.length;
    let decoded: DecodedJws;
    try {
      decoded = decodeJws(jws);
    } catch {
      throw invalid(i, 'not a compact JWS');
    }
    const block = rule(i, () => parseAppendedBlock(decoded.header, parseJsonOr400(decoded.payload, `block ${i}`), o.kmsId, `block ${i}`));
    if (block.antecedent !== hashes[i - 1]) throw invalid(i, `antecedent does not match block ${i - 1}`);
    if (!members.has(block.creator)) throw invalid(i, `${block.creator} was not a member before it`);
    const key = (await o.keysOf(block.creator)).find((k) => k.kid === block.kid);
    if (!key) throw invalid(i, `${block.creator} has no key ${block.kid}`);
    try {
      await verifyJws(jws, key.key);
    } catch {
      throw invalid(i, `the signature does not verify with ${block.creator}'s key ${block.kid}`);
    }
    members = rule(i, () => applyOperations(members, block.operations, o.kmsId));
    hashes.push(await blockHash(jws));
    all.push(members);
  }
  return { uri, hashes, members: all, tail: hashes[hashes.length - 1]! };
}

/** The members now: after the chain's last block. */
export function currentMembers(chain: VerifiedChain): Set<string> {
  return chain.members[chain.members.length - 1]!;
}
