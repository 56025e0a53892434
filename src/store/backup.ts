/**
 * Backups of a data folder (`kms backup`, `kms restore`), taken while the KMS runs. One file of
 * JSON lines:
 *   {"format":"xmpp-kms-backup","version":1,"created":…}
 *   {"file":"identity-ec.json","data":"<base64>"}        the data folder's files (sealed as they are)
 *   {"k":"<store key>","v":"<store value>"}               every record, from one LevelDB snapshot
 *   {"masterKey":"<base64url>","keyId":…}                 only with `kms backup --with-master-key`
 *   {"end":true,"files":n,"entries":m,"sha256":"<hex>"}    SHA-256 over the lines before it
 * The store's records come from a single iterator, which reads a snapshot of the database taken
 * when it is made: writes that land meanwhile are in the next backup, never half in this one.
 * Key material stays sealed under the master key, which is not in the file unless asked for.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KEY_CHECK_FILE } from './data-dir.js';
import type { BatchOp, KvStore, RangeOptions } from './kv.js';
import { openLevelStore } from './kv.js';

/** The data folder's files a backup holds (the master key never: it is outside the folder's data). */
const BACKUP_FILES = ['identity-ec.json', 'identity-rsa.json', 'trust-anchor.pem', 'issuer.json', 'issuer-jwks.json', 'idp-keys.json', KEY_CHECK_FILE];

/** Store keys that are no record (the readiness probe's). */
const SKIPPED = new Set(['~readyz']);

/** Writes a backup of `kv` and `dataDir`'s files as lines through `write` (each line ends with \n). */
export async function writeBackup(
  kv: KvStore,
  dataDir: string,
  write: (line: string) => unknown | Promise<unknown>,
): Promise<{ files: number; entries: number }> {
  const hash = createHash('sha256');
  const emit = async (o: unknown) => {
    const line = `${JSON.stringify(o)}\n`;
    hash.update(line);
    await write(line);
  };
  await emit({ format: 'xmpp-kms-backup', version: 1, created: new Date().toISOString() });
  let files = 0;
  for (const name of BACKUP_FILES) {
    let data: Buffer;
    try {
      data = await readFile(join(dataDir, name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    await emit({ file: name, data: data.toString('base64') });
    files++;
  }
  let entries = 0;
  // One iterator: one snapshot of the store.
  for await (const [k, v] of kv.entries({})) {
    if (SKIPPED.has(k)) continue;
    await emit({ k, v });
    entries++;
  }
  await write(`${JSON.stringify({ end: true, files, entries, sha256: hash.digest('hex') })}\n`);
  return { files, entries };
}

/** A backup read back and checked. */
export interface Backup {
  created: string;
  files: { name: string; data: Buffer }[];
  entries: [string, string][];
  /** Present only in a backup made with --with-master-key. */
  masterKey?: Buffer;
}

/** Reads and checks a backup (format, completeness, checksum); errors name the file. */
export function parseBackup(text: string, file: string): Backup {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const bad = (why: string) => new Error(`${file} is not a usable xmpp-kms backup: ${why}`);
  let head: { format?: string; version?: number; created?: string };
  try {
    head = JSON.parse(lines[0] ?? '') as typeof head;
  } catch {
    throw bad('its first line is not JSON');
  }
  if (head.format !== 'xmpp-kms-backup' || head.version !== 1) throw bad('no xmpp-kms-backup version 1 header');
  const end = JSON.parse(lines[lines.length - 1] ?? '{}') as { end?: boolean; sha256?: string; entries?: number; files?: number };
  if (end.end !== true) throw bad('it is cut short (no end line): take it again');
  const hash = createHash('sha256');
  const out: Backup = { created: String(head.created), files: [], entries: [] };
  for (const [i, line] of lines.entries()) {
    if (i === lines.length - 1) break;
    const o = JSON.parse(line) as { file?: string; data?: string; k?: string; v?: string; masterKey?: string };
    if (!('masterKey' in o)) hash.update(`${line}\n`);
    if (typeof o.file === 'string' && typeof o.data === 'string') {
      if (!BACKUP_FILES.includes(o.file)) throw bad(`unexpected file ${o.file}`);
      out.files.push({ name: o.file, data: Buffer.from(o.data, 'base64') });
    } else if (typeof o.k === 'string' && typeof o.v === 'string') out.entries.push([o.k, o.v]);
    else if (typeof o.masterKey === 'string') out.masterKey = Buffer.from(o.masterKey, 'base64url');
    else if (i > 0) throw bad(`line ${i + 1} is not a file, a record or a key`);
  }
  if (hash.digest('hex') !== end.sha256 || end.entries !== out.entries.length || end.files !== out.files.length)
    throw bad('its checksum or counts do not match (damaged or altered)');
  return out;
}

/** Puts a backup into `dataDir`, which must be missing or empty: the files (0600) and a new store. */
export async function restoreBackup(backup: Backup, dataDir: string): Promise<{ files: number; entries: number; masterKeyFile?: string }> {
  if (existsSync(dataDir) && (await readdir(dataDir)).length > 0)
    throw new Error(`${dataDir} is not empty: restore into a new or empty data folder (nothing was changed)`);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  for (const f of backup.files) await writeFile(join(dataDir, f.name), f.data, { mode: 0o600, flag: 'wx' });
  let masterKeyFile: string | undefined;
  if (backup.masterKey) {
    masterKeyFile = join(dataDir, 'master.key');
    await writeFile(masterKeyFile, `${backup.masterKey.toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
  }
  const kv = await openLevelStore(join(dataDir, 'db'));
  try {
    for (let i = 0; i < backup.entries.length; i += 500) {
      const ops: BatchOp[] = backup.entries.slice(i, i + 500).map(([key, value]) => ({ type: 'put', key, value }));
      await kv.batch(ops, { durable: true });
    }
  } finally {
    await kv.close();
  }
  return { files: backup.files.length, entries: backup.entries.length, ...(masterKeyFile ? { masterKeyFile } : {}) };
}

/** A read-only KvStore over a backup's records (kms inspect of a running KMS reads one). */
export function snapshotStore(entries: [string, string][]): KvStore {
  const sorted = [...entries].sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  const map = new Map(sorted);
  const readOnly = () => Promise.reject(new Error('a snapshot is read-only'));
  return {
    get: async (key) => map.get(key),
    getMany: async (keys) => keys.map((k) => map.get(k)),
    batch: readOnly,
    async *entries(r: RangeOptions) {
      const inRange = ([k]: [string, string]) => (r.gte === undefined || k >= r.gte) && (r.lt === undefined || k < r.lt);
      let rows = sorted.filter(inRange);
      if (r.reverse) rows = rows.reverse();
      if (r.limit !== undefined) rows = rows.slice(0, r.limit);
      yield* rows;
    },
    flush: async () => undefined,
    close: async () => undefined,
  };
}
