// `kms web`'s server (src/cli/web.ts): the page configured for one WebSocket URL and KMS, converse's
// files and the plugin bundle from their folders, nothing outside them. The page itself runs in
// a browser in test/browser/converse.test.ts.
import { expect } from 'chai';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { sharedIdentity } from '../support/kms-fixture.js';
import { startWeb } from '../../src/cli/web.js';

describe('kms web: the converse.js page server', () => {
  let dir: string;
  let server: Server;
  let url: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-web-'));
    await mkdir(join(dir, 'converse'));
    await mkdir(join(dir, 'plugin'));
    await writeFile(join(dir, 'converse', 'converse.min.js'), 'export default {};');
    await writeFile(join(dir, 'plugin', 'xmpp-kms-converse.js'), 'export function registerKmsPlugin() {}');
    await writeFile(join(dir, 'secret.txt'), 'not for the web');
    ({ server, url } = await startWeb({
      websocketUrl: 'ws://127.0.0.1:5280/xmpp-websocket',
      kmsJid: 'kms.example.com',
      anchors: ['-----BEGIN CERTIFICATE-----\n</script><script>alert(1)</script>\n-----END CERTIFICATE-----\n'],
      converseDir: join(dir, 'converse'),
      pluginDir: join(dir, 'plugin'),
    }));
  });

  after(async () => {
    await new Promise((r) => server.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  it('serves the page configured for the WebSocket URL and the KMS, the plugin registered before converse.initialize', async () => {
    const res = await fetch(url);
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-type')).to.match(/^text\/html/);
    const html = await res.text();
    expect(html).to.include('"websocketUrl":"ws://127.0.0.1:5280/xmpp-websocket"').and.include('"kmsJid":"kms.example.com"');
    expect(html.indexOf('registerKmsPlugin(converse)')).to.be.greaterThan(0).and.lessThan(html.indexOf('converse.initialize('));
    expect(html).to.include("whitelisted_plugins: ['xmpp-kms']").and.include("blacklisted_plugins: ['converse-omemo']");
    // The configuration cannot close the script element it sits in.
    expect(html).to.not.include('</script><script>alert(1)');
  });

  it("serves converse.js's files under /converse/ and the plugin bundle at the root, as JavaScript", async () => {
    for (const path of ['converse/converse.min.js', 'xmpp-kms-converse.js']) {
      const res = await fetch(new URL(path, url));
      expect(res.status, path).to.equal(200);
      expect(res.headers.get('content-type'), path).to.match(/^text\/javascript/);
    }
  });

  it('serves nothing outside its folders, and answers a malformed path with 400', async () => {
    expect((await fetch(new URL('/%E0%A4%A', url))).status).to.equal(400);
    for (const path of ['/converse/../secret.txt', '/converse/%2e%2e/secret.txt', '/..%2fsecret.txt', '/nothing.js']) {
      const res = await fetch(new URL(path, url));
      expect(res.status, path).to.equal(404);
      expect(await res.text(), path).to.not.include('not for the web');
    }
  });
});

describe('kms web: the command', function () {
  this.timeout(60_000);
  const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
  let dir: string;
  let child: ChildProcess | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-web-cli-'));
    await writeFile(join(dir, 'anchor.pem'), (await sharedIdentity('EC')).caCertPem);
    // The command serves the package's dist/browser: built as `npm run build` would.
    await promisify(execFile)(process.execPath, [join(ROOT, 'scripts/build-browser.mjs')], { cwd: ROOT });
  });
  after(async () => {
    child?.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  });

  it('serves the page for the WebSocket URL and issuer given, with the plugin, the sign-in bundle and converse.js, until SIGTERM', async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
    child = spawn(
      process.execPath,
      [
        join(ROOT, 'bin/kms.js'),
        'web',
        '--websocket',
        'ws://127.0.0.1:5280/xmpp-websocket',
        '--anchor',
        join(dir, 'anchor.pem'),
        '--issuer',
        'http://127.0.0.1:5580',
        '--port',
        '0',
      ],
      { env: { ...env, KMS_DATA_DIR: join(dir, 'data') }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const started = Date.now();
    while (!/on (http:\/\/127\.0\.0\.1:\d+\/)/.test(out)) {
      if (child.exitCode !== null || Date.now() - started > 30_000) throw new Error(`kms web did not start: ${out}${err}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const base = /on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out)![1]!;
    expect(out).to.include('(sign-in at http://127.0.0.1:5580)');
    const page = await (await fetch(base)).text();
    expect(page).to.include('"websocketUrl":"ws://127.0.0.1:5280/xmpp-websocket"');
    expect(page).to.include('"oidc":{"issuer":"http://127.0.0.1:5580","audience":"kms://kms.localhost","clientId":"kms-web"}');
    for (const path of ['xmpp-kms-converse.js', 'xmpp-kms-oidc.js', 'converse/converse.min.js']) {
      const res = await fetch(new URL(path, base));
      expect(res.status, path).to.equal(200);
      expect(res.headers.get('content-type'), path).to.match(/javascript/);
      await res.arrayBuffer();
    }
    const exited = new Promise<number | null>((r) => child!.on('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).to.equal(0);
    child = undefined;
  });

  it('refuses a bad --issuer or --port with the setting named', async () => {
    const run = promisify(execFile);
    for (const [args, reason] of [
      [['--issuer', 'not a url'], /--issuer: not a URL/],
      [['--port', '70000'], /--port: a port number/],
    ] as const) {
      const r = await run(process.execPath, [
        join(ROOT, 'bin/kms.js'),
        'web',
        '--websocket',
        'ws://127.0.0.1:1/x',
        '--anchor',
        join(dir, 'anchor.pem'),
        ...args,
      ]).catch((e: { code: number; stderr: string }) => e);
      expect((r as { code: number }).code, String(args)).to.not.equal(0);
      expect((r as { stderr: string }).stderr).to.match(reason);
    }
  });
});
