/**
 * A short demonstration that the KMS answers over XMPP, as two users would use it: both log in,
 * fetch and validate the KMS's key, make a secure channel and register their entity keys; Alice
 * makes a chain with both of them and a group key bound to it; Bob fetches that key through the
 * KMS and decrypts what Alice encrypted. Every step is printed. With an OpenID Connect issuer
 * (the development IdP of `kms run --idp`), each user signs in there with the device authorization
 * grant, the demo approving the code at the IdP with the user's password as a person would in a
 * browser; without one, tokens come from the configuration's local issuer.
 */
import { randomUUID, type X509Certificate } from 'node:crypto';
import { client, type Client } from '@xmpp/client';
import xml from '@xmpp/xml';
import type { KmsConfig } from '../config.js';
import { fetchKmsIdentity } from '../client/xmpp.js';
import { KmsClient } from '../client/kms-client.js';
import { encryptDir, decryptDir } from '../crypto/jwe.js';
import { approveDevice } from '../auth/form-client.js';
import { localTokens, tokenAudience } from '../server.js';
import { deviceLogin } from './device-login.js';

export interface DemoOptions {
  config: KmsConfig;
  service: string;
  domain: string;
  users: { username: string; password: string }[];
  anchors: X509Certificate[];
  /** Sign the users in at this OpenID Connect issuer (their IdP password is the one in `users`). */
  issuer?: string;
  log: (line: string) => void;
}

/** The users' access tokens: through the issuer's device flow, or minted by the local issuer. */
async function tokenSource(o: DemoOptions): Promise<(jid: string, password: string) => Promise<string>> {
  const issuer = o.issuer;
  if (!issuer) {
    const mint = await localTokens(o.config);
    return (jid) => mint(jid);
  }
  return async (jid, password) => {
    let approval: Promise<void> | undefined;
    const { accessToken } = await deviceLogin({
      issuer,
      audience: tokenAudience(o.config),
      prompt: (p) => {
        o.log(`  ${jid}: device sign-in at ${p.verificationUri}, code ${p.userCode} (approved here with the demo password, as a person would in a browser)`);
        approval = approveDevice(p.verificationUriComplete ?? `${p.verificationUri}?user_code=${encodeURIComponent(p.userCode)}`, jid.split('@')[0]!, password);
        approval.catch(() => undefined);
      },
    });
    await approval;
    return accessToken;
  };
}

/** Logs in with SASL PLAIN when offered (fast on loopback), else lets xmpp.js choose. */
export async function login(service: string, domain: string, username: string, password: string): Promise<Client> {
  const xmpp = client({
    service,
    domain,
    resource: `kms-${randomUUID().slice(0, 8)}`,
    credentials: async (authenticate, mechanisms) => {
      // PLAIN (fast; SCRAM is computed in JavaScript) only where the password cannot be overheard:
      // on loopback or over TLS. Elsewhere the strongest mechanism offered.
      const host = new URL(service).hostname;
      const safe = service.startsWith('xmpps:') || host === 'localhost' || host === '::1' || host === '[::1]' || host.startsWith('127.');
      const mechanism = safe && mechanisms.includes('PLAIN') ? 'PLAIN' : (mechanisms.find((m) => m !== 'PLAIN') ?? mechanisms[0]!);
      await authenticate({ username, password }, mechanism, xml('user-agent', { id: randomUUID() }));
    },
  });
  xmpp.on('error', () => undefined);
  xmpp.reconnect.stop();
  await xmpp.start();
  return xmpp;
}

export async function runDemo(o: DemoOptions): Promise<void> {
  const { config, log } = o;
  const component = config.domain;
  const tokens = await tokenSource(o);
  const people: { jid: string; xmpp: Client; kms: KmsClient }[] = [];
  for (const u of o.users.slice(0, 2)) {
    const jid = `${u.username}@${o.domain}`;
    const xmpp = await login(o.service, o.domain, u.username, u.password);
    log(`✓ ${jid} logged in to ${o.service}`);
    const identity = await fetchKmsIdentity(xmpp, component, o.anchors);
    log(`✓ ${jid} validated the KMS key ${identity.kid} (${identity.sigAlg}) against the trust anchor`);
    const token = await tokens(jid, u.password);
    log(`✓ ${jid} got an access token for the KMS from ${o.issuer ?? 'the local issuer'}`);
    const kms = await KmsClient.connect({ xmpp, kms: component, anchors: o.anchors, identity, bearer: () => token });
    const eph = kms.session.ephemeral!;
    log(`✓ ${jid} made a secure channel (${eph.uri}, until ${eph.expirationDate})`);
    log(`✓ ${jid} registered its entity key ${kms.entityKey.kid}`);
    people.push({ jid, xmpp, kms });
  }
  const [alice, bob] = people as [(typeof people)[0], (typeof people)[0]];
  log(`✓ ping: ${(await alice.kms.ping()).status}`);
  const chain = await alice.kms.createChain([bob.jid]);
  log(`✓ ${alice.jid} created a chain with ${alice.jid} and ${bob.jid} (genesis ${chain.tail.slice(0, 16)}…)`);
  const gk = await alice.kms.createGk(chain.tail);
  log(`✓ ${alice.jid} got group key ${gk.uri}, bound to the genesis block`);
  const secret = encryptDir(Buffer.from(gk.key), 'Hello Bob, the XMPP server cannot read this.', { enc: 'A256GCM', kid: gk.uri });
  const forBob = await bob.kms.gk(gk.uri);
  const text = decryptDir(secret, Buffer.from(forBob.key), ['A256GCM']).plaintext.toString('utf8');
  log(`✓ ${bob.jid} fetched the group key through the KMS and decrypted: "${text}"`);
  for (const p of people) {
    await p.kms.close();
    await p.xmpp.stop();
  }
  log('demo complete: the KMS answers over XMPP');
}
