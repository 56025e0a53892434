/**
 * The audit log (issue 14): one JSON object per line in `<dir>/audit.jsonl`, append-only and
 * hash-chained. Each record carries `prev`, the `hash` of the record before it (64 zeros for the
 * first), and its own `hash`: the SHA-256, in lowercase hex, of the record's line up to and
 * without `,"hash":"…"` (the bytes as written, so that verifying needs no canonical JSON). Every
 * `checkpointEvery` records, every `checkpointSec` seconds with new records, and at close, the KMS
 * appends a checkpoint whose `sig` is a JWS by its static key over the checkpoint's seq, prev and
 * time: editing the log and recomputing the hashes cannot forge those. Records never hold key
 * material, tokens, JWEs or request bodies: only who, what, which object, the decision and why.
 *
 * Writes are grouped: the records that arrive while one write is on disk go in the next, and
 * `append` resolves only once its record is written and fdatasync'ed. A failed write rejects its
 * records and leaves the log where it was (bytes of a partial write are cut off before the next
 * write); the engine then refuses to release a key (fail closed, src/engine/engine.ts).
 */
import { createHash } from 'node:crypto';
import { closeSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readSync } from 'node:fs';
import { chmod, mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../util/logger.js';

/** The file name of the audit log in its folder. */
export const AUDIT_FILE = 'audit.jsonl';
/** `prev` of the first record. */
export const GENESIS_PREV = '0'.repeat(64);

/** What the engine reports of one request (see AuditSink). */
export interface AuditEntry {
  /** e.g. "gk.get", "gk.create", "gk.bind", "chain.create", "chain.append", "entity-key.register", "channel.create". */
  event: string;
  /** The authenticated principal: a user's bare JID or kms://<peer>; absent when authentication failed. */
  actor?: string;
  /** The user a federating KMS asked for. */
  onBehalfOf?: string;
  /** The request's method. */
  op: string;
  /** The object: a GK or chain URI, an entity, an ephemeral key URI. */
  object?: string;
  /** The block a GK is bound to. */
  block?: string;
  /** An entity key's kid (its thumbprint). */
  kid?: string;
  /** The channel (ephemeral key URI) the request came on. */
  channel?: string;
  decision: 'allow' | 'deny';
  status: number;
  code?: string;
  reason?: string;
  requestId?: string | number;
}

/** Where the engine writes its audit records: `record` resolves once the record is durable and rejects if it cannot be written. */
export interface AuditSink {
  record(entry: AuditEntry): Promise<void>;
}

/** One line of the log, parsed. */
export interface AuditRecord extends Partial<AuditEntry> {
  seq: number;
  time: string;
  event: string;
  prev: string;
  hash: string;
  /** Checkpoints: the static key's kid and the JWS over {audit, seq, prev, time}. */
  kid?: string;
  sig?: string;
  /** Start records: what recovery found. */
  note?: string;
}

/** The hash of a line and its body, or undefined when the line does not end in `,"hash":"<64 hex>"}`. */
export function splitLine(line: string): { body: string; hash: string } | undefined {
  const m = /,"hash":"([0-9a-f]{64})"\}$/.exec(line);
  if (!m) return undefined;
  return { body: `${line.slice(0, m.index)}}`, hash: m[1]! };
}

export const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** The payload a checkpoint's signature covers. */
export function checkpointPayload(r: { seq: number; prev: string; time: string }) {
  return { audit: 'checkpoint', seq: r.seq, prev: r.prev, time: r.time };
}

/**
 * The lines (without newlines) of records following `tail`, one per `fields` (an event and the
 * entry's fields), all at `time`; checkpoints (event "checkpoint") get their signature here.
 * Returns the new tail too. Shared by the file log and the log in a shared store (store-log.ts).
 */
export function formatRecords(
  fieldsList: Record<string, unknown>[],
  tail: { seq: number; prev: string },
  time: string,
  sign: (payload: unknown) => string,
): { lines: string[]; seq: number; prev: string } {
  let { seq, prev } = tail;
  const lines: string[] = [];
  for (const fields of fieldsList) {
    seq += 1;
    const { event, ...rest } = fields;
    const record: Record<string, unknown> = { seq, time, event };
    for (const [k, v] of Object.entries(rest)) if (v !== undefined) record[k] = v;
    if (event === 'checkpoint') record.sig = sign(checkpointPayload({ seq, prev, time }));
    record.prev = prev;
    const body = JSON.stringify(record);
    const hash = sha256(body);
    lines.push(`${body.slice(0, -1)},"hash":"${hash}"}`);
    prev = hash;
  }
  return { lines, seq, prev };
}

