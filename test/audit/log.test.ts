/**
 * The audit log (issue 14, item 1): what the engine records of each request, with no token or key
 * material; the hash chain and its signed checkpoints, checked by `kms audit verify`, which names
 * the first broken record; a torn last line cut off at start; fail closed (a GK get whose record
 * cannot be written is refused and releases nothing); `kms audit search` and `tail`.
 */
import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { signCompact } from '../../src/crypto/jws.js';
import { thumbprint } from '../../src/crypto/keys.js';
import { makeIdentity } from '../../src/engine/identity.js';
import { AUDIT_FILE, AuditLog, type AuditRecord, sha256, splitLine } from '../../src/audit/log.js';
import { verifyAuditLog } from '../../src/audit/read.js';
import { loadConfig } from '../../src/config.js';
import { startKms } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';
import { DOMAIN, KmsFixture, add, sharedIdentity, type TestUser } from '../support/kms-fixture.js';
import { blockHash, openGk } from '../support/node-client.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const KMS_BIN = join(ROOT, 'bin', 'kms.js');
const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
const CAROL = 'carol@example.com';

/** `kms <args>` in `cwd` with no configuration but the data folder: its exit code and output. */
function kms(args: string[], cwd: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, KMS_DATA_DIR: join(cwd, 'data') };
    const p = spawn(process.execPath, [KMS_BIN, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => res({ code, out, err }));
  });
}

