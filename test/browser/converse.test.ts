// The converse.js plugin (src/converse/plugin.ts) in a real browser, on Prosody and on ejabberd: Debian's Chromium, headless,
// driven by playwright-core. Two people log into converse.js with their passwords over WebSocket
// (the page from `kms web`'s server, src/cli/web.ts), join a room whose chain Carol made with the
// Node client library, and talk through the KMS: what Alice sends with the toggle on is the XEP's
// message (Carol's Node client reads it, the stanza the room relays has no plaintext), Bob's page
// shows the text, and after Carol removes Bob his page marks her next message with the KMS's refusal.
// Files chosen in converse's upload control go up encrypted (the XEP's <file/>, no out-of-band URL)
// and are downloaded decrypted in the other page and by Node; `/kms remove` typed in a page changes
// the chain; a late joiner reads the room's archive (MAM) as far as the KMS's policy allows.
// A screenshot per step goes to test-artifacts/converse/ (gitignored).
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
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
import { EncryptedRoom, type RoomMessage, type SharedFile } from '../../src/client/room.js';
import { FALLBACK_BODY } from '../../src/client/muc.js';
import { FILE_FALLBACK_BODY } from '../../src/client/files.js';
import { currentMembers } from '../../src/client/chain.js';
import type { RunningKms } from '../../src/server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.KMS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS_ROOT = join(ROOT, 'test-artifacts', 'converse');
const USERS = ['alice', 'bob', 'carol', 'dave'].map((u) => ({ username: u, password: `${u}-pw` }));

function buildBundles(outdir: string): Promise<void> {
  return new Promise((done, fail) =>
    execFile(process.execPath, [join(ROOT, 'scripts/build-browser.mjs'), outdir], { cwd: ROOT }, (err, _out, stderr) =>
      err ? fail(new Error(`build-browser.mjs failed: ${stderr}`)) : done(),
    ),
  );
}

