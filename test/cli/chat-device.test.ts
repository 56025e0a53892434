// `kms chat --device` as a person meets it: the chat (a child process) prints where to sign in,
// a browser approves the code at the development identity provider, and the chat goes on with the
// access token. No XMPP server here: it then fails to log in, which shows it got past the sign-in.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startIdp, type RunningIdp } from '../../src/auth/idp.js';
import { Sealer } from '../../src/crypto/seal.js';
import { approveDevice, FormClient } from '../../src/auth/form-client.js';
import { discoveredKeys } from '../../src/auth/discovery.js';
import { jwtVerify } from 'jose';
import { sharedIdentity } from '../support/kms-fixture.js';

const KMS = join(resolve(fileURLToPath(import.meta.url), '../../..'), 'bin', 'kms.js');

describe('kms chat --device: sign in with the device authorization grant', function () {
  this.timeout(60_000);
  let dir: string;
  let idp: RunningIdp;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-chat-device-'));
    idp = await startIdp({ userDomain: 'localhost', audience: 'kms://kms.localhost', dataDir: dir, sealer: new Sealer(randomBytes(32)) });
    await writeFile(join(dir, 'anchor.pem'), (await sharedIdentity('EC')).caCertPem);
  });
  after(async () => {
    await idp?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('prints the verification URI and code, waits for the approval, then goes on with the token', async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
    Object.assign(env, { KMS_CHAT_PASSWORD: 'alice-password', KMS_DATA_DIR: join(dir, 'data') });
    const child = spawn(
      process.execPath,
      [KMS, 'chat', '--xmpp', 'xmpp://127.0.0.1:1', '--user', 'alice', '--room', 'planning@conference.localhost', '--anchor', join(dir, 'anchor.pem')].concat([
        '--issuer',
        idp.issuer,
        '--device',
      ]),
      { env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    let approval: Promise<string> | undefined;
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      const m = /open (\S+) and enter the code (\S+)/.exec(stdout);
      if (m && !approval) {
        const b = new FormClient();
        approval = (async () => {
          const posted = await b.submit(await b.go(m[1]!));
          const login = await b.submit(posted, {}, 'op.deviceConfirmForm');
          return (await b.submit(login, { username: 'alice', password: 'alice-password' })).html;
        })();
      }
    });
    const code = await new Promise<number | null>((r) => child.on('close', r));
    expect(await approval, stdout).to.include('The device is signed in');
    expect(stdout).to.include(`✓ signed in at ${idp.issuer}`);
    expect(code).to.equal(1);
    expect(stderr).to.match(/could not log in as alice@localhost/);
  });

  it('kms login: prints where to sign in on stderr and, once approved, the access token for the KMS on stdout', async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
    Object.assign(env, { KMS_DATA_DIR: join(dir, 'data') });
    const child = spawn(process.execPath, [KMS, 'login', '--issuer', idp.issuer], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let approval: Promise<void> | undefined;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /Sign in at (\S+) \(code (\S+),/.exec(stderr);
      if (m && !approval) approval = approveDevice(m[1]!, 'bob', 'bob-password');
    });
    const code = await new Promise<number | null>((r) => child.on('close', r));
    await approval;
    expect(code, stderr).to.equal(0);
    const token = stdout.trim();
    expect(token.split('.'), 'one JWT alone on stdout').to.have.length(3);
    const { payload } = await jwtVerify(token, discoveredKeys(idp.issuer), { issuer: idp.issuer, audience: 'kms://kms.localhost' });
    expect(payload.sub).to.equal('bob@localhost');
    expect(stderr).to.not.include(token);
  });
});
