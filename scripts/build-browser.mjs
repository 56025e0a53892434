// The ESM browser bundles (`npm run build`): the client library, src/client/index.ts and everything
// it imports in one file, dist/browser/xmpp-kms-client.js by default (or the directory given as
// the first argument), and the converse.js plugin beside it (src/converse/plugin.ts,
// xmpp-kms-converse.js, as self-contained) and the page's OpenID Connect sign-in (src/converse/oidc.ts,
// xmpp-kms-oidc.js), with their source maps; --json prints what went in and what it imports. No
// Node module is left to resolve: the library uses WebCrypto, TextEncoder and atob, which browsers
// and Node 20 both have (test/package/browser.test.ts).
import { build } from 'esbuild';

const args = process.argv.slice(2);
const report = args.includes('--json');
const outdir = args.find((a) => !a.startsWith('--')) ?? 'dist/browser';
const result = await build({
  entryPoints: { 'xmpp-kms-client': 'src/client/index.ts', 'xmpp-kms-converse': 'src/converse/plugin.ts', 'xmpp-kms-oidc': 'src/converse/oidc.ts' },
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
