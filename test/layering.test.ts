/**
 * The layers of src/ (README "Layout"): what both sides of the protocol share lives in
 * src/protocol, on top of src/crypto and src/util; the client library (src/client) stands on those
 * alone and never imports server code (src/engine, src/store, src/xmpp, src/auth, src/cli), so that
 * a client can be built without the server; nothing imports the CLI (src/cli). Checked on the real
 * import graph of every source file.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'src');

/** Which top-level folders of src/ each folder may import from (itself always). */
const ALLOWED: Record<string, string[]> = {
  util: [],
  crypto: ['util'],
  protocol: ['crypto', 'util'],
  client: ['protocol', 'crypto', 'util'],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : /\.ts$/.test(name) && !name.endsWith('.d.ts') ? [p] : [];
  });
}

/** The relative imports and re-exports of a TypeScript file, static and dynamic. */
function relativeImports(source: string): string[] {
  const out: string[] = [];
  const re = /(?:import|export)\s[^'"]*?from\s*['"](\.[^'"]+)['"]|import\s*\(\s*['"](\.[^'"]+)['"]\s*\)|import\s+['"](\.[^'"]+)['"]/g;
  for (const m of source.matchAll(re)) out.push((m[1] ?? m[2] ?? m[3])!);
  return out;
}

/** The top-level folder of src/ a file is in ('' for src/index.ts). */
const layerOf = (file: string) => {
  const rel = relative(SRC, file).split('/');
  return rel.length > 1 ? rel[0]! : '';
};

describe('layering of src/', () => {
  const all = files(SRC);

  it('finds the imports it checks (the parser is not blind)', () => {
    const chain = readFileSync(join(SRC, 'client', 'chain.ts'), 'utf8');
    expect(relativeImports(chain)).to.include.members(['../protocol/blocks.js', '../crypto/jws.js']);
    expect(relativeImports("export { a } from './x.js';\nconst m = await import('../engine/engine.js');")).to.deep.equal(['./x.js', '../engine/engine.js']);
  });

  it('nothing imports src/cli: the CLI only parses arguments and calls the server (src/server.ts)', () => {
    const offences: string[] = [];
    for (const file of all.filter((f) => layerOf(f) !== 'cli')) {
      for (const spec of relativeImports(readFileSync(file, 'utf8'))) {
        if (layerOf(resolve(dirname(file), spec)) === 'cli') offences.push(`${relative(SRC, file)} imports ${spec}`);
      }
    }
    expect(offences).to.deep.equal([]);
  });

  for (const [layer, allowed] of Object.entries(ALLOWED)) {
    it(`src/${layer} imports only ${[layer, ...allowed].map((l) => `src/${l}`).join(', ')}`, () => {
      const offences: string[] = [];
      for (const file of all.filter((f) => layerOf(f) === layer)) {
        for (const spec of relativeImports(readFileSync(file, 'utf8'))) {
          const target = layerOf(resolve(dirname(file), spec));
          if (target !== layer && !allowed.includes(target)) offences.push(`${relative(SRC, file)} imports ${spec}`);
        }
      }
      expect(offences).to.deep.equal([]);
    });
  }
});
