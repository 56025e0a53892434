// The package as a user gets it: `npm pack` (its prepack runs `npm run build`), the tarball
// installed with npm into a fresh project in a temporary directory, and used there without tsx:
// a TypeScript program importing both entries is type-checked by a strict tsc (skipLibCheck off,
// so every declaration the package ships or pulls in is checked) and its output run by plain node;
// the installed `kms` command answers --help, --version and check-config; publint and
// arethetypeswrong check the tarball. Slow (a build and an npm install): about 15 s with npm's cache warm.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const PKG = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end; never rejects on a non-zero exit (the test reads `code`). */
function sh(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<Ran> {
  return new Promise((done, fail) => {
    execFile(command, args, { cwd, env, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return fail(err);
      done({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}

const show = (r: Ran) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/**
 * The environment of a user's shell: nothing from the `npm test` running us (npm_* variables),
 * no NODE_OPTIONS (so no tsx loader), no KMS_* settings, and this node first on the PATH.
 */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) || k === 'NODE_OPTIONS' || k === 'INIT_CWD' || k.startsWith('KMS_')) continue;
    env[k] = v;
  }
  env.PATH = [dirname(process.execPath), process.env.PATH ?? ''].join(delimiter);
  return env;
}

/** The script of a development dependency's command, run with this node. */
async function devBin(pkg: string, name: string): Promise<string> {
  const dir = join(ROOT, 'node_modules', pkg);
  const { bin } = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { bin: string | Record<string, string> };
  return join(dir, typeof bin === 'string' ? bin : bin[name]!);
}

/** A program using both entries as the README shows them: strict TypeScript, compiled by tsc, run by node. */
const CONSUMER_TS = `import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  Authenticator,
  EngineDeps,
  engineConfig,
  KmsEngine,
  KmsState,
  loadConfig,
  loadIdentity,
  LocalIssuer,
  openLevelStore,
  Sealer,
  silentLogger,
  startKms,
  tokenAudience,
  type KmsConfig,
  type RunningKms,
} from 'xmpp-kms';
import {
  createEntityKey,
  encryptRoomMessage,
  KmsError,
  KmsResponseError,
  KmsSession,
  openGk,
  openRoomMessage,
  readEncrypted,
  registrationProof,
  type GroupKey,
  type JWK,
  type Transport,
} from 'xmpp-kms/client';

// @ts-expect-error: the declarations are real types, not any: a domain is a string.
engineConfig(42);

const dir = process.argv[2];
if (!dir) throw new Error('usage: node out/consumer.js <project dir>');
// The server side: a KMS engine (no XMPP component) on LevelDB, from a configuration file.
const config: KmsConfig = loadConfig({ file: join(dir, 'kms.json'), env: {} });
const kms: RunningKms = await startKms(config, silentLogger(), { xmpp: false });
try {
  if (!kms.issuer) throw new Error('expected the local token issuer');
  const jid = 'alice@consumer.test';
  const token = await kms.issuer.mint({ subject: jid, audience: tokenAudience(config) });
  // The client side, with the engine in process as its transport: handshake, register a key, get a group key.
  const transport: Transport = (messages) => Promise.all(messages.map((m) => kms.engine.handle(m)));
  const session = new KmsSession({ kmsKid: kms.identity.kid, kmsKey: kms.identity.jwk as JWK, transport, bearer: () => token });
  const key = await createEntityKey({ type: 'EC' });
  const ephemeral = await session.handshake();
  await session.request('post', '/entity-keys', { jwk: key.publicJwk, proof: await registrationProof(key, jid, ephemeral.uri) });
  const created = await session.request('post', \`kms://\${config.domain}/gks\`, {});
  const gk: GroupKey = await openGk(String(created.gk), kms.identity.jwk as JWK, key);
  // A room message encrypted with it, and opened again.
  const room = 'room@conference.consumer.test';
  const message = await encryptRoomMessage({ gk, kms: config.domain, chain: \`kms://\${config.domain}/chains/consumer\`, from: jid, room, body: 'hello from a consumer' });
  const ref = readEncrypted(message);
  if (!ref) throw new Error('no <encrypted/> in the message');
  const opened = await openRoomMessage(ref, gk, { room, at: new Date() });
  // A refusal arrives as the library's typed error.
  let refused: KmsError | undefined;
  try {
    await session.request('get', \`kms://\${config.domain}/gks/no-such-key\`, { entity: jid });
  } catch (e) {
    if (!(e instanceof KmsResponseError)) throw e;
    refused = e;
  }
  console.log(JSON.stringify({ kid: kms.identity.kid, gk: gk.uri, keyBytes: gk.key.length, body: opened.body, from: opened.from, refused: refused?.code }));
} finally {
  await kms.stop();
}

// Or composed from its parts, as startKms does: an engine another program could put behind its own transport.
const sealer = new Sealer(randomBytes(32));
const identity = await loadIdentity({ domain: 'composed.consumer.test', keyType: 'EC', dataDir: join(dir, 'composed') }, sealer);
const store = await openLevelStore(join(dir, 'composed', 'db'));
try {
  const idp = 'https://idp.consumer.test';
  const issuer = await LocalIssuer.ephemeral(idp);
  const engine = new KmsEngine({
    deps: new EngineDeps({ config: engineConfig(identity.domain), state: new KmsState(store), sealer, identity }),
    authenticator: new Authenticator({
      bearer: { keys: issuer.keys(), issuer: idp, audience: identity.kid, algorithms: ['ES256'], userClaim: 'sub', clockToleranceSec: 30 },
      serviceAnchors: [],
    }),
  });
  const token = await issuer.mint({ subject: 'bob@consumer.test', audience: identity.kid });
  const session = new KmsSession({ kmsKid: identity.kid, kmsKey: identity.jwk as JWK, transport: (m) => Promise.all(m.map((x) => engine.handle(x))), bearer: () => token });
  const ephemeral = await session.handshake();
  console.log(JSON.stringify({ composed: ephemeral.uri }));
} finally {
  await store.close();
}
`;

/** As strict as a careful user's project: skipLibCheck off, so tsc checks every .d.ts the program reaches. */
const CONSUMER_TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    verbatimModuleSyntax: true,
    skipLibCheck: false,
    outDir: 'out',
  },
  files: ['consumer.ts'],
};

describe('the package, packed and installed in another project', function () {
  // A build, `npm pack` and `npm install` (from npm's cache when warm), then tsc.
  this.timeout(600_000);

  let dir: string;
  let packed: string[];
  let tsc: Ran;

  before(async function () {
    dir = await mkdtemp(join(tmpdir(), 'kms-consumer-'));
    const env = userEnv();
    let t = Date.now();
    const pack = await sh('npm', ['pack', '--json', '--pack-destination', dir], ROOT, env);
    if (pack.code !== 0) throw new Error(`npm pack failed\n${show(pack)}`);
    const [info] = JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[];
    packed = info!.files.map((f) => f.path);
    const tarball = join(dir, info!.filename);
    console.log(`      npm pack (with the build): ${Date.now() - t} ms`);

    t = Date.now();
    await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'kms-consumer', private: true, type: 'module' }, null, 2));
    const install = await sh('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball, '@types/node@^20.19.0'], dir, env);
    if (install.code !== 0) throw new Error(`npm install of the tarball failed\n${show(install)}`);
    console.log(`      npm install of the tarball: ${Date.now() - t} ms`);

    await writeFile(join(dir, 'consumer.ts'), CONSUMER_TS);
    await writeFile(join(dir, 'tsconfig.json'), JSON.stringify(CONSUMER_TSCONFIG, null, 2));
    await writeFile(join(dir, 'kms.json'), JSON.stringify({ domain: 'kms.consumer.test', dataDir: join(dir, 'kms-data') }, null, 2));
    await mkdir(join(dir, 'bad'));
    await writeFile(join(dir, 'bad', 'kms.json'), JSON.stringify({ domain: 'not a domain!' }));

    // Type-checked and compiled once here (tsc emits even when it reports errors); the tests read the result.
    t = Date.now();
    tsc = await sh(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], dir, env);
    console.log(`      tsc: ${Date.now() - t} ms`);
  });

  after(async function () {
    if (dir && !process.env.KEEP_CONSUMER_DIR) await rm(dir, { recursive: true, force: true });
  });

  it('packs the built JavaScript, its declarations and source maps, the kms launcher and the @xmpp/component types; no sources, tests or tools', function () {
    for (const f of [
      'package.json',
      'README.md',
      'bin/kms.js',
      'dist/index.js',
      'dist/index.d.ts',
      'dist/index.js.map',
      'dist/client/index.js',
      'dist/client/index.d.ts',
      'dist/cli/main.js',
      'types/xmpp__component.d.ts',
    ]) {
      expect(packed, f).to.include(f);
    }
    expect(
      packed.filter((f) => !/^(dist\/|bin\/kms\.js$|types\/xmpp__component\.d\.ts$|package\.json$|README\.md$|LICENSE$|CHANGELOG\.md$|SECURITY\.md$)/.test(f)),
    ).to.deep.equal([]);
    expect(packed.filter((f) => f.startsWith('dist/') && !/\.(js|d\.ts|js\.map)$/.test(f))).to.deep.equal([]);
  });

  it('installs for production: tsx, memory-level and TypeScript are not among its dependencies', function () {
    for (const dev of ['tsx', 'memory-level', 'typescript', 'mocha']) {
      expect(existsSync(join(dir, 'node_modules', dev)), dev).to.equal(false);
    }
    expect(existsSync(join(dir, 'node_modules', 'xmpp-kms', 'dist', 'index.js'))).to.equal(true);
    expect(existsSync(join(dir, 'node_modules', 'xmpp-kms', 'src'))).to.equal(false);
  });

  it('type-checks a program importing xmpp-kms and xmpp-kms/client with strict tsc (strict, exactOptionalPropertyTypes, noUncheckedIndexedAccess, skipLibCheck off, NodeNext)', function () {
    expect(tsc.code, show(tsc)).to.equal(0);
    expect(tsc.stdout + tsc.stderr).to.equal('');
  });

  it('runs it with plain node: a KMS engine from xmpp-kms on LevelDB serves a group key to a session of xmpp-kms/client, which encrypts and opens a room message; an engine composed from the exported parts answers a handshake', async function () {
    expect(existsSync(join(dir, 'out', 'consumer.js')), 'tsc emitted out/consumer.js').to.equal(true);
    const r = await sh(process.execPath, [join(dir, 'out', 'consumer.js'), dir], dir, userEnv());
    expect(r.code, show(r)).to.equal(0);
    const [first, second] = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const out = first!;
    expect(out.kid).to.equal('kms://kms.consumer.test');
    expect(out.gk).to.match(/^kms:\/\/kms\.consumer\.test\/gks\//);
    expect(out.keyBytes).to.equal(32);
    expect(out.body).to.equal('hello from a consumer');
    expect(out.from).to.equal('alice@consumer.test');
    expect(out.refused).to.equal('NOT_FOUND');
    // The engine composed from the exported parts answers a handshake.
    expect(second?.composed).to.match(/^\/ecdhe\/[0-9a-f-]{36}$/);
    // Its store, master key and identity are where its configuration put them.
    for (const f of ['master.key', 'db']) expect(existsSync(join(dir, 'kms-data', f)), f).to.equal(true);
  });

  it('the installed kms command answers --help and --version', async function () {
    const kms = join(dir, 'node_modules', '.bin', 'kms');
    const help = await sh(kms, ['--help'], dir, userEnv());
    expect(help.code, show(help)).to.equal(0);
    expect(help.stdout).to.match(/^Usage: kms /);
    for (const command of ['run', 'check-config', 'token', 'inspect', 'demo', 'chat']) expect(help.stdout).to.match(new RegExp(`^  ${command}\\b`, 'm'));
    const version = await sh(kms, ['--version'], dir, userEnv());
    expect(version.code, show(version)).to.equal(0);
    expect(version.stdout.trim()).to.equal(PKG.version);
  });

  it('the installed kms check-config validates a configuration and prints it, the data directory in the project and the secret hidden', async function () {
    const r = await sh(join(dir, 'node_modules', '.bin', 'kms'), ['check-config', '--config', 'kms.json'], dir, userEnv());
    expect(r.code, show(r)).to.equal(0);
    expect(r.stdout.trim().split('\n').pop()).to.equal('configuration OK');
    const shown = JSON.parse(r.stdout.slice(0, r.stdout.lastIndexOf('}') + 1)) as { domain: string; dataDir: string; xmpp: { secret: string } };
    expect(shown.domain).to.equal('kms.consumer.test');
    expect(shown.dataDir).to.equal(join(dir, 'kms-data'));
    expect(shown.xmpp.secret).to.equal('[hidden]');
  });

  it('the installed kms check-config refuses a bad setting, naming it, with exit status 2', async function () {
    const r = await sh(join(dir, 'node_modules', '.bin', 'kms'), ['check-config', '--config', join('bad', 'kms.json')], dir, userEnv());
    expect(r.code, show(r)).to.equal(2);
    expect(r.stderr).to.match(/^kms: setting domain \(in bad\/kms\.json\): must be a domain name/);
  });

  it('publint finds no problem in the tarball', async function () {
    const tarball = join(dir, `${PKG.name}-${PKG.version}.tgz`);
    const r = await sh(process.execPath, [await devBin('publint', 'publint'), 'run', tarball, '--strict'], ROOT, userEnv());
    expect(r.code, show(r)).to.equal(0);
    expect(r.stdout).to.include('All good!');
  });

  it('arethetypeswrong finds no problem in the tarball (esm-only profile: an ESM-only package)', async function () {
    const tarball = join(dir, `${PKG.name}-${PKG.version}.tgz`);
    const r = await sh(
      process.execPath,
      [await devBin('@arethetypeswrong/cli', 'attw'), tarball, '--profile', 'esm-only', '--format', 'json'],
      ROOT,
      userEnv(),
    );
    expect(r.code, show(r)).to.equal(0);
    const { analysis } = JSON.parse(r.stdout) as {
      analysis: { entrypoints: Record<string, unknown>; problems: Record<string, { kind: string; entrypoint: string; resolutionKind: string }[]> };
    };
    expect(Object.keys(analysis.entrypoints)).to.include.members(['.', './client']);
    // What the profile leaves out: require() from CommonJS (node16-cjs) and node10, which knows no exports.
    const counted = Object.values(analysis.problems)
      .flat()
      .filter((p) => p.resolutionKind !== 'node10' && p.resolutionKind !== 'node16-cjs');
    expect(counted).to.deep.equal([]);
  });
});
