/**
 * Master key rotation (`kms rekey`). The keyring on disk: the current key in masterKeyFile (or
 * KMS_MASTER_KEY), older keys in `<masterKeyFile>.d/*.key` (one base64url key a file, named by
 * its key id). While an older key is there, the KMS re-seals in the background, at start and on
 * POST /rekey of the admin listener: every sealed file of the data folder (identity, issuer,
 * development provider, key check value) and every GK and ephemeral key of the store, a chunk at
 * a time between requests. Progress is kept in the store (`~rekey`), so a crash resumes where it
 * stopped. When nothing is sealed under an older key any more, the KMS drops the older keys from
 * its ring and logs that their files may be removed (it never deletes a key file itself).
 */
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { masterKeyId, sealedBy, type Sealer } from '../crypto/seal.js';
import { isWrapped, pkcs11Settings, unwrapMasterKey } from '../crypto/pkcs11.js';
import type { KmsState } from './kms-state.js';
import type { KvStore } from './kv.js';
import type { Logger } from '../util/logger.js';
import { KEY_CHECK_FILE } from './data-dir.js';

/** The folder of older master keys, next to the key file. */
export const olderKeysDir = (masterKeyFile: string) => `${masterKeyFile}.d`;

/** A master key read from a file: 32 bytes, base64url, or wrapped by an HSM key (src/crypto/pkcs11.ts, settings from the environment). */
export async function readKeyFile(file: string, what = 'master key file', env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  const content = await readFile(file, 'utf8');
  if (isWrapped(content)) return unwrapMasterKey(content, pkcs11Settings(env), file);
  const key = Buffer.from(content.trim(), 'base64url');
  if (key.length !== 32) throw new Error(`${what} ${file}: must hold 32 bytes, base64url-encoded`);
  return key;
}

/** The older keys in `<masterKeyFile>.d/` (none when the folder is missing). */
export async function readOlderKeys(masterKeyFile: string): Promise<{ id: string; file: string; key: Buffer }[]> {
  const dir = olderKeysDir(masterKeyFile);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.key')).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out = [];
  for (const name of names) {
    const file = join(dir, name);
    const key = await readKeyFile(file, 'older master key file');
    out.push({ id: masterKeyId(key), file, key });
  }
  return out;
}

/** The sealed fields of the data folder's files, with their contexts. */
const SEALED_FILES: [string, (j: Record<string, unknown>) => [field: string, context: string][]][] = [
  ['identity-ec.json', (j) => identityFields(j)],
  ['identity-rsa.json', (j) => identityFields(j)],
  ['issuer.json', (j) => [['key', `issuer:${String(j.issuer)}`]]],
  ['idp-keys.json', () => [['key', 'idp:signing-key']]],
  [KEY_CHECK_FILE, () => [['check', 'master-key-check']]],
];

function identityFields(j: Record<string, unknown>): [string, string][] {
  return [
    ['key', `identity:${String(j.domain)}`],
    ['caKey', `identity:${String(j.domain)}:ca`],
  ];
}

/** Re-seals the sealed files of `dataDir` under the sealer's current key (each replaced atomically); returns the files changed. */
export async function resealDataFiles(dataDir: string, sealer: Sealer): Promise<string[]> {
  const changed: string[] = [];
  for (const [name, fields] of SEALED_FILES) {
    const file = join(dataDir, name);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    const j = JSON.parse(text) as Record<string, unknown>;
    let dirty = false;
    for (const [field, context] of fields(j)) {
      const v = j[field];
      if (typeof v !== 'string' || sealer.isCurrent(v)) continue;
      j[field] = sealer.reseal(v, context);
      dirty = true;
    }
    if (!dirty) continue;
    const tmp = `${file}.rekey-tmp`;
    await writeFile(tmp, `${JSON.stringify(j, null, 2)}\n`, { mode: 0o600 });
    await rename(tmp, file);
    changed.push(name);
  }
  return changed;
}

/** The progress of a re-seal, kept in the store under PROGRESS_KEY. */
export interface RekeyProgress {
  /** The key id everything is being re-sealed under. */
  target: string;
  started: string;
  /** The last store key re-sealed (a resumed run goes on after it). */
  after?: string;
  resealed: number;
  finished?: string;
}

const PROGRESS_KEY = '~rekey';
const CHUNK = 100;

/** The store's sealed records: key prefix and seal context prefix, in key order (a resumed run skips what lies before its mark). */
const SEALED_RECORDS = [
  ['e!', 'ecdhe:'],
  ['g!', 'gk:'],
] as const;

