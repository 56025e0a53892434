// Configuration validation, in process (loadConfig) and as an operator meets it: `kms check-config`
// and `kms run --check-config` as child processes. A good file passes with its secrets hidden; every
// kind of bad setting stops with exit code 2 and a message that names the setting.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ConfigError, ENV_SETTINGS, configSchema, loadConfig, settingsHelp } from '../../src/config.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const KMS = join(ROOT, 'bin', 'kms.js');

/** The parent's environment without any KMS_* variable, so that a developer's shell cannot change the outcome. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
  return { ...env, ...extra };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `kms <args>` to completion (killed after 20 s). */
function kms(args: string[], env: Record<string, string>, cwd: string): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [KMS, ...args], { cwd, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** The ConfigError loadConfig throws for this file content and environment. */
function problem(file: unknown, env: Record<string, string>, dir: string, name = 'bad.json'): Promise<ConfigError> {
  return (async () => {
    let path: string | undefined;
    if (file !== undefined) {
      path = join(dir, name);
      await writeFile(path, typeof file === 'string' ? file : JSON.stringify(file));
    }
    try {
      loadConfig({ ...(path ? { file: path } : {}), env });
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      return e as ConfigError;
    }
    throw new Error(`accepted: ${JSON.stringify(file)} ${JSON.stringify(env)}`);
  })();
}

/**
 * Every setting of configSchema by its dotted path, found on the zod schema itself (not through
 * the JSON Schema the help is made from), with its description wherever it was put.
 */
function schemaSettings(): { path: string; description: string | undefined }[] {
  const out: { path: string; description: string | undefined }[] = [];
  const walk = (shape: Record<string, z.ZodType>, prefix: string) => {
    for (const [key, type] of Object.entries(shape)) {
      let node: z.ZodType | undefined = type;
      let description: string | undefined;
      let object: z.ZodObject | undefined;
      // Through defaults, optionals, prefaults and transforms to the setting's own type.
      while (node) {
        description ??= node.description;
        if (node instanceof z.ZodObject) {
          object = node;
          break;
        }
        const def: { innerType?: z.ZodType; in?: z.ZodType } = (node as unknown as { def: { innerType?: z.ZodType; in?: z.ZodType } }).def;
        node = def.innerType ?? def.in;
      }
      if (object) walk(object.shape as Record<string, z.ZodType>, `${prefix}${key}.`);
      else out.push({ path: `${prefix}${key}`, description });
    }
  };
  walk(configSchema.shape as Record<string, z.ZodType>, '');
  return out;
}

const SECRET = `component-secret-${randomBytes(12).toString('hex')}`;
const MASTER_KEY = randomBytes(32).toString('base64url');

/** Each kind of bad setting: the file (or none), the environment, what the message must say. */
const BAD: { what: string; file?: unknown; env?: Record<string, string>; expect: RegExp[] }[] = [
  { what: 'a wrong type in the file', file: { xmpp: { keepaliveSec: '60' } }, expect: [/setting xmpp\.keepaliveSec/, /expected number/] },
  { what: 'a list that is not a list', file: { auth: { algorithms: 'ES256' } }, expect: [/setting auth\.algorithms/, /expected array/] },
  {
    what: 'an out-of-range port',
    env: { KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:70000' },
    expect: [/setting xmpp\.service \(from KMS_XMPP_SERVICE\)/, /port must be a number from 1 to 65535/, /70000/],
  },
  { what: 'a port that is not a number', file: { xmpp: { service: 'xmpp://127.0.0.1:abc' } }, expect: [/setting xmpp\.service \(in .*bad\.json\)/, /port/] },
  {
    what: 'a TLS service the component cannot use',
    env: { KMS_XMPP_SERVICE: 'xmpps://xmpp.example.org:5347' },
    expect: [/setting xmpp\.service/, /xmpp:\/\//],
  },
  { what: 'a service that is no URL', env: { KMS_XMPP_SERVICE: '127.0.0.1:5347' }, expect: [/setting xmpp\.service/, /xmpp:\/\/host:port/] },
  { what: 'an unknown retrieval policy', file: { policy: 4 }, expect: [/setting policy/, /1, 2 or 3/] },
  { what: 'an unknown retrieval policy from the environment', env: { KMS_POLICY: '7' }, expect: [/setting policy \(from KMS_POLICY\)/, /1, 2 or 3/] },
  { what: 'an unknown chain read policy', file: { chainReadPolicy: 'sometimes' }, expect: [/setting chainReadPolicy/, /ever|current/] },
  { what: 'an unknown log level', env: { KMS_LOG_LEVEL: 'verbose' }, expect: [/setting logLevel \(from KMS_LOG_LEVEL\)/] },
  {
    what: 'a JWKS URL that is no URL',
    env: { KMS_AUTH_JWKS_URL: 'not a url', KMS_AUTH_ISSUER: 'https://idp.example.org' },
    expect: [/setting auth\.jwksUrl \(from KMS_AUTH_JWKS_URL\)/, /http/],
  },
  {
    what: 'a JWKS URL of another scheme',
    file: { auth: { jwksUrl: 'ftp://idp.example.org/jwks', issuer: 'https://idp.example.org' } },
    expect: [/setting auth\.jwksUrl/, /http:\/\/ or https:\/\//],
  },
  { what: 'a missing identity certificate', env: { KMS_IDENTITY_KEY_FILE: '/etc/kms/key.pem' }, expect: [/setting identity\.certFile/, /missing/] },
  {
    what: 'a missing issuer for an outside identity provider',
    env: { KMS_AUTH_JWKS_URL: 'https://idp.example.org/jwks' },
    expect: [/setting auth\.issuer/, /missing/],
  },
  {
    what: 'an OpenID Connect issuer URL that is no http(s) URL',
    env: { KMS_AUTH_ISSUER_URL: 'idp.example.org' },
    expect: [/setting auth\.issuerUrl \(from KMS_AUTH_ISSUER_URL\)/, /http:\/\/ or https:\/\//],
  },
  {
    what: 'an issuer URL together with a JWKS',
    file: { auth: { issuerUrl: 'https://idp.example.org', jwksUrl: 'https://idp.example.org/jwks' } },
    expect: [/setting auth\.issuerUrl/, /not both/],
  },
  {
    what: 'an issuer that is not the issuer URL',
    env: { KMS_AUTH_ISSUER_URL: 'https://idp.example.org/realms/chat', KMS_AUTH_ISSUER: 'https://idp.example.org' },
    expect: [/setting auth\.issuer/, /must be auth\.issuerUrl/],
  },
  { what: 'an empty secret', file: { xmpp: { secret: '' } }, expect: [/setting xmpp\.secret/, /empty/] },
  { what: 'an empty file path', file: { masterKeyFile: '' }, expect: [/setting masterKeyFile/, /empty/] },
  { what: 'a domain that is no domain name', env: { KMS_DOMAIN: 'kms..localhost' }, expect: [/setting domain \(from KMS_DOMAIN\)/, /domain name/] },
  { what: 'an unknown key at the top', file: { domian: 'kms.example.org' }, expect: [/setting domian/, /unknown setting/] },
  { what: 'an unknown key in a section', file: { xmpp: { port: 5347 } }, expect: [/setting xmpp\.port/, /unknown setting/] },
  {
    what: 'a reconnect delay above its maximum',
    file: { xmpp: { reconnectInitialMs: 5000, reconnectMaxMs: 1000 } },
    expect: [/setting xmpp\.reconnectInitialMs/, /reconnectMaxMs/],
  },
  {
    what: 'a max-reply-size too small for one block of a chain after the other messages of a request',
    env: { KMS_MAX_REPLY_BYTES: '200000' },
    expect: [/setting xmpp\.maxReplyBytes \(from KMS_MAX_REPLY_BYTES\)/, /at least 225299 bytes/, /maxMessagesPerIq 16/, /maxMessageBytes 65536/],
  },
  {
    what: 'a max-reply-size that more messages per request make too small',
    file: { xmpp: { maxMessagesPerIq: 64, maxReplyBytes: 524288 } },
    expect: [/setting xmpp\.maxReplyBytes \(in .*bad\.json\)/, /at least 618515 bytes/],
  },
  {
    what: 'a number variable that is not a number',
    env: { KMS_KEEPALIVE_SEC: 'abc' },
    expect: [/KMS_KEEPALIVE_SEC/, /setting xmpp\.keepaliveSec/, /whole number/],
  },
  { what: 'a number variable with a fraction', env: { KMS_RATE_PER_SEC: '1.5' }, expect: [/KMS_RATE_PER_SEC/, /whole number/] },
  { what: 'an unknown KMS_ variable (a typo)', env: { KMS_XMPP_PORT: 'abc' }, expect: [/KMS_XMPP_PORT/, /unknown environment variable/] },
  { what: 'a master key of the wrong size', env: { KMS_MASTER_KEY: 'dG9vLXNob3J0' }, expect: [/KMS_MASTER_KEY/, /32 bytes/] },
];

describe('configuration', function () {
  this.timeout(60_000);
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-config-'));
  });

  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  describe('loadConfig', () => {
    it("takes an OpenID Connect issuer URL as the tokens' issuer", () => {
      const c = loadConfig({ env: { KMS_AUTH_ISSUER_URL: 'https://login.example.org/realms/chat' } });
      expect(c.auth.issuerUrl).to.equal('https://login.example.org/realms/chat');
      expect(c.auth.issuer).to.equal('https://login.example.org/realms/chat');
    });

    it('refuses xmpp.standby without store.url (a standby on its own LevelDB would serve other data), and takes it with one', () => {
      expect(() => loadConfig({ env: { KMS_XMPP_STANDBY: 'true' } })).to.throw(ConfigError, /xmpp\.standby.*needs store\.url \(--store, KMS_STORE\)/);
      const c = loadConfig({ env: { KMS_XMPP_STANDBY: 'true', KMS_STORE: 'etcd://e1,e2,e3' } });
      expect(c.xmpp.standby).to.equal(true);
      expect(loadConfig({ env: {} }).xmpp.standby).to.equal(false);
    });

    it('takes federation peers as JSON in KMS_FEDERATION_PEERS, names in lower case, and refuses bad JSON and a domain two peers claim', () => {
      const peers = [{ kms: 'KMS.B.example', domains: ['B.example'], anchorsFile: '/etc/kms/b.pem' }];
      const c = loadConfig({ env: { KMS_FEDERATION_PEERS: JSON.stringify(peers) } });
      expect(c.federation.peers).to.deep.equal([{ kms: 'kms.b.example', domains: ['b.example'], anchorsFile: '/etc/kms/b.pem' }]);
      expect(loadConfig({ env: {} }).federation.peers).to.deep.equal([]);
      expect(() => loadConfig({ env: { KMS_FEDERATION_PEERS: '[{kms:' } })).to.throw(
        ConfigError,
        /KMS_FEDERATION_PEERS \(setting federation\.peers\): not JSON/,
      );
      const twice = [...peers, { kms: 'kms.c.example', domains: ['b.example'], anchorsFile: '/etc/kms/c.pem' }];
      expect(() => loadConfig({ env: { KMS_FEDERATION_PEERS: JSON.stringify(twice) } })).to.throw(
        ConfigError,
        /b\.example is spoken for by kms\.b\.example already/,
      );
      expect(() => loadConfig({ env: { KMS_FEDERATION_PEERS: JSON.stringify([{ kms: 'not a host', domains: ['b.example'], anchorsFile: 'x' }]) } })).to.throw(
        ConfigError,
        /federation\.peers\.0\.kms/,
      );
    });

    it('runs on the embedded defaults with no file and no variables', () => {
      const c = loadConfig({ env: {} });
      expect(c.domain).to.equal('kms.localhost');
      expect(c.xmpp.service).to.equal('xmpp://127.0.0.1:5347');
      expect(c.policy).to.equal(1);
      expect(c.auth.issuer).to.equal('urn:kms:local-issuer');
      expect(c.dataDir).to.equal('./data');
      expect(c.xmpp.maxReplyBytes).to.equal(512 * 1024);
    });

    it('accepts a max-reply-size down to (max-messages - 1) x 8 KiB plus the largest reply with one block', () => {
      // 15 x 8192 + (4/3 (65536 + 8192) = 98304 for the response, 19 for <message/>, 4096 for the IQ).
      expect(loadConfig({ env: { KMS_MAX_REPLY_BYTES: '225299' } }).xmpp.maxReplyBytes).to.equal(225299);
      expect(() => loadConfig({ env: { KMS_MAX_REPLY_BYTES: '225298' } })).to.throw(ConfigError, /at least 225299 bytes/);
    });

    it('reads a file and lets KMS_* variables override it', async () => {
      const file = join(dir, 'good.json');
      await writeFile(
        file,
        JSON.stringify({
          domain: 'kms.example.org',
          policy: 2,
          xmpp: { service: 'xmpp://[::1]:5347', keepaliveSec: 30 },
          auth: { jwksUrl: 'https://idp.example.org/jwks', issuer: 'https://idp.example.org' },
        }),
      );
      const c = loadConfig({
        file,
        env: {
          KMS_POLICY: '3',
          KMS_XMPP_SECRET: SECRET,
          KMS_AUTH_ALLOWED_DOMAINS: 'example.org, example.net',
          KMS_TEST_SERVER_KINDS: 'prosody',
          KMS_CHAT_PASSWORD: 'not-a-setting',
        },
      });
      expect(c.domain).to.equal('kms.example.org');
      expect(c.policy).to.equal(3);
      expect(c.xmpp.service).to.equal('xmpp://[::1]:5347');
      expect(c.xmpp.keepaliveSec).to.equal(30);
      expect(c.xmpp.secret).to.equal(SECRET);
      expect(c.auth.allowedDomains).to.deep.equal(['example.org', 'example.net']);
      expect(c.auth.issuer).to.equal('https://idp.example.org');
      // KMS_CONFIG names the file when no file is given.
      expect(loadConfig({ env: { KMS_CONFIG: file } }).domain).to.equal('kms.example.org');
      // A service without a port is accepted (@xmpp/component defaults to 5347).
      expect(loadConfig({ env: { KMS_XMPP_SERVICE: 'xmpp://xmpp.example.org' } }).xmpp.service).to.equal('xmpp://xmpp.example.org');
    });

    for (const bad of BAD) {
      it(`refuses ${bad.what}, naming the setting`, async () => {
        const e = await problem(bad.file, bad.env ?? {}, dir);
        for (const re of bad.expect) expect(e.message).to.match(re);
      });
    }

    it('reports every problem at once, each with its setting', async () => {
      const e = await problem({ policy: 9, xmpp: { drainMs: -1 } }, { KMS_LOG_LEVEL: 'loud', KMS_KEEPALIVE_SEC: 'x' }, dir);
      expect(e.message).to.match(/^4 configuration problems/);
      for (const re of [/setting policy/, /setting xmpp\.drainMs/, /setting logLevel/, /KMS_KEEPALIVE_SEC/]) expect(e.message).to.match(re);
    });

    it('never echoes the master key or the secret in a message', async () => {
      const e = await problem({ xmpp: { secret: 12345 } }, { KMS_MASTER_KEY: 'c2VjcmV0LW1hc3Rlci1rZXktdGhhdC1pcy1zaG9ydA' }, dir);
      expect(e.message).to.match(/KMS_MASTER_KEY/);
      expect(e.message).to.match(/setting xmpp\.secret/);
      expect(e.message).not.to.include('c2VjcmV0LW1hc3Rlci1rZXktdGhhdC1pcy1zaG9ydA');
      expect(e.message).not.to.include('12345');
    });

    it('says clearly when the config file is missing, unreadable or not a JSON object', async () => {
      const missing = join(dir, 'nowhere.json');
      expect(() => loadConfig({ file: missing, env: {} })).to.throw(ConfigError, new RegExp(`config file ${missing}: no such file`));
      expect(() => loadConfig({ env: { KMS_CONFIG: missing } })).to.throw(ConfigError, /no such file/);
      expect(() => loadConfig({ file: dir, env: {} })).to.throw(ConfigError, /is a directory/);
      expect((await problem('{"domain": ', {}, dir, 'broken.json')).message).to.match(/config file .*broken\.json: not valid JSON/);
      expect((await problem('[1, 2]', {}, dir, 'array.json')).message).to.match(/config file .*array\.json: must hold a JSON object/);
    });
  });

  describe('kms run --help', () => {
    const help = settingsHelp();
    const settings = schemaSettings();

    it('finds the settings of every section', () => {
      // A walk that missed a section would make the checks below pass on nothing.
      expect(settings.length).to.be.greaterThan(30);
      for (const path of ['domain', 'xmpp.maxReplyBytes', 'identity.keyFile', 'auth.algorithms', 'policy', 'logLevel'])
        expect(settings.map((s) => s.path)).to.include(path);
    });

    it('every setting has a description in the schema (.describe())', () => {
      const missing = settings.filter((s) => !s.description?.trim()).map((s) => s.path);
      expect(missing, `settings without a .describe() in src/config.ts: ${missing.join(', ')}`).to.deep.equal([]);
    });

    it('shows every setting with its type, its default (or that it is unset) and its description', () => {
      const escapeRe = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      for (const s of settings) {
        const entry = new RegExp(`^  ${escapeRe(s.path)}  (\\S.*), (default \\S.*|unset by default)(, env KMS_\\w+)?\\n      (.+)$`, 'm').exec(help);
        expect(entry, `${s.path} in kms run --help`).to.not.equal(null);
        expect(entry![1], `${s.path}'s type`).to.match(/^(string|integer|boolean|list of|\w+ \|)/);
        expect(entry![4], `${s.path}'s description`).to.equal(s.description);
      }
      expect(help).not.to.include('(no description)');
      // Exactly one entry per setting.
      expect(help.match(/^ {2}[a-zA-Z.]+ {2}/gm)).to.have.length(settings.length);
    });

    it('names the variable of every setting that has one, and every variable names a setting', () => {
      const paths = new Set(settings.map((s) => s.path));
      for (const [name, { path }] of Object.entries(ENV_SETTINGS)) {
        expect(paths, `${name} sets ${path.join('.')}`).to.include(path.join('.'));
        expect(help).to.match(new RegExp(`^  ${path.join('\\.')}  .*, env ${name}$`, 'm'));
      }
    });

    it('shows the defaults the configuration really has', () => {
      expect(help).to.match(/^ {2}xmpp\.maxReplyBytes {2}integer >= 1, default 524288, env KMS_MAX_REPLY_BYTES$/m);
      expect(help).to.match(/^ {2}policy {2}integer 1-3, default 1, env KMS_POLICY$/m);
      expect(help).to.match(/^ {2}identity\.keyType {2}EC \| RSA, default "EC", env KMS_IDENTITY_KEY_TYPE$/m);
      expect(help).to.match(/^ {2}auth\.algorithms {2}list of ES256 \| .*, default \["ES256","PS256","RS256"\]$/m);
      expect(help).to.match(/^ {2}masterKeyFile {2}string, unset by default, env KMS_MASTER_KEY_FILE$/m);
    });
  });

  describe('kms check-config and kms run --check-config (processes)', () => {
    let good: string;

    before(async () => {
      good = join(dir, 'kms.json');
      await writeFile(
        good,
        JSON.stringify({
          domain: 'kms.example.org',
          xmpp: { service: 'xmpp://127.0.0.1:5347', secret: SECRET },
          dataDir: join(dir, 'data-never-made'),
          policy: 2,
        }),
      );
    });

    for (const args of [['check-config'], ['run', '--check-config']]) {
      it(`kms ${args.join(' ')}: a valid file passes with exit 0, secrets hidden, nothing started`, async () => {
        const r = await kms([...args, '--config', good], { KMS_MASTER_KEY: MASTER_KEY, KMS_LOG_LEVEL: 'debug' }, dir);
        expect(r.code, r.stderr).to.equal(0);
        expect(r.stdout).to.include('configuration OK');
        expect(r.stdout).to.include('"domain": "kms.example.org"');
        expect(r.stdout).to.include('"policy": 2');
        expect(r.stdout).to.include('[hidden]');
        for (const secret of [SECRET, MASTER_KEY]) {
          expect(r.stdout).not.to.include(secret);
          expect(r.stderr).not.to.include(secret);
        }
        // Only checked: no data directory, no master key file, no connection attempt.
        expect(existsSync(join(dir, 'data-never-made'))).to.equal(false);
        expect(r.stderr).not.to.match(/connect/);
      });
    }

    it('kms run --help prints the settings, and kms --version the package version', async () => {
      const help = await kms(['run', '--help'], {}, dir);
      expect(help.code, help.stderr).to.equal(0);
      expect(help.stdout).to.include(settingsHelp());
      const version = await kms(['--version'], {}, dir);
      expect(version.code, version.stderr).to.equal(0);
      const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
      expect(version.stdout.trim()).to.equal(pkg.version);
    });

    /** The process cases: a subset of BAD covering each kind, plus the file itself going wrong. */
    const processCases = [
      ...BAD.filter((b) =>
        [
          'a wrong type in the file',
          'an out-of-range port',
          'an unknown retrieval policy',
          'a JWKS URL that is no URL',
          'a missing identity certificate',
          'an unknown key in a section',
          'a number variable that is not a number',
          'an unknown KMS_ variable (a typo)',
          'a master key of the wrong size',
        ].includes(b.what),
      ),
      { what: 'a missing config file', file: undefined, missingFile: true, expect: [/config file .*nowhere\.json: no such file/] },
    ] as { what: string; file?: unknown; env?: Record<string, string>; missingFile?: boolean; expect: RegExp[] }[];

    it('has a process case for every kind of bad setting', () => {
      expect(processCases).to.have.length(10);
    });

    // Each case as one command, in turn (every process start costs about 1.5 s of CPU): the three
    // commands share the path from the configuration to exit code 2, each is seen several times.
    const COMMANDS = [['check-config'], ['run', '--check-config'], ['run']];
    processCases.forEach((bad, i) => {
      const command = COMMANDS[i % COMMANDS.length]!;
      it(`kms ${command.join(' ')}: refuses ${bad.what} with exit code 2 and the setting's name`, async () => {
        const file = bad.missingFile ? join(dir, 'nowhere.json') : join(dir, `bad-${randomBytes(4).toString('hex')}.json`);
        if (!bad.missingFile)
          await writeFile(file, JSON.stringify({ xmpp: { secret: SECRET }, dataDir: join(dir, 'data-never-made'), ...((bad.file as object) ?? {}) }));
        const env = { KMS_LOG_LEVEL: 'info', ...(bad.env ?? {}) };
        // The file by --config, or (for a real start) by KMS_CONFIG.
        const r =
          command.length === 1 && command[0] === 'run'
            ? await kms(command, { ...env, KMS_CONFIG: file }, dir)
            : await kms([...command, '--config', file], env, dir);
        expect(r.code, `${bad.what}: ${r.stderr}`).to.equal(2);
        expect(r.stdout).not.to.include('configuration OK');
        for (const re of bad.expect) expect(r.stderr).to.match(re);
        expect(r.stderr).to.match(/^kms: /);
        expect(r.stderr).not.to.include(SECRET);
        // Even a real start stops before it touches anything.
        expect(existsSync(join(dir, 'data-never-made'))).to.equal(false);
      });
    });
  });
});