export interface AuditLogOptions {
  dir: string;
  /** The KMS's identity (kms://<domain>): the actor of checkpoints and start records. */
  actor: string;
  /** Signs a checkpoint payload with the static key (a compact JWS). */
  sign: (payload: unknown) => string;
  /** The static key's kid, written beside the signature. */
  kid: string;
  checkpointEvery?: number;
  checkpointSec?: number;
  logger?: Logger;
  clock?: () => Date;
}

interface Pending {
  fields: Record<string, unknown>;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** What both audit logs (the file's and the shared store's) are told at open. */
export interface QueueOptions {
  actor: string;
  kid: string;
  checkpointEvery?: number;
  checkpointSec?: number;
  logger?: Logger;
}

/**
 * The queue both audit logs share: records wait for the write in progress, go in batches of at
 * most `maxBatch` (one durable write each), and every caller is answered when its batch is durable
 * or failed; checkpoints every `checkpointEvery` records and `checkpointSec` seconds, and at close.
 * A log says how a batch is written (writeBatch) and where (for error lines).
 */
export abstract class BatchingAuditLog implements AuditSink {
  readonly #q: QueueOptions;
  readonly #maxBatch: number;
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #sinceCheckpoint = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  protected constructor(q: QueueOptions, maxBatch = Number.POSITIVE_INFINITY) {
    this.#q = q;
    this.#maxBatch = maxBatch;
  }

  /** Writes one batch durably, or throws and writes nothing of it. */
  protected abstract writeBatch(fields: Record<string, unknown>[]): Promise<void>;
  /** Where the log is, for the error line of a failed write. */
  protected abstract where(): { fields: Record<string, unknown>; text: string };

  /** Appends the start record and starts the checkpoint timer (at open). */
  protected async started(note: string): Promise<void> {
    await this.#enqueue({ event: 'audit.start', actor: this.#q.actor, note });
    const sec = this.#q.checkpointSec ?? 300;
    if (sec > 0) {
      this.#timer = setInterval(() => {
        if (this.#sinceCheckpoint > 0) this.checkpoint().catch(() => undefined);
      }, sec * 1000);
      this.#timer.unref();
    }
  }

  /** Appends one record; resolves once it is durable, rejects if it could not be written. */
  record(entry: AuditEntry): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('the audit log is closed'));
    const p = this.#enqueue({ ...entry });
    if (++this.#sinceCheckpoint >= (this.#q.checkpointEvery ?? 1000)) this.checkpoint().catch(() => undefined);
    return p;
  }

  /** Appends a checkpoint signed by the KMS's static key. */
  checkpoint(): Promise<void> {
    this.#sinceCheckpoint = 0;
    return this.#enqueue({ event: 'checkpoint', actor: this.#q.actor, kid: this.#q.kid, sig: '' });
  }

  /** A final checkpoint, then no more records. */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#timer) clearInterval(this.#timer);
    try {
      await this.checkpoint();
    } finally {
      this.#closed = true;
    }
  }

  #enqueue(fields: Record<string, unknown>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ fields, resolve, reject });
      if (!this.#flushing) this.#flushing = this.#flushSoon();
    });
  }

  /** Writes batches until the queue is empty; one at a time, each after the records that came while the last was written. */
  async #flushSoon(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.slice(0, this.#maxBatch);
        this.#queue = this.#queue.slice(batch.length);
        try {
          await this.writeBatch(batch.map((p) => p.fields));
          for (const p of batch) p.resolve();
        } catch (e) {
          const err = e as Error;
          const w = this.where();
          this.#q.logger?.error({ event: 'audit-write-failed', ...w.fields, reason: err.message }, `audit log ${w.text}: ${err.message}`);
          for (const p of batch) p.reject(err);
        }
        // Let the requests that were waiting add their records to the next batch.
        if (this.#queue.length > 0) await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.#flushing = undefined;
    }
  }
}

/** The append-only, hash-chained audit log of one KMS, in a file. */
export class AuditLog extends BatchingAuditLog {
  readonly file: string;
  readonly #o: AuditLogOptions;
  #seq: number;
  #prev: string;
  /** Bytes durable in the file: what the next write appends to. */
  #size: number;

  private constructor(o: AuditLogOptions, file: string, tail: { seq: number; prev: string; size: number }) {
    super(o);
    this.#o = o;
    this.file = file;
    this.#seq = tail.seq;
    this.#prev = tail.prev;
    this.#size = tail.size;
  }

