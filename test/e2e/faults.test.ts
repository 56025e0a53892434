// Proof under faults (issue 14, item 5), with real parts only: a `kms run` child process on a disk
// data folder, a real Prosody (and ejabberd), real kill -9, a real full file system.
//   - kill -9 of the KMS in the middle of bursts of appends and bound GK creations from 4 clients,
//     at random moments, 10 rounds: after each restart every acknowledged write is there, every
//     chain verifies (client-side, KmsClient.chain);
//   - the XMPP server killed and restarted under load: the KMS reconnects by itself and serves again
//     (seconds from server start to the first answered request printed); no reply duplicated or
//     misrouted (IQ ids counted per client), errors counted by type;
//   - the data folder's file system full (a 2 MiB tmpfs, root only): writes refused with a clear
//     error, reads still served, nothing corrupted; space freed: writes succeed again without a restart.
// A wrong or missing master key (refused with the reason, data untouched) is covered by
// test/cli/data-dir.test.ts.
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@xmpp/client';
import { connectClient, disconnect } from './harness/clients.js';
import { IqLedger } from './harness/iq-ledger.js';
import { kmsRunSetup, type KmsProcess, type KmsRunSetup } from './harness/kms-process.js';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';
import { loadConfig } from '../../src/config.js';
import { localTokens } from '../../src/server.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { blockHash, signBlock } from '../../src/client/chain.js';
import { KmsResponseError } from '../../src/client/errors.js';
import type { GroupKey } from '../../src/client/keys.js';
import { until } from '../support/until.js';

const KMS = 'kms.localhost';
const USERS = Array.from({ length: 4 }, (_, i) => ({ username: `fault${i}`, password: `fault${i}-pw` }));
const ROUNDS = 10;

/** An error's kind for counting: its class and code (e.g. KmsStanzaError:service-unavailable). */
function kindOf(e: unknown): string {
  const err = e as { name?: string; code?: unknown; condition?: unknown; constructor?: { name: string } };
  const code = err.condition ?? err.code;
  return `${err.constructor?.name ?? err.name ?? typeof e}${code === undefined ? '' : `:${String(code)}`}`;
}

function count(m: Map<string, number>, key: string): void {
  m.set(key, (m.get(key) ?? 0) + 1);
}

/** One user's XMPP connection and KMS client. */
interface Worker {
  xmpp: Client;
  client: KmsClient;
  ledger: IqLedger;
  /** A chain of its own (the user alone). */
  own: string;
  /** Toggled in and out of the worker's appended blocks (each worker its own, so that they never clash on membership). */
  dummy: string;
}

