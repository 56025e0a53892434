// `kms chat` as people use it, in terminals: three `node bin/kms.js chat` processes in a detached
// tmux session (a private tmux server on its own socket), typed into with `tmux send-keys` and read
// with `tmux capture-pane`, on a real Prosody and a real ejabberd with the KMS in process. Alice
// creates the room's chain with Bob and Carol; Bob and Carol read her message; she removes Carol
// and writes again: Bob reads it, Carol's terminal says why it cannot be decrypted.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';
import { startTestKms } from './harness/kms.js';
import { cleanEnv, Tmux, tmuxInstalled } from './harness/tmux.js';
import type { RunningKms } from '../../src/server.js';

const run = promisify(execFile);
const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const KMS_BIN = join(ROOT, 'bin', 'kms.js');
const NAMES = ['alice', 'bob', 'carol'] as const;
type Name = (typeof NAMES)[number];
const USERS = NAMES.map((u) => ({ username: u, password: `${u}-pw` }));
/** Starting a chat process compiles the sources with tsx first (1-2 s, more when three start at once). */
const START_TIMEOUT_MS = 45_000;
const STEP_TIMEOUT_MS = 20_000;

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('kms chat --help', function () {
  this.timeout(30_000);
  it('exits 0 and lists every option', async function () {
    const { stdout } = await run(process.execPath, [KMS_BIN, 'chat', '--help'], { cwd: ROOT, env: cleanEnv() });
    for (const option of [
      '--xmpp <url>',
      '--domain',
      '--user <name>',
      '--password',
      'KMS_CHAT_PASSWORD',
      '--room <jid>',
      '--nick',
      '--kms <jid>',
      '--anchor',
      '--token',
      '-c, --config',
      '--create',
      '--chain',
      '/add',
      '/remove',
      '/members',
      '/history',
      '/quit',
    ]) {
      expect(stdout, option).to.contain(option);
    }
  });

  it('is listed by kms --help', async function () {
    const { stdout } = await run(process.execPath, [KMS_BIN, '--help'], { cwd: ROOT, env: cleanEnv() });
    expect(stdout).to.match(/^\s+chat \[options\]/m);
  });
});

