// `kms --version`: the version comes from the nearest package.json named xmpp-kms above the
// module, so that it is right from src/ through tsx and from a built or installed copy alike.
import { expect } from 'chai';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { packageVersion } from '../../src/cli/version.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');

describe('packageVersion', () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-version-'));
  });

  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("is the checkout's package.json version from src/cli", async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(packageVersion()).to.equal(pkg.version);
  });

  it('walks up past other package.json files (a dist/ one, a broken one) to the one named xmpp-kms', async () => {
    const pkg = join(dir, 'node_modules', 'xmpp-kms');
    await mkdir(join(pkg, 'dist', 'cli'), { recursive: true });
    await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'some-app', version: '3.0.0' }));
    await writeFile(join(pkg, 'package.json'), JSON.stringify({ name: 'xmpp-kms', version: '9.8.7' }));
    await writeFile(join(pkg, 'dist', 'package.json'), JSON.stringify({ type: 'module' }));
    await writeFile(join(pkg, 'dist', 'cli', 'package.json'), '{ not json');
    expect(packageVersion(pathToFileURL(join(pkg, 'dist', 'cli', 'main.js')).href)).to.equal('9.8.7');
  });

  it('says so when there is no xmpp-kms package above the module', async () => {
    await mkdir(join(dir, 'elsewhere'), { recursive: true });
    expect(() => packageVersion(pathToFileURL(join(dir, 'elsewhere', 'main.js')).href)).to.throw(/no package\.json of xmpp-kms/);
  });
});
