/**
 * Signing in to the KMS from a web page with OpenID Connect: the authorization code flow with
 * PKCE (RFC 7636) for a public client, through oauth4webapi (a certified OpenID relying-party
 * library, the one under openid-client). The page calls `oidcSignIn` before converse.initialize:
 * the first time it sends the browser to the identity provider's login; back on the page with the
 * code, it exchanges it for an access token for the KMS's audience (an RFC 8707 resource
 * indicator) and resolves with the signed-in user and a `bearer()` for the plugin's `kms_bearer`,
 * which renews the token with the refresh token when it is about to expire. Tokens are kept in
 * sessionStorage (this tab only; closing it signs out).
 */
import * as oauth from 'oauth4webapi';
import { plainHttpAllowed } from '../util/plain-http.js';

export interface OidcSignInOptions {
  /** The identity provider's issuer URL (discovery: <issuer>/.well-known/openid-configuration). */
  issuer: string;
  /** The KMS's audience, asked for as the resource (kms://<kms domain>). */
  audience: string;
  /** The public client's id at the identity provider (default kms-web, the development IdP's). */
  clientId?: string;
  /** Where the IdP sends the browser back (default: this page's origin and path); registered at the IdP. */
  redirectUri?: string;
  /** The scopes asked for (default "openid kms"). */
  scope?: string;
}

export interface OidcSession {
  /** The signed-in user (the ID token's sub: the user's bare JID). */
  user: string;
  /** A valid access token for the KMS, renewed when about to expire. */
  bearer(): Promise<string>;
  /** Forgets this tab's tokens; the next page load signs in again. */
  signOut(): void;
}

interface Stored {
  user: string;
  accessToken: string;
  /** Epoch milliseconds. */
  expiresAt: number;
  refreshToken?: string;
}

interface Pending {
  state: string;
  verifier: string;
  /** The page to go back to after the sign-in (with its query, e.g. ?room=). */
  back: string;
}

interface BrowserGlobals {
  location: { href: string; origin: string; pathname: string; assign(url: string): void };
  history: { replaceState(data: unknown, unused: string, url: string): void };
  sessionStorage: { getItem(k: string): string | null; setItem(k: string, v: string): void; removeItem(k: string): void };
}
const browser = () => globalThis as unknown as BrowserGlobals;

/** Renew this long before the token expires. */
const RENEW_MARGIN_MS = 60_000;

/**
 * Signs in: resolves with the session, or never resolves when it has sent the browser to the
 * identity provider (the page loads again when it comes back). Rejects with the IdP's error
 * (e.g. access_denied) when the sign-in failed.
 */
export async function oidcSignIn(o: OidcSignInOptions): Promise<OidcSession> {
  const g = browser();
  const issuer = new URL(o.issuer);
  const insecure = plainHttpAllowed(issuer);
  const http = { [oauth.allowInsecureRequests]: insecure };
  const client: oauth.Client = { client_id: o.clientId ?? 'kms-web' };
  const redirectUri = o.redirectUri ?? `${g.location.origin}${g.location.pathname}`;
  const key = `xmpp-kms:oidc:${o.issuer}:${client.client_id}`;
  const pendingKey = `${key}:pending`;
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oidc', ...http }));

  const save = (s: Stored) => g.sessionStorage.setItem(key, JSON.stringify(s));
  const fromTokens = (r: oauth.TokenEndpointResponse, user: string, previousRefresh?: string): Stored => {
    const refreshToken = r.refresh_token ?? previousRefresh;
    return { user, accessToken: r.access_token, expiresAt: Date.now() + (r.expires_in ?? 300) * 1000, ...(refreshToken ? { refreshToken } : {}) };
  };
  const session = (s: Stored): OidcSession => {
    let current = s;
    let renewing: Promise<string> | undefined;
    return {
      user: s.user,
      signOut: () => g.sessionStorage.removeItem(key),
      bearer: async () => {
        if (current.expiresAt - RENEW_MARGIN_MS > Date.now()) return current.accessToken;
        if (!current.refreshToken) throw new Error('the sign-in has expired: reload the page to sign in again');
        renewing ??= (async () => {
          try {
            const r = await oauth.processRefreshTokenResponse(
              as,
              client,
              await oauth.refreshTokenGrantRequest(as, client, oauth.None(), current.refreshToken!, {
                additionalParameters: { resource: o.audience },
                ...http,
              }),
            );
            current = fromTokens(r, current.user, current.refreshToken);
            save(current);
            return current.accessToken;
          } finally {
            renewing = undefined;
          }
        })();
        return renewing;
      },
    };
  };

  const here = new URL(g.location.href);
  const pendingText = g.sessionStorage.getItem(pendingKey);
  if (pendingText && (here.searchParams.has('code') || here.searchParams.has('error'))) {
    g.sessionStorage.removeItem(pendingKey);
    const pending = JSON.parse(pendingText) as Pending;
    let params: URLSearchParams;
    try {
      params = oauth.validateAuthResponse(as, client, here, pending.state);
    } catch (e) {
      // The IdP's answer (error=access_denied, login_required...) in the words it gave, else a state mismatch.
      if (e instanceof oauth.AuthorizationResponseError) throw new Error(`${e.error}${e.error_description ? `: ${e.error_description}` : ''}`);
      throw e;
    }
    const response = await oauth.processAuthorizationCodeResponse(
      as,
      client,
      await oauth.authorizationCodeGrantRequest(as, client, oauth.None(), params, redirectUri, pending.verifier, {
        additionalParameters: { resource: o.audience },
        ...http,
      }),
    );
    const user = oauth.getValidatedIdTokenClaims(response)?.sub;
    if (!user) throw new Error('the identity provider returned no ID token subject');
    const stored = fromTokens(response, user);
    save(stored);
    // The address bar goes back to the page the user opened, without the code.
    g.history.replaceState(null, '', pending.back);
    return session(stored);
  }

  const storedText = g.sessionStorage.getItem(key);
  if (storedText) {
    const stored = JSON.parse(storedText) as Stored;
    if (stored.expiresAt - RENEW_MARGIN_MS > Date.now() || stored.refreshToken) return session(stored);
  }

  if (!as.authorization_endpoint) throw new Error(`${o.issuer} has no authorization endpoint`);
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const pending: Pending = { state, verifier, back: here.pathname + here.search };
  g.sessionStorage.setItem(pendingKey, JSON.stringify(pending));
  const target = new URL(as.authorization_endpoint);
  for (const [k, v] of Object.entries({
    client_id: client.client_id,
    redirect_uri: redirectUri,
    response_type: 'code',
    scope: o.scope ?? 'openid kms',
    resource: o.audience,
    state,
    code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
  }))
    target.searchParams.set(k, v);
  g.location.assign(target.href);
  return new Promise<never>(() => undefined);
}
