/**
 * The narrow key-value contract the KMS keeps its state in. Keys and values are strings; a
 * logical change is always one atomic `batch`. Implemented on any abstract-level database:
 * LevelDB on disk (`level`) in production, memory-level in unit tests (test/support/memory-store.ts:
 * `new LevelKvStore(new MemoryLevel(...))`). The same contract tests run against both
 * (test/store/kv.test.ts).
 */
import type { AbstractLevel } from 'abstract-level';
import { mkdir, statfs } from 'node:fs/promises';
import { Level } from 'level';
import { assertConditions, type Condition, type ConditionalOptions, conditionsHold, WriteGate } from './conditional.js';
import { tightenTree } from './data-dir.js';

/** One write in an atomic batch. */
export type BatchOp = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

/** A range over keys, in key order. */
export interface RangeOptions {
  gte?: string;
  lt?: string;
  reverse?: boolean;
  limit?: number;
}

/** Options of `batch`. */
export interface BatchOptions {
  /** Waits for the write to reach the disk (fsync). */
  durable?: boolean;
  /**
   * Write-behind: the batch is visible to every read of this store at once, but it is written
   * later, coalesced with other deferred batches (within `flushMs`, or sooner when many are
   * queued), always before a later batch on one of its keys, before a range read that covers one
   * of its keys, and on `flush()`/`close()`. A crash may lose it (all of it or none of it).
   * Meant for records that may be lost (the ephemeral keys); never combined with `durable`.
   */
  deferred?: boolean;
}

/** What the engine needs from storage, and nothing more. */
export interface KvStore {
  get(key: string): Promise<string | undefined>;
  getMany(keys: string[]): Promise<(string | undefined)[]>;
  /** Applies every op or none. See BatchOptions for `durable` and `deferred`. */
  batch(ops: BatchOp[], options?: BatchOptions): Promise<void>;
  entries(range: RangeOptions): AsyncIterable<[string, string]>;
  /**
   * Optional (src/store/conditional.ts): applies every op if every condition holds (each key has
   * the value given, or is absent for `equals: undefined`), and nothing otherwise; true if applied.
   * Atomic with respect to every other batch on the store, from any writer it serves.
   */
  batchIf?(conditions: Condition[], ops: BatchOp[], options?: ConditionalOptions): Promise<boolean>;
  /** Writes every deferred batch queued so far; rejects if that write fails. */
  flush(): Promise<void>;
  /** Flushes, then closes. */
  close(): Promise<void>;
}

/** Tuning of the write-behind queue. */
export interface WriteBehindOptions {
  /** Longest a deferred batch waits before it is written (ms). */
  flushMs?: number;
  /** A flush starts at once when this many deferred ops are queued. */
  maxQueued?: number;
}

const DEFAULT_FLUSH_MS = 20;
/** Free bytes a disk must have before a store that failed a write is opened again (a new log and manifest). */
const MIN_FREE_TO_REOPEN = 1024 * 1024;
const DEFAULT_MAX_QUEUED = 256;

/** Characters where UTF-16 order (JS `<`) and UTF-8 byte order (LevelDB's) can disagree. */
const ORDER_SENSITIVE = /[\uD800-\uFFFF]/;

function inRangeBy(key: string, r: RangeOptions, cmp: (a: string, b: string) => number): boolean {
  return (r.gte === undefined || cmp(key, r.gte) >= 0) && (r.lt === undefined || cmp(key, r.lt) < 0);
}

const jsOrder = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));

/**
 * Whether `key` may lie in `range`. Tested in both orders when they can differ, so the answer is
 * never a false "no"; a false "yes" only costs an early flush.
 */
function mayBeInRange(key: string, r: RangeOptions): boolean {
  if (inRangeBy(key, r, jsOrder)) return true;
  const sensitive = ORDER_SENSITIVE.test(key) || (r.gte !== undefined && ORDER_SENSITIVE.test(r.gte)) || (r.lt !== undefined && ORDER_SENSITIVE.test(r.lt));
  return sensitive && inRangeBy(key, r, byteOrder);
}

