/**
 * `kms web`: a small static server for a ready-to-use converse.js page with the KMS plugin
 * (src/converse/plugin.ts): converse's prebuilt dist/ under /converse/, the plugin bundle
 * (dist/browser/xmpp-kms-converse.js) and an index.html configured for one WebSocket URL, one
 * KMS and its trust anchors. With an OpenID Connect issuer (`oidc`), the page first signs the user
 * in there (authorization code + PKCE, src/converse/oidc.ts, bundled as xmpp-kms-oidc.js), uses the
 * access token for the KMS and offers the signed-in user's JID on converse's login form; without
 * one it asks `window.kmsBearer()` for the token, else prompts for one. `?room=<jid>` joins that
 * room after login.
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFrom, ConfigError } from '../config.js';

/** The package's root (from src/cli or dist/cli alike). */
const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface WebOptions {
  /** The XMPP server's WebSocket endpoint, e.g. ws://127.0.0.1:5280/xmpp-websocket. */
  websocketUrl: string;
  /** The KMS component's JID. */
  kmsJid: string;
  /** The KMS's trust anchors, PEM texts. */
  anchors: string[];
  /** converse.js's dist/ folder. */
  converseDir: string;
  /** The folder holding xmpp-kms-converse.js (and xmpp-kms-oidc.js, with `oidc`). */
  pluginDir: string;
  /** Sign in at this OpenID Connect issuer, as its public client `clientId` (default kms-web), for tokens for `audience`. */
  oidc?: { issuer: string; audience: string; clientId?: string };
  host?: string;
  port?: number;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.wasm': 'application/wasm',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
};

/** The page: converse.js with the plugin, configured from `o`. */
export function indexHtml(o: Pick<WebOptions, 'websocketUrl' | 'kmsJid' | 'anchors' | 'oidc'>): string {
  const config = JSON.stringify({ websocketUrl: o.websocketUrl, kmsJid: o.kmsJid, anchors: o.anchors, oidc: o.oidc ?? null }).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Encrypted rooms (xmpp-kms + converse.js)</title>
<link rel="stylesheet" href="/converse/converse.min.css">
</head>
<body class="converse-fullscreen">
<script type="module">
import converse from '/converse/converse.min.js';
import { registerKmsPlugin } from '/xmpp-kms-converse.js';
registerKmsPlugin(converse);
const config = ${config};
let session;
if (config.oidc) {
  const { oidcSignIn } = await import('/xmpp-kms-oidc.js');
  try {
    session = await oidcSignIn(config.oidc);
  } catch (e) {
    document.body.textContent = 'Could not sign in at ' + config.oidc.issuer + ': ' + e.message + ' (reload to try again)';
    throw e;
  }
  // The session, for the page's own use (a sign-out button: kmsSession.signOut(); location.reload()).
  window.kmsSession = session;
}
// Read after the sign-in: coming back from the identity provider restores the page's address.
const room = new URLSearchParams(location.search).get('room');
converse.initialize({
  assets_path: '/converse/',
  websocket_url: config.websocketUrl,
  discover_connection_methods: false,
  view_mode: 'fullscreen',
  authentication: 'login',
  ...(session ? { jid: session.user } : {}),
  whitelisted_plugins: ['xmpp-kms'],
  blacklisted_plugins: ['converse-omemo'],
  auto_join_rooms: room ? [room] : [],
  muc_nickname_from_jid: true,
  kms_jid: config.kmsJid,
  kms_trust_anchors: config.anchors,
  kms_bearer: session
    ? session.bearer
    : async () => (typeof window.kmsBearer === 'function' ? window.kmsBearer() : window.prompt('Access token for the KMS')),
});
</script>
</body>
</html>
`;
}

/** Starts the server; resolves with it and its URL once it listens. */
export async function startWeb(o: WebOptions): Promise<{ server: Server; url: string }> {
  const page = indexHtml(o);
  const roots: [string, string][] = [
    ['/converse/', resolve(o.converseDir)],
    ['/', resolve(o.pluginDir)],
  ];
  const server = createServer(async (req, res) => {
    let path: string;
    try {
      path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('bad request');
      return;
    }
    if (path === '/' || path === '/index.html') {
      res.writeHead(200, { 'content-type': TYPES['.html']!, 'cache-control': 'no-store' }).end(page);
      return;
    }
    for (const [prefix, root] of roots) {
      if (!path.startsWith(prefix)) continue;
      const file = normalize(join(root, path.slice(prefix.length)));
      if (!file.startsWith(root + sep)) break;
      try {
        const body = await readFile(file);
        res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(body);
        return;
      } catch {
        // not in this root: try the next
      }
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  });
  const host = o.host ?? '127.0.0.1';
  await new Promise<void>((done, fail) => server.once('error', fail).listen(o.port ?? 0, host, () => done()));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : o.port;
  return { server, url: `http://${host}:${port}/` };
}

