/**
 * The master key wrapped by an HSM key through PKCS#11 (issue 14, item 3), on a real token:
 * Debian's SoftHSM2 (scripts/install-system-deps.sh) and the pkcs11js binding. The key file holds
 * only the wrapped key; the KMS has the HSM unwrap it at start; a rotation with an HSM keeps every
 * key file wrapped. Skipped where SoftHSM2 is not installed.
 */
import { expect } from 'chai';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { loadConfig } from '../../src/config.js';
import { unwrapMasterKey, wrapMasterKey, type Pkcs11Settings } from '../../src/crypto/pkcs11.js';
import { masterKeyId } from '../../src/crypto/seal.js';
import { startKms } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const BIN = resolve(import.meta.dirname, '../../bin/kms.js');

/** Makes the AES-256 wrapping key on the token (non-extractable), as an operator would with pkcs11-tool. */
async function makeHsmKey(s: Pkcs11Settings): Promise<void> {
  const lib = ((await import('pkcs11js')) as { default: typeof import('pkcs11js') }).default;
  const p = new lib.PKCS11();
  p.load(s.module);
  p.C_Initialize();
  try {
    const slot = p.C_GetSlotList(true).find((sl) => p.C_GetTokenInfo(sl).label.trim() === s.token)!;
    const session = p.C_OpenSession(slot, lib.CKF_RW_SESSION | lib.CKF_SERIAL_SESSION);
    p.C_Login(session, lib.CKU_USER, s.pin);
    p.C_GenerateKey(session, { mechanism: lib.CKM_AES_KEY_GEN }, [
      { type: lib.CKA_CLASS, value: lib.CKO_SECRET_KEY },
      { type: lib.CKA_TOKEN, value: true },
      { type: lib.CKA_LABEL, value: s.keyLabel },
      { type: lib.CKA_VALUE_LEN, value: 32 },
      { type: lib.CKA_ENCRYPT, value: true },
      { type: lib.CKA_DECRYPT, value: true },
      { type: lib.CKA_EXTRACTABLE, value: false },
      { type: lib.CKA_SENSITIVE, value: true },
    ]);
    p.C_Logout(session);
    p.C_CloseSession(session);
  } finally {
    p.C_Finalize();
  }
}

