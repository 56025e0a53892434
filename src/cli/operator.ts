/**
 * `kms rekey`, `kms backup` and `kms restore`: master key rotation and backups, with the KMS
 * running or stopped. A running KMS holds the store (LevelDB: one process), so these reach it
 * through its admin listener (admin.listen, loopback clients only; src/admin/operator.ts); a
 * stopped one's store is opened here. Never prints a key: key ids only.
 */
import { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { configFrom, ConfigError, type KmsConfig } from '../config.js';
import { parseListen } from '../admin/listen.js';
import { masterKeyId, sealedBy, Sealer } from '../crypto/seal.js';
import { isWrapped, pkcs11Settings, wrapMasterKey } from '../crypto/pkcs11.js';
import { openLevelStore, type KvStore } from '../store/kv.js';
import { KmsState } from '../store/kms-state.js';
import { olderKeysDir, readKeyFile, readOlderKeys, resealAll, resealDataFiles, type RekeyStatus } from '../store/rekey.js';
import { parseBackup, restoreBackup, writeBackup } from '../store/backup.js';
import { KEY_CHECK_FILE } from '../store/data-dir.js';

/** The admin listener's base URL for this process (a wildcard address reached on loopback), or undefined. */
export function adminUrl(config: KmsConfig): string | undefined {
  if (config.admin.listen === undefined) return undefined;
  const a = parseListen(config.admin.listen);
  if ('error' in a || a.port === 0) return undefined;
  const host = a.host === '0.0.0.0' ? '127.0.0.1' : a.host === '::' ? '::1' : a.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${a.port}`;
}

/** The store of a stopped KMS, or 'running' when a process holds it; never makes a store where there is none. */
export async function openStoppedStore(config: KmsConfig): Promise<KvStore | 'running'> {
  const dir = join(resolve(config.dataDir), 'db');
  if (!existsSync(join(dir, 'CURRENT'))) throw new ConfigError(`no store in ${dir}: is the data folder right (dataDir, KMS_DATA_DIR)?`);
  try {
    return await openLevelStore(dir);
  } catch (e) {
    const level = (e as { cause?: { cause?: { code?: string } } }).cause;
    if (level?.cause?.code === 'LEVEL_LOCKED') return 'running';
    throw e;
  }
}

/** Asks the running KMS (its admin listener) for `path`; `what` names the operation in errors. */
export async function askRunningKms(config: KmsConfig, method: 'GET' | 'POST', path: string, what: string): Promise<Response> {
  const url = adminUrl(config);
  if (!url)
    throw new ConfigError(
      `${what}: the store is in use by a running KMS (LevelDB allows one process) and admin.listen is not set to a fixed port: ` +
        'set admin.listen (KMS_ADMIN_LISTEN, e.g. 9464) and restart it, or stop the component first',
    );
  let res: Response;
  try {
    res = await fetch(`${url}${path}`, { method });
  } catch (e) {
    throw new ConfigError(`${what}: the store is in use by a running KMS, but its admin listener ${url} does not answer (${(e as Error).message})`);
  }
  if (!res.ok) throw new ConfigError(`${what}: ${url}${path} answered ${res.status}: ${await res.text()}`);
  return res;
}

/** Where the master key file is (its folder of older keys next to it). */
const keyFileOf = (config: KmsConfig) => resolve(config.masterKeyFile ?? join(resolve(config.dataDir), 'master.key'));

/** Writes `key` to `file` atomically, private to this user. */
/** Writes a key file's content (a key, or a key wrapped by an HSM key) atomically, private to this user. */
async function writeKey(file: string, content: string, flag: 'wx' | 'w'): Promise<void> {
  const tmp = flag === 'wx' ? file : `${file}.rekey-tmp`;
  await writeFile(tmp, `${content.trim()}\n`, { mode: 0o600, flag });
  await chmod(tmp, 0o600);
  if (tmp !== file) await rename(tmp, file);
}

async function rekey(opts: { config?: string; newKeyFile?: string; generate?: string; wait: boolean }): Promise<void> {
  const config = configFrom(opts);
  if (process.env.KMS_MASTER_KEY)
    throw new ConfigError(
      `kms rekey rotates the master key file; the key comes from KMS_MASTER_KEY here: put the current key in ${olderKeysDir(keyFileOf(config))}/<name>.key, ` +
        'restart the KMS with the new key in KMS_MASTER_KEY, and it re-seals in the background at start',
    );
  if (!opts.newKeyFile === !opts.generate) throw new ConfigError('kms rekey: give --new-key-file <file> or --generate <file>');
  const keyFile = keyFileOf(config);
  if (!existsSync(keyFile)) throw new ConfigError(`kms rekey: no master key file ${keyFile} (masterKeyFile)`);
  const current = await readKeyFile(keyFile);
  const newFile = resolve(opts.generate ?? opts.newKeyFile!);
  let next: Buffer;
  if (opts.generate) {
    next = randomBytes(32);
    // With an HSM configured (KMS_PKCS11_*), the new key is written wrapped by its key.
    const hsm = pkcs11Settings();
    await writeKey(newFile, hsm ? await wrapMasterKey(next, hsm) : next.toString('base64url'), 'wx');
    console.log(`made a new master key in ${newFile} (key id ${masterKeyId(next)}${hsm ? `, wrapped by the HSM key "${hsm.keyLabel}"` : ''}): back it up`);
  } else next = await readKeyFile(newFile, 'new master key file');
  const oldId = masterKeyId(current);
  const newId = masterKeyId(next);
  if (oldId !== newId) {
    // The current key first into the older keys' folder, then the new key in its place: a crash between leaves both on disk.
    const older = olderKeysDir(keyFile);
    await mkdir(older, { recursive: true, mode: 0o700 });
    const kept = join(older, `${oldId}.key`);
    // The files' contents as they are: a key wrapped by an HSM key stays wrapped.
    if (!existsSync(kept)) await writeKey(kept, await readFile(keyFile, 'utf8'), 'wx');
    await writeKey(keyFile, await readFile(newFile, 'utf8'), 'w');
    console.log(`master key ${newId} is now in ${keyFile}; the previous key ${oldId} is kept in ${kept} until everything is re-sealed`);
  }
  current.fill(0);
  next.fill(0);
  const store = await openStoppedStore(config).catch((e: unknown) => {
    if (e instanceof ConfigError && /no store in/.test(e.message)) return undefined;
    throw e;
  });
  if (store === 'running') {
    let status = (await (await askRunningKms(config, 'POST', '/rekey', 'kms rekey')).json()) as RekeyStatus;
    console.log(`the running KMS re-seals under master key ${status.keyId} in the background`);
    if (!opts.wait) return;
    while (status.state === 'running') {
      await new Promise((r) => setTimeout(r, 200));
      status = (await (await askRunningKms(config, 'GET', '/rekey', 'kms rekey')).json()) as RekeyStatus;
    }
    if (status.state === 'failed') throw new Error(`kms rekey: the KMS could not re-seal: ${status.reason}`);
    return reportDone(status.keyId, status.resealed ?? 0, status.removable ?? []);
  }
  // The KMS is stopped: re-seal here.
  const keys = [await readKeyFile(keyFile), ...(await readOlderKeys(keyFile)).map((o) => o.key)];
  const sealer = new Sealer(keys);
  for (const k of keys) k.fill(0);
  const dataDir = resolve(config.dataDir);
  let resealed = 0;
  if (store) {
    const state = new KmsState(store);
    try {
      resealed = (await resealAll({ state, sealer, dataDir })).resealed;
    } finally {
      await state.close();
    }
  } else {
    resealed = (await resealDataFiles(dataDir, sealer)).length;
  }
  const removable = (await readOlderKeys(keyFile)).filter((o) => o.id !== sealer.keyId).map((o) => o.file);
  reportDone(sealer.keyId, resealed, removable);
}

function reportDone(keyId: string, resealed: number, removable: string[]): void {
  console.log(`done: every sealed value is under master key ${keyId} (${resealed} re-sealed)`);
  if (removable.length > 0) console.log(`the older key file(s) ${removable.join(', ')} are no longer needed: remove them once your backups hold the new key`);
}

async function backup(file: string, opts: { config?: string; withMasterKey?: boolean }): Promise<void> {
  const config = configFrom(opts);
  const out = resolve(file);
  if (existsSync(out)) throw new ConfigError(`kms backup: ${out} exists; give a new file`);
  const store = await openStoppedStore(config);
  let text: string;
  if (store === 'running') text = await (await askRunningKms(config, 'GET', '/backup', 'kms backup')).text();
  else {
    const lines: string[] = [];
    try {
      await writeBackup(store, resolve(config.dataDir), (l) => lines.push(l));
    } finally {
      await store.close();
    }
    text = lines.join('');
  }
  const parsed = parseBackup(text, 'the backup received');
  if (opts.withMasterKey) {
    if (!process.env.KMS_MASTER_KEY && isWrapped(await readFile(keyFileOf(config), 'utf8')))
      throw new ConfigError(
        'kms backup --with-master-key: the master key is wrapped by an HSM key; back up the wrapped key file and the HSM key as its vendor says',
      );
    const key = process.env.KMS_MASTER_KEY ? Buffer.from(process.env.KMS_MASTER_KEY.trim(), 'base64url') : await readKeyFile(keyFileOf(config));
    const i = text.indexOf('\n') + 1;
    text = `${text.slice(0, i)}${JSON.stringify({ masterKey: key.toString('base64url'), keyId: masterKeyId(key) })}\n${text.slice(i)}`;
    key.fill(0);
    console.error('kms backup: WARNING: this backup holds the master key: whoever reads the file can open every key in it. Keep it apart from other backups.');
  }
  await writeFile(out, text, { mode: 0o600, flag: 'wx' });
  console.log(
    `backup of ${parsed.entries.length} record(s) and ${parsed.files.length} file(s) written to ${out}${opts.withMasterKey ? ' (with the master key)' : ' (without the master key: keep that backed up apart)'}`,
  );
}

async function restore(file: string, opts: { dataDir: string }): Promise<void> {
  const parsed = parseBackup(await readFile(resolve(file), 'utf8'), resolve(file));
  const dir = resolve(opts.dataDir);
  const r = await restoreBackup(parsed, dir);
  const check = parsed.files.find((f) => f.name === KEY_CHECK_FILE);
  const keyId = check ? sealedBy(String((JSON.parse(check.data.toString('utf8')) as { check?: unknown }).check)) : undefined;
  console.log(`restored ${r.entries} record(s) and ${r.files} file(s) into ${dir} (backup of ${parsed.created})`);
  if (r.masterKeyFile) console.log(`the master key is in ${r.masterKeyFile}: move it out of the data folder (masterKeyFile)`);
  else console.log(`start the KMS on it with the master key${keyId ? ` ${keyId}` : ''} it was sealed with (masterKeyFile or KMS_MASTER_KEY)`);
}

/** The `kms rekey`, `kms backup` and `kms restore` commands. */
export function operatorCommands(): Command[] {
  return [
    new Command('rekey')
      .description(
        'rotate the master key: the current key is kept in <masterKeyFile>.d/ and the new one put in masterKeyFile; a running KMS re-seals in the background ' +
          '(through its admin listener) while it serves, a stopped one is re-sealed here; says when the old key file can be removed',
      )
      .option('-c, --config <file>', "JSON configuration file (the component's)")
      .option('--new-key-file <file>', 'the new master key (base64url of 32 bytes)')
      .option('--generate <file>', 'make a new random master key in <file> (which must not exist) and rotate to it')
      .option('--no-wait', 'return once a running KMS has started re-sealing')
      .action(rekey),
    new Command('backup')
      .description(
        'write a consistent backup of the store and the data folder (a snapshot, while the KMS runs too) to <file>; never the master key unless --with-master-key',
      )
      .argument('<file>', 'the backup file to write (must not exist)')
      .option('-c, --config <file>', "JSON configuration file (the component's)")
      .option('--with-master-key', 'DANGEROUS: put the master key into the backup too (whoever reads it opens every key)')
      .action(backup),
    new Command('restore')
      .description('put a backup into a new or empty data folder (then start the KMS on it with the same master key)')
      .argument('<file>', 'a file written by kms backup')
      .requiredOption('--data-dir <dir>', 'the data folder to restore into: missing or empty')
      .action(restore),
  ];
}
