/**
 * The data folder and the master key that sealed it. What is in the folder is private (the folder
 * 0700, the files 0600), and it is tied to one master key by a key check value: a constant sealed
 * under the master key at the first start (`master-key-check.json`, AES-256-GCM with its own
 * context, so it says nothing about the key). Every start opens it: a missing key file or another
 * key is refused before anything is read or written, instead of a new key being made over data
 * it cannot open (every GK would then fail with internal-error).
 */
import { readdir, readFile, stat, chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sealedBy, type Sealer } from '../crypto/seal.js';

/** The key check value's file in the data folder. */
export const KEY_CHECK_FILE = 'master-key-check.json';
const CHECK_CONTEXT = 'master-key-check';
const CHECK_PLAINTEXT = 'xmpp-kms master key check v1';

/** What in a data folder is sealed under the master key (the LevelDB store `db` counts when it has files). */
const SEALED_ENTRIES = ['db', 'identity-ec.json', 'identity-rsa.json', 'issuer.json', 'idp-keys.json', KEY_CHECK_FILE];

/** The entries of `dir` that hold data sealed under a master key (none for a missing or new folder). */
export async function sealedDataIn(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const found: string[] = [];
  for (const name of SEALED_ENTRIES) {
    if (!names.includes(name)) continue;
    if (name === 'db' && (await readdir(join(dir, name)).catch(() => [])).length === 0) continue;
    found.push(name);
  }
  return found;
}

/**
 * Makes `dir` (and missing parents) private to this user, 0700. A folder that exists already is
 * left as it is (it may be a volume the operator set up): returns its mode when others can read
 * or enter it, for a warning.
 */
export async function privateDir(dir: string): Promise<number | undefined> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const mode = (await stat(dir)).mode & 0o777;
  return mode & 0o077 ? mode : undefined;
}

/** Takes the group's and others' permissions off `dir` and the files in it (the LevelDB store's own folder). */
export async function tightenTree(dir: string): Promise<void> {
  const s = await stat(dir);
  if (s.mode & 0o077) await chmod(dir, 0o700);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = join(dir, entry.name);
    try {
      const mode = (await stat(file)).mode & 0o777;
      if (mode & 0o077) await chmod(file, mode & 0o700);
    } catch (e) {
      // Called on an open store: LevelDB's compaction after a crash recovery may delete a table
      // between readdir and stat. A file that is gone needs no tightening.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

/**
 * Writes the key check value for `sealer`'s master key into `dir`. When another process wrote one
 * first (`kms token` and `kms run` on a new folder at once): whether that one opens under the key.
 */
export async function recordKeyCheck(dir: string, sealer: Sealer): Promise<boolean> {
  const body = {
    version: 1,
    note: 'a constant sealed under the master key: shows which key this data folder belongs to',
    check: sealer.seal(CHECK_PLAINTEXT, CHECK_CONTEXT),
  };
  try {
    await writeFile(join(dir, KEY_CHECK_FILE), `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return keyCheckOpens(dir, sealer);
  }
}

/** Whether the key check value in `dir` opens under `sealer`'s master key (throws if the file is unreadable or damaged). */
export async function keyCheckOpens(dir: string, sealer: Sealer): Promise<boolean> {
  const file = join(dir, KEY_CHECK_FILE);
  const stored = JSON.parse(await readFile(file, 'utf8')) as { check?: unknown };
  if (typeof stored.check !== 'string') throw new Error(`${file}: no check value in it (damaged?)`);
  try {
    return sealer.open(stored.check, CHECK_CONTEXT).toString('utf8') === CHECK_PLAINTEXT;
  } catch {
    return false;
  }
}

/** The id of the master key that sealed the key check value in `dir` ('legacy' before key versions; '?' when unreadable). */
export async function keyCheckKeyId(dir: string): Promise<string> {
  try {
    const stored = JSON.parse(await readFile(join(dir, KEY_CHECK_FILE), 'utf8')) as { check?: unknown };
    return typeof stored.check === 'string' ? sealedBy(stored.check) : '?';
  } catch {
    return '?';
  }
}

/**
 * For a data folder made before the key check value existed: whether its sealed files (the
 * development identity, the local issuer, the development provider's key) open under `sealer`.
 * `undefined` when there is none (only the store: startKms checks one of its records).
 */
export async function sealedFilesOpen(dir: string, sealer: Sealer): Promise<{ opens: boolean; file: string } | undefined> {
  const candidates: [string, (j: Record<string, unknown>) => string][] = [
    ['identity-ec.json', (j) => `identity:${String(j.domain)}`],
    ['identity-rsa.json', (j) => `identity:${String(j.domain)}`],
    ['issuer.json', (j) => `issuer:${String(j.issuer)}`],
    ['idp-keys.json', () => 'idp:signing-key'],
  ];
  for (const [name, context] of candidates) {
    let stored: Record<string, unknown>;
    try {
      stored = JSON.parse(await readFile(join(dir, name), 'utf8')) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (typeof stored.key !== 'string') continue;
    try {
      sealer.open(stored.key, context(stored)).fill(0);
      return { opens: true, file: name };
    } catch {
      return { opens: false, file: name };
    }
  }
  return undefined;
}
