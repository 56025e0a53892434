/**
 * The audit log in a shared store (etcd, issue 15): every KMS instance of one domain appends to one
 * hash chain, so that the records of all of them are in one verifiable order. The records are the
 * file log's (src/audit/log.ts: the same lines, hashes and signed checkpoints), each under
 * `audit/rec/<seq, 12 digits>`; `audit/head` holds the last one's {seq, hash}. A batch of records
 * is one conditional batch: written only if the head is still the one its records follow; an
 * instance that lost the race to another reads the new head and chains its records after it.
 * `record` resolves once the batch is committed (the Raft commit on etcd) and rejects if it cannot
 * be; the engine then refuses to release a key (fail closed), as with the file.
 */
import type { KvStore } from '../store/kv.js';
import type { Logger } from '../util/logger.js';
import { BatchingAuditLog, formatRecords, GENESIS_PREV } from './log.js';
import type { AuditLine } from './read.js';

const HEAD = 'audit/head';
const REC = 'audit/rec/';
const recKey = (seq: number) => `${REC}${String(seq).padStart(12, '0')}`;
/** Records per conditional batch (with the head, within etcd's 128 operations per transaction). */
const MAX_BATCH = 100;
/** Lost races in a row before a batch is given up (rejected). */
const MAX_ATTEMPTS = 50;

export interface StoreAuditLogOptions {
  kv: KvStore;
  /** The KMS's identity (kms://<domain>): the actor of checkpoints and start records. */
  actor: string;
  /** Names this instance in its start record (e.g. host and process id). */
  instance?: string;
  sign: (payload: unknown) => string;
  kid: string;
  checkpointEvery?: number;
  checkpointSec?: number;
  logger?: Logger;
  clock?: () => Date;
}

/** The head of the chain in the store: its raw value (the batch's condition) and what it says. */
async function readHead(kv: KvStore): Promise<{ raw: string | undefined; seq: number; prev: string }> {
  const raw = await kv.get(HEAD);
  if (raw === undefined) return { raw, seq: 0, prev: GENESIS_PREV };
  const h = JSON.parse(raw) as { seq?: unknown; hash?: unknown };
  if (typeof h.seq !== 'number' || typeof h.hash !== 'string') throw new Error(`the audit head in the store is damaged (${raw.slice(0, 100)})`);
  return { raw, seq: h.seq, prev: h.hash };
}

/** The audit log of every instance sharing one store. */
export class StoreAuditLog extends BatchingAuditLog {
  readonly #o: StoreAuditLogOptions;

  private constructor(o: StoreAuditLogOptions) {
    super(o, MAX_BATCH);
    this.#o = o;
  }

  /** Checks that the store holds the conditional batches it needs, and appends a start record. */
  static async open(o: StoreAuditLogOptions): Promise<StoreAuditLog> {
    if (typeof o.kv.batchIf !== 'function') throw new TypeError('the audit log in a store needs conditional batches (batchIf)');
    const log = new StoreAuditLog(o);
    await readHead(o.kv);
    await log.started(`audit log opened${o.instance ? ` by instance ${o.instance}` : ''}`);
    return log;
  }

  protected where() {
    return { fields: { store: true }, text: 'in the store' };
  }

  /** Chains the batch after the head and commits it if the head is unchanged; after a lost race, again after the new head. */
  protected async writeBatch(fields: Record<string, unknown>[]): Promise<void> {
    const { kv } = this.#o;
    for (let attempt = 1; ; attempt++) {
      const head = await readHead(kv);
      const now = (this.#o.clock ?? (() => new Date()))().toISOString();
      const { lines, seq, prev } = formatRecords(fields, head, now, this.#o.sign);
      const ops = lines.map((value, i) => ({ type: 'put' as const, key: recKey(head.seq + 1 + i), value }));
      ops.push({ type: 'put', key: HEAD, value: JSON.stringify({ seq, hash: prev }) });
      if (await kv.batchIf!([{ key: HEAD, equals: head.raw }], ops, { durable: true })) return;
      if (attempt >= MAX_ATTEMPTS) throw new Error(`lost the race for the audit head ${attempt} times in a row`);
      // Another instance appended first: a short random pause lets one of several contenders through.
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 * attempt)));
    }
  }
}

/** The records of the log in a store, in order (`line` is the record's place, from 1), for verify, tail and search. */
export async function* storeAuditLines(kv: KvStore): AsyncGenerator<AuditLine> {
  let n = 0;
  for await (const [, text] of kv.entries({ gte: REC, lt: `${REC}~` })) yield { line: ++n, text };
}
