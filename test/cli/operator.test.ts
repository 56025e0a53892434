/**
 * `kms rekey`, `kms backup`, `kms restore` and `kms inspect` as an operator runs them, the CLI in
 * its own process against a KMS running in this one (the engine served in process while the CLI
 * works, through the admin listener, loopback only): a backup taken while GKs are being made,
 * inspection of the running KMS without key material, a rotation to a new master key while it
 * serves; then a start with the new key alone works and one with the old key alone is refused
 * naming both key ids; the backup restored into an empty folder starts with the key it was
 * sealed with, every GK opens and the chain links verify; a non-empty folder is refused, and
 * inspection never makes a store where there is none.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { loadConfig, type KmsConfig } from '../../src/config.js';
import { startKms, tokenAudience, type RunningKms } from '../../src/server.js';
import { KmsSession } from '../../src/client/session.js';
import { masterKeyId } from '../../src/crypto/seal.js';
import { parseBackup } from '../../src/store/backup.js';
import { createLogger, silentLogger } from '../../src/util/logger.js';
import { DOMAIN, TestUser, add, payloadOf } from '../support/kms-fixture.js';
import { blockHash, generateEntityKey, jwkOf, openGk } from '../support/node-client.js';

const BIN = resolve(import.meta.dirname, '../../bin/kms.js');

function kms(env: Record<string, string>, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const clean: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) clean[k] = v;
  return new Promise((res) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...clean, ...env, KMS_LOG_LEVEL: 'silent' }, timeout: 60_000 }, (e, out, err) =>
      res({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out, err }),
    );
  });
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function user(running: RunningKms, config: KmsConfig, jid: string): Promise<TestUser> {
  const token = await running.issuer!.mint({ subject: jid, audience: tokenAudience(config) });
  const session = new KmsSession({
    kmsKid: running.identity.kid,
    kmsKey: jwkOf(running.identity.publicKey),
    transport: (messages) => Promise.all(messages.map((m) => running.engine.handle(m))),
    bearer: () => token,
  });
  const u = new TestUser(jid, session, generateEntityKey({ type: 'EC' }), token, undefined as never);
  await u.register();
  return u;
}

describe('cli: kms rekey, backup, restore and inspect with the KMS running', function () {
  this.timeout(240_000);
  let root: string;
  let env: Record<string, string>;
  let running: RunningKms;
  let config: KmsConfig;
  let alice: TestUser;
  let chainUri: string;
  const keys = new Map<string, string>();
  let backupFile: string;
  let id1: string;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'kms-operator-'));
    await mkdir(join(root, 'keys'), { mode: 0o700 });
    env = {
      KMS_DATA_DIR: join(root, 'data'),
      KMS_MASTER_KEY_FILE: join(root, 'keys', 'master.key'),
      KMS_DOMAIN: DOMAIN,
      KMS_ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
      KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:9',
    };
    config = loadConfig({ env });
    running = await startKms(config, silentLogger(), { xmpp: false });
    id1 = masterKeyId(Buffer.from((await readFile(env.KMS_MASTER_KEY_FILE!, 'utf8')).trim(), 'base64url'));
    alice = await user(running, config, 'alice@localhost');
    const genesis = await alice.genesis([add('alice@localhost'), add('bob@localhost')]);
    chainUri = genesis.uri;
    const b1 = alice.block(blockHash(genesis.block), [add('carol@localhost')]);
    await alice.append(chainUri, [b1]);
    for (let i = 0; i < 10; i++) {
      const gk = await alice.createGk(blockHash(b1));
      keys.set(payloadOf(gk).uri as string, openGk(gk, running.identity.publicKey, alice.key).key.toString('base64url'));
    }
  });

  after(async () => {
    await running?.stop().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  });

  it('kms inspect never makes a store where there is none', async () => {
    const none = join(root, 'none');
    const r = await kms({ ...env, KMS_DATA_DIR: none, KMS_ADMIN_LISTEN: '' }, 'inspect', 'chains');
    expect(r.code).to.not.equal(0);
    expect(r.err).to.contain(`no store in ${join(none, 'db')}`);
    expect(existsSync(none)).to.equal(false);
  });

  it('kms backup while the KMS runs and GKs are being made: one consistent file, without the master key', async () => {
    backupFile = join(root, 'kms.backup');
    let writing = true;
    let made = 0;
    const load = (async () => {
      while (writing) {
        await alice.createGk();
        made++;
      }
    })();
    const r = await kms(env, 'backup', backupFile);
    writing = false;
    await load;
    expect(r.code, r.err).to.equal(0);
    expect(made).to.be.greaterThan(0);
    expect(r.out).to.match(/backup of \d+ record\(s\) and \d file\(s\) written/);
    const text = await readFile(backupFile, 'utf8');
    expect((await stat(backupFile)).mode & 0o777).to.equal(0o600);
    expect(text).to.not.contain((await readFile(env.KMS_MASTER_KEY_FILE!, 'utf8')).trim());
    const b = parseBackup(text, backupFile);
    expect(b.files.map((f) => f.name)).to.include.members(['identity-ec.json', 'issuer.json', 'master-key-check.json']);
    expect(b.entries.filter(([k]) => k.startsWith('g!')).length).to.be.at.least(10);
    expect(b.masterKey).to.equal(undefined);
    // kms inspect reads a backup too, with no KMS and no data folder.
    const fromBackup = await kms({ KMS_DATA_DIR: join(root, 'nowhere') }, 'inspect', 'chains', '--backup', backupFile);
    expect(fromBackup.code, fromBackup.err).to.equal(0);
    expect(fromBackup.out).to.contain(chainUri);
    expect(existsSync(join(root, 'nowhere'))).to.equal(false);
  });

  it('kms inspect while the KMS runs: a snapshot through the admin listener, never key material', async () => {
    const r = await kms(env, 'inspect', 'gks', '--json');
    expect(r.code, r.err).to.equal(0);
    const gks = JSON.parse(r.out) as { uri: string }[];
    for (const uri of keys.keys()) expect(gks.map((g) => g.uri)).to.include(uri);
    expect(r.out).to.not.match(/"key"|s2\.|s1\./);
    const c = await kms(env, 'inspect', 'chains');
    expect(c.code, c.err).to.equal(0);
    expect(c.out)
      .to.contain(chainUri)
      .and.match(/members: .*bob@localhost, carol@localhost/);
  });

  it('kms rekey while the KMS runs: re-sealed in the background while it serves, the old key file named for removal', async () => {
    let serving = true;
    let served = 0;
    const load = (async () => {
      const uris = [...keys.keys()];
      while (serving) {
        const uri = uris[served % uris.length]!;
        expect(openGk(await alice.getGk(uri), running.identity.publicKey, alice.key).key.toString('base64url')).to.equal(keys.get(uri));
        served++;
      }
    })();
    const r = await kms(env, 'rekey', '--generate', join(root, 'keys', 'new.key'));
    serving = false;
    await load;
    expect(r.code, r.err).to.equal(0);
    const id2 = masterKeyId(Buffer.from((await readFile(join(root, 'keys', 'new.key'), 'utf8')).trim(), 'base64url'));
    expect(r.out).to.contain(`master key ${id2} is now in ${env.KMS_MASTER_KEY_FILE}`);
    expect(r.out).to.contain(`done: every sealed value is under master key ${id2}`);
    expect(r.out).to.contain(`${env.KMS_MASTER_KEY_FILE}.d/${id1}.key are no longer needed`);
    expect(served).to.be.greaterThan(0);
    // Nothing in the running KMS's snapshot is sealed under key 1 any more.
    const after = await kms(env, 'backup', join(root, 'after.backup'));
    expect(after.code, after.err).to.equal(0);
    const text = await readFile(join(root, 'after.backup'), 'utf8');
    expect(text).to.contain(`s2.${id2}.`);
    expect(text).to.not.contain(`s2.${id1}.`);
    for (const [uri, raw] of keys) expect(openGk(await alice.getGk(uri), running.identity.publicKey, alice.key).key.toString('base64url')).to.equal(raw);
  });

  it('after the rekey: a start with the new key alone works, one with the old key alone is refused naming both key ids', async () => {
    await running.stop();
    await rename(join(`${env.KMS_MASTER_KEY_FILE}.d`, `${id1}.key`), join(root, 'keys', 'old.key'));
    running = await startKms(config, silentLogger(), { xmpp: false });
    const a = await user(running, config, 'alice@localhost');
    for (const [uri, raw] of keys) expect(openGk(await a.getGk(uri), running.identity.publicKey, a.key).key.toString('base64url')).to.equal(raw);
    await running.stop();
    const err = await startKms(loadConfig({ env: { ...env, KMS_MASTER_KEY_FILE: join(root, 'keys', 'old.key') } }), silentLogger(), { xmpp: false }).then(
      (k) => k.stop().then(() => undefined),
      (e: Error) => e,
    );
    const id2 = masterKeyId(Buffer.from((await readFile(env.KMS_MASTER_KEY_FILE!, 'utf8')).trim(), 'base64url'));
    expect(err?.message).to.contain(`(master-key-check.json does not open under it): it was sealed under master key ${id2}, the key(s) given are ${id1}`);
  });

  it('kms restore: refuses a non-empty folder; into an empty one, a KMS starts on it with the key it was sealed with, every GK opens, the chain links verify', async () => {
    const busy = join(root, 'busy');
    await mkdir(busy);
    await writeFile(join(busy, 'x'), 'x');
    const refused = await kms({}, 'restore', backupFile, '--data-dir', busy);
    expect(refused.code).to.not.equal(0);
    expect(refused.err).to.contain(`${busy} is not empty`);
    const fresh = join(root, 'restored');
    const r = await kms({}, 'restore', backupFile, '--data-dir', fresh);
    expect(r.code, r.err).to.equal(0);
    expect(r.out).to.contain(`with the master key ${id1}`);
    const restoredConfig = loadConfig({ env: { ...env, KMS_DATA_DIR: fresh, KMS_MASTER_KEY_FILE: join(root, 'keys', 'old.key') } });
    running = await startKms(restoredConfig, silentLogger(), { xmpp: false });
    const a = await user(running, restoredConfig, 'alice@localhost');
    for (const [uri, raw] of keys) expect(openGk(await a.getGk(uri), running.identity.publicKey, a.key).key.toString('base64url')).to.equal(raw);
    const blocks = await a.chain(chainUri);
    expect(blocks).to.have.length(2);
    expect(payloadOf(blocks[1]!).antecedent).to.equal(blockHash(blocks[0]!));
  });

  it('kms rekey with the KMS stopped re-seals here, and the KMS starts on the new key alone', async () => {
    await running.stop();
    const fresh = join(root, 'restored');
    const keyFile = join(root, 'keys', 'old.key');
    const e = { ...env, KMS_DATA_DIR: fresh, KMS_MASTER_KEY_FILE: keyFile, KMS_ADMIN_LISTEN: '' };
    const r = await kms(e, 'rekey', '--generate', join(root, 'keys', 'k3.key'));
    expect(r.code, r.err).to.equal(0);
    const id3 = masterKeyId(Buffer.from((await readFile(join(root, 'keys', 'k3.key'), 'utf8')).trim(), 'base64url'));
    expect(r.out).to.contain(`done: every sealed value is under master key ${id3}`);
    expect(r.out).to.contain(`${keyFile}.d/${id1}.key are no longer needed`);
    await rm(`${keyFile}.d`, { recursive: true });
    const c = loadConfig({ env: e });
    running = await startKms(c, silentLogger(), { xmpp: false });
    const a = await user(running, c, 'alice@localhost');
    for (const [uri, raw] of keys) expect(openGk(await a.getGk(uri), running.identity.publicKey, a.key).key.toString('base64url')).to.equal(raw);
  });

  it('a KMS started with an older key in <masterKeyFile>.d/ re-seals in the background at start (a rotation resumed after a crash)', async () => {
    await running.stop();
    const fresh = join(root, 'restored');
    const keyFile = join(root, 'keys', 'old.key');
    const k3 = await readFile(keyFile, 'utf8');
    // As `kms rekey` leaves it when the KMS stops right after the key files moved: the old key in .d/, a new key in place.
    await mkdir(`${keyFile}.d`, { mode: 0o700 });
    await writeFile(join(`${keyFile}.d`, 'previous.key'), k3, { mode: 0o600 });
    const k4 = randomBytes(32);
    await writeFile(keyFile, `${k4.toString('base64url')}\n`, { mode: 0o600 });
    const events: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const l of chunk.toString().split('\n').filter(Boolean)) events.push(JSON.parse(l));
        cb();
      },
    });
    const c = loadConfig({ env: { ...env, KMS_DATA_DIR: fresh, KMS_MASTER_KEY_FILE: keyFile, KMS_ADMIN_LISTEN: '' } });
    running = await startKms(c, createLogger({ destination }), { xmpp: false });
    const a = await user(running, c, 'alice@localhost');
    for (const [uri, raw] of keys) expect(openGk(await a.getGk(uri), running.identity.publicKey, a.key).key.toString('base64url')).to.equal(raw);
    const deadline = Date.now() + 20_000;
    while (!events.some((e) => e.event === 'rekey-done') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const done = events.find((e) => e.event === 'rekey-done');
    expect(done).to.deep.include({
      keyId: masterKeyId(k4),
      retired: [masterKeyId(Buffer.from(k3.trim(), 'base64url'))],
      removable: [join(`${keyFile}.d`, 'previous.key')],
    });
    expect(JSON.stringify(events)).to.not.contain(k3.trim()).and.not.contain(k4.toString('base64url'));
  });
});
