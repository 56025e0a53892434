import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as oidc from 'openid-client';
import { startIdp, type RunningIdp, BROWSER_CLIENT_ID } from '../../src/auth/idp.js';
import { discoveredKeys, discoverJwksUri, DiscoveryError } from '../../src/auth/discovery.js';
import { deviceLogin } from '../../src/cli/device-login.js';
import { Sealer } from '../../src/crypto/seal.js';
import { Authenticator } from '../../src/engine/credentials.js';
import { KmsError } from '../../src/protocol/errors.js';
import { AUDIENCE, KmsFixture } from '../support/kms-fixture.js';
import { FormClient } from '../../src/auth/form-client.js';
import { openRawChannel } from '../support/raw-channel.js';
import { loadConfig } from '../../src/config.js';
import { startKms, tokenAudience } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const USER_DOMAIN = 'example.com';
const REDIRECT = 'http://127.0.0.1:9/callback';

/** The device flow, approved by a person in a browser: the verification page, the confirmation, the login form. */
async function deviceToken(idp: RunningIdp, user: string, password = `${user}-password`): Promise<string> {
  let approved: Promise<string> | undefined;
  const tokens = await deviceLogin({
    issuer: idp.issuer,
    audience: AUDIENCE,
    prompt: (p) => {
      approved = (async () => {
        const b = new FormClient();
        // verification_uri_complete: a page that posts the user code (a browser submits it by script).
        const posted = await b.submit(await b.go(p.verificationUriComplete!));
        expect(posted.html).to.include(p.userCode);
        const login = await b.submit(posted, {}, 'op.deviceConfirmForm');
        expect(login.url).to.match(/\/interaction\/[^/]+$/);
        const done = await b.submit(login, { username: user, password });
        return done.html;
      })();
    },
  });
  expect(await approved).to.include('The device is signed in');
  return tokens.accessToken;
}

function claims(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8'));
}

