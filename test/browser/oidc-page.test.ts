// The page of `kms web` signing in at the development identity provider (src/converse/oidc.ts on
// oauth4webapi, src/auth/idp.ts on oidc-provider), in Debian's Chromium headless: the first visit
// goes to the IdP's login form, a wrong password stays there, the right one comes back to the page
// the user opened (its ?room= kept) with converse's login form offering the signed-in JID, and the
// access token the page holds is one the KMS's token check accepts for that user. No XMPP server:
// the sign-in happens before converse connects.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFile } from 'node:child_process';
import { chromium, type Browser } from 'playwright-core';
import { discoveredKeys } from '../../src/auth/discovery.js';
import { startIdp, type RunningIdp } from '../../src/auth/idp.js';
import { startWeb } from '../../src/cli/web.js';
import { Sealer } from '../../src/crypto/seal.js';
import { freePorts } from '../e2e/harness/net.js';
import { jwtVerify } from 'jose';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.KMS_TEST_CHROMIUM ?? '/usr/bin/chromium';
const AUDIENCE = 'kms://kms.localhost';

describe('kms web: the page signs in at an OpenID Connect provider (authorization code + PKCE) in headless Chromium', function () {
  this.timeout(60_000);
  let dir: string;
  let idp: RunningIdp;
  let web: Server;
  let url: string;
  let browser: Browser;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-oidc-page-'));
    const [port] = await freePorts(1);
    const pageUrl = `http://127.0.0.1:${port}/`;
    await new Promise<void>((done, fail) =>
      execFile(process.execPath, [join(ROOT, 'scripts/build-browser.mjs'), join(dir, 'bundles')], { cwd: ROOT }, (err, _o, stderr) =>
        err ? fail(new Error(stderr)) : done(),
      ),
    );
    idp = await startIdp({
      userDomain: 'localhost',
      audience: AUDIENCE,
      dataDir: join(dir, 'idp'),
      sealer: new Sealer(randomBytes(32)),
      redirectUris: [pageUrl],
    });
    ({ server: web, url } = await startWeb({
      websocketUrl: 'ws://127.0.0.1:9/xmpp-websocket',
      kmsJid: 'kms.localhost',
      anchors: [],
      converseDir: join(ROOT, 'node_modules/converse.js/dist'),
      pluginDir: join(dir, 'bundles'),
      port: port!,
      oidc: { issuer: idp.issuer, audience: AUDIENCE },
    }));
    expect(url).to.equal(pageUrl);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
  });

  after(async () => {
    await browser?.close();
    await new Promise((r) => (web ? web.close(r) : r(undefined)));
    await idp?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("goes to the IdP's login, refuses a wrong password there, and comes back signed in to the room the user opened", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const room = 'planning@conference.localhost';
    await page.goto(`${url}?room=${encodeURIComponent(room)}`);
    await page.waitForURL((u) => u.href.startsWith(`${idp.issuer}/interaction/`), { timeout: 20_000 });
    await page.fill('input[name="username"]', 'alice');
    await page.fill('input[name="password"]', 'not-her-password');
    await page.click('button[type="submit"]');
    await page.waitForSelector('.error:has-text("wrong password")');
    expect(page.url().startsWith(`${idp.issuer}/interaction/`)).to.equal(true);

    await page.fill('input[name="username"]', 'alice');
    await page.fill('input[name="password"]', 'alice-password');
    await page.click('button[type="submit"]');
    await page.waitForURL((u) => u.href.startsWith(url), { timeout: 20_000 });
    // converse's login form, with the JID the sign-in established, at the address the user opened (no code in it).
    const jid = await page.waitForSelector('input[name="jid"]', { timeout: 20_000 });
    expect(await jid.inputValue()).to.equal('alice@localhost');
    expect(page.url()).to.equal(`${url}?room=${encodeURIComponent(room)}`);

    // The token the page keeps is one the KMS accepts: issued by the IdP (checked through discovery) for the KMS's audience, for alice.
    const stored = await page.evaluate(() => {
      const s = globalThis as unknown as { sessionStorage: { length: number; key(i: number): string | null; getItem(k: string): string | null } };
      for (let i = 0; i < s.sessionStorage.length; i++) {
        const k = s.sessionStorage.key(i)!;
        if (k.startsWith('xmpp-kms:oidc:') && !k.endsWith(':pending')) return s.sessionStorage.getItem(k);
      }
      return null;
    });
    const tokens = JSON.parse(stored ?? '{}') as { accessToken?: string; refreshToken?: string; user?: string };
    expect(tokens.user).to.equal('alice@localhost');
    expect(tokens.refreshToken, 'a refresh token, to renew without a new login').to.be.a('string');
    const { payload } = await jwtVerify(tokens.accessToken ?? '', discoveredKeys(idp.issuer), { issuer: idp.issuer, audience: AUDIENCE });
    expect(payload.sub).to.equal('alice@localhost');

    // An expired access token is renewed with the refresh token, without a new login.
    const renewed = await page.evaluate(async () => {
      const g = globalThis as unknown as {
        sessionStorage: { length: number; key(i: number): string | null; getItem(k: string): string | null; setItem(k: string, v: string): void };
        location: { reload(): void };
      };
      for (let i = 0; i < g.sessionStorage.length; i++) {
        const k = g.sessionStorage.key(i)!;
        if (k.startsWith('xmpp-kms:oidc:') && !k.endsWith(':pending'))
          g.sessionStorage.setItem(k, JSON.stringify({ ...JSON.parse(g.sessionStorage.getItem(k)!), expiresAt: 0 }));
      }
      g.location.reload();
      return null;
    });
    expect(renewed).to.equal(null);
    await page.waitForSelector('input[name="jid"]', { timeout: 20_000 });
    const fresh = await page.evaluate(() => (globalThis as unknown as { kmsSession: { bearer(): Promise<string> } }).kmsSession.bearer());
    expect(fresh).to.not.equal(tokens.accessToken);
    expect(page.url().startsWith(url), 'no trip to the IdP').to.equal(true);
    expect((await jwtVerify(fresh, discoveredKeys(idp.issuer), { issuer: idp.issuer, audience: AUDIENCE })).payload.sub).to.equal('alice@localhost');

    // A reload keeps the session: no new trip to the IdP.
    await page.reload();
    expect(await (await page.waitForSelector('input[name="jid"]', { timeout: 20_000 })).inputValue()).to.equal('alice@localhost');
    expect(page.url().startsWith(url)).to.equal(true);
    await context.close();
  });

  it('shows the reason on the page when the IdP refuses the sign-in, and does not start converse', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    // The real IdP refusing: the authorization request asks for no interaction (prompt=none) while
    // nobody is signed in there, which it must answer with error=login_required to the page.
    await page.route(
      (u) => u.href.startsWith(`${idp.issuer}/auth?`),
      (route) => route.continue({ url: `${route.request().url()}&prompt=none` }),
    );
    await page.goto(url);
    await page.waitForSelector('body:has-text("Could not sign in")', { timeout: 20_000 });
    expect(await page.textContent('body'), 'the reason').to.include('login_required');
    expect(page.url().startsWith(url)).to.equal(true);
    expect(await page.$('input[name="jid"]')).to.equal(null);
    await context.close();
  });
});