/** Every file under `dir` (what the upload service stored), sorted. */
async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
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
    let carol: { xmpp: Client; kms: KmsClient; room: EncryptedRoom; messages: RoomMessage[]; files: SharedFile[]; raw: string[] };
    let anchor: string;
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
      anchor = await readFile(join(dataDir, 'trust-anchor.pem'), 'utf8');
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
      carol = { xmpp, kms: client, room, messages: [], files: [], raw: [] };
      room.on('message', (m) => carol.messages.push(m));
      room.on('file', (f) => carol.files.push(f));
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

    /** Polls `probe` until it returns a value (for what Node receives; the pages use waitForSelector). */
    async function until<T>(probe: () => T | undefined, what: string, ms = 20_000): Promise<T> {
      const end = Date.now() + ms;
      for (;;) {
        const v = probe();
        if (v !== undefined) return v;
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }

    /** Types a line into the page's message box and sends it. */
    async function type(page: Page, text: string): Promise<void> {
      await page.fill('converse-muc .chat-textarea', text);
      await page.press('converse-muc .chat-textarea', 'Enter');
    }

    /** Clicks the download button of the file message showing `label`; resolves with the saved file's name and bytes. */
    async function downloadIn(page: Page, label: string): Promise<{ name: string; bytes: Buffer }> {
      const message = page.locator('converse-muc .chat-msg', { hasText: label }).last();
      await message.hover();
      const [download] = await Promise.all([page.waitForEvent('download', { timeout: 20_000 }), message.locator('.kms-download').click()]);
      const path = await download.path();
      return { name: download.suggestedFilename(), bytes: await readFile(path) };
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

    it("a file chosen in Alice's page goes up encrypted: Bob's page and Carol's Node client decrypt it, the room relays only <file/>", async () => {
      const alice = pages.get('alice')!;
      const bob = pages.get('bob')!;
      const name = 'launch plan.pdf';
      const data = Buffer.concat([Buffer.from('%PDF-1.4 the launch moves to Thursday\n'), randomBytes(3000)]);
      const label = `📎 ${name} (${data.length} bytes)`;
      await alice.setInputFiles('converse-muc input.fileupload', { name, mimeType: 'application/pdf', buffer: data });
      await bob.waitForSelector(`converse-muc .chat-msg__text:has-text("${label}")`, { timeout: 20_000 });
      await alice.waitForSelector(`converse-muc .chat-msg__text:has-text("${label}")`, { timeout: 20_000 });
      await shot('file-shared');
      // Bob's page fetches the JWE, gets the group key from the KMS, checks and decrypts it, and saves it under its name.
      const got = await downloadIn(bob, label);
      expect(got.name).to.equal(name);
      expect(got.bytes.equals(data)).to.equal(true);
      // Carol's Node client reads the XEP's file message from Alice and decrypts the same bytes.
      const shared = await until(() => carol.files.find((f) => f.file.name === name), "Carol's file event");
      expect(shared.jid).to.equal('alice@localhost');
      expect(shared.file.size).to.equal(data.length);
      expect(shared.file.type).to.equal('application/pdf');
      expect(Buffer.from(await carol.room.download(shared)).equals(data)).to.equal(true);
      // The upload service holds a compact JWE under a random name, not the plaintext.
      expect(shared.file.url).to.not.include('launch');
      const stored = await (await fetch(shared.file.url)).text();
      expect(stored).to.match(/^[\w-]+\.\.[\w-]+\.[\w-]+\.[\w-]+$/);
      expect(stored).to.not.include('launch moves');
      // The stanza the room relayed: <file/>, the fallback body, no out-of-band URL, the name only inside <file/>.
      const relayed = carol.raw.filter((r) => r.includes('<file ') && r.includes(shared.file.url));
      expect(relayed).to.have.length.greaterThan(0);
      for (const r of relayed) {
        expect(r).to.include(`>${FILE_FALLBACK_BODY}<`);
        expect(r).to.not.include('jabber:x:oob');
        expect(r.replace(/<file [^>]*\/>/, '')).to.not.include('launch plan');
      }
    });

    it("a file Carol shares from Node (EncryptedRoom.sendFile) is downloaded decrypted in Alice's page", async () => {
      const alice = pages.get('alice')!;
      const name = 'minutes.txt';
      const data = Buffer.concat([Buffer.from('Minutes of the launch meeting\n'), randomBytes(1500)]);
      await carol.room.sendFile(data, { name, type: 'text/plain' });
      const label = `📎 ${name} (${data.length} bytes)`;
      await alice.waitForSelector(`converse-muc .chat-msg__text:has-text("${label}")`, { timeout: 20_000 });
      const got = await downloadIn(alice, label);
      expect(got.name).to.equal(name);
      expect(got.bytes.equals(data)).to.equal(true);
      await shot('node-file-downloaded');
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

    it('a file Bob picks with the toggle on after his removal is not sent: the encryption fails, nothing is uploaded', async () => {
      const bob = pages.get('bob')!;
      const files = carol.files.length;
      const stored = await listFiles(server.uploadDir);
      expect(stored, 'the two files shared before are stored').to.have.length.greaterThanOrEqual(2);
      await bob.click('converse-muc button.toggle-kms');
      await bob.waitForSelector('converse-muc button.toggle-kms[data-kms-active="true"]');
      await bob.setInputFiles('converse-muc input.fileupload', { name: 'leak.txt', mimeType: 'text/plain', buffer: Buffer.from('must not leave the page') });
      const error = await bob.waitForSelector('converse-muc .chat-error .chat-info__message:has-text("leak.txt was not sent")', { timeout: 20_000 });
      expect(await error.textContent()).to.match(/not a member/);
      await shot('bob-file-refused');
      // Then a plaintext line from Bob (toggle off), as a barrier: once the room relayed it, a file message sent before it would have been too.
      await bob.click('converse-muc button.toggle-kms');
      await bob.waitForSelector('converse-muc button.toggle-kms[data-kms-active="false"]');
      await type(bob, 'after the refused file');
      await until(() => carol.raw.find((r) => r.includes('after the refused file')), "Bob's plaintext line");
      // Fail closed: no slot was asked for, nothing reached the upload service or the room.
      expect(await listFiles(server.uploadDir)).to.deep.equal(stored);
      expect(carol.files).to.have.length(files);
      expect(carol.raw.some((r) => r.includes('leak.txt'))).to.equal(false);
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

    it('Alice removes Bob with /kms remove in her page: the toggle lists the new members, the chain changed, Bob cannot decrypt her next message', async () => {
      const alice = pages.get('alice')!;
      const bob = pages.get('bob')!;
      await type(alice, '/kms help');
      await alice.waitForSelector('converse-muc .chat-info__message:has-text("/kms remove <jid>")');
      await type(alice, '/kms remove bob@localhost');
      await alice.waitForSelector('converse-muc button.toggle-kms[data-kms-members="alice@localhost"]', { timeout: 20_000 });
      await alice.waitForSelector('converse-muc .chat-info__message:has-text("Removed bob@localhost")');
      await shot('kms-remove');
      // The chain at the KMS, read by a Node client of Alice's: Bob is no longer a member.
      const uri = await alice.getAttribute('converse-muc button.toggle-kms', 'data-kms-chain');
      expect(uri).to.match(/^kms:\/\/kms\.localhost\//);
      const xmpp = await connectClient(server, USERS[0]!);
      const token = await kms.issuer!.mint({ subject: 'alice@localhost', audience: 'kms://kms.localhost' });
      const client = await KmsClient.connect({ xmpp, kms: 'kms.localhost', anchors: [anchor], bearer: () => token });
      try {
        expect([...currentMembers(await client.chain(uri!))].sort()).to.deep.equal(['alice@localhost']);
      } finally {
        await client.close();
        await disconnect(xmpp);
      }
      // Alice's next message uses a group key bound to the new block: the KMS refuses it to Bob.
      const text = 'Bob left the chain before this one';
      await type(alice, text);
      await alice.waitForSelector(`converse-muc .chat-msg__text:has-text("${text}")`, { timeout: 20_000 });
      const mark = await bob.waitForSelector('converse-muc .chat-msg__text:has-text("cannot decrypt")', { timeout: 20_000 });
      expect(await mark.textContent()).to.match(/the KMS refused/);
      expect(await bob.content()).to.not.include(text);
      // Bob, no longer a member, cannot change the chain: the refusal is shown to him.
      await type(bob, '/kms add bob@localhost');
      const error = await bob.waitForSelector('converse-muc .chat-error .chat-info__message:has-text("/kms add failed")', { timeout: 20_000 });
      expect(await error.textContent()).to.match(/refused|not a member/);
      await shot('kms-remove-bob-refused');
    });

    it('Dave, added to the chain before he joins, reads the archive (MAM) as the policy allows: what came before he was added is marked', async () => {
      await carol.room.add(['dave@localhost']);
      const text = 'Dave, this was sent after you were added';
      await carol.room.send(text);
      await until(() => carol.messages.find((m) => m.body === text), 'the room to relay the message');
      const dave = await open('dave', 'dave', roomJid);
      await dave.waitForSelector(`converse-muc .chat-msg__text:has-text("${text}")`, { timeout: 30_000 });
      // Earlier messages are there too, but the KMS (policy 1: a member at the key's block) refuses their keys to Dave.
      const mark = await dave.waitForSelector('converse-muc .chat-msg__text:has-text("cannot decrypt")', { timeout: 20_000 });
      expect(await mark.textContent()).to.match(/the KMS refused/);
      // A file shared before he was added is listed, but its key is refused to him too: marked when he tries to download it.
      const before = await dave.locator('converse-muc .chat-msg__text:has-text("cannot decrypt")').count();
      const file = dave.locator('converse-muc .chat-msg', { hasText: '📎 launch plan.pdf' }).last();
      await file.hover();
      await file.locator('.kms-download').click();
      const fileMark = await dave.waitForSelector('converse-muc .chat-msg__text:has-text("launch plan.pdf"):has-text("cannot decrypt")', { timeout: 20_000 });
      expect(await fileMark.textContent()).to.match(/the KMS refused/);
      expect(await dave.locator('converse-muc .chat-msg__text:has-text("cannot decrypt")').count()).to.equal(before + 1);
      const content = await dave.content();
      expect(content).to.not.include('The launch moves to Thursday');
      expect(content).to.not.include('Only Alice and Carol can read this');
      await shot('dave-history');
    });
  });
}
