/**
 * The data folder and its master key (issue 14), in a production-like setup: the identity from PEM
 * files, tokens from a JWKS file, the master key file outside the data folder, so that nothing but
 * the key check value and the store's records is sealed. A missing or different master key is
 * refused with the reason and the data left as it was (it used to make a new key and come online,
 * every GK then failing with internal-error); the folder and its files are private; a read-only
 * folder is reported with the store's folder and the cause, by startKms and by `kms run`.
 */
import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair } from 'jose';
import { loadConfig, type KmsConfig } from '../../src/config.js';
import { startKms } from '../../src/server.js';
import { createDevIdentity } from '../../src/crypto/x509.js';
import { Sealer } from '../../src/crypto/seal.js';
import { openLevelStore } from '../../src/store/kv.js';
import { KmsState } from '../../src/store/kms-state.js';
import { KEY_CHECK_FILE } from '../../src/store/data-dir.js';
import { createLogger, silentLogger } from '../../src/util/logger.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const KMS_BIN = join(ROOT, 'bin', 'kms.js');
const GK_ID = 'a5d2e1f0-0000-4000-8000-000000000001';

/** Every file and folder under `dir`: its mode and, for a file, a hash of its contents. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const mode = ((await stat(p)).mode & 0o777).toString(8);
      if (e.isDirectory()) {
        out[`${relative(dir, p)}/`] = mode;
        await walk(p);
      } else
        out[relative(dir, p)] = `${mode} ${createHash('sha256')
          .update(await readFile(p))
          .digest('hex')}`;
    }
  };
  await walk(dir);
  return out;
}

const modeOf = async (p: string) => (await stat(p)).mode & 0o777;

/** A production-like setup in `root`: PEM identity, JWKS file, master key file in `root/keys`, data in `root/data`. */
async function productionSetup(root: string): Promise<{ env: Record<string, string>; dataDir: string; keyFile: string }> {
  const keys = join(root, 'keys');
  await mkdir(keys, { recursive: true });
  const id = await createDevIdentity({ domain: 'kms.localhost', keyType: 'EC' });
  await writeFile(join(keys, 'identity.key'), id.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, { mode: 0o600 });
  await writeFile(join(keys, 'identity.pem'), id.chainPem.join('\n'));
  const { publicKey } = await generateKeyPair('ES256');
  await writeFile(join(keys, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'ES256' }] }));
  const dataDir = join(root, 'data');
  const keyFile = join(keys, 'master.key');
  return {
    dataDir,
    keyFile,
    env: {
      KMS_DATA_DIR: dataDir,
      KMS_MASTER_KEY_FILE: keyFile,
      KMS_IDENTITY_KEY_FILE: join(keys, 'identity.key'),
      KMS_IDENTITY_CERT_FILE: join(keys, 'identity.pem'),
      KMS_AUTH_JWKS_FILE: join(keys, 'jwks.json'),
      KMS_AUTH_ISSUER: 'https://idp.example.com',
      // Not reached: the tests stop before the component starts, or run without it.
      KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:9',
    },
  };
}

/** A GK in the store, sealed under the master key in `keyFile` (what GK creation stores). */
async function seedGk(dataDir: string, keyFile: string): Promise<void> {
  const sealer = new Sealer(Buffer.from((await readFile(keyFile, 'utf8')).trim(), 'base64url'));
  const state = new KmsState(await openLevelStore(join(dataDir, 'db')));
  await state.putGk({
    id: GK_ID,
    uri: `kms://kms.localhost/gks/${GK_ID}`,
    created: new Date().toISOString(),
    owner: 'alice@localhost',
    clientId: 'test',
    key: sealer.seal(randomBytes(32), `gk:${GK_ID}`),
  });
  await state.close();
}

/** startKms's rejection (fails the test if it starts). */
async function refusal(config: KmsConfig): Promise<Error> {
  let running: Awaited<ReturnType<typeof startKms>> | undefined;
  try {
    running = await startKms(config, silentLogger(), { xmpp: false });
  } catch (e) {
    return e as Error;
  }
  await running.stop();
  throw new Error('startKms started');
}

/** `kms run` as an operator runs it, to its exit. */
function kmsRun(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  const clean: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) clean[k] = v;
  return new Promise((res, rej) => {
    const c = spawn(process.execPath, [KMS_BIN, 'run'], { cwd: ROOT, env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    c.stdout.on('data', (d: Buffer) => (output += d.toString()));
    c.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => c.kill('SIGKILL'), 20_000);
    c.on('error', rej);
    c.on('exit', (code) => {
      clearTimeout(timer);
      res({ code, output });
    });
  });
}

/**
 * Makes `dir` read-only in a way that holds for root too (the tests may run as root, which
 * ignores permission bits): a read-only bind mount of the folder on itself (EROFS, what a
 * read-only volume gives), else the immutable attribute on the store's folder and files (EPERM);
 * for another user, taking the write permissions off is enough (EACCES). Undefined when none of
 * these is possible here.
 */
