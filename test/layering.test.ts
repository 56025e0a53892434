/**
 * The layers of src/ (README "Layout"): what both sides of the protocol share lives in
 * src/protocol, on top of src/crypto and src/util; the client library (src/client) stands on
 * src/protocol and src/util alone (its cryptography is WebCrypto's, src/client/webcrypto.ts, never
 * node:crypto's src/crypto), uses no Node API, so that it runs in browsers, and never imports server code (src/engine, src/store, src/xmpp, src/auth, src/cli), so that
 * a client can be built without the server; nothing imports the CLI (src/cli). Checked on the real
 * import graph of every source file.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'src');

/** Which top-level folders of src/ each folder may import from (itself always). */
const ALLOWED: Record<string, string[]> = {
  util: [],
  crypto: ['util'],
  protocol: ['crypto', 'util'],
  client: ['protocol', 'util'],
  // The converse.js plugin (xmpp-kms/converse) runs in browsers on the client library alone.
  converse: ['client', 'protocol', 'util'],
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

/** Every module specifier a TypeScript file imports or re-exports, static or dynamic, relative or not. */
function allImports(source: string): string[] {
  const out: string[] = [];
  const re = /(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)|import\s+['"]([^'"]+)['"]/g;
  for (const m of source.matchAll(re)) out.push((m[1] ?? m[2] ?? m[3])!);
  return out;
}

/** Source text without comments (well enough for the checks below: no comment markers inside strings here). */
const code = (source: string) => source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');

/** The source files a file reaches through relative imports (itself included), `.js` specifiers mapped to `.ts`. */
function reachable(from: string[]): string[] {
  const seen = new Set<string>();
  const todo = [...from];
  while (todo.length > 0) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const spec of relativeImports(readFileSync(file, 'utf8'))) {
      const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts');
      if (/\.ts$/.test(target) && !target.endsWith('.d.ts')) todo.push(target);
    }
  }
  return [...seen].sort();
}

const NODE_BUILTINS = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** The top-level folder of src/ a file is in ('' for src/index.ts). */
const layerOf = (file: string) => {
  const rel = relative(SRC, file).split('/');
  return rel.length > 1 ? rel[0]! : '';
};

describe('layering of src/', () => {
  const all = files(SRC);

  it('finds the imports it checks (the parser is not blind)', () => {
    const chain = readFileSync(join(SRC, 'client', 'chain.ts'), 'utf8');
    expect(relativeImports(chain)).to.include.members(['../protocol/blocks.js', './webcrypto.js']);
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

  it('the client library, the converse.js plugin and everything they import use no Node API (no node: or built-in module, no Buffer): they run in browsers', () => {
    const client = all.filter((f) => layerOf(f) === 'client' || layerOf(f) === 'converse');
    const closure = reachable(client);
    // The check sees the shared protocol rules the client uses, not only src/client.
    expect(closure.map((f) => relative(SRC, f))).to.include.members(['protocol/blocks.ts', 'protocol/entity.ts', 'protocol/errors.ts']);
    const offences: string[] = [];
    for (const file of closure) {
      const source = readFileSync(file, 'utf8');
      for (const spec of allImports(source)) if (NODE_BUILTINS.has(spec)) offences.push(`${relative(SRC, file)} imports ${spec}`);
      if (/\bBuffer\b/.test(code(source))) offences.push(`${relative(SRC, file)} uses Buffer`);
      if (/\bprocess\.|\brequire\(/.test(code(source))) offences.push(`${relative(SRC, file)} uses process or require`);
    }
    expect(offences).to.deep.equal([]);
  });

  it('the browser check is not blind: it sees a node: import, a bare built-in and Buffer', () => {
    expect(allImports("import { x } from 'node:crypto';\nimport e from 'events';").filter((s) => NODE_BUILTINS.has(s))).to.deep.equal([
      'node:crypto',
      'events',
    ]);
    expect(/\bBuffer\b/.test(code('// a Buffer in a comment\n/* Buffer */ const x = 1;'))).to.equal(false);
    expect(/\bBuffer\b/.test(code('const b = Buffer.from(x); // bytes'))).to.equal(true);
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
