// The acceptance scenario, end to end, on Prosody and on ejabberd, with real parts only:
// the XMPP server, the development identity provider (OpenID Connect), the KMS trusting it, the
// page server (`kms web`) with converse.js and the KMS plugin in headless Chromium, and `kms chat`
// in a terminal (tmux). Alice, Bob and Dave sign in at the IdP in their browsers (authorization
// code + PKCE), then into converse; Carol signs her terminal in with the device flow, approved in
// a browser. Alice's toggle makes the room's chain with the four; everyone's messages are read by
// everyone; Alice removes Dave (he is shown the KMS's refusal), adds him back and adds Erin, who
// read the room's history as retrieval policy 1 allows; files go from a page to the terminal and
// back. Recording proxies in front of the server's WebSocket endpoint and component port show that
// the server was given ciphertext only: no plaintext, no group key.
// Screenshots of every page at every step go to test-artifacts/scenario/<kind>/ (gitignored); with
// KMS_UPDATE_SCREENSHOT=1, Alice's page with the toggle on and decrypted messages is copied to docs/converse.png.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@xmpp/client';
import { chromium, type Browser, type Page } from 'playwright-core';
import { approveDevice } from '../../src/auth/form-client.js';
import { startIdp, type RunningIdp } from '../../src/auth/idp.js';
import { deviceLogin } from '../../src/cli/device-login.js';
import { startWeb } from '../../src/cli/web.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { Sealer } from '../../src/crypto/seal.js';
import type { RunningKms } from '../../src/server.js';
import { connectClient, disconnect } from '../e2e/harness/clients.js';
import { startTestKms } from '../e2e/harness/kms.js';
import { freePorts } from '../e2e/harness/net.js';
import { serverKinds, startServer, type XmppServer } from '../e2e/harness/servers.js';
import { Tmux, tmuxInstalled } from '../e2e/harness/tmux.js';
import { startWiretap, type Wiretap } from '../e2e/harness/wiretap.js';
import { startWsTap, type WsTap } from '../e2e/harness/ws-tap.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.KMS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const KMS_BIN = join(ROOT, 'bin', 'kms.js');
const AUDIENCE = 'kms://kms.localhost';
/** The IdP's demo users and Erin, the late joiner; the XMPP accounts have the same passwords. */
const NAMES = ['alice', 'bob', 'carol', 'dave', 'erin'] as const;
type Name = (typeof NAMES)[number];
const password = (name: Name) => `${name}-password`;
const jid = (name: Name) => `${name}@localhost`;
/** Where each server's test configuration serves XMPP over WebSocket (RFC 7395) on its HTTP port. */
const WEBSOCKET_PATH = { prosody: '/xmpp-websocket', ejabberd: '/ws' } as const;
/** Starting `kms chat` compiles the sources with tsx first; the device flow then polls every few seconds. */
const TERMINAL_TIMEOUT_MS = 45_000;
const STEP_TIMEOUT_MS = 20_000;

