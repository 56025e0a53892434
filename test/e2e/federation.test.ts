// Federation over real XMPP server-to-server links (XEP "Federation"; use case 3.3 of -03): a.test
// with its KMS kms.a.test, b.test with kms.b.test, on Prosody with Prosody and on Prosody with
// ejabberd (test/e2e/harness/federation.ts: s2s over TLS with certificates from a test CA). Alice
// of a.test keeps a room's chain on her KMS with Bob of b.test in it; Bob, through his own KMS,
// reads her messages (the library, and kms chat in a terminal), writes in the room, and is
// refused through his KMS once Alice removes him; the other direction too; and KMS A refuses a KMS
// it does not federate with, leaving its store as it was. Needs root (the harness writes /etc/hosts).
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { Level } from 'level';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@xmpp/client';
import { KmsClient } from '../../src/client/kms-client.js';
import { EncryptedRoom, type RoomMessage, type Undecryptable } from '../../src/client/room.js';
import { loadConfig } from '../../src/config.js';
import { createDevIdentity } from '../../src/crypto/x509.js';
import { startKms, type RunningKms } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';
import { disconnect } from './harness/clients.js';
import { connectFederatedClient, federationPairs, startFederation, type Domain, type Federation } from './harness/federation.js';
import { Tmux, tmuxInstalled } from './harness/tmux.js';
import { until } from '../support/until.js';

const KMS_BIN = join(resolve(fileURLToPath(import.meta.url), '../../..'), 'bin', 'kms.js');
const USERS = { alice: { username: 'alice', password: 'alice-pw' }, bob: { username: 'bob', password: 'bob-pw' } };

interface Side {
  domain: Domain;
  kms: RunningKms;
  dir: string;
  caPem: string;
}

/** A KMS for `domain` with a certificate from a CA of its own (written to <dir>/ca.pem), federating with `peers`. */
async function startSideKms(domain: Domain, dir: string, peers: { kms: string; domains: string[]; anchorsFile: string }[]): Promise<RunningKms> {
  const config = loadConfig({
    env: {
      KMS_DOMAIN: domain.componentDomain,
      KMS_XMPP_SERVICE: `xmpp://${domain.address}:${domain.componentPort}`,
      KMS_XMPP_SECRET: domain.componentSecret,
      KMS_DATA_DIR: join(dir, 'data'),
      KMS_IDENTITY_KEY_FILE: join(dir, 'key.pem'),
      KMS_IDENTITY_CERT_FILE: join(dir, 'chain.pem'),
      KMS_FEDERATION_PEERS: JSON.stringify(peers),
      KMS_LOG_LEVEL: 'silent',
    },
  });
  return startKms(config, silentLogger());
}

async function identityFiles(domain: Domain, dir: string): Promise<string> {
  const dev = await createDevIdentity({ domain: domain.componentDomain, keyType: 'EC' });
  await writeFile(join(dir, 'key.pem'), dev.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, { mode: 0o600 });
  await writeFile(join(dir, 'chain.pem'), dev.chainPem.join(''));
  await writeFile(join(dir, 'ca.pem'), dev.caCertPem);
  return dev.caCertPem;
}

async function kmsClient(side: Side, xmpp: Client, jid: string): Promise<KmsClient> {
  const token = await side.kms.issuer!.mint({ subject: jid, audience: `kms://${side.domain.componentDomain}` });
  return KmsClient.connect({ xmpp, kms: side.domain.componentDomain, anchors: [side.caPem], bearer: () => token });
}

/** SHA-256 over every key and value of a (closed) LevelDB store. */
async function storeDigest(dir: string): Promise<string> {
  const db = new Level<string, string>(dir);
  await db.open();
  const h = createHash('sha256');
  for await (const [k, v] of db.iterator()) h.update(`${k}\u0000${v}\u0000`);
  await db.close();
  return h.digest('hex');
}

