// `kms demo` as the quick start (scripts/up.sh) runs it, on a real Prosody and ejabberd with the KMS
// in process: with the development OpenID Connect provider (its users sign in with the device flow,
// approved through the IdP's own pages), and with the local issuer of the data folder.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startIdp, type RunningIdp } from '../../src/auth/idp.js';
import { Sealer } from '../../src/crypto/seal.js';
import type { RunningKms } from '../../src/server.js';
import { startTestKms } from './harness/kms.js';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';

const run = promisify(execFile);
const KMS_BIN = join(resolve(fileURLToPath(import.meta.url), '../../..'), 'bin', 'kms.js');
const USERS = ['alice', 'bob'].map((u) => ({ username: u, password: `${u}-password` }));

function env(dataDir: string): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) e[k] = v;
  return { ...e, KMS_DATA_DIR: dataDir, KMS_DOMAIN: 'kms.localhost' };
}

for (const kind of serverKinds()) {
  describe(`kms demo on ${kind}`, function () {
    this.timeout(90_000);
    let server: XmppServer;

    before(async () => {
      server = await startServer(kind);
      await server.registerUsers(USERS);
    });
    after(async () => {
      await server?.stop();
    });

    it('signs both users in at the development IdP with the device flow, and Bob decrypts through the KMS', async () => {
      const idpDir = join(server.dir, `idp-${randomBytes(4).toString('hex')}`);
      let idp: RunningIdp | undefined;
      let kms: RunningKms | undefined;
      let dataDir = '';
      try {
        idp = await startIdp({ userDomain: 'localhost', audience: 'kms://kms.localhost', dataDir: idpDir, sealer: new Sealer(randomBytes(32)) });
        const issuer = idp.issuer;
        ({ kms, dataDir } = await startTestKms(server, {
          dataPrefix: 'kms-demo-',
          tune: (c) => {
            c.auth = { ...c.auth, issuerUrl: issuer, issuer };
          },
        }));
        expect(kms.issuer, 'no local issuer: only the IdP is trusted').to.equal(undefined);
        const { stdout } = await run(process.execPath, [KMS_BIN, 'demo', '--xmpp', `xmpp://127.0.0.1:${server.c2sPort}`, '--issuer', issuer], {
          env: env(dataDir),
        });
        expect(stdout).to.match(/alice@localhost: device sign-in at http:\/\/127\.0\.0\.1:\d+\/device, code [A-Z]{4}-[A-Z]{4}/);
        expect(stdout).to.include(`✓ bob@localhost got an access token for the KMS from ${issuer}`);
        expect(stdout).to.include('✓ bob@localhost fetched the group key through the KMS and decrypted: "Hello Bob, the XMPP server cannot read this."');
        expect(stdout).to.include('demo complete');
      } finally {
        await kms?.stop();
        await idp?.close();
        if (dataDir) await rm(dataDir, { recursive: true, force: true });
      }
    });

    it('without an issuer, takes its tokens from the local issuer of the data folder', async () => {
      const { kms, dataDir } = await startTestKms(server, { dataPrefix: 'kms-demo-' });
      try {
        expect(kms.issuer, 'the local issuer').to.not.equal(undefined);
        const { stdout } = await run(process.execPath, [KMS_BIN, 'demo', '--xmpp', `xmpp://127.0.0.1:${server.c2sPort}`], { env: env(dataDir) });
        expect(stdout).to.include('✓ alice@localhost got an access token for the KMS from the local issuer');
        expect(stdout).to.include('decrypted: "Hello Bob, the XMPP server cannot read this."');
      } finally {
        await kms.stop();
        await rm(dataDir, { recursive: true, force: true });
      }
    });
  });
}
