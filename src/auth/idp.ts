/**
 * The development identity provider: a real OpenID Connect provider (the certified
 * `oidc-provider` package) on loopback, with the demo users, so that the KMS, a browser client
 * and `kms chat` get their tokens the way they would from Keycloak, Entra ID or Google. It serves
 * discovery and JWKS, the authorization code flow with PKCE (client `kms-web`, for the browser)
 * and the device authorization grant of RFC 8628 (client `kms-chat`, for the terminal). Access
 * tokens are JWTs for the KMS's audience (resource indicators), `sub` the user's bare JID. The
 * signing key is made once and kept sealed under the master key in the data folder. Logins go
 * through a minimal HTML form of our own (user name and password); consent is granted for the two
 * first-party clients. Sessions and codes live in memory: a restart logs everyone out.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';
import type { Sealer } from '../crypto/seal.js';

/** The browser's client (authorization code + PKCE, public). */
export const BROWSER_CLIENT_ID = 'kms-web';
/** `kms chat`'s client (device authorization grant, public). */
const DEVICE_CLIENT_ID = 'kms-chat';
/** The scope the KMS's resource server offers. */
const KMS_SCOPE = 'kms';
/** The demo users of the development setup; each one's password is `<name>-password`. */
const DEMO_USERS = ['alice', 'bob', 'carol', 'dave'];

export interface IdpOptions {
  /** The users' XMPP domain: user `alice` is `alice@<userDomain>` (the tokens' `sub`). */
  userDomain: string;
  /** The KMS's audience (`kms://<domain>`): access tokens are JWTs for it. */
  audience: string;
  /** Where the signing key is kept (`idp-keys.json`, sealed). */
  dataDir: string;
  sealer: Sealer;
  /** Listening address (default 127.0.0.1) and port (default 0, any free one). */
  host?: string;
  port?: number;
  /** The issuer URL, when the IdP is reached by another name than http://<host>:<port> (e.g. behind a proxy). */
  issuer?: string;
  /** Redirect URIs of the browser client (default: `kms web`'s page, http://127.0.0.1:8080/ and http://localhost:8080/). */
  redirectUris?: string[];
  /** User names and passwords (default: the demo users, `<name>-password`). */
  users?: Record<string, string>;
}

export interface RunningIdp {
  /** The issuer URL (what KMS_AUTH_ISSUER_URL must be). */
  issuer: string;
  close(): Promise<void>;
}

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${escapeHtml(title)}</title><style>body{font-family:system-ui,sans-serif;max-width:26em;margin:3em auto;padding:0 1em}label,input,button{display:block;margin:.4em 0;font-size:1em}input{width:100%;padding:.4em}.error{color:#b00}</style></head><body><h1>${escapeHtml(title)}</h1>${body}</body></html>`;
}

/** The signing key, made on first start and kept sealed under the master key. */
async function signingKey(dataDir: string, sealer: Sealer): Promise<JWK> {
  const file = join(dataDir, 'idp-keys.json');
  const context = 'idp:signing-key';
  if (existsSync(file)) {
    const stored = JSON.parse(await readFile(file, 'utf8')) as { key: string };
    return JSON.parse(sealer.open(stored.key, context).toString('utf8')) as JWK;
  }
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk: JWK = { ...(await exportJWK(privateKey)), kid: `idp-${Date.now().toString(36)}`, alg: 'ES256', use: 'sig' };
  await mkdir(dataDir, { recursive: true });
  await writeFile(file, JSON.stringify({ key: sealer.seal(JSON.stringify(jwk), context) }, null, 2), { mode: 0o600 });
  return jwk;
}