for (const kind of serverKinds()) {
  describe(`faults on ${kind}: kill -9, server restart, full disk`, function () {
    this.timeout(180_000);
    let server: XmppServer;
    let dir: string;
    let setup: KmsRunSetup;
    let kms: KmsProcess | undefined;
    let anchors: X509Certificate[];
    let mint: (subject: string) => Promise<string>;
    const workers: Worker[] = [];
    const extra: KmsClient[] = [];
    let shared: string;
    /** Acknowledged writes: a 2xx response arrived. */
    const ackedBlocks: { chain: string; hash: string }[] = [];
    const ackedGks: { uri: string; key: string; owner: number }[] = [];

    async function startKmsProcess(s: KmsRunSetup = setup): Promise<KmsProcess> {
      kms = s.spawn();
      await kms.waitFor((r) => r.event === 'online', 60_000, 'the component online');
      return kms;
    }

    async function kmsClient(xmpp: Client, username: string, timeoutMs = 4_000): Promise<KmsClient> {
      return KmsClient.connect({
        xmpp,
        kms: KMS,
        anchors,
        bearer: () => mint(`${username}@localhost`),
        entityKeyType: { type: 'EC' },
        timeoutMs,
        retries: 0,
      });
    }

    /** A fresh client of user `i` (nothing cached): what it reads is verified from the genesis on. */
    async function verifier(i: number): Promise<KmsClient> {
      const c = await kmsClient(workers[i]!.xmpp, USERS[i]!.username, 15_000);
      extra.push(c);
      return c;
    }

    before(async () => {
      server = await startServer(kind);
      await server.registerUsers(USERS);
      dir = await mkdtemp(join(tmpdir(), `kms-faults-${kind}-`));
      setup = await kmsRunSetup(server, dir);
      await startKmsProcess();
      anchors = [new X509Certificate(await readFile(join(setup.dataDir, 'trust-anchor.pem')))];
      const tokens = await localTokens(loadConfig({ file: setup.configFile, env: {} }));
      mint = (s) => tokens(s);
      for (const [i, u] of USERS.entries()) {
        const xmpp = await connectClient(server, { ...u, reconnect: true });
        const ledger = new IqLedger(xmpp, KMS);
        const client = await kmsClient(xmpp, u.username);
        const own = (await client.createChain([])).uri;
        workers.push({ xmpp, client, ledger, own, dummy: `dummy${i}@localhost` });
      }
      shared = (await workers[0]!.client.createChain(USERS.slice(1).map((u) => `${u.username}@localhost`))).uri;
    });

    after(async () => {
      for (const c of extra) await c.close().catch(() => undefined);
      for (const w of workers) await disconnect(w.xmpp);
      await kms?.kill();
      await server?.stop();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    /** Worker `w` appends (shared and own chain in turn) and creates a GK bound to its block, until `stop()`; records what was acknowledged. */
    async function burst(i: number, stop: () => boolean, errors: Map<string, number>): Promise<number> {
      const w = workers[i]!;
      let acks = 0;
      for (let n = 0; !stop(); n++) {
        const uri = n % 2 === 0 ? shared : w.own;
        try {
          const view = await w.client.chain(uri);
          const optype = view.members.at(-1)!.has(w.dummy) ? 'remove' : 'add';
          const block = await signBlock(w.client.entityKey, w.client.entity, view.tail, [{ entity: w.dummy, optype }]);
          await w.client.session.request('post', uri, { blocks: [block] });
          const hash = await blockHash(block);
          ackedBlocks.push({ chain: uri, hash });
          acks++;
          const gk = await w.client.createGk(hash);
          ackedGks.push({ uri: gk.uri, key: Buffer.from(gk.key).toString('base64url'), owner: i });
          acks++;
        } catch (e) {
          count(errors, kindOf(e));
          // A refusal or a KMS that is gone: not acknowledged. Pace the next try a little.
          if (!(e instanceof KmsResponseError && e.code === 'CONFLICT')) await new Promise((r) => setTimeout(r, 50));
        }
      }
      return acks;
    }

    /** Every acknowledged block is in its chain as a fresh client reads and verifies it; every acknowledged GK (from `fromGk` on) opens with its key. */
    async function checkAcknowledged(fromGk: number): Promise<void> {
      const chains = [shared, ...workers.map((w) => w.own)];
      const readers = await Promise.all(workers.map((_, i) => verifier(i)));
      const hashes = new Set<string>();
      for (const [c, uri] of chains.entries()) {
        // KmsClient.chain verifies the whole chain (genesis signature, antecedents, members' signatures).
        const view = await readers[c === 0 ? 0 : c - 1]!.chain(uri);
        for (const h of view.hashes) hashes.add(h);
      }
      const missing = ackedBlocks.filter((b) => !hashes.has(b.hash));
      expect(missing, 'acknowledged blocks missing after restart').to.deep.equal([]);
      for (const g of ackedGks.slice(fromGk)) {
        const gk = await readers[g.owner]!.gk(g.uri);
        expect(Buffer.from(gk.key).toString('base64url'), g.uri).to.equal(g.key);
      }
      for (const r of readers) await r.close();
    }

    it(`kill -9 of the KMS during bursts of appends and bound GK creations, ${ROUNDS} rounds: every acknowledged write survives, every chain verifies`, async () => {
      const errors = new Map<string, number>();
      const delays: number[] = [];
      let gkChecked = 0;
      for (let round = 0; round < ROUNDS; round++) {
        let stopped = false;
        const acksBefore = ackedBlocks.length + ackedGks.length;
        const running = workers.map((_, i) => burst(i, () => stopped, errors));
        const delay = randomInt(50, 501);
        delays.push(delay);
        await new Promise((r) => setTimeout(r, delay));
        await kms!.kill();
        stopped = true;
        await Promise.all(running);
        expect(kms!.running).to.equal(false);
        await startKmsProcess();
        await checkAcknowledged(gkChecked);
        gkChecked = ackedGks.length;
        if (process.env.KMS_TEST_DEBUG) console.log(`round ${round}: killed after ${delay} ms, ${ackedBlocks.length + ackedGks.length - acksBefore} acks`);
      }
      // The whole history once more, GKs included, after the last restart.
      await checkAcknowledged(0);
      console.log(
        `      ${kind}: ${ROUNDS} kill -9 at ${delays.join(',')} ms; acknowledged ${ackedBlocks.length} blocks, ${ackedGks.length} GKs, all present; ` +
          `errors ${JSON.stringify(Object.fromEntries(errors))}`,
      );
      expect(ackedBlocks.length, 'the bursts wrote something').to.be.greaterThan(ROUNDS);
      expect(ackedGks.length).to.be.greaterThan(ROUNDS);
    });

    it('kms audit verify after the kills: the audit log is intact (a torn last line cut at the next start, never accepted)', function () {
      const out = execFileSync(process.execPath, ['bin/kms.js', 'audit', 'verify', '--config', setup.configFile], { encoding: 'utf8' });
      const m = /intact: (\d+) records/.exec(out);
      expect(m, out).to.not.equal(null);
      // At least a record per acknowledged write of the bursts, and one start per restart.
      expect(Number(m![1])).to.be.greaterThan(ROUNDS * 2);
    });

    it(`${kind} killed and restarted under load: the KMS reconnects by itself and serves again, no reply duplicated or misrouted`, async () => {
      const errors = new Map<string, number>();
      const answered: number[] = [];
      let stopped = false;
      let ok = 0;
      const onlineBefore = kms!.records.filter((r) => r.event === 'online').length;
      const chainOf = (i: number) => (i % 2 === 0 ? shared : workers[i]!.own);
      const load = workers.map(async (w, i) => {
        for (let n = 0; !stopped; n++) {
          try {
            if (n % 3 === 0) await w.client.ping();
            else if (n % 3 === 1) await w.client.createGk();
            else await w.client.chain(chainOf(i));
            answered.push(Date.now());
            ok++;
          } catch (e) {
            count(errors, kindOf(e));
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      });
      await until('answers before the restart', () => (ok >= 20 ? true : undefined), 30_000);
      await server.kill();
      const down = Date.now();
      await server.start();
      const up = Date.now();
      // The component reconnects by itself: the same process logs 'online' again.
      const pid = kms!.child.pid;
      const online = await kms!.waitFor(
        (r) => r.event === 'online' && kms!.records.filter((x) => x.event === 'online').indexOf(r) >= onlineBefore,
        30_000,
        'the component back online',
      );
      expect(kms!.child.pid).to.equal(pid);
      const first = await until('the first answer after the server start', () => answered.find((t) => t >= up), 60_000);
      const okAtRestart = ok;
      await until('every client served again', () => (ok >= okAtRestart + 40 ? true : undefined), 60_000);
      stopped = true;
      await Promise.all(load);
      const seconds = (first - up) / 1000;
      const duplicated = workers.reduce((s, w) => s + w.ledger.duplicated, 0);
      const misrouted = workers.reduce((s, w) => s + w.ledger.misrouted, 0);
      console.log(
        `      ${kind}: down ${((up - down) / 1000).toFixed(1)} s; KMS online ${(((online.time as number) - up) / 1000).toFixed(2)} s and ` +
          `first answer ${seconds.toFixed(2)} s after the server start; ${ok} answered; ` +
          `duplicated ${duplicated}, misrouted ${misrouted}; errors ${JSON.stringify(Object.fromEntries(errors))}`,
      );
      expect(duplicated, 'replies duplicated').to.equal(0);
      expect(misrouted, 'replies to ids never sent').to.equal(0);
      // A reply that answers another request is a BadResponseError (the client library checks requestIds).
      expect([...errors.keys()].filter((k) => k.startsWith('BadResponseError'))).to.deep.equal([]);
      expect(seconds, 'serves again within a few seconds of the server start').to.be.below(15);
      // Every client (its XMPP connection reconnected by @xmpp/client) is served again.
      for (const [i, w] of workers.entries()) expect((await w.client.ping()).status, `client ${i}`).to.equal(200);
    });

    describe('data folder on a full file system', function () {
      let mnt: string | undefined;
      let mounted = false;
      let full: KmsProcess | undefined;
      let episode: { s: KmsRunSetup; chain: { uri: string; hashes: string[] }; before: GroupKey; after: GroupKey } | undefined;

      before(function () {
        if (process.getuid?.() !== 0) this.skip(); // mount -t tmpfs needs root
      });

      after(async () => {
        await full?.kill();
        if (mounted) execFileSync('umount', [mnt!]);
        if (mnt) await rm(mnt, { recursive: true, force: true });
      });

      it('writes refused with an error (status, reason, a log line naming ENOSPC), reads served; space freed: writes succeed again without a restart', async () => {
        await kms!.stop(); // one component kms.localhost at a time
        mnt = await mkdtemp(join(tmpdir(), `kms-full-${kind}-`));
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mnt]);
        mounted = true;
        const cfgDir = join(mnt, 'cfg');
        await mkdir(cfgDir);
        const s = await kmsRunSetup(server, cfgDir, join(mnt, 'data'));
        full = await startKmsProcess(s);
        kms = full;
        anchors = [new X509Certificate(await readFile(join(s.dataDir, 'trust-anchor.pem')))];
        const tokens = await localTokens(loadConfig({ file: s.configFile, env: {} }));
        mint = (x) => tokens(x);
        const alice = await kmsClient(workers[0]!.xmpp, USERS[0]!.username, 10_000);
        extra.push(alice);
        const chain = await alice.createChain([]);
        const before = await alice.createGk(chain.tail);

        // Fill the file system.
        const filler = join(mnt, 'filler');
        const fh = await open(filler, 'w');
        const chunk = Buffer.alloc(64 * 1024, 1);
        try {
          for (;;) await fh.write(chunk);
        } catch (e) {
          expect((e as NodeJS.ErrnoException).code).to.equal('ENOSPC');
        } finally {
          await fh.close();
        }

        // Writes are refused, with a status and a reason.
        const refusals: KmsResponseError[] = [];
        for (let i = 0; i < 20; i++) {
          const e = await alice.createGk(chain.tail).then(
            () => undefined,
            (err: unknown) => err,
          );
          if (e !== undefined) {
            expect(e, String(e)).to.be.instanceOf(KmsResponseError);
            refusals.push(e as KmsResponseError);
          }
        }
        expect(refusals.length, 'writes on a full disk are refused').to.be.greaterThan(0);
        const refusal = refusals[0]!;
        console.log(`      ${kind}: full disk: the client sees status ${refusal.status} ${refusal.code}: ${refusal.reason}`);
        expect(refusal.status).to.be.at.least(500);
        const logged = kms.records.find((r) => r.level >= 50 && /ENOSPC|space/i.test(JSON.stringify(r)));
        console.log(`      ${kind}: full disk: the KMS logs ${JSON.stringify(logged)}`);
        expect(logged, 'the KMS logs why the write failed').to.not.equal(undefined);
        // Reads are still served.
        expect((await alice.gk(before.uri)).uri).to.equal(before.uri);
        expect((await alice.ping()).status).to.equal(200);

        // Space freed: writes succeed again, in the same process.
        await unlink(filler);
        const pid = kms.child.pid;
        let after: GroupKey | undefined;
        const errorsAfter = new Map<string, number>();
        for (const deadline = Date.now() + 20_000; !after; ) {
          try {
            after = await alice.createGk(chain.tail);
          } catch (e) {
            count(errorsAfter, kindOf(e));
            if (Date.now() > deadline)
              throw new Error(
                `no write succeeds within 20 s of the space being freed: ${String(e)} ${JSON.stringify(kms.records.filter((r) => r.level >= 50).slice(-2))}`,
              );
            await new Promise((r) => setTimeout(r, 500));
          }
        }
        console.log(`      ${kind}: space freed: refused ${JSON.stringify(Object.fromEntries(errorsAfter))} before the first write succeeded`);
        expect(kms.child.pid).to.equal(pid);
        expect(kms.running).to.equal(true);
        episode = { s, chain, before, after };
      });

      it('what was acknowledged around the full disk survives a restart (nothing lost, nothing corrupted)', async () => {
        expect(episode, 'the full-disk test ran').to.not.equal(undefined);
        const { s, chain, before, after } = episode!;
        // After a graceful restart the chain verifies and the GKs made before and after are there.
        await kms!.stop();
        full = await startKmsProcess(s);
        kms = full;
        const reader = await kmsClient(workers[0]!.xmpp, USERS[0]!.username, 10_000);
        extra.push(reader);
        expect((await reader.chain(chain.uri)).hashes).to.deep.equal(chain.hashes);
        const lost: string[] = [];
        for (const [name, g] of [
          ['made before the disk was full', before],
          ['made after the space was freed', after],
        ] as const) {
          const got = await reader.gk(g.uri).catch((e: Error) => e);
          if (got instanceof Error) lost.push(`GK ${name}: ${got.message}`);
          else expect(Buffer.from(got.key), name).to.deep.equal(Buffer.from(g.key));
        }
        expect(lost, 'acknowledged GKs lost after a restart').to.deep.equal([]);
      });
    });
  });
}
