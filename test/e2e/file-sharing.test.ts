// Use case 3.1 of -03 end to end (XEP "Sharing a File"), on a real Prosody (mod_http_file_share)
// and a real ejabberd (mod_http_upload): Alice encrypts a file under a group key, uploads the
// ciphertext through HTTP File Upload and announces it in the room; Bob fetches the group key from
// the KMS and decrypts. The server's stored upload holds no plaintext. With a key Alice made ahead
// of time, Bob asks before she bound it, hears NOT_BOUND, and gets the file once the bind lands.
import { expect } from 'chai';
import { X509Certificate } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Client } from '@xmpp/client';
import { connectClient, disconnect } from './harness/clients.js';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';
import { startTestKms } from './harness/kms.js';
import type { RunningKms } from '../../src/server.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { EncryptedRoom, type SharedFile } from '../../src/client/room.js';
import { KmsResponseError } from '../../src/client/errors.js';
import { until } from '../support/until.js';

const USERS = ['alice', 'bob'].map((u) => ({ username: u, password: `${u}-pw` }));

/** Every file under `dir`, with its bytes. */
async function filesUnder(dir: string): Promise<{ path: string; bytes: Buffer }[]> {
  const out: { path: string; bytes: Buffer }[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) {
      const path = join(e.parentPath, e.name);
      out.push({ path, bytes: await readFile(path) });
    }
  }
  return out;
}

for (const kind of serverKinds()) {
  describe(`encrypted file sharing through HTTP File Upload on ${kind}`, function () {
    this.timeout(90_000);
    let server: XmppServer;
    let kms: RunningKms;
    let dataDir: string;
    const people = new Map<string, { xmpp: Client; kms: KmsClient; room: EncryptedRoom; files: SharedFile[] }>();
    const roomJid = `files-${Date.now().toString(36)}@conference.localhost`;
    let anchors: X509Certificate[];
    const who = (n: string) => people.get(n)!;

    async function connect(name: string, extra: { notBoundWaitMs?: number } = {}) {
      const xmpp = await connectClient(server, USERS.find((u) => u.username === name)!);
      const token = await kms.issuer!.mint({ subject: `${name}@localhost`, audience: 'kms://kms.localhost' });
      const client = await KmsClient.connect({ xmpp, kms: 'kms.localhost', anchors, bearer: () => token, ...extra });
      return { xmpp, kms: client };
    }

    before(async () => {
      server = await startServer(kind);
      await server.registerUsers(USERS);
      ({ kms, dataDir } = await startTestKms(server, { dataPrefix: 'kms-files-' }));
      anchors = [new X509Certificate(await readFile(join(dataDir, 'trust-anchor.pem')))];
      for (const name of ['alice', 'bob']) {
        const c = await connect(name);
        const room = new EncryptedRoom({ xmpp: c.xmpp, kms: c.kms, room: roomJid, nick: name });
        const p = { ...c, room, files: [] as SharedFile[] };
        room.on('file', (f) => p.files.push(f));
        people.set(name, p);
        await room.join();
      }
      await who('alice').room.create(['bob@localhost']);
    });

    after(async () => {
      for (const p of people.values()) {
        await p.room.leave();
        await p.kms.close();
        await disconnect(p.xmpp);
      }
      await kms?.stop();
      await server?.stop();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    });

    it('Alice shares a file: Bob downloads and decrypts it, and the server stores only ciphertext', async function () {
      const text = `${kind}: the quarterly numbers, for members only. `.repeat(200);
      const ref = await who('alice').room.sendFile(new TextEncoder().encode(text), { name: 'numbers.txt', type: 'text/plain' });
      expect(ref.url).to.match(/^http:\/\/127\.0\.0\.1:\d+\//);
      const shared = await until('Bob to see the file', () => who('bob').files.find((f) => f.file.url === ref.url));
      expect(shared.file).to.deep.include({ name: 'numbers.txt', type: 'text/plain', size: text.length, gk: ref.gk });
      expect(shared.jid).to.equal('alice@localhost');
      const bytes = await who('bob').room.download(shared);
      expect(new TextDecoder().decode(bytes)).to.equal(text);

      const stored = await filesUnder(server.uploadDir);
      const upload = stored.find((f) => f.bytes.toString('latin1').startsWith('eyJ') && f.bytes.length > text.length);
      expect(upload, `the upload among ${stored.map((f) => f.path).join(', ')}`).to.not.equal(undefined);
      for (const f of stored) expect(f.bytes.includes('quarterly numbers'), f.path).to.equal(false);
      // Nor does the GET URL serve anything else than that ciphertext.
      expect(Buffer.from(await (await fetch(ref.url)).arrayBuffer()).equals(upload!.bytes)).to.equal(true);
    });

    it('with a group key made ahead of time, Bob asking before the bind hears NOT_BOUND (409) and gets the file after it', async function () {
      const alice = who('alice');
      const [key] = await alice.kms.createUnboundGks(1);
      // Hold Alice's bind back until Bob has asked at least once.
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const bind = alice.kms.bindGk.bind(alice.kms);
      alice.kms.bindGk = async (uri, block) => {
        await gate;
        return bind(uri, block);
      };
      try {
        const text = `${kind}: made ahead of time`;
        const sending = alice.room.sendFile(new TextEncoder().encode(text), { name: 'early.txt', key: key! });
        const shared = await until('Bob to see the second file', () => who('bob').files.find((f) => f.file.name === 'early.txt'));
        expect(shared.file.gk).to.equal(key!.uri);

        // What the KMS answers before the bind, over XMPP: 409 NOT_BOUND.
        const impatient = await connect('bob', { notBoundWaitMs: 0 });
        try {
          const refusal = await impatient.kms.gk(key!.uri).then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(refusal).to.be.instanceOf(KmsResponseError);
          expect([(refusal as KmsResponseError).status, (refusal as KmsResponseError).code]).to.deep.equal([409, 'NOT_BOUND']);
        } finally {
          await impatient.kms.close();
          await disconnect(impatient.xmpp);
        }

        // Bob's download asks, hears NOT_BOUND, and asks again until the bind has landed.
        const downloading = who('bob').room.download(shared);
        await new Promise((r) => setTimeout(r, 500));
        release();
        const bytes = await downloading;
        expect(new TextDecoder().decode(bytes)).to.equal(text);
        const ref = await sending;
        expect(ref.gk).to.equal(key!.uri);
      } finally {
        release();
        alice.kms.bindGk = bind;
      }
    });
  });
}
