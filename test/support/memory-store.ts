/**
 * An in-memory KvStore for tests: the production store adapter (LevelKvStore) on memory-level, a
 * development dependency. The package's own code never loads memory-level.
 */
import type { AbstractLevel } from 'abstract-level';
import { MemoryLevel } from 'memory-level';
import { LevelKvStore, type KvStore, type WriteBehindOptions } from '../../src/store/kv.js';

/** Opens an in-memory store. */
export async function openMemoryStore(opts?: WriteBehindOptions): Promise<KvStore> {
  const db = new MemoryLevel<string, string>({ keyEncoding: 'utf8', valueEncoding: 'utf8' });
  await db.open();
  return new LevelKvStore(db as unknown as AbstractLevel<string | Buffer | Uint8Array, string, string>, opts);
}
