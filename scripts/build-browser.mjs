// The ESM browser bundle of the client library (`npm run build`): src/client/index.ts and everything
// it imports in one file, dist/browser/xmpp-kms-client.js by default (or the directory given as
// the first argument), with its source map; --json prints what went in and what it imports. No
// Node module is left to resolve: the library uses WebCrypto, TextEncoder and atob, which browsers
// and Node 20 both have (test/package/browser.test.ts).
import { build } from 'esbuild';

const args = process.argv.slice(2);
const report = args.includes('--json');
const outdir = args.find((a) => !a.startsWith('--')) ?? 'dist/browser';
const result = await build({
  entryPoints: { 'xmpp-kms-client': 'src/client/index.ts' },
  outdir,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  metafile: true,
  logLevel: 'warning',
});
const inputs = Object.keys(result.metafile.inputs);
const node = inputs.filter((i) => i.startsWith('node:') || /^(crypto|buffer|events|fs|path|stream|util|timers)$/.test(i));
if (node.length > 0) throw new Error(`the browser bundle reaches Node modules: ${node.join(', ')}`);
// What the bundle itself still imports (nothing: everything is inside).
const imports = Object.values(result.metafile.outputs).flatMap((o) => o.imports.map((i) => i.path));
// Quiet by default (npm pack --json reads the build's stdout); --json reports.
if (report) console.log(JSON.stringify({ outdir, inputs: inputs.length, imports }));
