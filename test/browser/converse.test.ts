// The converse.js plugin (src/converse/plugin.ts) in a real browser, on Prosody and on ejabberd: Debian's Chromium, headless,
// driven by playwright-core. Two people log into converse.js with their passwords over WebSocket
// (the page from `kms web`'s server, src/cli/web.ts), join a room whose chain Carol made with the
// Node client library, and talk through the KMS: what Alice sends with the toggle on is the XEP's
// message (Carol's Node client reads it, the stanza the room relays has no plaintext), Bob's page
// shows the text, and after Carol removes Bob his page marks her next message with the KMS's refusal.
// A screenshot per step goes to test-artifacts/converse/ (gitignored).
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@xmpp/client';
import { chromium, type Browser, type Page } from 'playwright-core';
import { connectClient, disconnect } from '../e2e/harness/clients.js';
import { startTestKms } from '../e2e/harness/kms.js';
import { serverKinds, startServer, type XmppServer } from '../e2e/harness/servers.js';
import { startWeb } from '../../src/cli/web.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { EncryptedRoom, type RoomMessage } from '../../src/client/room.js';
import { FALLBACK_BODY } from '../../src/client/muc.js';
import type { RunningKms } from '../../src/server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.KMS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS_ROOT = join(ROOT, 'test-artifacts', 'converse');
const USERS = ['alice', 'bob', 'carol'].map((u) => ({ username: u, password: `${u}-pw` }));

function buildBundles(outdir: string): Promise<void> {
  return new Promise((done, fail) =>
    execFile(process.execPath, [join(ROOT, 'scripts/build-browser.mjs'), outdir], { cwd: ROOT }, (err, _out, stderr) =>
      err ? fail(new Error(`build-browser.mjs failed: ${stderr}`)) : done(),
    ),
  );
}

/** Where each server's test configuration serves XMPP over WebSocket (RFC 7395) on its HTTP port. */
const WEBSOCKET_PATH = { prosody: '/xmpp-websocket', ejabberd: '/ws' } as const;