async function makeReadOnly(dir: string): Promise<{ how: string; undo: () => Promise<void> } | undefined> {
  const files = async (d: string): Promise<string[]> => (await readdir(d, { withFileTypes: true })).flatMap((e) => (e.isFile() ? [join(d, e.name)] : []));
  if (process.getuid?.() !== 0) {
    const db = join(dir, 'db');
    const all = [...(await files(dir)), ...(await files(db))];
    for (const f of all) await chmod(f, 0o400);
    await chmod(db, 0o500);
    await chmod(dir, 0o500);
    return {
      how: 'write permissions taken off',
      undo: async () => {
        await chmod(dir, 0o700);
        await chmod(db, 0o700);
        for (const f of all) await chmod(f, 0o600);
      },
    };
  }
  try {
    execFileSync('mount', ['--bind', dir, dir], { stdio: 'ignore' });
    try {
      execFileSync('mount', ['-o', 'remount,bind,ro', dir], { stdio: 'ignore' });
    } catch (e) {
      execFileSync('umount', [dir], { stdio: 'ignore' });
      throw e;
    }
    return { how: 'read-only bind mount', undo: async () => void execFileSync('umount', [dir], { stdio: 'ignore' }) };
  } catch {
    // no CAP_SYS_ADMIN: try the immutable attribute
  }
  const db = join(dir, 'db');
  const targets = [db, ...(await files(db))];
  try {
    execFileSync('chattr', ['+i', ...targets], { stdio: 'ignore' });
    return { how: 'immutable store files (chattr +i)', undo: async () => void execFileSync('chattr', ['-i', ...targets], { stdio: 'ignore' }) };
  } catch {
    return undefined;
  }
}

