/**
 * The audit log of several instances in their shared store (issue 15, src/audit/store-log.ts), on a
 * real 3-node etcd cluster: two instances append at once to one hash chain that verifies; a
 * changed record is named; startKms on etcd writes there, and `kms audit verify --store` reads it.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AuditRecord } from '../../src/audit/log.js';
import { verifyAuditLog } from '../../src/audit/read.js';
import { StoreAuditLog, storeAuditLines } from '../../src/audit/store-log.js';
import { loadConfig } from '../../src/config.js';
import { signCompact } from '../../src/crypto/jws.js';
import { thumbprint } from '../../src/crypto/keys.js';
import { makeIdentity } from '../../src/engine/identity.js';
import { startKms } from '../../src/server.js';
import { openEtcdStore } from '../../src/store/etcd.js';
import type { KvStore } from '../../src/store/kv.js';
import { silentLogger } from '../../src/util/logger.js';
import { DOMAIN, sharedIdentity } from '../support/kms-fixture.js';
import { EtcdCluster } from '../store/harness/etcd-cluster.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const KMS_BIN = join(ROOT, 'bin', 'kms.js');

function kms(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    const p = spawn(process.execPath, [KMS_BIN, ...args], {
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => res({ code, out, err }));
  });
}

async function records(kv: KvStore): Promise<{ key: string; text: string; rec: AuditRecord }[]> {
  const out: { key: string; text: string; rec: AuditRecord }[] = [];
  for await (const [key, text] of kv.entries({ gte: 'audit/rec/', lt: 'audit/rec/~' })) out.push({ key, text, rec: JSON.parse(text) as AuditRecord });
  return out;
}

describe('the audit log of several instances in their shared store (etcd, 3 nodes)', function () {
  this.timeout(120_000);
  let cluster: EtcdCluster;
  let n = 0;
  const opened: KvStore[] = [];
  const open = (prefix: string) => {
    const kv = openEtcdStore({ endpoints: cluster.endpoints, prefix });
    opened.push(kv);
    return kv;
  };
  const publicKey = async () => createPublicKey((await sharedIdentity('EC')).privateKey);
  const openLog = async (kv: KvStore, instance: string) => {
    const id = await sharedIdentity('EC');
    const identity = makeIdentity(DOMAIN, id.privateKey, id.chainPem);
    return StoreAuditLog.open({
      kv,
      actor: identity.kid,
      instance,
      kid: thumbprint(identity.publicKey),
      sign: (p) => signCompact(identity.privateKey, 'ES256', JSON.stringify(p), { kid: identity.kid }),
      checkpointEvery: 50,
      checkpointSec: 0,
    });
  };

  before(async () => {
    cluster = await EtcdCluster.start(3);
  });
  after(async () => {
    for (const kv of opened) await kv.close().catch(() => undefined);
    await cluster?.stop();
  });

  it('two instances appending at once: one linear chain holding every record of both, that verifies', async () => {
    const prefix = `audit${++n}/`;
    const kv1 = open(prefix);
    const kv2 = open(prefix);
    const [a, b] = await Promise.all([openLog(kv1, 'one'), openLog(kv2, 'two')]);
    // Ten rounds of ten records from each at once: every round, both race for the head.
    for (let round = 0; round < 10; round++) {
      const writes: Promise<void>[] = [];
      for (let i = round * 10; i < round * 10 + 10; i++) {
        writes.push(a.record({ event: 'gk.get', op: 'get', decision: 'allow', status: 200, requestId: `one-${i}` }));
        writes.push(b.record({ event: 'gk.get', op: 'get', decision: 'allow', status: 200, requestId: `two-${i}` }));
      }
      await Promise.all(writes);
    }
    await a.close();
    await b.close();
    const all = await records(kv1);
    // Each instance's batches interleave with the other's: neither wrote all its records in one run.
    const owners = all.filter((r) => typeof r.rec.requestId === 'string').map((r) => String(r.rec.requestId).split('-')[0]);
    const runs = owners.filter((o, i) => i === 0 || o !== owners[i - 1]).length;
    expect(runs, 'batches of the two instances interleave').to.be.at.least(10);
    expect(new Set(all.filter((r) => r.rec.requestId !== undefined).map((r) => r.rec.requestId)).size).to.equal(200);
    expect(all.map((r) => r.rec.seq)).to.deep.equal(all.map((_, i) => i + 1));
    expect(all.filter((r) => r.rec.event === 'audit.start').map((r) => r.rec.note)).to.have.members([
      'audit log opened by instance one',
      'audit log opened by instance two',
    ]);
    const head = JSON.parse((await kv1.get('audit/head'))!) as { seq: number; hash: string };
    expect(head).to.deep.equal({ seq: all.length, hash: all.at(-1)!.rec.hash });
    const r = await verifyAuditLog(storeAuditLines(kv2), [await publicKey()]);
    expect(r).to.deep.include({ ok: true, records: all.length, lastSeq: all.length });
    expect(r.checkpoints).to.be.at.least(2);
    expect(r.lastCheckpoint).to.equal(all.length);
  });

  it('a record changed in the store is named by its seq; one removed breaks the link after it', async () => {
    const prefix = `audit${++n}/`;
    const kv = open(prefix);
    const log = await openLog(kv, 'one');
    for (let i = 0; i < 20; i++) await log.record({ event: 'gk.get', op: 'get', decision: 'deny', status: 403, actor: `u${i}@example.com` });
    await log.close();
    const all = await records(kv);
    const target = all[9]!;
    expect(target.rec.seq).to.equal(10);
    await kv.batch([{ type: 'put', key: target.key, value: target.text.replace('u8@example.com', 'u9@example.com') }]);
    const changed = await verifyAuditLog(storeAuditLines(kv), [await publicKey()]);
    expect(changed.ok).to.equal(false);
    expect(changed.broken).to.deep.include({ seq: 10, line: 10 });
    expect(changed.broken!.problem).to.match(/hash does not match/);
    await kv.batch([{ type: 'del', key: target.key }]);
    const removed = await verifyAuditLog(storeAuditLines(kv), [await publicKey()]);
    expect(removed.ok).to.equal(false);
    expect(removed.broken).to.deep.include({ seq: 11 });
    expect(removed.broken!.problem).to.match(/record\(s\) missing/);
  });

  it('fails closed: a record the store cannot take is rejected', async () => {
    const kv = open(`audit${++n}/`);
    const log = await openLog(kv, 'one');
    await kv.close();
    let error: unknown;
    await log.record({ event: 'gk.get', op: 'get', decision: 'allow', status: 200 }).catch((e: unknown) => (error = e));
    expect(error).to.be.instanceOf(Error);
  });

  it('startKms on etcd twice (two instances): both write to the one chain; kms audit verify --store exits 0, then 1 naming a changed record', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kms-audit-store-'));
    try {
      const storeUrl = `etcd://${cluster.endpoints.map((e) => e.replace('http://', '')).join(',')}`;
      const env = { KMS_DATA_DIR: join(dir, 'data'), KMS_STORE: storeUrl };
      const first = await startKms(loadConfig({ env }), silentLogger(), { xmpp: false });
      const second = await startKms(loadConfig({ env }), silentLogger(), { xmpp: false });
      expect(second.audit).to.be.instanceOf(StoreAuditLog);
      await first.stop();
      await second.stop();
      const kv = open(`kms/${loadConfig({ env }).domain}/`);
      const all = await records(kv);
      expect(all.map((r) => r.rec.event)).to.deep.equal(['audit.start', 'audit.start', 'checkpoint', 'checkpoint']);
      const ok = await kms(['audit', 'verify'], env);
      expect(ok.err).to.equal('');
      expect(ok.code).to.equal(0);
      expect(ok.out).to.match(/intact: 4 records \(seq 1 to 4\), 2 checkpoint\(s\)/);
      await kv.batch([{ type: 'put', key: all[1]!.key, value: all[1]!.text.replace('audit log opened', 'audit log closed') }]);
      const bad = await kms(['audit', 'verify', '--store', storeUrl], { KMS_DATA_DIR: env.KMS_DATA_DIR });
      expect(bad.code).to.equal(1);
      expect(bad.out).to.match(/broken at record 2 \(seq 2\): the record was changed/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
