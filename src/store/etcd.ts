/**
 * The KvStore on etcd v3 (3.4 and later; the `etcd3` client): the store several KMS instances
 * share. A batch is one etcd transaction (all or nothing, durable once Raft has committed it on a
 * quorum); a conditional batch (`batchIf`) is one transaction with compares; reads are linearizable;
 * `entries` pages through a range at one revision, in key byte order (as LevelDB's, so the UTF-16
 * notes of kv.ts apply alike). Every key lives under `prefix` (one per KMS domain).
 *
 * The write-behind of deferred batches is LevelKvStore's, over the etcd database below: the same
 * code, the same semantics as on LevelDB.
 *
 * Limits: a batch may touch at most etcd's --max-txn-ops distinct keys (128 by default), and a
 * request may carry at most --max-request-bytes (1.5 MiB by default).
 */
import type { AbstractLevel } from 'abstract-level';
import { type ICompare, Etcd3, type IOptions, type IRequestOp } from 'etcd3';
import type { Condition } from './conditional.js';
import { type BatchOp, type KvStore, LevelKvStore, type WriteBehindOptions } from './kv.js';

export interface EtcdStoreOptions {
  /** Client URLs of the cluster's members: http://host:2379, or https:// with `tls`. */
  endpoints: string[];
  /** Prepended to every key (e.g. "kms/<domain>/"); default none. */
  prefix?: string;
  /** TLS: the CA that signed the members' certificates, and a client certificate if they ask for one (PEM). */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  /** etcd's user/password authentication. */
  auth?: { username: string; password: string };
  /** Deadline of each request (ms); default 5000. */
  timeoutMs?: number;
  /** The write-behind's tuning; `maxQueued` defaults to 64, so that a flush fits in one transaction. */
  writeBehind?: WriteBehindOptions;
}

/** Keys per transaction of reads (etcd's --max-txn-ops default). */
const MAX_TXN_OPS = 128;
/** Bytes of keys and values in one transaction of several writes (below etcd's --max-request-bytes, 1.5 MiB by default). */
const MAX_GROUP_BYTES = 1024 * 1024;
/** Keys per page of a range read. */
const PAGE = 256;

const utf8 = (s: string) => Buffer.from(s, 'utf8');

/** The first key after every key that starts with `prefix` (etcd's "prefix end"), or \0 (no end) if none. */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/**
 * The later op per key, in first-seen order: etcd refuses a transaction that names a key twice,
 * and within a batch the later op on a key wins.
 */
function lastPerKey(ops: BatchOp[]): BatchOp[] {
  const byKey = new Map<string, BatchOp>();
  for (const op of ops) byKey.set(op.key, op);
  return [...byKey.values()];
}

/** A write waiting to be sent, alone or in one transaction with others (see EtcdDatabase.#send). */
interface PendingWrite {
  compare: ICompare[];
  success: IRequestOp[];
  /** Every key it compares or writes. */
  keys: string[];
  /** Its keys' and values' bytes, about. */
  bytes: number;
  resolve: (succeeded: boolean) => void;
  reject: (e: unknown) => void;
}

/** The subset of an abstract-level database that LevelKvStore uses, on etcd, plus batchIf. */
class EtcdDatabase {
  readonly #client: Etcd3;
  readonly #prefix: Buffer;
  /** Writes that arrived while a transaction was in flight: sent together next (see #send). */
  #pending: PendingWrite[] = [];
  #sending = false;

  constructor(client: Etcd3, prefix: string) {
    this.#client = client;
    this.#prefix = utf8(prefix);
  }

