/**
 * Where an identity provider may be reached over plain HTTP: only on loopback (the development
 * IdP of `kms run --idp`), where nothing crosses a network. The web page's sign-in
 * (src/converse/oidc.ts) and the terminal's (src/cli/device-login.ts) both ask this; every other
 * issuer must be https.
 */
export function plainHttpAllowed(url: URL): boolean {
  if (url.protocol !== 'http:') return false;
  const host = url.hostname;
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