/** `kms web`: serves the page until SIGINT/SIGTERM. */
export function webCommand(): Command {
  return new Command('web')
    .description(
      'serve a converse.js page with the KMS plugin (encrypted rooms in a browser): log in with an XMPP account over WebSocket, ' +
        'sign in at the identity provider (--issuer; the page is its client kms-web) or give the page an access token (`kms token -u <jid>` with the local issuer), ' +
        'open a room (?room=<jid>) and turn on "KMS"',
    )
    .requiredOption('--websocket <url>', "the XMPP server's WebSocket endpoint, e.g. ws://127.0.0.1:5280/xmpp-websocket")
    .option('--kms <jid>', "the KMS component's JID", 'kms.localhost')
    .option('--anchor <file>', "the KMS's trust anchors (PEM); default: trust-anchor.pem in the configuration's data folder")
    .option('-c, --config <file>', "the KMS's JSON configuration file (for its data folder, token audience and identity provider)")
    .option(
      '--issuer <url>',
      'sign in at this OpenID Connect issuer (default: auth.issuerUrl of the configuration; e.g. http://127.0.0.1:5580 of `kms run --idp`)',
    )
    .option('--client-id <id>', "the page's client id at the issuer (a public client allowed the authorization code flow with PKCE)", 'kms-web')
    .option('--host <address>', 'listening address', '127.0.0.1')
    .option('--port <port>', 'listening port', '8080')
    .action(
      async (opts: { websocket: string; kms: string; anchor?: string; config?: string; host: string; port: string; issuer?: string; clientId: string }) => {
        const port = Number(opts.port);
        if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('--port: a port number from 0 to 65535');
        const config = configFrom(opts);
        const anchorFile = opts.anchor ?? join(resolve(config.dataDir), 'trust-anchor.pem');
        const issuer = opts.issuer ?? config.auth.issuerUrl;
        if (issuer && !URL.canParse(issuer)) throw new ConfigError(`--issuer: not a URL: ${issuer}`);
        const pluginDir = join(PACKAGE_ROOT, 'dist', 'browser');
        if (!existsSync(join(pluginDir, 'xmpp-kms-converse.js'))) throw new ConfigError(`${pluginDir}/xmpp-kms-converse.js is missing: run npm run build`);
        let converseDir: string;
        try {
          converseDir = dirname(fileURLToPath(import.meta.resolve('converse.js')));
        } catch {
          throw new ConfigError('converse.js is not installed: npm install converse.js@14');
        }
        const { url } = await startWeb({
          websocketUrl: opts.websocket,
          kmsJid: opts.kms,
          anchors: [await readFile(anchorFile, 'utf8')],
          converseDir,
          pluginDir,
          host: opts.host,
          port,
          ...(issuer ? { oidc: { issuer, audience: config.auth.audience ?? `kms://${opts.kms}`, clientId: opts.clientId } } : {}),
        });
        console.log(`converse.js with the KMS plugin on ${url}${issuer ? ` (sign-in at ${issuer})` : ''}`);
        for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(0));
      },
    );
}