for (const pair of federationPairs()) {
  describe(`federation over s2s, ${pair}: Bob of b.test reads Alice's room on a.test through his own KMS`, function () {
    this.timeout(120_000);
    let fed: Federation;
    let a: Side;
    let b: Side;
    const clients: Client[] = [];
    const kmsClients: KmsClient[] = [];
    let alice: { xmpp: Client; kms: KmsClient; room: EncryptedRoom; got: RoomMessage[] };
    let bob: { xmpp: Client; kms: KmsClient; room: EncryptedRoom; got: RoomMessage[]; refused: Undecryptable[] };
    const roomJid = `federated-${Date.now().toString(36)}@conference.a.test`;

    before(async () => {
      fed = await startFederation(pair);
      await fed.a.registerUsers([USERS.alice]);
      await fed.b.registerUsers([USERS.bob]);
      const dirA = await mkdtemp(join(tmpdir(), 'kms-fed-a-'));
      const dirB = await mkdtemp(join(tmpdir(), 'kms-fed-b-'));
      const caA = await identityFiles(fed.a, dirA);
      const caB = await identityFiles(fed.b, dirB);
      const kmsA = await startSideKms(fed.a, dirA, [{ kms: 'kms.b.test', domains: ['b.test'], anchorsFile: join(dirB, 'ca.pem') }]);
      const kmsB = await startSideKms(fed.b, dirB, [{ kms: 'kms.a.test', domains: ['a.test'], anchorsFile: join(dirA, 'ca.pem') }]);
      a = { domain: fed.a, kms: kmsA, dir: dirA, caPem: caA };
      b = { domain: fed.b, kms: kmsB, dir: dirB, caPem: caB };

      const ax = await connectFederatedClient(fed.a, USERS.alice);
      const bx = await connectFederatedClient(fed.b, USERS.bob);
      clients.push(ax, bx);
      const ak = await kmsClient(a, ax, 'alice@a.test');
      const bk = await kmsClient(b, bx, 'bob@b.test');
      kmsClients.push(ak, bk);
      alice = { xmpp: ax, kms: ak, room: new EncryptedRoom({ xmpp: ax, kms: ak, room: roomJid, nick: 'alice' }), got: [] };
      bob = { xmpp: bx, kms: bk, room: new EncryptedRoom({ xmpp: bx, kms: bk, room: roomJid, nick: 'bob' }), got: [], refused: [] };
      alice.room.on('message', (m) => alice.got.push(m));
      bob.room.on('message', (m) => bob.got.push(m));
      bob.room.on('undecryptable', (u) => bob.refused.push(u));
      await alice.room.join();
      await alice.room.create(['bob@b.test']);
      await bob.room.join();
    });

    after(async () => {
      for (const k of kmsClients) await k.close().catch(() => undefined);
      for (const c of clients) await disconnect(c).catch(() => undefined);
      await a?.kms.stop();
      await b?.kms.stop();
      await fed?.stop();
      for (const s of [a, b]) if (s) await rm(s.dir, { recursive: true, force: true });
    });

    it("Bob's client, talking only to kms.b.test, decrypts Alice's message: KMS B got the key from KMS A for him", async () => {
      await alice.room.send('Hello Bob, from a.test');
      await until("Bob's decrypted message", () => bob.got.find((m) => m.body === 'Hello Bob, from a.test'), 20_000);
      const m = bob.got.find((x) => x.body === 'Hello Bob, from a.test')!;
      expect(m.from).to.equal('alice@a.test');
      expect(bob.kms.kmsJid).to.equal('kms.b.test');
    });

    it('Bob writes in the room: his group key is made at KMS A through KMS B, and Alice reads it', async () => {
      await bob.room.send('Hello Alice, from b.test');
      await until("Alice's decrypted message", () => alice.got.find((m) => m.body === 'Hello Alice, from b.test'), 20_000);
      expect(alice.got.find((m) => m.body === 'Hello Alice, from b.test')!.from).to.equal('bob@b.test');
    });

    it('Bob in kms chat, a terminal signed in to his own KMS, reads Alice and is read by her', async function () {
      if (!tmuxInstalled()) this.skip();
      const tmux = new Tmux();
      const dir = await mkdtemp(join(tmpdir(), 'kms-fed-chat-'));
      try {
        const token = await b.kms.issuer!.mint({ subject: 'bob@b.test', audience: 'kms://kms.b.test' });
        await writeFile(join(dir, 'anchor.pem'), b.caPem);
        await tmux.open(
          dir,
          'bob',
          [
            process.execPath,
            KMS_BIN,
            'chat',
            '--xmpp',
            `xmpp://${fed.b.address}:${fed.b.c2sPort}`,
            '--domain',
            'b.test',
            '--user',
            'bob',
            '--nick',
            'bob-terminal',
          ].concat(['--room', roomJid, '--kms', 'kms.b.test', '--anchor', join(dir, 'anchor.pem'), '--chain', alice.room.chainUri!]),
          { KMS_CHAT_PASSWORD: USERS.bob.password, KMS_CHAT_TOKEN: token, KMS_DATA_DIR: join(dir, 'data') },
        );
        await tmux.waitFor('bob', /joined federated-/, 45_000);
        await alice.room.send('Terminal Bob, can you read this?');
        await tmux.waitFor('bob', /alice \(alice@a\.test\)[^\n]*: Terminal Bob, can you read this\?/, 20_000);
        await tmux.type('bob', 'Yes, through kms.b.test');
        await until("Alice reads the terminal's line", () => alice.got.find((m) => m.body === 'Yes, through kms.b.test'), 20_000);
      } finally {
        await tmux.kill().catch(() => undefined);
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('the other way: Alice gets, through kms.a.test, a group key of a chain Bob keeps on kms.b.test', async () => {
      const chain = await bob.kms.createChain(['alice@a.test']);
      const gk = await bob.kms.createGk(chain.tail);
      const forAlice = await alice.kms.gk(gk.uri);
      expect(Buffer.from(forAlice.key).equals(Buffer.from(gk.key))).to.equal(true);
      const view = await alice.kms.chain(chain.uri);
      expect([...view.members[view.members.length - 1]!].sort()).to.deep.equal(['alice@a.test', 'bob@b.test']);
    });

    it('KMS B asking KMS A for a user of a third domain (carol@c.test, whom B has no business speaking for): 403 from A, through B', async () => {
      // B's own issuer vouches for carol@c.test (a misconfigured or hostile KMS B); A decides by the domains it configured for B.
      const token = await b.kms.issuer!.mint({ subject: 'carol@c.test', audience: 'kms://kms.b.test' });
      const carol = await KmsClient.connect({ xmpp: bob.xmpp, kms: 'kms.b.test', anchors: [b.caPem], bearer: () => token });
      kmsClients.push(carol);
      let err: { status?: number; message: string } | undefined;
      try {
        await carol.chain(alice.room.chainUri!);
      } catch (e) {
        err = e as typeof err;
      }
      expect(err?.status).to.equal(403);
      expect(err?.message).to.match(/kms\.a\.test: kms\.b\.test does not speak for carol@c\.test/);
    });

    it('after Alice removes Bob on KMS A, her next message is refused to him through KMS B at once (403, naming kms.a.test)', async () => {
      await alice.room.remove(['bob@b.test']);
      await alice.room.send('Only for a.test now');
      await until("Bob's refusal", () => bob.refused[0], 20_000);
      expect(bob.refused[0]!.reason).to.match(/the KMS refused: kms\.a\.test: bob@b\.test may not have kms:\/\/kms\.a\.test\/gks\//);
      expect(bob.got.some((m) => m.body === 'Only for a.test now')).to.equal(false);
    });

    it("KMS A refuses a KMS it does not federate with, and its store is unchanged: B's users get 502 PEER_FAILED", async () => {
      // A fresh KMS A' on the same component, federating with no one, over the same data.
      await a.kms.stop();
      const db = join(a.dir, 'data', 'db');
      const before = await storeDigest(db);
      a.kms = await startSideKms(fed.a, a.dir, []);
      const fresh = await connectFederatedClient(fed.b, USERS.bob);
      clients.push(fresh);
      // Bob's KMS makes a new link (its old channel is unknown to nobody: A' refuses the credential itself).
      const bobAgain = await kmsClient(b, fresh, 'bob@b.test');
      kmsClients.push(bobAgain);
      let err: { status?: number; code?: string; message: string } | undefined;
      try {
        await bobAgain.chain(alice.room.chainUri!);
      } catch (e) {
        err = e as typeof err;
      }
      expect(err?.status).to.equal(502);
      expect(err?.code).to.equal('PEER_FAILED');
      await a.kms.stop();
      expect(await storeDigest(db)).to.equal(before);
      a.kms = await startSideKms(fed.a, a.dir, [{ kms: 'kms.b.test', domains: ['b.test'], anchorsFile: join(b.dir, 'ca.pem') }]);
    });

    it("KMS B with a certificate that does not lead to A's anchors for it: A refuses it, Bob gets 502 PEER_FAILED, A's store unchanged", async () => {
      await b.kms.stop();
      const dir = await mkdtemp(join(tmpdir(), 'kms-fed-b2-'));
      const otherCa = await identityFiles(fed.b, dir); // a new key and a CA that A does not know
      const rogue = await startSideKms(fed.b, dir, [{ kms: 'kms.a.test', domains: ['a.test'], anchorsFile: join(a.dir, 'ca.pem') }]);
      try {
        const x = await connectFederatedClient(fed.b, USERS.bob);
        clients.push(x);
        const token = await rogue.issuer!.mint({ subject: 'bob@b.test', audience: 'kms://kms.b.test' });
        const k = await KmsClient.connect({ xmpp: x, kms: 'kms.b.test', anchors: [otherCa], bearer: () => token });
        kmsClients.push(k);
        await a.kms.stop();
        const db = join(a.dir, 'data', 'db');
        const before = await storeDigest(db);
        a.kms = await startSideKms(fed.a, a.dir, [{ kms: 'kms.b.test', domains: ['b.test'], anchorsFile: join(b.dir, 'ca.pem') }]);
        let err: { status?: number; code?: string; message: string } | undefined;
        try {
          await k.chain(alice.room.chainUri!);
        } catch (e) {
          err = e as typeof err;
        }
        expect(err?.status).to.equal(502);
        expect(err?.message).to.match(/kms\.a\.test refused this KMS's credential: .*jwk credential rejected/);
        await a.kms.stop();
        expect(await storeDigest(db)).to.equal(before);
        a.kms = await startSideKms(fed.a, a.dir, [{ kms: 'kms.b.test', domains: ['b.test'], anchorsFile: join(b.dir, 'ca.pem') }]);
      } finally {
        await rogue.stop();
        await rm(dir, { recursive: true, force: true });
        b.kms = await startSideKms(fed.b, b.dir, [{ kms: 'kms.a.test', domains: ['a.test'], anchorsFile: join(a.dir, 'ca.pem') }]);
      }
    });
  });
}