  /**
   * Opens (or makes) the log in `o.dir` (0700, the file 0600), checks its last record and appends a
   * start record. A torn last line (a crash in the middle of a write) is cut off, logged and noted in
   * the start record; a last record whose hash does not match stops the start (run `kms audit verify`).
   */
  static async open(o: AuditLogOptions): Promise<AuditLog> {
    await mkdir(o.dir, { recursive: true, mode: 0o700 });
    const file = join(o.dir, AUDIT_FILE);
    const fh = await open(file, 'a', 0o600);
    await fh.close();
    await chmod(file, 0o600);
    const { tail, torn } = readTail(file);
    const log = new AuditLog(o, file, tail);
    let note = 'audit log opened';
    if (torn > 0) {
      note = `a torn last line of ${torn} bytes (an interrupted write) was cut off at start`;
      o.logger?.warn({ event: 'audit-torn-line', file, bytes: torn }, `audit log ${file}: ${note}`);
    }
    await log.started(note);
    return log;
  }

  protected where() {
    return { fields: { file: this.file }, text: this.file };
  }

  /** Serializes and writes one batch (one write and one fdatasync); on failure nothing of it counts. */
  protected async writeBatch(fields: Record<string, unknown>[]): Promise<void> {
    const now = (this.#o.clock ?? (() => new Date()))().toISOString();
    const { lines, seq, prev } = formatRecords(fields, { seq: this.#seq, prev: this.#prev }, now, this.#o.sign);
    const text = lines.map((l) => `${l}\n`).join('');
    // Opened for each batch: a file that became unwritable (a read-only volume) fails here, not later.
    const fh = await open(this.file, 'r+');
    try {
      const { size } = await fh.stat();
      if (size < this.#size) throw new Error(`the file is shorter (${size} bytes) than what was written to it (${this.#size}): it was truncated`);
      // Bytes of an earlier write that failed half-way: never part of the chain.
      if (size > this.#size) await fh.truncate(this.#size);
      const buf = Buffer.from(text, 'utf8');
      let off = 0;
      while (off < buf.length) off += (await fh.write(buf, off, buf.length - off, this.#size + off)).bytesWritten;
      await fh.datasync();
      this.#size += buf.length;
      this.#seq = seq;
      this.#prev = prev;
    } finally {
      await fh.close();
    }
  }
}

/**
 * The last record of the file (seq and hash) and where it ends; cuts a torn last line off (the
 * bytes after the last newline). Throws when the last complete line is not a record whose hash matches.
 */
function readTail(file: string): { tail: { seq: number; prev: string; size: number }; torn: number } {
  const fd = openSync(file, 'r+');
  try {
    const size = fstatSync(fd).size;
    if (size === 0) return { tail: { seq: 0, prev: GENESIS_PREV, size: 0 }, torn: 0 };
    // Records are well under 64 KiB; read back until two newlines (the end of the line before the last) are found.
    let start = size;
    let chunk = Buffer.alloc(0);
    while (start > 0) {
      const n = Math.min(65536, start);
      start -= n;
      const b = Buffer.alloc(n);
      readSync(fd, b, 0, n, start);
      chunk = Buffer.concat([b, chunk]);
      const last = chunk.lastIndexOf(10);
      if (last >= 0 && chunk.lastIndexOf(10, last - 1) >= 0) break;
    }
    const lastNl = chunk.lastIndexOf(10);
    const end = lastNl < 0 ? start : start + lastNl + 1;
    const torn = size - end;
    if (torn > 0) {
      ftruncateSync(fd, end);
      fdatasyncSync(fd);
    }
    if (end === 0) return { tail: { seq: 0, prev: GENESIS_PREV, size: 0 }, torn };
    const before = lastNl < 0 ? -1 : chunk.lastIndexOf(10, lastNl - 1);
    const line = chunk.subarray(before + 1, lastNl).toString('utf8');
    const parts = splitLine(line);
    let seq: unknown;
    try {
      seq = (JSON.parse(line) as { seq?: unknown }).seq;
    } catch {
      seq = undefined;
    }
    if (!parts || sha256(parts.body) !== parts.hash || typeof seq !== 'number') {
      throw new Error(
        `the last record of the audit log ${file} is damaged (its hash does not match): check it with kms audit verify; refusing to append to it`,
      );
    }
    return { tail: { seq, prev: parts.hash, size: end }, torn };
  } finally {
    closeSync(fd);
  }
}