function buildBundles(outdir: string): Promise<void> {
  return new Promise((done, fail) =>
    execFile(process.execPath, [join(ROOT, 'scripts/build-browser.mjs'), outdir], { cwd: ROOT }, (err, _out, stderr) =>
      err ? fail(new Error(`build-browser.mjs failed: ${stderr}`)) : done(),
    ),
  );
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** A line of `kms chat` showing `text` decrypted, from `name`. */
const terminalLine = (name: Name, text: string) =>
  new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\] ${name} \\(${escapeRe(jid(name))}\\)( \\[verified\\])?: ${escapeRe(text)}$`, 'm');
/** The plugin's mark of a message the KMS would not give `name` the key of, under retrieval policy 1. */
const refusal = (name: Name) =>
  new RegExp(`\\[cannot decrypt: the KMS refused: ${escapeRe(jid(name))} may not have kms://kms\\.localhost/gks/\\S+ under retrieval policy 1\\]`);
/** converse's text of a message, in the room's view. */
const shown = (text: string) => `converse-muc .chat-msg__text:has-text(${JSON.stringify(text)})`;

for (const kind of serverKinds()) {
  describe(`the acceptance scenario on ${kind}: three browsers and a terminal in one room encrypted with the KMS`, function () {
    this.timeout(120_000);
    let server: XmppServer;
    let idp: RunningIdp;
    let idpDir: string;
    let kms: RunningKms;
    let dataDir: string;
    let bundleDir: string;
    let web: Server;
    let url: string;
    let browser: Browser;
    let tmux: Tmux;
    /** Carol's terminal's folder (/get saves there). */
    let carolDir: string;
    let wsTap: WsTap;
    let componentTap: Wiretap;
    const pages = new Map<string, Page>();
    /** How many times a page was opened (each one a WebSocket connection). */
    let opened = 0;
    const room = `scenario-${Date.now().toString(36)}@conference.localhost`;
    /** Every plaintext sent in the scenario: the messages, in order, and the text file. */
    const plaintexts: string[] = [];
    /** The files' contents, as bytes. */
    const fileContents: Buffer[] = [];
    const ARTIFACTS = join(ROOT, 'test-artifacts', 'scenario', kind);
    let step = 0;

    /** A screenshot of every open page, named after the step; the files by page. */
    const shot = async (name: string) => {
      step += 1;
      const files = new Map<string, string>();
      for (const [who, page] of pages) {
        if (page.isClosed()) continue;
        const path = join(ARTIFACTS, `${String(step).padStart(2, '0')}-${name}-${who}.png`);
        await page.screenshot({ path });
        files.set(who, path);
      }
      return files;
    };

    /** Sends `text` from a page, with what is in the textarea and Enter, as a person does. */
    async function say(page: Page, text: string): Promise<void> {
      await page.fill('converse-muc .chat-textarea', text);
      await page.press('converse-muc .chat-textarea', 'Enter');
    }

    /** A new browser context for `name`: the page sends it to the IdP, then converse's login, then the room. */
    async function open(name: Name): Promise<Page> {
      const context = await browser.newContext({ viewport: { width: 1100, height: 700 }, acceptDownloads: true });
      const page = await context.newPage();
      pages.set(name, page);
      opened += 1;
      page.on('pageerror', (e) => console.error(`[${name}'s page on ${kind}]`, e.message));
      if (process.env.KMS_TEST_DEBUG) page.on('console', (m) => console.error(`[${name}'s console on ${kind}] ${m.type()}: ${m.text()}`));
      await page.goto(`${url}?room=${encodeURIComponent(room)}`);
      // No token yet: the page has sent the browser to the identity provider's login form.
      await page.waitForURL((u) => u.href.startsWith(`${idp.issuer}/interaction/`), { timeout: STEP_TIMEOUT_MS });
      await page.fill('input[name="username"]', name);
      await page.fill('input[name="password"]', password(name));
      await page.click('button[type="submit"]');
      // Back with the authorization code (exchanged with the PKCE verifier): converse's own login form.
      await page.waitForURL((u) => u.href.startsWith(url), { timeout: STEP_TIMEOUT_MS });
      await page.fill('input[name="jid"]', jid(name));
      await page.fill('input[name="password"]', password(name));
      await page.click('button[type="submit"]');
      await page.waitForSelector('converse-muc .chat-textarea', { timeout: 30_000 });
      await page.waitForSelector('converse-muc button.toggle-kms');
      return page;
    }

    const page = (name: Name) => pages.get(name)!;
    /** The toggle of `name`'s page once the chain's members shown on it are `members`. */
    const membersShown = (name: Name, members: Name[]) =>
      page(name).waitForSelector(`converse-muc button.toggle-kms[data-kms-members="${members.map(jid).join(', ')}"]`, { timeout: STEP_TIMEOUT_MS });

    before(async function () {
      this.timeout(180_000);
      if (!tmuxInstalled()) throw new Error('tmux is not installed: run scripts/install-system-deps.sh (as root)');
      await rm(ARTIFACTS, { recursive: true, force: true });
      await mkdir(ARTIFACTS, { recursive: true });
      bundleDir = await mkdtemp(join(tmpdir(), 'kms-scenario-bundle-'));
      idpDir = await mkdtemp(join(tmpdir(), 'kms-scenario-idp-'));
      carolDir = await mkdtemp(join(tmpdir(), 'kms-scenario-carol-'));
      const [s] = await Promise.all([startServer(kind), buildBundles(bundleDir)]);
      server = s;
      await server.registerUsers(NAMES.map((n) => ({ username: n, password: password(n) })));
      // The page's URL first: it is the browser client's redirect URI at the IdP.
      const [webPort] = (await freePorts(1)) as [number];
      const pageUrl = `http://127.0.0.1:${webPort}/`;
      idp = await startIdp({
        userDomain: 'localhost',
        audience: AUDIENCE,
        dataDir: idpDir,
        sealer: new Sealer(randomBytes(32)),
        redirectUris: [pageUrl],
        users: Object.fromEntries(NAMES.map((n) => [n, password(n)])),
      });
      componentTap = await startWiretap(server.componentPort);
      ({ kms, dataDir } = await startTestKms(server, {
        componentPort: componentTap.port,
        dataPrefix: 'kms-scenario-',
        tune: (c) => {
          c.auth.issuerUrl = idp.issuer;
          c.auth.issuer = idp.issuer;
        },
      }));
      expect(kms.issuer, 'the KMS uses the IdP, not its local issuer').to.equal(undefined);
      wsTap = await startWsTap(`ws://127.0.0.1:${server.httpPort}`);
      ({ server: web, url } = await startWeb({
        websocketUrl: `${wsTap.url}${WEBSOCKET_PATH[kind]}`,
        kmsJid: 'kms.localhost',
        anchors: [await readFile(join(dataDir, 'trust-anchor.pem'), 'utf8')],
        converseDir: join(ROOT, 'node_modules/converse.js/dist'),
        pluginDir: bundleDir,
        port: webPort,
        oidc: { issuer: idp.issuer, audience: AUDIENCE },
      }));
      expect(url).to.equal(pageUrl);
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
      tmux = new Tmux();
    });

    // A failed step leaves its screenshots too, to see what the pages showed.
    afterEach(async function () {
      if (this.currentTest?.state === 'failed') await shot(`FAILED-${this.currentTest.title.slice(0, 40).replace(/[^\w]+/g, '-')}`);
    });

    after(async function () {
      this.timeout(60_000);
      if (process.env.KMS_TEST_DEBUG && tmux) console.error(`----- carol on ${kind} -----\n${await tmux.capture('carol').catch(() => '')}`);
      await tmux?.kill();
      await browser?.close();
      await new Promise((r) => (web ? web.close(r) : r(undefined)));
      await wsTap?.close();
      await kms?.stop();
      await componentTap?.close();
      await idp?.close();
      await server?.stop();
      for (const dir of [dataDir, bundleDir, idpDir, carolDir]) if (dir) await rm(dir, { recursive: true, force: true });
    });

    it('Alice opens the page: it sends her to the IdP, she signs in, logs into converse and makes the room (its owner)', async () => {
      await open('alice');
      await shot('alice-joined');
    });

    it('Bob and Dave sign in the same way, each in his own browser, and join the room', async () => {
      await Promise.all([open('bob'), open('dave')]);
      for (const name of ['bob', 'dave'] as const) {
        await page('alice').waitForSelector(`converse-muc converse-muc-occupant:has-text("${name}"), converse-muc .occupant-list :text("${name}")`, {
          timeout: STEP_TIMEOUT_MS,
        });
      }
      await shot('bob-dave-joined');
    });

    it('Carol starts kms chat with --device: a browser approves the code at the IdP, and her terminal joins the room', async () => {
      const argv = [
        process.execPath,
        KMS_BIN,
        'chat',
        '--xmpp',
        `xmpp://127.0.0.1:${server.c2sPort}`,
        '--user',
        'carol',
        '--room',
        room,
        '--anchor',
        join(dataDir, 'trust-anchor.pem'),
        '--issuer',
        idp.issuer,
        '--device',
      ];
      // The XMPP password by the environment, so that it is not in `ps`.
      await tmux.open(carolDir, 'carol', argv, { KMS_CHAT_PASSWORD: password('carol') });
      const [, verification] = await tmux.waitFor('carol', /to sign in, open (\S+) and enter the code (\S+)/, TERMINAL_TIMEOUT_MS);
      const device = await (await browser.newContext({ viewport: { width: 900, height: 600 } })).newPage();
      pages.set('carol-device', device);
      // verification_uri_complete: the page posts the code by itself, then asks to confirm it.
      await device.goto(verification!);
      await device.click('button[type="submit"][form="op.deviceConfirmForm"]', { timeout: STEP_TIMEOUT_MS });
      await device.fill('input[name="username"]', 'carol');
      await device.fill('input[name="password"]', password('carol'));
      await device.click('button[type="submit"]');
      await device.waitForSelector('text=The device is signed in', { timeout: STEP_TIMEOUT_MS });
      await shot('carol-device-approved');
      await device.context().close();
      pages.delete('carol-device');
      await tmux.waitFor('carol', new RegExp(`✓ signed in at ${escapeRe(idp.issuer)}`), TERMINAL_TIMEOUT_MS);
      await tmux.waitFor('carol', /✓ KMS session open as carol@localhost/);
      await tmux.waitFor('carol', new RegExp(`✓ joined ${escapeRe(room)} as carol`));
      await page('alice').waitForSelector('converse-muc converse-muc-occupant:has-text("carol"), converse-muc .occupant-list :text("carol")', {
        timeout: STEP_TIMEOUT_MS,
      });
      await shot('carol-joined');
    });

    it("Alice turns the KMS toggle on: the plugin makes the room's chain with the four occupants", async () => {
      await page('alice').click('converse-muc button.toggle-kms');
      await page('alice').waitForSelector('converse-muc button.toggle-kms[data-kms-active="true"]');
      await membersShown('alice', ['alice', 'bob', 'carol', 'dave']);
      await shot('toggle-on');
    });

    it('a message from each of the four is decrypted in all four: three pages and the terminal', async () => {
      const lines: [Name, string][] = [
        ['alice', `Alice on ${kind}: the launch moves to Thursday`],
        ['bob', `Bob on ${kind}: Thursday works for the demo`],
        ['dave', `Dave on ${kind}: I will book the room`],
        ['carol', `Carol on ${kind}: typed in a terminal`],
      ];
      for (const [from, text] of lines) {
        plaintexts.push(text);
        if (from === 'carol') {
          await tmux.type('carol', text);
          await tmux.waitFor('carol', /\(to: alice@localhost, bob@localhost, carol@localhost, dave@localhost\)$/m);
        } else {
          if (from !== 'alice') {
            // Bob's and Dave's pages learnt the chain from Alice's message: they turn their toggles on too.
            await page(from).click('converse-muc button.toggle-kms');
            await membersShown(from, ['alice', 'bob', 'carol', 'dave']);
          }
          await say(page(from), text);
        }
        for (const name of ['alice', 'bob', 'dave'] as const) await page(name).waitForSelector(shown(text), { timeout: STEP_TIMEOUT_MS });
        if (from !== 'carol') await tmux.waitFor('carol', terminalLine(from, text));
      }
      // Decrypted, not merely echoed: no page marks any of them as undecryptable.
      for (const name of ['alice', 'bob', 'dave'] as const) expect(await page(name).locator(shown('cannot decrypt')).count(), name).to.equal(0);
      const files = await shot('everyone-reads-everyone');
      // Alice's page, the toggle on, everyone's messages decrypted: the README's picture.
      if (process.env.KMS_UPDATE_SCREENSHOT === '1') await copyFile(files.get('alice')!, join(ROOT, 'docs', 'converse.png'));
    });

    it("Alice removes Dave with /kms remove: Dave's page shows the KMS's refusal for the next messages, the others read them", async () => {
      await say(page('alice'), '/kms remove dave@localhost');
      await membersShown('alice', ['alice', 'bob', 'carol']);
      const fromAlice = `Alice on ${kind}: Dave has left the project`;
      const fromBob = `Bob on ${kind}: noted, without Dave`;
      plaintexts.push(fromAlice, fromBob);
      await say(page('alice'), fromAlice);
      await page('bob').waitForSelector(shown(fromAlice), { timeout: STEP_TIMEOUT_MS });
      await tmux.waitFor('carol', terminalLine('alice', fromAlice));
      // Bob's page takes the new block too: what he sends next is not for Dave either.
      await say(page('bob'), fromBob);
      await page('alice').waitForSelector(shown(fromBob), { timeout: STEP_TIMEOUT_MS });
      await tmux.waitFor('carol', terminalLine('bob', fromBob));
      await page('dave').locator(shown('cannot decrypt')).nth(1).waitFor({ timeout: STEP_TIMEOUT_MS });
      for (const mark of await page('dave').locator(shown('cannot decrypt')).allTextContents()) expect(mark).to.match(refusal('dave'));
      const content = await page('dave').content();
      expect(content).to.not.include(fromAlice);
      expect(content).to.not.include(fromBob);
      await shot('dave-removed');
    });

    it("Alice adds Dave back and Erin: reopening the room, each reads its history as retrieval policy 1 allows (a member at the key's block)", async () => {
      // Policy 1 (the KMS's default, the XEP's RECOMMENDED one): a group key goes to whoever was a
      // member at the block it is bound to. The chain's blocks: 1 made with the four, 2 Dave removed,
      // 3 Dave added back, 4 Erin added. Dave was a member at blocks 1, 3 and 4; Erin at 4 only.
      await say(page('alice'), '/kms add dave@localhost');
      await membersShown('alice', ['alice', 'bob', 'carol', 'dave']);
      await say(page('alice'), '/kms add erin@localhost');
      await membersShown('alice', ['alice', 'bob', 'carol', 'dave', 'erin']);
      const welcome = `Alice on ${kind}: welcome back Dave, welcome Erin`;
      plaintexts.push(welcome);
      await say(page('alice'), welcome);
      await page('bob').waitForSelector(shown(welcome), { timeout: STEP_TIMEOUT_MS });
      await page('dave').context().close();
      pages.delete('dave');
      await Promise.all([open('dave'), open('erin')]);
      const before = plaintexts.slice(0, 4);
      const whileRemoved = plaintexts.slice(4, 6);
      for (const name of ['dave', 'erin'] as const) await page(name).waitForSelector(shown(welcome), { timeout: STEP_TIMEOUT_MS });
      // Dave: the first four (block 1) and the welcome (block 4), not the two of block 2, said while he was out.
      for (const text of before) await page('dave').waitForSelector(shown(text), { timeout: STEP_TIMEOUT_MS });
      await page('dave').locator(shown('cannot decrypt')).nth(1).waitFor({ timeout: STEP_TIMEOUT_MS });
      const daveMarks = await page('dave').locator(shown('cannot decrypt')).allTextContents();
      expect(daveMarks, 'the two messages of block 2').to.have.length(2);
      for (const mark of daveMarks) expect(mark).to.match(refusal('dave'));
      // Erin: the welcome only; the six messages of blocks 1 and 2, before she was added, are refused by the KMS.
      await page('erin').locator(shown('cannot decrypt')).nth(5).waitFor({ timeout: STEP_TIMEOUT_MS });
      const erinMarks = await page('erin').locator(shown('cannot decrypt')).allTextContents();
      expect(erinMarks, 'the six messages of blocks 1 and 2').to.have.length(6);
      for (const mark of erinMarks) expect(mark).to.match(refusal('erin'));
      const daveContent = await page('dave').content();
      const erinContent = await page('erin').content();
      for (const text of whileRemoved) expect(daveContent).to.not.include(text);
      for (const text of [...before, ...whileRemoved]) expect(erinContent).to.not.include(text);
      await shot('history-by-policy');
    });

    it("a file chosen in Bob's page is downloaded and decrypted in Carol's terminal (/get)", async () => {
      const content = `${kind}: the budget, chosen in a browser. `.repeat(40);
      plaintexts.push(content);
      fileContents.push(Buffer.from(content));
      await page('bob').setInputFiles('converse-muc input[type="file"]', { name: 'budget.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
      // The sender's JID only when the room shows real JIDs (this one shows them to its moderators only).
      const [, , n] = await tmux.waitFor('carol', new RegExp(`bob( \\(bob@localhost\\))? shared file #(\\d+): "budget\\.txt" \\(${content.length} bytes`));
      await tmux.type('carol', `/get ${n}`);
      await tmux.waitFor('carol', new RegExp(`✓ saved file #${n} \\(${content.length} bytes\\) as budget\\.txt$`, 'm'));
      expect(await readFile(join(carolDir, 'budget.txt'), 'utf8')).to.equal(content);
      await shot('file-from-page');
    });

    it("a file Carol sends with /send is downloaded, decrypted, in Alice's page", async () => {
      const content = randomBytes(3000);
      await writeFile(join(carolDir, 'photo.png'), content);
      fileContents.push(content);
      await tmux.type('carol', `/send ${join(carolDir, 'photo.png')}`);
      await tmux.waitFor('carol', new RegExp(`✓ shared "photo.png" \\(${content.length} bytes\\)`));
      const alice = page('alice');
      const button = alice.locator('converse-muc button.kms-download[data-kms-file="photo.png"]').last();
      await button.waitFor({ timeout: STEP_TIMEOUT_MS });
      const [download] = await Promise.all([alice.waitForEvent('download', { timeout: STEP_TIMEOUT_MS }), button.click()]);
      expect(download.suggestedFilename()).to.equal('photo.png');
      expect((await readFile(await download.path())).equals(content)).to.equal(true);
      await shot('file-from-terminal');
    });

    it("the server was given ciphertext only: the browsers' WebSocket messages and the KMS's component stream hold no plaintext and no group key", async () => {
      const frames = wsTap.text();
      const component = componentTap.text();
      // Not vacuous: the taps carried the scenario (the pages' encrypted messages both ways, the KMS's requests).
      expect(wsTap.connections(), 'WebSocket connections through the tap: one per page opened').to.be.at.least(opened);
      const up = wsTap.messages().filter((m) => m.direction === 'up' && /<encrypted [^>]*xmlns=["']urn:xmpp:kms:0["']/.test(m.text));
      const down = wsTap.messages().filter((m) => m.direction === 'down' && /<encrypted [^>]*xmlns=["']urn:xmpp:kms:0["']/.test(m.text));
      expect(up.length, 'encrypted messages the pages sent').to.be.at.least(5);
      expect(down.length, 'encrypted messages the pages received').to.be.at.least(10);
      expect(component).to.match(/from=["']alice@localhost\//);
      expect(component).to.match(/from=["']carol@localhost\//);
      expect(component).to.match(/from=["']erin@localhost\//);
      // The group keys the room used, named in the messages, fetched by a member (Alice, on a Node client signed in with the device flow).
      const gks = [...new Set([...frames.matchAll(/\bgk=["'](kms:\/\/kms\.localhost\/gks\/[^"']+)["']/g)].map((m) => m[1]!))];
      expect(gks.length, 'group keys named in the room').to.be.at.least(4);
      const xmpp: Client = await connectClient(server, { username: 'alice', password: password('alice') });
      let client: KmsClient | undefined;
      const secrets: string[] = [];
      try {
        const token = await deviceToken(idp, 'alice');
        client = await KmsClient.connect({
          xmpp,
          kms: 'kms.localhost',
          anchors: [await readFile(join(dataDir, 'trust-anchor.pem'), 'utf8')],
          bearer: () => token,
        });
        for (const uri of gks) {
          const { key } = await client.gk(uri);
          const bytes = Buffer.from(key);
          secrets.push(bytes.toString('base64url'), bytes.toString('base64'), bytes.toString('hex'));
        }
      } finally {
        await client?.close();
        await disconnect(xmpp);
      }
      for (const [name, text] of [
        ['the WebSocket messages', frames],
        ['the component stream', component],
      ] as const) {
        for (const p of plaintexts) expect(text.includes(p), `${name} hold the plaintext "${p.slice(0, 40)}"`).to.equal(false);
        for (const f of fileContents) expect(text.includes(f.toString('base64')), `${name} hold a file's bytes in base64`).to.equal(false);
        for (const s of secrets) expect(text.includes(s), `${name} hold a group key's bytes (${s.slice(0, 8)}…)`).to.equal(false);
      }
      // Nor does the upload service store a file's plaintext.
      for (const e of await readdir(server.uploadDir, { withFileTypes: true, recursive: true })) {
        if (!e.isFile()) continue;
        const stored = await readFile(join(e.parentPath, e.name));
        for (const p of [...plaintexts.map((t) => Buffer.from(t)), ...fileContents]) expect(stored.includes(p), `${e.name} holds a plaintext`).to.equal(false);
      }
    });
  });
}

/** An access token by the device flow, approved at the IdP through its pages (verification, confirmation, login form). */
async function deviceToken(idp: RunningIdp, user: Name): Promise<string> {
  let approved: Promise<void> | undefined;
  const tokens = await deviceLogin({
    issuer: idp.issuer,
    audience: AUDIENCE,
    prompt: (p) => {
      approved = approveDevice(p.verificationUriComplete!, user, password(user));
    },
  });
  await approved;
  return tokens.accessToken;
}
