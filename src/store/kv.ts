/**
 * The narrow key-value contract the KMS keeps its state in. Keys and values are strings; a
 * logical change is always one atomic `batch`. Implemented on any abstract-level database:
 * LevelDB on disk (`level`) in production, memory-level in unit tests. The same contract tests
 * run against both (test/store/kv.test.ts).
 */
import type { AbstractLevel } from 'abstract-level';
import { Level } from 'level';
import { MemoryLevel } from 'memory-level';

/** One write in an atomic batch. */
export type BatchOp = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

/** A range over keys, in key order. */
export interface RangeOptions {
  gte?: string;
  lt?: string;
  reverse?: boolean;
  limit?: number;
}

/** What the engine needs from storage, and nothing more. */
export interface KvStore {
  get(key: string): Promise<string | undefined>;
  getMany(keys: string[]): Promise<(string | undefined)[]>;
  /** Applies every op or none. `durable` waits for the write to reach the disk (fsync). */
  batch(ops: BatchOp[], options?: { durable?: boolean }): Promise<void>;
  entries(range: RangeOptions): AsyncIterable<[string, string]>;
  close(): Promise<void>;
}

/** A KvStore on any abstract-level database with string keys and values. */
export class LevelKvStore implements KvStore {
  readonly #db: AbstractLevel<string | Buffer | Uint8Array, string, string>;

  constructor(db: AbstractLevel<string | Buffer | Uint8Array, string, string>) {
    this.#db = db;
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.#db.get(key)) ?? undefined;
  }

  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return [];
    return (await this.#db.getMany(keys)).map((v) => v ?? undefined);
  }

  async batch(ops: BatchOp[], options: { durable?: boolean } = {}): Promise<void> {
    if (ops.length === 0) return;
    // Keys and values are strings: abstract-level would coerce a number or object key ('[object Object]') and write it.
    for (const op of ops) {
      if (typeof op.key !== 'string' || (op.type === 'put' && typeof op.value !== 'string')) throw new TypeError('batch: keys and values must be strings');
    }
    // classic-level honours `sync`; memory-level ignores it.
    await this.#db.batch(ops, { sync: options.durable === true } as object);
  }

  async *entries(range: RangeOptions): AsyncIterable<[string, string]> {
    const opts: Record<string, unknown> = {};
    if (range.gte !== undefined) opts.gte = range.gte;
    if (range.lt !== undefined) opts.lt = range.lt;
    if (range.reverse) opts.reverse = true;
    if (range.limit !== undefined) opts.limit = range.limit;
    for await (const [k, v] of this.#db.iterator(opts)) yield [k, v];
  }

  async close(): Promise<void> {
    await this.#db.close();
  }
}

/** Opens (creating if needed) a LevelDB store in `dir`. */
export async function openLevelStore(dir: string): Promise<KvStore> {
  const db = new Level<string, string>(dir, { keyEncoding: 'utf8', valueEncoding: 'utf8' });
  await db.open();
  return new LevelKvStore(db as unknown as AbstractLevel<string | Buffer | Uint8Array, string, string>);
}

/** Opens an in-memory store (tests). */
export async function openMemoryStore(): Promise<KvStore> {
  const db = new MemoryLevel<string, string>({ keyEncoding: 'utf8', valueEncoding: 'utf8' });
  await db.open();
  return new LevelKvStore(db as unknown as AbstractLevel<string | Buffer | Uint8Array, string, string>);
}