const records = async (file: string) =>
  (await readFile(file, 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditRecord);

describe('the audit log (issue 14)', function () {
  this.timeout(120_000);
  let root: string;
  let auditDir: string;
  let certFile: string;
  let kms0: KmsFixture;
  let log: AuditLog;
  let alice: TestUser;
  let bob: TestUser;
  let carol: TestUser;
  let gkUri: string;
  let chainUri: string;
  let released: Buffer;
  let carolRequestId: string | number;
  const publicKey = async () => createPublicKey((await sharedIdentity('EC')).privateKey);
  const file = () => join(auditDir, AUDIT_FILE);

  const openLog = async (checkpointEvery = 1000) => {
    const id = await sharedIdentity('EC');
    const identity = makeIdentity(DOMAIN, id.privateKey, id.chainPem);
    return AuditLog.open({
      dir: auditDir,
      actor: identity.kid,
      kid: thumbprint(identity.publicKey),
      sign: (p) => signCompact(identity.privateKey, 'ES256', JSON.stringify(p), { kid: identity.kid }),
      checkpointEvery,
      checkpointSec: 0,
    });
  };

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'kms-audit-'));
    auditDir = join(root, 'audit');
    const id = await sharedIdentity('EC');
    certFile = join(root, 'kms.pem');
    await writeFile(certFile, id.chainPem[0]!);
    log = await openLog(5);
    kms0 = await KmsFixture.create({ audit: log });
    alice = await kms0.user(ALICE);
    bob = await kms0.user(BOB);
    carol = await kms0.user(CAROL);
    for (const u of [alice, bob, carol]) expect((await u.register()).status).to.equal(201);
    const g = await alice.genesis([add(ALICE)]);
    chainUri = g.uri;
    const b1 = alice.block(blockHash(g.block), [add(BOB)]);
    expect((await alice.append(chainUri, [b1])).status).to.equal(200);
    const gk = openGk(await alice.createGk(), kms0.identity.publicKey, alice.key);
    gkUri = gk.uri;
    released = gk.key;
    await alice.bindGk(gkUri, blockHash(b1));
    expect(openGk(await bob.getGk(gkUri), kms0.identity.publicKey, bob.key).key.equals(released)).to.equal(true);
    const refused = await carol.session.batch([{ method: 'get', uri: gkUri, body: { entity: CAROL } }]);
    expect(refused[0]!.status).to.equal(403);
    carolRequestId = refused[0]!.requestId!;
  });
  after(async () => {
    await log.close().catch(() => undefined);
    await kms0.close();
    await rm(root, { recursive: true, force: true });
  });

  it('records handshakes, chain changes, entity keys, GK create, bind and get, and a refused get with its reason', async () => {
    const all = await records(file());
    const of = (event: string) => all.filter((r) => r.event === event);
    expect(of('audit.start')).to.have.length(1);
    const channels = of('channel.create');
    expect(channels.map((r) => r.actor).sort()).to.deep.equal([ALICE, BOB, CAROL]);
    for (const r of channels)
      expect(r)
        .to.include({ decision: 'allow', status: 201 })
        .and.to.have.property('object')
        .match(/^\/ecdhe\/[0-9a-f-]{36}$/);
    const keys = of('entity-key.register');
    expect(keys.map((r) => [r.actor, r.object, r.status])).to.deep.equal([
      [ALICE, ALICE, 201],
      [BOB, BOB, 201],
      [CAROL, CAROL, 201],
    ]);
    expect(keys[0]!.kid).to.equal(alice.key.kid);
    expect(of('chain.create')[0]).to.include({ actor: ALICE, object: chainUri, decision: 'allow', status: 201 });
    expect(of('chain.append')[0]).to.include({ actor: ALICE, object: chainUri, decision: 'allow', status: 200 });
    expect(of('gk.create')[0]).to.include({ actor: ALICE, object: gkUri, decision: 'allow', status: 201 });
    const bind = of('gk.bind')[0]!;
    expect(bind).to.include({ actor: ALICE, object: gkUri, decision: 'allow', status: 200 });
    expect(bind.block).to.match(/^[0-9a-f]{64}$/);
    const gets = of('gk.get');
    expect(gets[0]).to.include({ actor: BOB, object: gkUri, block: bind.block, decision: 'allow', status: 200 });
    expect(gets[1]).to.include({ actor: CAROL, object: gkUri, decision: 'deny', status: 403, code: 'FORBIDDEN', requestId: carolRequestId });
    expect(gets[1]!.reason).to.match(/carol@example.com may not have .* under retrieval policy 1/);
    for (const r of all.filter((x) => x.event !== 'audit.start' && x.event !== 'checkpoint')) {
      expect(r.time, r.event).to.match(/^\d{4}-\d\d-\d\dT/);
      expect(r.op, r.event).to.be.a('string');
    }
    // One checkpoint per five records.
    expect(of('checkpoint').length).to.be.greaterThanOrEqual(2);
    expect((await stat(file())).mode & 0o777).to.equal(0o600);
    expect((await stat(auditDir)).mode & 0o777).to.equal(0o700);
  });

  it('holds no token and no key material', async () => {
    const text = await readFile(file(), 'utf8');
    for (const u of [alice, bob, carol]) {
      expect(text).not.to.include(u.token);
      expect(text).not.to.include(u.token.split('.')[2]!);
      expect(text).not.to.include(String(u.key.privateJwk.d));
    }
    expect(text).not.to.include(released.toString('base64url'));
    expect(text).not.to.include(released.toString('hex'));
    expect(text).not.to.include(released.toString('base64'));
    expect(text).not.to.match(/"(key|gk|jwk|credential|proof|body)"/);
  });

  it('verifies: every hash, every link, every checkpoint signature (kms audit verify exits 0)', async () => {
    const r = await verifyAuditLog(file(), [await publicKey()]);
    expect(r.ok, JSON.stringify(r.broken)).to.equal(true);
    const res = await kms(['audit', 'verify', '--dir', auditDir, '--cert', certFile], root);
    expect(res.code, res.err).to.equal(0);
    expect(res.out).to.match(/intact: \d+ records \(seq 1 to \d+\), \d+ checkpoint\(s\); last signed checkpoint at seq \d+/);
  });

  it('kms audit search finds by user and by GK; tail prints the last records', async () => {
    const byCarol = await kms(['audit', 'search', '--dir', auditDir, '--user', CAROL], root);
    expect(byCarol.code, byCarol.err).to.equal(0);
    const lines = byCarol.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AuditRecord);
    expect(lines.map((r) => r.event)).to.deep.equal(['channel.create', 'entity-key.register', 'gk.get']);
    const byGk = await kms(['audit', 'search', '--dir', auditDir, '--gk', gkUri], root);
    const gkEvents = byGk.out
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as AuditRecord).event);
    expect(gkEvents).to.deep.equal(['gk.create', 'gk.bind', 'gk.get', 'gk.get']);
    const future = await kms(['audit', 'search', '--dir', auditDir, '--since', '2999-01-01T00:00:00Z'], root);
    expect(future.out).to.equal('');
    const tail = await kms(['audit', 'tail', '--dir', auditDir, '-n', '2'], root);
    expect(tail.out.trim().split('\n')).to.have.length(2);
  });

  describe('a damaged copy', () => {
    let copy: string;
    const lines = async () => (await readFile(file(), 'utf8')).split('\n').filter(Boolean);
    const verify = async (text: string) => {
      await writeFile(join(copy, AUDIT_FILE), text);
      return kms(['audit', 'verify', '--dir', copy, '--cert', certFile], root);
    };
    before(async () => {
      copy = await mkdtemp(join(root, 'copy-'));
    });

    it('one byte of a middle record changed: exit 1 naming that record', async () => {
      const l = await lines();
      const i = Math.floor(l.length / 2);
      const rec = JSON.parse(l[i]!) as AuditRecord;
      l[i] = l[i]!.replace(`"time":"${rec.time}"`, `"time":"${rec.time.replace(/.$/, rec.time.endsWith('Z') ? 'X' : 'Z')}"`);
      const res = await verify(`${l.join('\n')}\n`);
      expect(res.code).to.equal(1);
      expect(res.out).to.include(`broken at line ${i + 1} (seq ${rec.seq}): the record was changed`);
    });

    it('a record deleted: exit 1 naming the broken link', async () => {
      const l = await lines();
      const i = 4;
      const next = JSON.parse(l[i + 1]!) as AuditRecord;
      l.splice(i, 1);
      const res = await verify(`${l.join('\n')}\n`);
      expect(res.code).to.equal(1);
      expect(res.out).to.include(`broken at line ${i + 1} (seq ${next.seq}): seq ${next.seq} follows ${next.seq - 2}: 1 record(s) missing`);
    });

    it('a record changed and every hash after it recomputed: the next checkpoint signature gives it away', async () => {
      const l = await lines();
      const i = l.findIndex((t) => t.includes('"decision":"deny"'));
      let prev = (JSON.parse(l[i]!) as AuditRecord).prev;
      let checkpointLine = -1;
      for (let j = i; j < l.length; j++) {
        let body = splitLine(l[j]!)!.body.replace(/"prev":"[0-9a-f]{64}"/, `"prev":"${prev}"`);
        if (j === i) body = body.replace('"decision":"deny"', '"decision":"allow"');
        const hash = sha256(body);
        l[j] = `${body.slice(0, -1)},"hash":"${hash}"}`;
        prev = hash;
        if (checkpointLine < 0 && l[j]!.includes('"event":"checkpoint"')) checkpointLine = j;
      }
      expect(checkpointLine).to.be.greaterThan(i);
      const res = await verify(`${l.join('\n')}\n`);
      expect(res.code).to.equal(1);
      expect(res.out).to.include(`broken at line ${checkpointLine + 1}`);
      expect(res.out).to.include('the checkpoint signature is for another record');
    });
  });

  it('cuts a torn last line off at start, logs it in a start record, and goes on with an intact chain', async () => {
    await log.close();
    await appendFile(file(), '{"seq":999,"time":"2026-');
    log = await openLog(5);
    const all = await records(file());
    const start = all[all.length - 1]!;
    expect(start.event).to.equal('audit.start');
    expect(start.note).to.match(/a torn last line of 24 bytes .* was cut off at start/);
    expect((await verifyAuditLog(file(), [await publicKey()])).ok).to.equal(true);
  });

  it('fails closed: a GK get whose record cannot be written (read-only volume) is refused and releases nothing', async function () {
    const kmsA = await KmsFixture.create({ audit: log });
    try {
      const a = await kmsA.user(ALICE);
      await a.register();
      const g = await a.genesis([add(ALICE)]);
      const gk = await a.createGk(blockHash(g.block));
      const uri = openGk(gk, kmsA.identity.publicKey, a.key).uri;
      try {
        execFileSync('mount', ['--bind', auditDir, auditDir], { stdio: 'ignore' });
      } catch {
        this.skip();
      }
      try {
        execFileSync('mount', ['-o', 'remount,bind,ro', auditDir], { stdio: 'ignore' });
        const [res] = await a.session.batch([{ method: 'get', uri, body: { entity: ALICE } }]);
        expect(res!.status).to.equal(500);
        expect(res!.code).to.equal('INTERNAL');
        expect(res!.reason).to.equal('the audit record could not be written; nothing was released');
        expect(res).not.to.have.property('gk');
      } finally {
        execFileSync('umount', [auditDir], { stdio: 'ignore' });
      }
      // Writable again: the same request succeeds and the chain is intact.
      expect(openGk(await a.getGk(uri), kmsA.identity.publicKey, a.key).uri).to.equal(uri);
      const last = (await records(file())).filter((r) => r.event === 'gk.get').pop()!;
      expect(last).to.include({ actor: ALICE, object: uri, decision: 'allow' });
      expect((await verifyAuditLog(file(), [await publicKey()])).ok).to.equal(true);
    } finally {
      await kmsA.close();
    }
  });

  it('startKms keeps it in <dataDir>/audit, checkpoints at stop, and kms audit verify finds the development identity there', async () => {
    const dataDir = join(root, 'data');
    const running = await startKms(loadConfig({ env: { KMS_DATA_DIR: dataDir } }), silentLogger(), { xmpp: false });
    expect(running.audit).to.not.equal(undefined);
    await running.stop();
    const all = await records(join(dataDir, 'audit', AUDIT_FILE));
    expect(all.map((r) => r.event)).to.deep.equal(['audit.start', 'checkpoint']);
    expect(all[1]).to.include({ actor: 'kms://kms.localhost', kid: thumbprint(running.identity.publicKey) });
    const res = await kms(['audit', 'verify'], root);
    expect(res.code, res.err).to.equal(0);
    expect(res.out).to.include('intact: 2 records (seq 1 to 2), 1 checkpoint(s); last signed checkpoint at seq 2, 0 record(s) after it');
  });

  it('is on by default, and KMS_AUDIT_* set it', () => {
    expect(loadConfig({ env: {} }).audit).to.deep.equal({ enabled: true, checkpointEvery: 1000, checkpointSec: 300 });
    const c = loadConfig({ env: { KMS_AUDIT_ENABLED: 'false', KMS_AUDIT_DIR: '/var/log/kms', KMS_AUDIT_CHECKPOINT_EVERY: '10' } });
    expect(c.audit).to.deep.include({ enabled: false, dir: '/var/log/kms', checkpointEvery: 10 });
  });
});