/** A KvStore on any abstract-level database with string keys and values. */
export class LevelKvStore implements KvStore {
  readonly #db: AbstractLevel<string | Buffer | Uint8Array, string, string>;
  readonly #flushMs: number;
  readonly #maxQueued: number;
  /** Deferred ops not yet handed to the database, in call order. */
  #queued: BatchOp[] = [];
  /** The newest deferred op per key, queued or being written: what reads must see. */
  readonly #overlay = new Map<string, BatchOp>();
  /** The write of deferred ops in progress, if any (one at a time, so they land in order). */
  #writing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** The last failure of a background flush (reported by the next flush() or close()). */
  #error: unknown;
  /** Keeps plain batches from landing between a conditional batch's check and its write. */
  readonly #gate = new WriteGate();
  /**
   * A write failed with an I/O error (a full disk, EIO): LevelDB keeps writing to the log file
   * that failed, and what it then acknowledges is dropped at the next open. The database is closed
   * and opened again (a new log) before the next write (see #heal).
   */
  #broken = false;
  #healing: Promise<void> | undefined;
  /**
   * Group commit: durable batches that arrive while a synced write is in flight wait here, and go
   * together as the next synced write (one fsync for all of them), in call order.
   */
  #groupQueue: { ops: BatchOp[]; resolve: () => void; reject: (e: unknown) => void }[] = [];
  /** The synced write in flight, if any. */
  #syncing = false;
  /** Whether durable batches are committed in groups (LevelDB: yes; a database that batches on its own, such as etcd: no). */
  readonly #groupCommit: boolean;

  /** The database's folder, when it has one (a free-space check before reopening). */
  readonly #dir: string | undefined;

  constructor(db: AbstractLevel<string | Buffer | Uint8Array, string, string>, opts: WriteBehindOptions & { dir?: string; groupCommit?: boolean } = {}) {
    this.#db = db;
    this.#dir = opts.dir;
    this.#groupCommit = opts.groupCommit ?? true;
    this.#flushMs = opts.flushMs ?? DEFAULT_FLUSH_MS;
    this.#maxQueued = opts.maxQueued ?? DEFAULT_MAX_QUEUED;
  }