describe('the data folder and its master key (issue 14)', function () {
  this.timeout(60_000);
  let root: string;
  let savedMasterKey: string | undefined;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'kms-data-dir-'));
    // startKms reads KMS_MASTER_KEY from the environment: a developer's shell must not change the outcome.
    savedMasterKey = process.env.KMS_MASTER_KEY;
    delete process.env.KMS_MASTER_KEY;
  });

  after(async () => {
    if (savedMasterKey !== undefined) process.env.KMS_MASTER_KEY = savedMasterKey;
    await rm(root, { recursive: true, force: true });
  });

  /** A setup of its own in a new folder, started once (the master key made) with a GK stored. */
  async function usedSetup(name: string) {
    const s = await productionSetup(join(root, name));
    const config = loadConfig({ env: s.env });
    await (await startKms(config, silentLogger(), { xmpp: false })).stop();
    await seedGk(s.dataDir, s.keyFile);
    return { ...s, config };
  }

  describe('master key', () => {
    it('a missing master key file with data in the folder: refused, naming the file and why, no new key made, the data folder unchanged', async () => {
      const s = await usedSetup('missing');
      await rm(s.keyFile);
      const before = await snapshot(s.dataDir);
      const err = await refusal(s.config);
      expect(err.message).to.include(`the master key file ${s.keyFile} is missing`);
      expect(err.message).to.include(`the data folder ${s.dataDir} holds data sealed under a master key`);
      expect(err.message).to.match(/db, master-key-check\.json/);
      expect(err.message).to.match(/restore that key file from your backup/);
      expect(err.message).to.match(/nothing was changed/);
      expect(await snapshot(s.dataDir)).to.deep.equal(before);
      expect(await stat(s.keyFile).catch(() => undefined), 'no new master key file').to.equal(undefined);
    });

    it('`kms run` with the master key file missing: exits non-zero with the reason', async () => {
      const s = await usedSetup('missing-cli');
      await rm(s.keyFile);
      const before = await snapshot(s.dataDir);
      const r = await kmsRun(s.env);
      expect(r.code, r.output).to.equal(2);
      expect(r.output).to.include(`kms: the master key file ${s.keyFile} is missing`);
      expect(await snapshot(s.dataDir)).to.deep.equal(before);
      expect(await stat(s.keyFile).catch(() => undefined)).to.equal(undefined);
    });

    it('a different master key file: refused, saying the data was sealed by another key, the data folder unchanged', async () => {
      const s = await usedSetup('wrong');
      const right = await readFile(s.keyFile, 'utf8');
      const other = randomBytes(32).toString('base64url');
      await writeFile(s.keyFile, `${other}\n`);
      const before = await snapshot(s.dataDir);
      const err = await refusal(s.config);
      expect(err.message).to.include(`the master key from the file ${s.keyFile} is not the key that sealed the data in ${s.dataDir}`);
      expect(err.message).to.match(/give the key this data was sealed with/);
      expect(err.message).not.to.include(other);
      expect(await snapshot(s.dataDir)).to.deep.equal(before);
      // The right key still opens everything.
      await writeFile(s.keyFile, right);
      await (await startKms(s.config, silentLogger(), { xmpp: false })).stop();
    });

    it('a different key in KMS_MASTER_KEY: refused too', async () => {
      const s = await usedSetup('wrong-env');
      const other = randomBytes(32).toString('base64url');
      process.env.KMS_MASTER_KEY = other;
      try {
        const err = await refusal(s.config);
        expect(err.message).to.include(`the master key from KMS_MASTER_KEY is not the key that sealed the data in ${s.dataDir}`);
        expect(err.message).not.to.include(other);
      } finally {
        delete process.env.KMS_MASTER_KEY;
      }
    });

    it('a data folder from before the key check value: a wrong key is found out on a stored GK; the right key records the check value', async () => {
      const s = await usedSetup('legacy');
      await rm(join(s.dataDir, KEY_CHECK_FILE));
      const right = await readFile(s.keyFile, 'utf8');
      await writeFile(s.keyFile, `${randomBytes(32).toString('base64url')}\n`);
      const err = await refusal(s.config);
      expect(err.message).to.include(`is not the key that sealed the data in ${s.dataDir} (the stored key GK ${GK_ID} does not open under it)`);
      expect(await stat(join(s.dataDir, KEY_CHECK_FILE)).catch(() => undefined), 'no check value recorded for a wrong key').to.equal(undefined);
      await writeFile(s.keyFile, right);
      await (await startKms(s.config, silentLogger(), { xmpp: false })).stop();
      expect(await modeOf(join(s.dataDir, KEY_CHECK_FILE))).to.equal(0o600);
      // From now on the check value decides, before the store is opened.
      await writeFile(s.keyFile, `${randomBytes(32).toString('base64url')}\n`);
      expect((await refusal(s.config)).message).to.include(`(${KEY_CHECK_FILE} does not open under it)`);
    });
  });

  describe('permissions', () => {
    it('a new data folder is private: the folder and the store 0700, every file 0600', async () => {
      const s = await productionSetup(join(root, 'private'));
      const running = await startKms(loadConfig({ env: s.env }), silentLogger(), { xmpp: false });
      await running.stop();
      expect(await modeOf(s.dataDir), 'data folder').to.equal(0o700);
      expect(await modeOf(join(s.dataDir, 'db')), 'store folder').to.equal(0o700);
      expect(await modeOf(s.keyFile), 'master key file').to.equal(0o600);
      const files = Object.entries(await snapshot(s.dataDir)).filter(([p]) => !p.endsWith('/'));
      expect(files.map(([p]) => p)).to.include.members([KEY_CHECK_FILE, 'db/CURRENT', 'db/LOCK']);
      for (const [p, v] of files) expect(v.split(' ')[0], p).to.equal('600');
    });

    it('an existing data folder open to others: a warning naming it; the store made private', async () => {
      const s = await usedSetup('loose');
      // A folder and a store as an older version left them (0755, files 0644).
      const db = join(s.dataDir, 'db');
      await chmod(s.dataDir, 0o755);
      await chmod(db, 0o755);
      for (const f of await readdir(db)) await chmod(join(db, f), 0o644);
      const lines: string[] = [];
      const logger = createLogger({
        level: 'info',
        destination: new Writable({
          write(chunk, _enc, cb) {
            lines.push(String(chunk));
            cb();
          },
        }),
      });
      await (await startKms(s.config, logger, { xmpp: false })).stop();
      const warning = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((r) => r.event === 'data-dir-permissions');
      expect(warning, lines.join('')).to.include({ level: 40, dataDir: s.dataDir, mode: '755' });
      expect(warning!.msg).to.include(`chmod 700 ${s.dataDir}`);
      expect(await modeOf(s.dataDir), 'the operator decides about the folder').to.equal(0o755);
      expect(await modeOf(db), 'store folder').to.equal(0o700);
      for (const f of await readdir(db)) expect(await modeOf(join(db, f)), f).to.equal(0o600);
    });
  });

  describe('a read-only data folder', () => {
    it('startKms and `kms run` fail naming the store folder and the cause, the process exits non-zero', async function () {
      const s = await usedSetup('read-only');
      const ro = await makeReadOnly(s.dataDir);
      if (!ro) this.skip();
      try {
        const db = join(s.dataDir, 'db');
        // EROFS, EPERM or EACCES, as LevelDB's cause words them.
        const cause = /Read-only file system|Operation not permitted|Permission denied/;
        const err = await refusal(s.config);
        expect(err.message, ro.how).to.include(`cannot open the store in ${db}: IO error: ${db}/LOCK: `);
        expect(err.message, ro.how).to.match(cause);
        expect(err.message).to.match(/the KMS must be able to write to its data folder/);
        expect(err.message).not.to.match(/^Database failed to open$/);
        const r = await kmsRun(s.env);
        expect(r.code, r.output).to.equal(1);
        expect(r.output).to.include(`kms: cannot open the store in ${db}: IO error: ${db}/LOCK: `);
        expect(r.output).to.match(cause);
      } finally {
        await ro.undo();
      }
    });
  });
});
