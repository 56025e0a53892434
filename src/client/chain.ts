/**
 * Client-side GMBC work: signing appended blocks, and verifying a fetched chain the way PCG-01
 * defines validity (KMS signature on the genesis, every antecedent, every signer a member before
 * its block, every signature), so that a client need not trust the KMS's word about membership.
 */
import type { KeyObject } from 'node:crypto';
import { blockHash } from '../protocol/block-hash.js';
import { decodeCompactJws, signCompact, verifyCompact, type JwsAlg } from '../crypto/jws.js';

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

/** Verifies a whole chain (genesis first) per PCG-01; throws an Error naming the first bad block. */
export async function verifyChain(blocks: string[], o: VerifyOptions): Promise<VerifiedChain> {
  if (blocks.length === 0) throw new Error('empty chain');
  const kmsAlgs: JwsAlg[] = o.kmsKey.asymmetricKeyType === 'rsa' ? ['PS256', 'RS256'] : ['ES256'];
  const genesis = JSON.parse(verifyCompact(blocks[0]!, o.kmsKey, kmsAlgs).payload.toString('utf8'));
  if (genesis.curator !== o.kmsId || genesis.creator !== o.kmsId) throw new Error('block 0: the genesis block is not the KMS\'s');
  if (typeof genesis.uri !== 'string') throw new Error('block 0: no chain uri');
  let members = applyOperations(new Set<string>(), genesis.operations);
  const hashes = [blockHash(blocks[0]!)];
  const all = [members];
  for (let i = 1; i < blocks.length; i++) {
    const jws = blocks[i]!;
    const { header, payload } = decodeCompactJws(jws);
    const block = JSON.parse(payload.toString('utf8'));
    if (block.antecedent !== hashes[i - 1]) throw new Error(`block ${i}: antecedent does not match block ${i - 1}`);
    if (!members.has(block.creator)) throw new Error(`block ${i}: ${block.creator} was not a member before it`);
    const keys = (await o.keysOf(block.creator)).filter((k) => header.kid === undefined || k.kid === header.kid);
    const ok = keys.some((k) => {
      try {
        verifyCompact(jws, k.key, k.key.asymmetricKeyType === 'ec' ? ['ES256'] : ['PS256', 'RS256']);
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
  return { uri: genesis.uri, hashes, members: all, tail: hashes[hashes.length - 1]! };
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