  async get(key: string): Promise<string | undefined> {
    const o = this.#overlay.get(key);
    if (o !== undefined) return o.type === 'put' ? o.value : undefined;
    return (await this.#db.get(key)) ?? undefined;
  }

  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    if (keys.length === 0) return [];
    // The overlay is read before the database: an op that leaves it has been written by then.
    const pending = this.#overlay.size === 0 ? undefined : keys.map((k) => this.#overlay.get(k));
    const values = (await this.#db.getMany(keys)).map((v) => v ?? undefined);
    if (pending === undefined) return values;
    return values.map((v, i) => {
      const o = pending[i];
      return o === undefined ? v : o.type === 'put' ? o.value : undefined;
    });
  }

  async batch(ops: BatchOp[], options: BatchOptions = {}): Promise<void> {
    if (ops.length === 0) return;
    assertOps(ops);
    if (options.deferred && options.durable) throw new TypeError('batch: a deferred batch cannot be durable');
    await this.#heal();
    return this.#gate.shared(() => this.#batch(ops, options));
  }

  /** Reopens the database after an I/O error, with no write in flight (outside the gate: never from inside a batch). */
  async #heal(): Promise<void> {
    if (!this.#broken) return;
    this.#healing ??= this.#gate
      .exclusive(async () => {
        if (!this.#broken) return;
        // Opening writes a new log: on a disk still full it would fail and leave no database for
        // reads either. So the store stays open for reads, and writes are refused, until there is room.
        if (this.#dir !== undefined) {
          const fs = await statfs(this.#dir).catch(() => undefined);
          const free = fs ? fs.bavail * fs.bsize : Number.POSITIVE_INFINITY;
          if (free < MIN_FREE_TO_REOPEN) {
            throw new Error(`the store's disk is full (${free} bytes free under ${this.#dir}): writes are refused until space is freed`);
          }
        }
        if (this.#writing) await this.#writing;
        await this.#db.close();
        await this.#db.open();
        this.#broken = false;
      })
      .finally(() => {
        this.#healing = undefined;
      });
    await this.#healing;
  }

  /** Notes an I/O error of a write (see #broken). */
  #failed(e: unknown): void {
    const code = (e as { code?: unknown; cause?: { code?: unknown } }).code;
    if (code === 'LEVEL_IO_ERROR' || /IO error/i.test(String((e as Error).message))) this.#broken = true;
  }

  async #batch(ops: BatchOp[], options: BatchOptions): Promise<void> {
    if (options.deferred) {
      for (const op of ops) {
        this.#queued.push(op);
        this.#overlay.set(op.key, op);
      }
      if (this.#queued.length >= this.#maxQueued) void this.#startFlush();
      else this.#timer ??= setTimeout(() => this.#startFlush(), this.#flushMs).unref();
      return;
    }
    // A deferred op on one of these keys lands first, so that this batch wins (e.g. a delete).
    if (this.#overlay.size > 0 && ops.some((op) => this.#overlay.has(op.key))) await this.#startFlush();
    if (options.durable === true && this.#groupCommit) return this.#commitInGroup(ops);
    // classic-level honours `sync`; memory-level ignores it.
    try {
      await this.#db.batch(ops, { sync: options.durable === true } as object);
    } catch (e) {
      this.#failed(e);
      throw e;
    }
  }

  /**
   * A durable batch, committed with the others that are waiting (group commit): while one synced
   * write is in flight the next ones queue, then go as one synced batch. Each caller resolves when
   * that write is synced; if it fails, every caller in it gets the error (the combined batch is
   * all or nothing, so each caller's ops stay atomic). Callers are inside the gate's shared
   * sections until then, so a conditional batch or a heal never runs between a check and a write.
   */
  #commitInGroup(ops: BatchOp[]): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      this.#groupQueue.push({ ops, resolve, reject });
    });
    if (!this.#syncing) void this.#syncGroups();
    return done;
  }

  /** Writes the queued durable batches, a group at a time, until none are left. */
  async #syncGroups(): Promise<void> {
    this.#syncing = true;
    try {
      while (this.#groupQueue.length > 0) {
        const group = this.#groupQueue;
        this.#groupQueue = [];
        const ops = group.length === 1 ? group[0]!.ops : group.flatMap((g) => g.ops);
        try {
          // classic-level honours `sync`; memory-level ignores it.
          await this.#db.batch(ops, { sync: true } as object);
        } catch (e) {
          this.#failed(e);
          // On an I/O error the log may acknowledge and then lose what follows: the batches still
          // queued are refused too (they cannot wait for the heal, which waits for them).
          const refused = this.#broken ? [...group, ...this.#groupQueue.splice(0)] : group;
          for (const g of refused) g.reject(e);
          continue;
        }
        for (const g of group) g.resolve();
      }
    } finally {
      this.#syncing = false;
    }
  }

  /** See KvStore.batchIf: server-side on a database that has it (etcd), else check then write under the gate. */
  async batchIf(conditions: Condition[], ops: BatchOp[], options: ConditionalOptions = {}): Promise<boolean> {
    assertConditions(conditions);
    assertOps(ops);
    await this.#heal();
    const db = this.#db as { batchIf?: (conditions: Condition[], ops: BatchOp[]) => Promise<boolean> };
    if (db.batchIf !== undefined) {
      // Deferred ops on these keys land first, so that the server compares and writes over them.
      if (this.#overlay.size > 0 && [...conditions, ...ops].some((x) => this.#overlay.has(x.key))) await this.#startFlush();
      return db.batchIf(conditions, ops);
    }
    return this.#gate.exclusive(async () => {
      if (!conditionsHold(conditions, await this.getMany(conditions.map((c) => c.key)))) return false;
      if (ops.length > 0) await this.#batch(ops, { durable: options.durable === true });
      return true;
    });
  }

  async *entries(range: RangeOptions): AsyncIterable<[string, string]> {
    if (this.#overlay.size > 0) {
      for (const k of this.#overlay.keys()) {
        if (mayBeInRange(k, range)) {
          await this.#startFlush();
          break;
        }
      }
    }
    const opts: Record<string, unknown> = {};
    if (range.gte !== undefined) opts.gte = range.gte;
    if (range.lt !== undefined) opts.lt = range.lt;
    if (range.reverse) opts.reverse = true;
    if (range.limit !== undefined) opts.limit = range.limit;
    for await (const [k, v] of this.#db.iterator(opts)) yield [k, v];
  }

  /** Starts writing the queued deferred ops (after the write in progress); never rejects. */
  #startFlush(): Promise<void> {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#queued.length === 0) return this.#writing ?? Promise.resolve();
    const ops = this.#queued;
    this.#queued = [];
    const previous = this.#writing;
    const write = (async () => {
      if (previous) await previous;
      try {
        await this.#db.batch(ops, { sync: false } as object);
      } catch (e) {
        // Lost, as in a crash: the records vanish from reads too. Reported by flush()/close().
        this.#error = e;
        this.#failed(e);
      }
      for (const op of ops) if (this.#overlay.get(op.key) === op) this.#overlay.delete(op.key);
    })();
    this.#writing = write;
    void write.then(() => {
      if (this.#writing === write) this.#writing = undefined;
    });
    return write;
  }

  async flush(): Promise<void> {
    await this.#startFlush();
    if (this.#error !== undefined) {
      const e = this.#error;
      this.#error = undefined;
      throw e;
    }
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      await this.#db.close();
    }
  }
}

/**
 * Opens (creating if needed) a LevelDB store in `dir`, private to this user: the folder 0700 and
 * its files 0600 (those of an older store tightened too). A store that cannot be opened is
 * reported with its folder and the cause LevelDB gives (a lock held by another process, a
 * read-only or unwritable folder, damaged files), never as a bare "Database failed to open".
 */
export async function openLevelStore(dir: string, opts?: WriteBehindOptions): Promise<KvStore> {
  const db = new Level<string, string>(dir, { keyEncoding: 'utf8', valueEncoding: 'utf8' });
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await db.open();
  } catch (e) {
    throw new Error(`cannot open the store in ${dir}: ${openFailure(e)}`, { cause: e });
  }
  try {
    // LevelDB makes its files as the umask says (0644 by default); the 0700 folder already keeps
    // others out of the files it makes later (new tables, logs).
    await tightenTree(dir);
  } catch (e) {
    await db.close();
    throw new Error(`cannot make the store in ${dir} private: ${(e as Error).message}`, { cause: e });
  }
  return new LevelKvStore(db as unknown as AbstractLevel<string | Buffer | Uint8Array, string, string>, { ...opts, dir });
}

/** Keys and values are strings: abstract-level would coerce a number or object key ('[object Object]') and write it. */
function assertOps(ops: BatchOp[]): void {
  for (const op of ops) {
    if (
      op === null ||
      typeof op !== 'object' ||
      (op.type !== 'put' && op.type !== 'del') ||
      typeof op.key !== 'string' ||
      (op.type === 'put' && typeof op.value !== 'string')
    ) {
      throw new TypeError('batch: keys and values must be strings');
    }
  }
}

const UNWRITABLE = /read-only file system|permission denied|operation not permitted|EROFS|EACCES|EPERM/i;

/** Why LevelDB would not open, from its error's cause, with what to do for the usual causes. */
function openFailure(e: unknown): string {
  const err = e as Error & { code?: string; cause?: Error & { code?: string } };
  const inner = err.cause?.message ? err.cause : err;
  const why = `${inner.message}${inner.code ? ` (${inner.code})` : ''}`;
  if (UNWRITABLE.test(why)) return `${why}: the KMS must be able to write to its data folder (is it on a read-only file system, or owned by another user?)`;
  if (inner.code === 'LEVEL_LOCKED') return `${why}: another process (a running KMS?) has it open`;
  return why;
}