for (const kind of serverKinds()) {
  describe(`kms chat in tmux on ${kind}`, function () {
    this.timeout(180_000);
    let server: XmppServer;
    let kms: RunningKms;
    let dataDir: string;
    let tmux: Tmux;
    const room = `chat-cli-${Date.now().toString(36)}@conference.localhost`;
    const first = `hello from alice on ${kind}, in the clear only in our terminals`;
    const second = `carol has left the project (${kind})`;

    async function startChat(name: Name, extra: string[] = []): Promise<void> {
      const token = await kms.issuer!.mint({ subject: `${name}@localhost`, audience: 'kms://kms.localhost' });
      const argv = [
        process.execPath,
        KMS_BIN,
        'chat',
        '--xmpp',
        `xmpp://127.0.0.1:${server.c2sPort}`,
        '--user',
        name,
        '--room',
        room,
        '--anchor',
        join(dataDir, 'trust-anchor.pem'),
        '--token',
        token,
        ...extra,
      ];
      // The password goes by the environment, so that it is not in `ps`.
      await tmux.open(dataDir, name, argv, { KMS_CHAT_PASSWORD: `${name}-pw` });
    }

    before(async function () {
      if (!tmuxInstalled()) {
        throw new Error('tmux is not installed: this test drives `kms chat` in tmux; run scripts/install-system-deps.sh (as root)');
      }
      server = await startServer(kind);
      await server.registerUsers(USERS);
      ({ kms, dataDir } = await startTestKms(server, { dataPrefix: 'kms-chat-cli-', tune: (c) => (c.policy = 1) }));
      tmux = new Tmux();
    });

    after(async function () {
      if (process.env.KMS_TEST_DEBUG && tmux) {
        for (const name of NAMES) console.error(`----- ${name} on ${kind} -----\n${(await tmux.capture(name).catch(() => '')).replace(/\n+$/, '')}`);
      }
      await tmux?.kill();
      await kms?.stop();
      await server?.stop();
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    });

    it('Alice logs in, validates the KMS key, joins and creates the chain with Bob and Carol', async function () {
      await startChat('alice', ['--create', 'bob@localhost,carol@localhost']);
      await tmux.waitFor('alice', /✓ logged in as alice@localhost/, START_TIMEOUT_MS);
      await tmux.waitFor('alice', /✓ KMS key validated: kms:\/\/kms\.localhost/);
      await tmux.waitFor('alice', new RegExp(`✓ joined ${escapeRe(room)} as alice`));
      await tmux.waitFor('alice', /✓ chain created with members alice@localhost, bob@localhost, carol@localhost/);
    });

    it('Bob and Carol join; Alice sees them in the room', async function () {
      await Promise.all([startChat('bob'), startChat('carol')]);
      for (const name of ['bob', 'carol'] as const) await tmux.waitFor(name, new RegExp(`✓ joined ${escapeRe(room)} as ${name}`), START_TIMEOUT_MS);
      await tmux.waitFor('alice', /\* bob \(bob@localhost\) is in the room/);
      await tmux.waitFor('alice', /\* carol \(carol@localhost\) is in the room/);
    });

    it('Alice sends a line: Bob and Carol read it decrypted, with her verified JID', async function () {
      await tmux.type('alice', first);
      await tmux.waitFor('alice', /\(to: alice@localhost, bob@localhost, carol@localhost\)/);
      for (const name of ['bob', 'carol'] as const) {
        await tmux.waitFor(name, new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\] alice \\(alice@localhost\\) \\[verified\\]: ${escapeRe(first)}$`, 'm'));
      }
    });

    it('Alice removes Carol and sends again: Bob reads it, Carol cannot decrypt it', async function () {
      await tmux.type('alice', '/remove carol@localhost');
      await tmux.waitFor('alice', /✓ removed carol@localhost; members now alice@localhost, bob@localhost$/m);
      await tmux.type('alice', second);
      await tmux.waitFor('alice', /\(to: alice@localhost, bob@localhost\)$/m);
      await tmux.waitFor('bob', new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\] alice \\(alice@localhost\\) \\[verified\\]: ${escapeRe(second)}$`, 'm'));
      await tmux.waitFor('carol', /^\[\d\d:\d\d:\d\d\] alice: \[cannot decrypt: the KMS refused: .*carol@localhost may not have.*\]$/m);
      expect(await tmux.capture('carol')).to.not.contain(second);
    });

    it("/members in Alice's terminal lists Alice and Bob only", async function () {
      await tmux.type('alice', '/members');
      await tmux.waitFor('alice', /^members \(2\): alice@localhost, bob@localhost$/m);
    });

    it("/history in Carol's terminal reads what she may and says why not for the rest", async function () {
      // The archive may lag a little behind the live messages: ask again until it holds both.
      const end = Date.now() + STEP_TIMEOUT_MS;
      for (let asked = 1; ; asked++) {
        await tmux.type('carol', '/history');
        await tmux.waitFor('carol', new RegExp(`(--- end of history ---[\\s\\S]*){${asked}}`));
        const pane = await tmux.capture('carol');
        const last = pane.slice(pane.lastIndexOf('--- history of'));
        if (/: 2 message\(s\) ---/.test(last)) {
          expect(last).to.match(new RegExp(`\\] alice \\(alice@localhost\\)( \\[verified\\])?: ${escapeRe(first)}`));
          expect(last).to.match(/\] alice: \[cannot decrypt: the KMS refused: .*carol@localhost may not have/);
          expect(last).to.not.contain(second);
          break;
        }
        if (Date.now() > end) throw new Error(`the archive never held both messages; Carol's pane:\n${pane}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    });

    it("/send in Alice's terminal shares a file; /get 1 in Bob's saves it, decrypted, under a safe name", async function () {
      const content = `the budget for ${kind}, encrypted under a group key\n`.repeat(50);
      const source = join(dataDir, 'outbox');
      await mkdir(source, { recursive: true });
      await writeFile(join(source, '.budget.txt'), content);
      await tmux.type('alice', `/send ${join(source, '.budget.txt')}`);
      await tmux.waitFor('alice', new RegExp(`✓ shared ".budget.txt" \\(${content.length} bytes\\), encrypted under kms://kms\\.localhost/gks/`));
      await tmux.waitFor(
        'bob',
        new RegExp(`alice \\(alice@localhost\\) shared file #1: ".budget.txt" \\(${content.length} bytes, text/plain\\); /get 1 saves it`),
      );
      await tmux.type('bob', '/get 1');
      await tmux.waitFor('bob', new RegExp(`✓ saved file #1 \\(${content.length} bytes\\) as budget.txt$`, 'm'));
      expect(await readFile(join(dataDir, 'budget.txt'), 'utf8')).to.equal(content);
      // Carol, no longer a member, sees the file announced but cannot have its key.
      await tmux.waitFor('carol', /shared file #1/);
      await tmux.type('carol', '/get 1');
      await tmux.waitFor('carol', /! \/get failed: .*carol@localhost may not have/);
    });

    it('/quit (Alice, Bob) and Ctrl-C (Carol) leave, close the KMS session and exit 0', async function () {
      await tmux.type('alice', '/quit');
      await tmux.type('bob', '/quit');
      await tmux.exec('send-keys', '-t', tmux.target('carol'), 'C-c');
      await tmux.waitFor('carol', /^interrupted$/m);
      for (const name of NAMES) {
        expect(await tmux.exited(name), `${name}'s exit status`).to.equal(0);
        await tmux.waitFor(name, /^bye$/m);
        expect(await tmux.count(name, /kms chat:|\bat .*\.ts:\d+/g), `${name}'s pane shows an error or a stack trace`).to.equal(0);
      }
    });
  });
}
