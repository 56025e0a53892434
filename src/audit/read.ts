/**
 * Reading the audit log (src/audit/log.ts) for `kms audit verify`, `tail` and `search`: read-only,
 * so it works while the KMS writes. A last line without its newline is a write in progress (or a
 * torn one the next start cuts off): reported, not verified.
 */
import type { KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { signatureAlgsFor, verifyCompact } from '../crypto/jws.js';
import { thumbprint } from '../crypto/keys.js';
import { type AuditRecord, GENESIS_PREV, checkpointPayload, sha256, splitLine } from './log.js';

/** One line of the log file: its number (from 1) and text. */
export interface AuditLine {
  line: number;
  text: string;
}

/** The complete lines of the file, in order (a last line without its newline is left out). */
export async function* auditLines(file: string): AsyncGenerator<AuditLine> {
  const rl = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Number.POSITIVE_INFINITY });
  let n = 0;
  let held: string | undefined;
  // readline also yields a last line that has no newline: held back one line to leave it out.
  for await (const text of rl) {
    if (held !== undefined) yield { line: n, text: held };
    n += 1;
    held = text;
  }
  if (held !== undefined && (await endsWithNewline(file))) yield { line: n, text: held };
}

async function endsWithNewline(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size === 0) return true;
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, size - 1);
    return b[0] === 10;
  } finally {
    await fh.close();
  }
}

/** The outcome of verifying a log. */
export interface VerifyResult {
  ok: boolean;
  records: number;
  checkpoints: number;
  /** The seq of the last checkpoint whose signature verified: records up to it cannot be rewritten without the static key. */
  lastCheckpoint?: number;
  /** Records after the last checkpoint (chained, not yet signed). */
  unsigned: number;
  lastSeq?: number;
  /** The first broken link: where and what is wrong. */
  broken?: { seq?: number; line: number; problem: string };
}

/**
 * Checks every line: that it is a record whose hash matches its bytes, whose seq follows the one
 * before and whose prev is the hash of the one before; and every checkpoint's signature, by one
 * of `keys` (the KMS's static public keys). Stops at the first broken link. `source` is the log's
 * file, or its records in order (the log in a shared store: storeAuditLines in store-log.ts).
 */
export async function verifyAuditLog(source: string | AsyncIterable<AuditLine>, keys: KeyObject[]): Promise<VerifyResult> {
  const r: VerifyResult = { ok: true, records: 0, checkpoints: 0, unsigned: 0 };
  const byKid = new Map(keys.map((k) => [thumbprint(k), k]));
  let prev = GENESIS_PREV;
  let expectSeq: number | undefined;
  const fail = (line: number, problem: string, seq?: number) => {
    r.ok = false;
    r.broken = { line, problem, ...(seq !== undefined ? { seq } : {}) };
    return r;
  };
  for await (const { line, text } of typeof source === 'string' ? auditLines(source) : source) {
    let rec: AuditRecord;
    try {
      rec = JSON.parse(text) as AuditRecord;
    } catch {
      return fail(line, 'not a JSON record');
    }
    const seq = typeof rec.seq === 'number' ? rec.seq : undefined;
    const parts = splitLine(text);
    if (!parts) return fail(line, 'no "hash" at the end of the record', seq);
    if (sha256(parts.body) !== parts.hash) return fail(line, 'the record was changed: its hash does not match its contents', seq);
    if (seq === undefined || !Number.isInteger(seq)) return fail(line, 'no seq', seq);
    if (expectSeq !== undefined && seq !== expectSeq) {
      return fail(
        line,
        `seq ${seq} follows ${expectSeq - 1}: ${seq > expectSeq ? `${seq - expectSeq} record(s) missing` : 'a record repeated or out of order'}`,
        seq,
      );
    }
    if (rec.prev !== prev) return fail(line, 'prev is not the hash of the record before it (a record was removed, inserted or changed before it)', seq);
    if (rec.event === 'checkpoint') {
      const key = typeof rec.kid === 'string' ? byKid.get(rec.kid) : undefined;
      if (!key) return fail(line, `checkpoint signed by a key that is not the KMS's (${String(rec.kid).slice(0, 64)})`, seq);
      try {
        const payload = JSON.parse(verifyCompact(String(rec.sig), key, signatureAlgsFor(key)).payload.toString('utf8'));
        if (JSON.stringify(payload) !== JSON.stringify(checkpointPayload({ seq, prev: rec.prev, time: rec.time })))
          return fail(line, 'the checkpoint signature is for another record', seq);
      } catch {
        return fail(line, "the checkpoint signature does not verify with the KMS's static key", seq);
      }
      r.checkpoints += 1;
      r.lastCheckpoint = seq;
      r.unsigned = 0;
    } else r.unsigned += 1;
    r.records += 1;
    r.lastSeq = seq;
    prev = parts.hash;
    expectSeq = seq + 1;
  }
  return r;
}

/** What `kms audit search` selects; every criterion given must match. */
export interface AuditQuery {
  /** The actor or the user a peer asked for. */
  user?: string;
  /** A GK URI (the record's object). */
  gk?: string;
  /** A chain URI (the record's object). */
  chain?: string;
  since?: Date;
  until?: Date;
}

export function matches(r: AuditRecord, q: AuditQuery): boolean {
  if (q.user !== undefined && r.actor !== q.user && r.onBehalfOf !== q.user) return false;
  if (q.gk !== undefined && r.object !== q.gk) return false;
  if (q.chain !== undefined && r.object !== q.chain) return false;
  const t = Date.parse(r.time);
  if (q.since && !(t >= q.since.getTime())) return false;
  if (q.until && !(t <= q.until.getTime())) return false;
  return true;
}