async function formBody(req: IncomingMessage): Promise<URLSearchParams> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(c as Buffer);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Starts the identity provider; resolves once it listens. */
export async function startIdp(o: IdpOptions): Promise<RunningIdp> {
  // Loaded here, not with the module: on Node.js 20 it warns at load that it wants 22, and only `kms idp` and `kms run --idp` need it.
  const { default: Provider, errors } = await import('oidc-provider');
  const users = o.users ?? Object.fromEntries(DEMO_USERS.map((u) => [u, `${u}-password`]));
  const host = o.host ?? '127.0.0.1';
  const jwk = await signingKey(o.dataDir, o.sealer);
  let handle: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => res.writeHead(503).end();
  const server = createServer((req, res) => handle(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const issuer = o.issuer ?? `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const accountOf = (sub: string) => {
    const at = sub.lastIndexOf('@');
    return at > 0 && sub.slice(at + 1) === o.userDomain && Object.hasOwn(users, sub.slice(0, at)) ? sub : undefined;
  };

  const configuration: Configuration = {
    clients: [
      {
        client_id: BROWSER_CLIENT_ID,
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: o.redirectUris ?? ['http://127.0.0.1:8080/', 'http://localhost:8080/'],
      },
      {
        client_id: DEVICE_CLIENT_ID,
        token_endpoint_auth_method: 'none',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    jwks: { keys: [jwk as never] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    pkce: { required: () => true },
    // Both clients get a refresh token (the page renews its access token without a new login; the
    // terminal without a new device code), whether or not offline_access was asked for.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // A browser client calls the token endpoint from its page: allowed from the origins of its redirect URIs.
    clientBasedCORS: (_ctx, origin, client) => client.redirectUris?.some((uri) => URL.parse(uri)?.origin === origin) ?? false,
    scopes: ['openid', 'offline_access', KMS_SCOPE],
    claims: { openid: ['sub'] },
    findAccount: (_ctx, sub) => {
      const id = accountOf(sub);
      return id ? { accountId: id, claims: () => ({ sub: id }) } : undefined;
    },
    // Consent is granted for the first-party clients: the OpenID scopes asked for and the KMS's scope.
    loadExistingGrant: async (ctx: KoaContextWithOIDC) => {
      const client = ctx.oidc.client!;
      const grantId = ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session!.grantIdFor(client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: ctx.oidc.session!.accountId! });
      grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
      grant.addResourceScope(o.audience, KMS_SCOPE);
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        charset: 'base-20',
        mask: '****-****',
        userCodeInputSource: (ctx, form, _out, err) => {
          const error = err ? `<p class="error">${escapeHtml(err.message)}</p>` : '';
          ctx.body = page(
            'Sign in a device',
            `${error}<p>Enter the code the device shows.</p>${form}<button type="submit" form="op.deviceInputForm">Continue</button>`,
          );
        },
        userCodeConfirmSource: (ctx, form, client, _info, userCode) => {
          ctx.body = page(
            'Sign in a device',
            `<p>Sign in <b>${escapeHtml(client.clientName ?? client.clientId)}</b> with the code <b>${escapeHtml(userCode)}</b>?</p>${form}<button type="submit" form="op.deviceConfirmForm">Continue</button>`,
          );
        },
        successSource: (ctx) => {
          ctx.body = page('Signed in', '<p>The device is signed in. You may close this page.</p>');
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => o.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          if (resource !== o.audience) throw new errors.InvalidTarget(`unknown resource ${resource}`);
          return { scope: KMS_SCOPE, audience: o.audience, accessTokenTTL: 3600, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } };
        },
      },
      revocation: { enabled: true },
    },
    ttl: { AccessToken: 3600, AuthorizationCode: 60, DeviceCode: 600, IdToken: 3600, Interaction: 600, RefreshToken: 86400, Session: 86400, Grant: 86400 },
    renderError: (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<p class="error">${escapeHtml(String(out.error))}: ${escapeHtml(String(out.error_description ?? ''))}</p>`);
    },
  };
  const provider = new Provider(issuer, configuration);
  if (issuer.startsWith('https:')) provider.proxy = true;
  const callback = provider.callback();

  /** `/interaction/<uid>`: the login form (GET) and its answer (POST). */
  const interaction = async (req: IncomingMessage, res: ServerResponse) => {
    const details = await provider.interactionDetails(req, res);
    const form = (error?: string) => {
      const client = details.params.client_id as string;
      res.writeHead(error ? 401 : 200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(
        page(
          'Sign in',
          `${error ? `<p class="error">${escapeHtml(error)}</p>` : ''}<p>to ${escapeHtml(client)} as a user of ${escapeHtml(o.userDomain)}</p>` +
            `<form method="post" action="/interaction/${escapeHtml(details.uid)}" autocomplete="off">` +
            `<label>User name <input name="username" autofocus required></label><label>Password <input name="password" type="password" required></label>` +
            `<button type="submit">Sign in</button></form>`,
        ),
      );
    };
    if (details.prompt.name === 'consent') {
      // The clients are first-party: what they ask for is granted without asking the user.
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session!.accountId, clientId: details.params.client_id as string });
      if (!grant) throw new Error('the grant of this interaction has expired');
      const missing = details.prompt.details as { missingOIDCScope?: string[]; missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]> };
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) grant.addResourceScope(resource, scopes.join(' '));
      return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
    }
    if (details.prompt.name !== 'login') {
      return provider.interactionFinished(req, res, { error: 'access_denied', error_description: `prompt ${details.prompt.name} is not supported` });
    }
    if (req.method === 'GET') return form();
    if (req.method !== 'POST') return void res.writeHead(405).end();
    const body = await formBody(req);
    const name = (body.get('username') ?? '').trim().toLowerCase().replace(/@.*$/, '');
    const password = users[name];
    if (password === undefined || !Object.hasOwn(users, name) || !sameSecret(body.get('password') ?? '', password))
      return form('Unknown user name or wrong password.');
    return provider.interactionFinished(req, res, { login: { accountId: `${name}@${o.userDomain}` } }, { mergeWithLastSubmission: false });
  };

  handle = (req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (/^\/interaction\/[^/]+$/.test(path)) {
      interaction(req, res).catch((e: unknown) => {
        if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
        res.end(page('Error', `<p class="error">${escapeHtml((e as Error).message)}</p>`));
      });
      return;
    }
    callback(req, res);
  };
  return {
    issuer,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