for (const kind of serverKinds()) {
  describe(`converse.js with the KMS plugin, in headless Chromium, on ${kind}`, function () {
    this.timeout(120_000);
    let server: XmppServer;
    let kms: RunningKms;
    let dataDir: string;
    let bundleDir: string;
    let web: Server;
    let url: string;
    let browser: Browser;
    const pages = new Map<string, Page>();
    let carol: { xmpp: Client; kms: KmsClient; room: EncryptedRoom; messages: RoomMessage[]; raw: string[] };
    const roomJid = `converse-${Date.now().toString(36)}@conference.localhost`;
    let step = 0;
    const ARTIFACTS = join(ARTIFACTS_ROOT, kind);

    const shot = async (name: string) => {
      step += 1;
      for (const [who, page] of pages) await page.screenshot({ path: join(ARTIFACTS, `${String(step).padStart(2, '0')}-${name}-${who}.png`) });
    };

    before(async () => {
      await rm(ARTIFACTS, { recursive: true, force: true });
      await mkdir(ARTIFACTS, { recursive: true });
      bundleDir = await mkdtemp(join(tmpdir(), 'kms-converse-'));
      const [s] = await Promise.all([startServer(kind), buildBundles(bundleDir)]);
      server = s;
      await server.registerUsers(USERS);
      ({ kms, dataDir } = await startTestKms(server, { dataPrefix: 'kms-converse-' }));
      const anchor = await readFile(join(dataDir, 'trust-anchor.pem'), 'utf8');
      ({ server: web, url } = await startWeb({
        websocketUrl: `ws://127.0.0.1:${server.httpPort}${WEBSOCKET_PATH[kind]}`,
        kmsJid: 'kms.localhost',
        anchors: [anchor],
        converseDir: join(ROOT, 'node_modules/converse.js/dist'),
        pluginDir: bundleDir,
      }));
      // Carol, with the Node client library, owns the room (non-anonymous) and its chain.
      const xmpp = await connectClient(server, USERS[2]!);
      const token = await kms.issuer!.mint({ subject: 'carol@localhost', audience: 'kms://kms.localhost' });
      const client = await KmsClient.connect({ xmpp, kms: 'kms.localhost', anchors: [anchor], bearer: () => token });
      const room = new EncryptedRoom({ xmpp, kms: client, room: roomJid, nick: 'carol' });
      carol = { xmpp, kms: client, room, messages: [], raw: [] };
      room.on('message', (m) => carol.messages.push(m));
      xmpp.on('stanza', (el) => {
        if (el.is('message') && (el.attrs.from ?? '').startsWith(`${roomJid}/`)) carol.raw.push(el.toString());
      });
      await room.join();
      await room.create(['alice@localhost', 'bob@localhost']);
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
    });

    after(async () => {
      await browser?.close();
      if (carol) {
        await carol.room.leave();
        await carol.kms.close();
        await disconnect(carol.xmpp);
      }
      await new Promise((r) => (web ? web.close(r) : r(undefined)));
      await kms?.stop();
      await server?.stop();
      await rm(dataDir, { recursive: true, force: true });
      await rm(bundleDir, { recursive: true, force: true });
    });

    /** A page of `name`'s, logged in with the password, in `room`. */
    async function open(name: string, label: string, room: string): Promise<Page> {
      const token = await kms.issuer!.mint({ subject: `${name}@localhost`, audience: 'kms://kms.localhost' });
      const page = await (await browser.newContext({ viewport: { width: 1100, height: 700 } })).newPage();
      pages.set(label, page);
      page.on('pageerror', (e) => console.error(`[${label} page]`, e.message));
      await page.addInitScript((t) => {
        (globalThis as unknown as { kmsBearer: () => string }).kmsBearer = () => t;
      }, token);
      await page.goto(`${url}?room=${encodeURIComponent(room)}`);
      await page.fill('input[name="jid"]', `${name}@localhost`);
      await page.fill('input[name="password"]', `${name}-pw`);
      await page.click('button[type="submit"]');
      await page.waitForSelector('converse-muc .chat-textarea', { timeout: 30_000 });
      await page.waitForSelector('converse-muc button.toggle-kms');
      return page;
    }

    it('Alice and Bob log into converse.js with their passwords over WebSocket and join the room', async () => {
      for (const name of ['alice', 'bob']) await open(name, name, roomJid);
      await shot('joined');
    });

    it('a message Carol sends through the KMS (Node client library) is decrypted in both pages', async () => {
      const text = 'Welcome: this room is encrypted with the KMS';
      await carol.room.send(text);
      for (const page of pages.values()) await page.waitForSelector(`converse-muc .chat-msg__text:has-text("${text}")`, { timeout: 20_000 });
      await shot('welcome-decrypted');
    });

    it("Alice turns the toggle on and sends: Bob's page shows the text, the room relays only the XEP's ciphertext", async () => {
      const alice = pages.get('alice')!;
      await alice.click('converse-muc button.toggle-kms');
      await alice.waitForSelector('converse-muc button.toggle-kms[data-kms-active="true"]');
      // Who can decrypt: the chain's members, shown on the toggle.
      await alice.waitForSelector('converse-muc button.toggle-kms[data-kms-members="alice@localhost, bob@localhost, carol@localhost"]', { timeout: 10_000 });
      await shot('toggle-on');
      const secret = 'The launch moves to Thursday';
      await alice.fill('converse-muc .chat-textarea', secret);
      await alice.press('converse-muc .chat-textarea', 'Enter');
      await pages.get('bob')!.waitForSelector(`converse-muc .chat-msg__text:has-text("${secret}")`, { timeout: 20_000 });
      await shot('bob-reads');
      // Carol's Node client reads it as the XEP's message from Alice...
      const end = Date.now() + 10_000;
      while (!carol.messages.some((m) => m.body === secret) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      const m = carol.messages.find((x) => x.body === secret);
      expect(m?.from).to.equal('alice@localhost');
      expect(m?.senderVerified).to.equal(true);
      // ...and the stanza the room relayed carries the ciphertext and the fallback body only.
      const relayed = carol.raw.filter((r) => r.includes(`>${FALLBACK_BODY}<`) && r.includes('/alice'));
      expect(relayed).to.have.length.greaterThan(0);
      for (const r of relayed) {
        expect(r).to.not.include(secret);
        expect(r, r).to.match(/<encrypted [^>]*xmlns=["']urn:xmpp:kms:0["']/);
      }
    });

    it("after Carol removes Bob, Bob's page marks her next message as undecryptable, with the KMS's reason", async () => {
      await carol.room.remove(['bob@localhost']);
      const text = 'Only Alice and Carol can read this';
      await carol.room.send(text);
      await pages.get('alice')!.waitForSelector(`converse-muc .chat-msg__text:has-text("${text}")`, { timeout: 20_000 });
      const bob = pages.get('bob')!;
      const mark = await bob.waitForSelector('converse-muc .chat-msg__text:has-text("cannot decrypt")', { timeout: 20_000 });
      expect(await mark.textContent()).to.match(/the KMS refused/);
      expect(await bob.content()).to.not.include(text);
      await shot('bob-cannot-decrypt');
    });

    it("in a new room made in converse.js, Alice's toggle creates the chain with the occupants: Bob reads her message", async () => {
      const room2 = `fresh-${Date.now().toString(36)}@conference.localhost`;
      for (const page of pages.values()) await page.context().close();
      pages.clear();
      const alice = await open('alice', 'alice', room2); // the first occupant: the room's owner, who sees real JIDs
      const bob = await open('bob', 'bob', room2);
      await alice.waitForSelector('converse-muc converse-muc-occupant:has-text("bob"), converse-muc .occupant-list :text("bob")', { timeout: 10_000 });
      await alice.click('converse-muc button.toggle-kms');
      await alice.waitForSelector('converse-muc button.toggle-kms[data-kms-active="true"]');
      // Who can decrypt: the chain the toggle made, shown on it once the KMS has it.
      await alice.waitForSelector('converse-muc button.toggle-kms[data-kms-members="alice@localhost, bob@localhost"]', { timeout: 10_000 });
      const text = 'A chain of our own';
      await alice.fill('converse-muc .chat-textarea', text);
      await alice.press('converse-muc .chat-textarea', 'Enter');
      await bob.waitForSelector(`converse-muc .chat-msg__text:has-text("${text}")`, { timeout: 20_000 });
      await bob.waitForSelector('converse-muc button.toggle-kms[data-kms-members="alice@localhost, bob@localhost"]', { timeout: 10_000 });
      await shot('new-room');
    });
  });
}