/** How many sealed values of the store and data folder each key id sealed ('legacy': from before key versions). */
export async function sealedCounts(kv: KvStore, dataDir?: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  const count = (v: unknown) => {
    if (typeof v !== 'string') return;
    const by = sealedBy(v);
    counts[by] = (counts[by] ?? 0) + 1;
  };
  for (const [prefix] of SEALED_RECORDS) {
    for await (const [, v] of kv.entries({ gte: prefix, lt: `${prefix}~` })) count((JSON.parse(v) as { key?: unknown }).key);
  }
  if (dataDir) {
    for (const [name, fields] of SEALED_FILES) {
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(await readFile(join(dataDir, name), 'utf8')) as Record<string, unknown>;
      } catch {
        continue;
      }
      for (const [field] of fields(j)) count(j[field]);
    }
  }
  return counts;
}

/** The recorded progress of the last re-seal, if any. */
export async function rekeyProgress(kv: KvStore): Promise<RekeyProgress | undefined> {
  const v = await kv.get(PROGRESS_KEY);
  return v === undefined ? undefined : (JSON.parse(v) as RekeyProgress);
}

/** Options of `resealAll`. */
export interface ResealOptions {
  state: KmsState;
  sealer: Sealer;
  dataDir: string;
  /** Called after each chunk (tests; progress logs). */
  onChunk?: (p: RekeyProgress) => void;
  /** Checked between chunks: true stops the run (it resumes at the next start). */
  stopping?: () => boolean;
}

/**
 * Re-seals everything under the sealer's current key: the data folder's files, then the store's
 * GKs and ephemeral keys a chunk at a time, yielding to requests between chunks, the progress
 * recorded after each chunk; then checks that nothing older is left (a record written from an
 * older copy meanwhile is taken in another pass). Resumes a run with the same target. Returns the
 * progress, finished.
 */
export async function resealAll(o: ResealOptions): Promise<RekeyProgress> {
  const { state, sealer } = o;
  const kv = state.kv;
  const target = sealer.keyId;
  const previous = await rekeyProgress(kv);
  const p: RekeyProgress =
    previous && previous.target === target && previous.finished === undefined ? previous : { target, started: new Date().toISOString(), resealed: 0 };
  await resealDataFiles(o.dataDir, sealer);
  for (let pass = 0; pass < 10; pass++) {
    let resealed = 0;
    for (const [prefix, context] of SEALED_RECORDS) {
      let from = p.after?.startsWith(prefix) ? `${p.after}\u0000` : prefix;
      if (p.after !== undefined && p.after > prefix && !p.after.startsWith(prefix)) continue;
      for (;;) {
        const chunk: [string, string][] = [];
        for await (const entry of kv.entries({ gte: from, lt: `${prefix}~`, limit: CHUNK })) chunk.push(entry);
        if (chunk.length === 0) break;
        for (const [, v] of chunk) {
          const record = JSON.parse(v) as { id: string; key: string };
          if (sealer.isCurrent(record.key)) continue;
          const reseal = (s: string) => sealer.reseal(s, `${context}${record.id}`);
          const done = prefix === 'g!' ? await state.resealGk(record.id, reseal) : await state.resealEphemeral(record.id, reseal);
          if (done) resealed++;
        }
        const last = chunk[chunk.length - 1]![0];
        p.after = last;
        p.resealed += resealed;
        resealed = 0;
        await kv.batch([{ type: 'put', key: PROGRESS_KEY, value: JSON.stringify(p) }]);
        o.onChunk?.(p);
        if (o.stopping?.()) throw new Error('rekey: stopped before the end (it resumes at the next start)');
        from = `${last}\u0000`;
        // Requests go first: a chunk at a time.
        await new Promise((r) => setImmediate(r));
      }
    }
    delete p.after;
    await state.flush();
    const counts = await sealedCounts(kv, o.dataDir);
    const older = Object.keys(counts).filter((id) => id !== target);
    if (older.length === 0) {
      p.finished = new Date().toISOString();
      await kv.batch([{ type: 'put', key: PROGRESS_KEY, value: JSON.stringify(p) }], { durable: true });
      return p;
    }
    // Files may have been sealed again by another process (kms token making an issuer): once more.
    await resealDataFiles(o.dataDir, sealer);
  }
  throw new Error('rekey: values sealed under an older key keep appearing; is another process writing with the old key?');
}