  #key(key: string): Buffer {
    return Buffer.concat([this.#prefix, utf8(key)]);
  }

  #unkey(key: Buffer): string {
    return key.subarray(this.#prefix.length).toString('utf8');
  }

  #writes(ops: BatchOp[]): IRequestOp[] {
    return lastPerKey(ops).map((op) =>
      op.type === 'put' ? { request_put: { key: this.#key(op.key), value: utf8(op.value) } } : { request_delete_range: { key: this.#key(op.key) } },
    );
  }

  async get(key: string): Promise<string | undefined> {
    const res = await this.#client.kv.range({ key: this.#key(key) });
    return res.kvs[0]?.value.toString('utf8');
  }

  /** One read-only transaction per 128 keys (a consistent snapshot within each). */
  async getMany(keys: string[]): Promise<(string | undefined)[]> {
    const out: (string | undefined)[] = [];
    for (let i = 0; i < keys.length; i += MAX_TXN_OPS) {
      const chunk = keys.slice(i, i + MAX_TXN_OPS);
      const res = await this.#client.kv.txn({ success: chunk.map((k) => ({ request_range: { key: this.#key(k) } })) });
      for (const r of res.responses) out.push(r.response_range.kvs[0]?.value.toString('utf8'));
    }
    return out;
  }

  /** One transaction; durable when it resolves (committed by a quorum), whatever `sync` says. */
  async batch(ops: BatchOp[], _options?: object): Promise<void> {
    if (ops.length === 0) return;
    await this.#send([], ops);
  }

  async batchIf(conditions: Condition[], ops: BatchOp[]): Promise<boolean> {
    return this.#send(conditions, ops);
  }

  /**
   * Sends a (conditional) write. While a transaction is in flight, the writes that arrive queue;
   * then as many as fit go as one transaction, each its own nested transaction (its compares, then
   * its writes: it succeeds or fails on its own): those whose keys (compared or written) overlap
   * no other write of the group, within MAX_TXN_OPS ops in all. The others wait for the next one,
   * in call order among writes that share a key. A failed transaction rejects every write in it.
   */
  #send(conditions: Condition[], ops: BatchOp[]): Promise<boolean> {
    const compare = conditions.map(
      (c): ICompare =>
        c.equals === undefined
          ? { key: this.#key(c.key), target: 'Create', result: 'Equal', create_revision: 0 }
          : { key: this.#key(c.key), target: 'Value', result: 'Equal', value: utf8(c.equals) },
    );
    const success = this.#writes(ops);
    const keys = [...conditions.map((c) => c.key), ...ops.map((o) => o.key)];
    let bytes = 0;
    for (const x of [...conditions.map((c) => c.equals ?? ''), ...ops.map((o) => (o.type === 'put' ? o.value : '')), ...keys]) bytes += x.length * 3;
    const done = new Promise<boolean>((resolve, reject) => {
      this.#pending.push({ compare, success, keys, bytes, resolve, reject });
    });
    if (!this.#sending) void this.#drain();
    return done;
  }

  async #drain(): Promise<void> {
    this.#sending = true;
    try {
      while (this.#pending.length > 0) {
        const group = this.#takeGroup();
        try {
          if (group.length === 1) {
            const w = group[0]!;
            const res = await this.#client.kv.txn({ compare: w.compare, success: w.success });
            w.resolve(res.succeeded);
          } else {
            const res = await this.#client.kv.txn({ success: group.map((w) => ({ request_txn: { compare: w.compare, success: w.success } })) });
            for (const [i, w] of group.entries()) w.resolve(res.responses[i]?.response_txn?.succeeded === true);
          }
        } catch (e) {
          for (const w of group) w.reject(e);
        }
      }
    } finally {
      this.#sending = false;
    }
  }

  /** The next transaction's writes (at least the first waiting), taken off the queue. */
  #takeGroup(): PendingWrite[] {
    const first = this.#pending[0]!;
    const group = [first];
    const rest: PendingWrite[] = [];
    // Keys of the group and of the writes left behind: a later write on one of them waits too.
    const taken = new Set(first.keys);
    // etcd counts a nested transaction's ops against what the outer one leaves (--max-txn-ops).
    let size = 1 + Math.max(first.compare.length, first.success.length);
    let bytes = first.bytes;
    for (const w of this.#pending.slice(1)) {
      const n = 1 + w.compare.length + w.success.length;
      const free = !w.keys.some((k) => taken.has(k));
      if (free && size + n + group.length + 1 <= MAX_TXN_OPS && bytes + w.bytes <= MAX_GROUP_BYTES) {
        group.push(w);
        size += n;
        bytes += w.bytes;
      } else {
        rest.push(w);
      }
      for (const k of w.keys) taken.add(k);
    }
    this.#pending = rest;
    return group;
  }

  /** Pages through the range at the revision of its first page: a snapshot, as LevelDB's iterators. */
  async *iterator(range: { gte?: string; lt?: string; reverse?: boolean; limit?: number }): AsyncIterable<[string, string]> {
    let start = range.gte === undefined ? this.#prefix : this.#key(range.gte);
    let end = range.lt === undefined ? prefixEnd(this.#prefix) : this.#key(range.lt);
    if (start.length === 0) start = Buffer.from([0]); // etcd has no empty key
    // \0 as an end means "no end" to etcd; as our end it means nothing is before it.
    if (range.lt !== undefined && (end.length === 0 || Buffer.compare(start, end) >= 0)) return;
    let left = range.limit === undefined || range.limit < 0 ? Number.POSITIVE_INFINITY : range.limit;
    let revision: string | undefined;
    while (left > 0) {
      const res = await this.#client.kv.range({
        key: start,
        range_end: end,
        limit: Math.min(PAGE, left),
        sort_order: range.reverse ? 'Descend' : 'Ascend',
        sort_target: 'Key',
        ...(revision === undefined ? {} : { revision }),
      });
      revision ??= res.header.revision;
      for (const kv of res.kvs) yield [this.#unkey(kv.key), kv.value.toString('utf8')];
      left -= res.kvs.length;
      const last = res.kvs.at(-1);
      if (!res.more || last === undefined) return;
      if (range.reverse) end = last.key;
      else start = Buffer.concat([last.key, Buffer.from([0])]);
    }
  }

  async close(): Promise<void> {
    this.#client.close();
  }
}

/** Opens a KvStore on an etcd cluster (connecting lazily: the first request reports an unreachable cluster). */
export function openEtcdStore(opts: EtcdStoreOptions): KvStore {
  if (opts.endpoints.length === 0) throw new TypeError('openEtcdStore: no endpoints');
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const options: IOptions = {
    hosts: opts.endpoints,
    dialTimeout: timeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeoutMs }),
  };
  if (opts.tls) {
    const { ca, cert, key } = opts.tls;
    options.credentials = { rootCertificate: ca, ...(key === undefined ? {} : { privateKey: key }), ...(cert === undefined ? {} : { certChain: cert }) };
  }
  if (opts.auth) options.auth = { username: opts.auth.username, password: opts.auth.password };
  const db = new EtcdDatabase(new Etcd3(options), opts.prefix ?? '');
  // LevelKvStore uses get, getMany, batch, iterator and close of its database, and batchIf if present.
  // Durable batches are grouped here (in transactions of non-overlapping writes), not by LevelKvStore.
  return new LevelKvStore(db as unknown as AbstractLevel<string | Buffer | Uint8Array, string, string>, {
    maxQueued: 64,
    ...opts.writeBehind,
    groupCommit: false,
  });
}
