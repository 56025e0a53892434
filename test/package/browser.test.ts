// The ESM browser bundle of the client library (scripts/build-browser.mjs, part of `npm run build`):
// one self-contained file that imports nothing (so no Node module can be reached from it), and that
// works where only the web platform's globals are used: run here by plain node (no tsx) on
// WebCrypto, it makes an entity key, signs, and encrypts and opens a room message.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'chai';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

function run(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS; // no tsx loader: the bundle is plain JavaScript
  return new Promise((done) => {
    execFile(process.execPath, args, { cwd, env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      done({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** A program that uses the bundle as a browser page would. */
const PROGRAM = (bundle: string) => `
import * as kms from ${JSON.stringify(bundle)};
const key = await kms.createEntityKey({ type: 'EC' });
const again = await kms.entityKeyFromJwk(JSON.parse(JSON.stringify(key.privateJwk)));
const proof = await kms.registrationProof(key, 'alice@example.com', '/ecdhe/1');
const gk = { uri: 'kms://kms.example.com/gks/1', created: new Date().toISOString(), block: 'ab'.repeat(32), key: crypto.getRandomValues(new Uint8Array(32)) };
const room = 'room@conference.example.com';
const message = await kms.encryptRoomMessage({ gk, kms: 'kms.example.com', chain: 'kms://kms.example.com/blocks/1', from: 'alice@example.com', room, body: 'hello from a bundle' });
const opened = await kms.openRoomMessage(kms.readEncrypted(message), gk, { room, at: new Date() });
console.log(JSON.stringify({ sameKid: again.kid === key.kid, proofParts: proof.split('.').length, body: opened.body, from: opened.from, emptyHash: await kms.blockHash(''), room: typeof kms.EncryptedRoom }));
`;

describe('the browser bundle of the client library', function () {
  this.timeout(60_000);
  let dir: string;
  let bundle: string;
  let report: { inputs: number; imports: string[] };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-browser-'));
    const built = await run([join(ROOT, 'scripts/build-browser.mjs'), dir, '--json'], ROOT);
    expect(built.code, built.stderr).to.equal(0);
    report = JSON.parse(built.stdout.trim().split('\n').pop()!);
    bundle = join(dir, 'xmpp-kms-client.js');
  });

  after(() => rm(dir, { recursive: true, force: true }));

  it('is one ES module that imports nothing: no Node module (node:crypto, Buffer, events) can be reached from it', async () => {
    // esbuild's account of the output: what it imports (nothing), from hundreds of bundled inputs.
    expect(report.imports).to.deep.equal([]);
    expect(report.inputs).to.be.greaterThan(100);
    // And the text: no import or require statement (minified, one starts a statement).
    const js = await readFile(bundle, 'utf8');
    expect(js.match(/(?:^|[;}])\s*import\s*(?:[\w$*{][^;"']*?from\s*)?["']/g) ?? [], 'import statements').to.deep.equal([]);
    expect(js.match(/(?:^|[;},(=])\s*require\s*\(\s*["']/g) ?? [], 'require calls').to.deep.equal([]);
    expect(js).to.match(/export\s*\{/);
  });

  it('runs with only the web platform: keys, a registration proof, a room message encrypted and opened', async () => {
    const program = join(dir, 'program.mjs');
    await writeFile(program, PROGRAM(pathToFileURL(bundle).href));
    const r = await run([program], dir);
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).to.deep.equal({
      sameKid: true,
      proofParts: 3,
      body: 'hello from a bundle',
      from: 'alice@example.com',
      emptyHash: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      room: 'function',
    });
  });
});