/** What `RekeyRunner.status` reports (GET /rekey): key ids only, never a key. */
export interface RekeyStatus {
  state: 'idle' | 'running' | 'done' | 'failed';
  /** The key everything is sealed under, or being re-sealed under. */
  keyId: string;
  /** The keys of the ring (current first). */
  keyIds: string[];
  resealed?: number;
  /** Keys dropped from the ring when the run finished, and their files still on disk (safe to remove). */
  retired?: string[];
  removable?: string[];
  reason?: string;
}

/**
 * Runs re-seals in the background of a running KMS, one at a time: at start when the ring holds
 * an older key, and on `reload` (POST /rekey of the admin listener: the keyring is read again
 * from its files, nothing else crosses the wire).
 */
export class RekeyRunner {
  readonly #o: { state: KmsState; sealer: Sealer; dataDir: string; logger: Logger; keyFile: string; keyFromEnv: boolean };
  #status: RekeyStatus;
  #running: Promise<void> | undefined;
  #stopping = false;

  constructor(o: { state: KmsState; sealer: Sealer; dataDir: string; logger: Logger; keyFile: string; keyFromEnv: boolean }) {
    this.#o = o;
    this.#status = { state: 'idle', keyId: o.sealer.keyId, keyIds: o.sealer.keyIds() };
  }

  get status(): RekeyStatus {
    return { ...this.#status, keyIds: this.#o.sealer.keyIds() };
  }

  /** Reads the keyring from its files again (the key file unless the key is from KMS_MASTER_KEY, and `<keyFile>.d/`) and starts a re-seal. */
  async reload(): Promise<RekeyStatus> {
    if (this.#running) return this.status;
    const { sealer, keyFile, logger } = this.#o;
    const older = await readOlderKeys(keyFile);
    for (const o of older) {
      sealer.add(o.key);
      o.key.fill(0);
    }
    if (!this.#o.keyFromEnv) {
      const current = await readKeyFile(keyFile);
      sealer.rotateTo(current);
      current.fill(0);
    }
    const onDisk = new Set([sealer.keyId, ...older.map((o) => o.id)]);
    const memoryOnly = sealer.keyIds().filter((id) => !onDisk.has(id));
    if (memoryOnly.length > 0) {
      logger.warn(
        { event: 'rekey-key-not-on-disk', keyIds: memoryOnly },
        `master key(s) ${memoryOnly.join(', ')} sealed data but are neither in ${keyFile} nor in ${olderKeysDir(keyFile)}: the KMS holds them in memory and re-seals now; ` +
          `do not stop it before the rekey is done, or put them back in ${olderKeysDir(keyFile)}`,
      );
    }
    return this.start();
  }

  /** Starts a re-seal under the current key unless one runs. */
  start(): RekeyStatus {
    if (this.#running) return this.status;
    const { sealer, logger } = this.#o;
    this.#status = { state: 'running', keyId: sealer.keyId, keyIds: sealer.keyIds() };
    logger.info(
      { event: 'rekey-started', keyId: sealer.keyId, older: sealer.keyIds().slice(1) },
      `re-sealing every sealed value under master key ${sealer.keyId} in the background`,
    );
    this.#running = this.#run().finally(() => {
      this.#running = undefined;
    });
    return this.status;
  }

  async #run(): Promise<void> {
    const { sealer, logger, keyFile } = this.#o;
    try {
      const p = await resealAll({ state: this.#o.state, sealer, dataDir: this.#o.dataDir, stopping: () => this.#stopping });
      const retired = sealer.retireOlder();
      const removable = (await readOlderKeys(keyFile))
        .filter((o) => {
          o.key.fill(0);
          return o.id !== sealer.keyId;
        })
        .map((o) => o.file);
      this.#status = { state: 'done', keyId: sealer.keyId, keyIds: sealer.keyIds(), resealed: p.resealed, retired, removable };
      logger.info(
        { event: 'rekey-done', keyId: sealer.keyId, retired, resealed: p.resealed, removable },
        `every sealed value is under master key ${sealer.keyId}; ` +
          (removable.length > 0
            ? `the older key file(s) ${removable.join(', ')} are no longer needed: remove them (after your backups have the new key)`
            : 'no older key file left'),
      );
    } catch (e) {
      this.#status = { state: 'failed', keyId: sealer.keyId, keyIds: sealer.keyIds(), reason: (e as Error).message };
      if (!this.#stopping) logger.error({ event: 'rekey-failed', reason: (e as Error).message }, `rekey failed: ${(e as Error).message}`);
    }
  }

  /** Resolves when the run in progress (if any) ends. */
  async settled(): Promise<void> {
    await this.#running;
  }

  /** Stops a run at its next chunk (it resumes at the next start). */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#running;
  }
}
