/** hex(SHA-256(compact JWS as stored)): how blocks are named (XEP "Entities and Hashes"), for antecedents and GK bindings. */
import { createHash } from 'node:crypto';

export function blockHash(jws: string): string {
  return createHash('sha256').update(jws, 'ascii').digest('hex');
}
