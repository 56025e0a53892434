/**
 * Client-side GMBC work: signing appended blocks, and verifying a fetched chain the way PCG-01
 * defines validity (KMS signature on the genesis, every antecedent, every signer a member before
 * its block, every signature), so that a client need not trust the KMS's word about membership.
 */
import type { KeyObject } from 'node:crypto';
import { blockHash } from '../protocol/block-hash.js';
import { decodeCompactJws, signatureAlgsFor, signCompact, verifyCompact, verifyDecoded, type JwsAlg } from '../crypto/jws.js';

export type Operation = { entity: string; optype: 'add' | 'remove' };

export { blockHash };

/** An entity's signing key: its private key, the RFC 7638 thumbprint the KMS knows it by, and the alg. */
export interface SigningKey {
  privateKey: KeyObject;
  kid: string;
  alg: JwsAlg;
}

/** Signs an appended block (PCG-01 gmbc-appended-block) over `antecedent`. */
export function signBlock(key: SigningKey, creator: string, antecedent: string, operations: Operation[], created = new Date()): string {
  const payload = { antecedent, creator, created: created.toISOString(), operations };
  return signCompact(key.privateKey, key.alg, JSON.stringify(payload), { kid: key.kid });
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
  kmsKey: KeyObject;
  kmsId: string;
  /** Public keys of an entity by kid (from get /entity-keys/<entity>). */
  keysOf: (entity: string) => Promise<{ kid: string; key: KeyObject }[]>;
}

/**
 * Verifies a chain per PCG-01 and throws an Error naming the first bad block: a whole chain,
 * genesis first, or, with `from` (a chain verified before), only the blocks that follow it.
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
    if (blocks.length === 0) throw new Error('empty chain');
    const genesis = JSON.parse(verifyCompact(blocks[0]!, o.kmsKey, signatureAlgsFor(o.kmsKey)).payload.toString('utf8'));
    if (genesis.curator !== o.kmsId || genesis.creator !== o.kmsId) throw new Error('block 0: the genesis block is not the KMS\'s');
    if (typeof genesis.uri !== 'string') throw new Error('block 0: no chain uri');
    uri = genesis.uri;
    hashes = [blockHash(blocks[0]!)];
    all = [applyOperations(new Set<string>(), genesis.operations)];
    rest = blocks.slice(1);
  }
  let members = all[all.length - 1]!;
  for (const jws of rest) {
    const i = hashes.length;
    const decoded = decodeCompactJws(jws);
    const block = JSON.parse(decoded.payload.toString('utf8'));
    if (block.antecedent !== hashes[i - 1]) throw new Error(`block ${i}: antecedent does not match block ${i - 1}`);
    if (!members.has(block.creator)) throw new Error(`block ${i}: ${block.creator} was not a member before it`);
    const keys = (await o.keysOf(block.creator)).filter((k) => decoded.header.kid === undefined || k.kid === decoded.header.kid);
    const ok = keys.some((k) => {
      try {
        verifyDecoded(decoded, k.key, signatureAlgsFor(k.key));
        return true;
      } catch {
        return false;
      }
    });
    if (!ok) throw new Error(`block ${i}: the signature does not verify with ${block.creator}'s keys`);
    members = applyOperations(members, block.operations);
    hashes.push(blockHash(jws));
    all.push(members);
  }
  return { uri, hashes, members: all, tail: hashes[hashes.length - 1]! };
}

/** The members now: after the chain's last block. */
export function currentMembers(chain: VerifiedChain): Set<string> {
  return chain.members[chain.members.length - 1]!;
}

/** The members after a block's operations, given the members before it (a new set). */
export function applyOperations(before: Set<string>, ops: Operation[]): Set<string> {
  const next = new Set(before);
  for (const op of ops ?? []) {
    if (op.optype === 'add') next.add(op.entity);
    else if (op.optype === 'remove') next.delete(op.entity);
  }
  return next;
}