describe('OpenID Connect: the development identity provider, discovery, and the KMS trusting its tokens', function () {
  this.timeout(30_000);
  let dir: string;
  let sealer: Sealer;
  let idp: RunningIdp;
  let aliceToken: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kms-idp-'));
    sealer = new Sealer(randomBytes(32));
    idp = await startIdp({ userDomain: USER_DOMAIN, audience: AUDIENCE, dataDir: dir, sealer, redirectUris: [REDIRECT] });
  });
  after(async () => {
    await idp?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves discovery whose issuer is its URL, and keeps its signing key sealed in a 0600 file', async () => {
    const jwks = await discoverJwksUri(idp.issuer);
    expect(jwks.href.startsWith(idp.issuer)).to.equal(true);
    const keys = (await (await fetch(jwks)).json()) as { keys: Record<string, unknown>[] };
    expect(keys.keys).to.have.length(1);
    expect(keys.keys[0]).to.include({ kty: 'EC', crv: 'P-256' });
    expect(keys.keys[0]).to.not.have.property('d');
    expect((await stat(join(dir, 'idp-keys.json'))).mode & 0o777).to.equal(0o600);
  });

  it('refuses a discovery document for another issuer name', async () => {
    let e: unknown;
    try {
      await discoverJwksUri(`${idp.issuer}/`);
    } catch (x) {
      e = x;
    }
    expect(e).to.be.instanceOf(DiscoveryError);
    expect((e as Error).message).to.match(/is for the issuer/);
  });

  it('device flow (RFC 8628): a user approves in a browser, and the access token is a JWT for the KMS naming the user', async () => {
    aliceToken = await deviceToken(idp, 'alice');
    const c = claims(aliceToken);
    expect(c).to.include({ iss: idp.issuer, aud: AUDIENCE, sub: `alice@${USER_DOMAIN}` });
    expect(JSON.parse(Buffer.from(aliceToken.split('.')[0]!, 'base64url').toString()).alg).to.equal('ES256');
  });

  it('a wrong password is refused on the login form', async () => {
    const b = new FormClient();
    const ac = new AbortController();
    let shown!: (v: string) => void;
    const verificationUri = new Promise<string>((r) => {
      shown = r;
    });
    const login = deviceLogin({ issuer: idp.issuer, audience: AUDIENCE, signal: ac.signal, prompt: (p) => shown(p.verificationUriComplete!) });
    login.catch(() => undefined);
    try {
      const confirm = await b.submit(await b.go(await verificationUri));
      const form = await b.submit(confirm, {}, 'op.deviceConfirmForm');
      const refused = await b.submit(form, { username: 'alice', password: 'bob-password' });
      expect(refused.status).to.equal(401);
      expect(refused.html).to.include('wrong password');
      const unknown = await b.submit(form, { username: 'mallory', password: 'mallory-password' });
      expect(unknown.status).to.equal(401);
    } finally {
      ac.abort();
    }
  });

  it('the engine accepts the token through discovery: a real handshake and entity key registration', async () => {
    const kms = await KmsFixture.create({ bearer: { keys: discoveredKeys(idp.issuer), issuer: idp.issuer } });
    try {
      const alice = await kms.user(`alice@${USER_DOMAIN}`, { token: aliceToken });
      const res = await alice.register();
      expect(res.status).to.equal(201);
      expect(alice.session.ephemeral).to.not.equal(undefined);
    } finally {
      await kms.close();
    }
  });

  it('refuses with 401 a token of the same key from another issuer, and one for another audience', async () => {
    // A second provider with the same data folder signs with the same key, under another issuer URL.
    const other = await startIdp({ userDomain: USER_DOMAIN, audience: AUDIENCE, dataDir: dir, sealer });
    const kms = await KmsFixture.create({ bearer: { keys: discoveredKeys(idp.issuer), issuer: idp.issuer } });
    try {
      const foreign = await deviceToken(other, 'bob');
      expect(claims(foreign).iss).to.equal(other.issuer);
      const bob = await kms.user(`bob@${USER_DOMAIN}`, { token: foreign });
      let e: unknown;
      try {
        await bob.session.handshake();
      } catch (x) {
        e = x;
      }
      expect(e).to.be.instanceOf(KmsError);
      expect((e as KmsError).status).to.equal(401);
      expect((e as Error).message).to.match(/iss/);
    } finally {
      await kms.close();
      await other.close();
    }
    const elsewhere = new Authenticator({
      bearer: {
        keys: discoveredKeys(idp.issuer),
        issuer: idp.issuer,
        audience: 'kms://other.example.com',
        algorithms: ['ES256'],
        userClaim: 'sub',
        clockToleranceSec: 0,
      },
      serviceAnchors: [],
    });
    let e: unknown;
    try {
      await elsewhere.authenticate({ bearer: aliceToken }, new Date());
    } catch (x) {
      e = x;
    }
    expect((e as KmsError).status).to.equal(401);
    expect((e as Error).message).to.match(/aud/);
  });

  it("startKms with auth.issuerUrl: no local issuer, and the engine takes the IdP's token in a handshake", async () => {
    const config = loadConfig({ env: { KMS_DATA_DIR: join(dir, 'kms'), KMS_DOMAIN: 'kms.example.com', KMS_AUTH_ISSUER_URL: idp.issuer } });
    expect(tokenAudience(config)).to.equal(AUDIENCE);
    const running = await startKms(config, silentLogger(), { xmpp: false });
    try {
      expect(running.issuer).to.equal(undefined);
      const channel = await openRawChannel(running.identity, (m) => running.engine.handle(m), aliceToken);
      expect(channel.uri).to.match(/\/ecdhe\//);
    } finally {
      await running.stop();
    }
  });

  it('discovers again after a failure: a KMS started before its identity provider comes to trust it', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const { port } = probe.address() as AddressInfo;
    await new Promise((r) => probe.close(r));
    const keys = discoveredKeys(`http://127.0.0.1:${port}`, { cooldownMs: 0 });
    const header = JSON.parse(Buffer.from(aliceToken.split('.')[0]!, 'base64url').toString()) as { alg: string; kid: string };
    let e: unknown;
    try {
      await keys(header, { payload: '', signature: '' } as never);
    } catch (x) {
      e = x;
    }
    expect(e).to.be.instanceOf(DiscoveryError);
    // The same signing key (same data folder), now served at that address.
    const late = await startIdp({ userDomain: USER_DOMAIN, audience: AUDIENCE, dataDir: dir, sealer, port });
    try {
      expect(await keys(header, { payload: '', signature: '' } as never)).to.not.equal(undefined);
    } finally {
      await late.close();
    }
  });

  it('authorization code + PKCE for the browser client: log in, exchange the code, get the same kind of token', async () => {
    const config = await oidc.discovery(new URL(idp.issuer), BROWSER_CLIENT_ID, undefined, oidc.None(), { execute: [oidc.allowInsecureRequests] });
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(config, {
      redirect_uri: REDIRECT,
      scope: 'openid kms',
      resource: AUDIENCE,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
    });
    const b = new FormClient();
    const login = await b.go(url.href);
    expect(login.url).to.match(/\/interaction\/[^/]+$/);
    const back = await b.go(login.url, { form: { username: 'carol', password: 'carol-password' }, stopAt: REDIRECT });
    expect(back.url.startsWith(REDIRECT)).to.equal(true);
    const tokens = await oidc.authorizationCodeGrant(config, new URL(back.url), { pkceCodeVerifier: verifier, expectedState: state }, { resource: AUDIENCE });
    expect(claims(tokens.access_token)).to.include({ iss: idp.issuer, aud: AUDIENCE, sub: `carol@${USER_DOMAIN}` });
    const auth = new Authenticator({
      bearer: { keys: discoveredKeys(idp.issuer), issuer: idp.issuer, audience: AUDIENCE, algorithms: ['ES256'], userClaim: 'sub', clockToleranceSec: 0 },
      serviceAnchors: [],
    });
    expect((await auth.authenticate({ bearer: tokens.access_token }, new Date())).id).to.equal(`carol@${USER_DOMAIN}`);
    // The browser's page calls the token endpoint across origins: allowed from the client's redirect URI's origin only.
    const cors = async (origin: string) =>
      (
        await fetch(`${idp.issuer}/token`, {
          method: 'POST',
          headers: { origin, 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({
            client_id: BROWSER_CLIENT_ID,
            grant_type: 'authorization_code',
            code: 'x',
            redirect_uri: REDIRECT,
            code_verifier: verifier,
          }),
        })
      ).headers.get('access-control-allow-origin');
    expect(await cors(new URL(REDIRECT).origin)).to.equal(new URL(REDIRECT).origin);
    expect(await cors('https://evil.example.com')).to.equal(null);
  });
});
