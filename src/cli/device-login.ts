/**
 * Signing in a terminal program with the OAuth 2.0 device authorization grant (RFC 8628), through
 * openid-client: the issuer's discovery document, the device authorization endpoint, the
 * verification URI and user code shown to the user, then the token endpoint polled until the user
 * has approved (or refused, or the code expired). The access token is the bearer for the KMS.
 */
import * as oidc from 'openid-client';
import { plainHttpAllowed } from '../util/plain-http.js';

/** The public client of `kms chat` at the development identity provider (src/auth/idp.ts). */
const DEFAULT_DEVICE_CLIENT_ID = 'kms-chat';

export interface DeviceLoginOptions {
  /** The OpenID Connect issuer URL. */
  issuer: string;
  clientId?: string;
  /** The KMS's audience, sent as the resource indicator (RFC 8707). */
  audience: string;
  /** Scopes asked for (default `openid kms`). */
  scope?: string;
  /** Shows the user where to go and which code to enter. */
  prompt: (p: { verificationUri: string; verificationUriComplete?: string; userCode: string; expiresInSec: number }) => void;
  signal?: AbortSignal;
}

export interface DeviceTokens {
  accessToken: string;
  /** When the access token expires, in ms since the epoch (undefined when the server did not say). */
  expiresAt: number | undefined;
}

/** Runs the device flow; resolves with the access token once the user has approved. */
export async function deviceLogin(o: DeviceLoginOptions): Promise<DeviceTokens> {
  const issuer = new URL(o.issuer);
  const config = await oidc.discovery(
    issuer,
    o.clientId ?? DEFAULT_DEVICE_CLIENT_ID,
    undefined,
    oidc.None(),
    // Plain http is for a development identity provider on loopback only.
    plainHttpAllowed(issuer) ? { execute: [oidc.allowInsecureRequests] } : undefined,
  );
  const params = { scope: o.scope ?? 'openid kms', resource: o.audience };
  const device = await oidc.initiateDeviceAuthorization(config, params);
  o.prompt({
    verificationUri: device.verification_uri,
    ...(device.verification_uri_complete ? { verificationUriComplete: device.verification_uri_complete } : {}),
    userCode: device.user_code,
    expiresInSec: device.expires_in,
  });
  const tokens = await oidc.pollDeviceAuthorizationGrant(config, device, { resource: o.audience }, o.signal ? { signal: o.signal } : undefined);
  const expiresIn = tokens.expiresIn();
  return { accessToken: tokens.access_token, expiresAt: expiresIn === undefined ? undefined : Date.now() + expiresIn * 1000 };
}
