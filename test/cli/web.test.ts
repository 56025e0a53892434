// `kms web`'s server (src/cli/web.ts): the page configured for one WebSocket URL and KMS, converse's
// files and the plugin bundle from their folders, nothing outside them. The page itself runs in
// a browser in test/browser/converse.test.ts.
import { expect } from 'chai';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