describe('crypto: the master key wrapped by an HSM key (PKCS#11, SoftHSM2)', function () {
  this.timeout(120_000);
  let dir: string;
  const s: Pkcs11Settings = { module: MODULE, token: 'kms-test', pin: '1234', keyLabel: 'kms-master-wrap' };
  const hsmEnv = { KMS_PKCS11_MODULE: s.module, KMS_PKCS11_TOKEN: s.token, KMS_PKCS11_PIN: s.pin, KMS_PKCS11_KEY_LABEL: s.keyLabel };
  const saved = process.env.SOFTHSM2_CONF;

  before(async function () {
    if (!existsSync(MODULE)) this.skip();
    dir = await mkdtemp(join(tmpdir(), 'kms-hsm-'));
    await mkdir(join(dir, 'tokens'));
    await writeFile(join(dir, 'softhsm2.conf'), `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\n`);
    process.env.SOFTHSM2_CONF = join(dir, 'softhsm2.conf');
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', s.token, '--pin', s.pin, '--so-pin', '5678'], { stdio: 'ignore' });
    await makeHsmKey(s);
  });

  after(async () => {
    if (saved === undefined) delete process.env.SOFTHSM2_CONF;
    else process.env.SOFTHSM2_CONF = saved;
    for (const k of Object.keys(hsmEnv)) delete process.env[k];
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('wraps and unwraps through the token; the wrapped form holds no key bytes; a wrong PIN, token or label is named', async () => {
    const key = randomBytes(32);
    const wrapped = await wrapMasterKey(key, s);
    expect(wrapped).to.match(/^pkcs11\.v1\.[A-Za-z0-9_-]+$/);
    expect(wrapped).to.not.contain(key.toString('base64url'));
    expect((await unwrapMasterKey(wrapped, s, 'f')).equals(key)).to.equal(true);
    const fail = (o: Partial<Pkcs11Settings>) =>
      unwrapMasterKey(wrapped, { ...s, ...o }, 'f').then(
        () => 'opened',
        (e: Error) => e.message,
      );
    expect(await fail({ pin: '0000' })).to.contain('cannot log in to the token "kms-test" (KMS_PKCS11_PIN wrong?)');
    expect(await fail({ token: 'nope' })).to.contain('no token labelled "nope" (KMS_PKCS11_TOKEN)');
    expect(await fail({ keyLabel: 'nope' })).to.contain('no secret key labelled "nope" (KMS_PKCS11_KEY_LABEL)');
    const altered = `${wrapped.slice(0, -4)}${wrapped.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
    expect(
      await unwrapMasterKey(altered, s, 'f').then(
        () => 'opened',
        (e: Error) => e.message,
      ),
    ).to.contain('f does not unwrap under the HSM key');
    expect(
      await unwrapMasterKey(wrapped, undefined, '/k').then(
        () => 'opened',
        (e: Error) => e.message,
      ),
    ).to.contain('/k holds a master key wrapped by an HSM key: set KMS_PKCS11_MODULE');
  });

  it('a KMS with an HSM: a new data folder gets a wrapped key file, a restart unwraps it; without the settings it is refused', async () => {
    const env = { KMS_DATA_DIR: join(dir, 'data'), KMS_MASTER_KEY_FILE: join(dir, 'master.key'), KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:9' };
    Object.assign(process.env, hsmEnv);
    const config = loadConfig({ env: { ...env, ...hsmEnv } });
    await (await startKms(config, silentLogger(), { xmpp: false })).stop();
    const content = (await readFile(env.KMS_MASTER_KEY_FILE, 'utf8')).trim();
    expect(content).to.match(/^pkcs11\.v1\./);
    // The restart opens the key check value and the sealed files: the same key came back out of the HSM.
    await (await startKms(config, silentLogger(), { xmpp: false })).stop();
    for (const k of Object.keys(hsmEnv)) delete process.env[k];
    const err = await startKms(loadConfig({ env }), silentLogger(), { xmpp: false }).then(
      (k) => k.stop().then(() => undefined),
      (e: Error) => e,
    );
    expect(err?.message).to.contain(`${env.KMS_MASTER_KEY_FILE} holds a master key wrapped by an HSM key: set KMS_PKCS11_MODULE`);
  });

  it('kms rekey --generate with an HSM: the new key file and the kept old one stay wrapped, and the KMS starts on the new key', async () => {
    const env = { KMS_DATA_DIR: join(dir, 'data'), KMS_MASTER_KEY_FILE: join(dir, 'master.key'), KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:9' };
    const before = (await readFile(env.KMS_MASTER_KEY_FILE, 'utf8')).trim();
    const clean: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) clean[k] = v;
    const r = await new Promise<{ code: number; out: string; err: string }>((res) =>
      execFile(
        process.execPath,
        [BIN, 'rekey', '--generate', join(dir, 'next.key')],
        { env: { ...clean, ...env, ...hsmEnv, KMS_LOG_LEVEL: 'silent' }, timeout: 60_000 },
        (e, out, err) => res({ code: e ? 1 : 0, out, err }),
      ),
    );
    expect(r.code, r.err).to.equal(0);
    expect(r.out).to.contain(`wrapped by the HSM key "${s.keyLabel}"`).and.contain('done: every sealed value is under master key');
    const now = (await readFile(env.KMS_MASTER_KEY_FILE, 'utf8')).trim();
    expect(now)
      .to.match(/^pkcs11\.v1\./)
      .and.not.equal(before);
    const kept = await readdir(`${env.KMS_MASTER_KEY_FILE}.d`);
    expect(kept).to.have.length(1);
    expect((await readFile(join(`${env.KMS_MASTER_KEY_FILE}.d`, kept[0]!), 'utf8')).trim()).to.equal(before);
    expect(kept[0]).to.equal(`${masterKeyId(await unwrapMasterKey(before, s, 'old'))}.key`);
    await rm(`${env.KMS_MASTER_KEY_FILE}.d`, { recursive: true });
    Object.assign(process.env, hsmEnv);
    await (await startKms(loadConfig({ env: { ...env, ...hsmEnv } }), silentLogger(), { xmpp: false })).stop();
  });
});
