/**
 * A short demonstration that the KMS answers over XMPP, as two users would use it: both log in,
 * fetch and validate the KMS's key, make a secure channel and register their entity keys; Alice
 * makes a chain with both of them and a group key bound to it; Bob fetches that key through the
 * KMS and decrypts what Alice encrypted. Every step is printed.
 */
import { randomUUID, type X509Certificate } from 'node:crypto';
import { client, type Client } from '@xmpp/client';
import { xml } from '@xmpp/xml';
import type { KmsConfig } from './config.js';
import { fetchKmsIdentity, xmppTransport } from '../client/xmpp.js';
import { KmsSession } from '../client/session.js';
import { generateEntityKey, openGk, registrationProof } from '../client/keys.js';
import { blockHash } from '../client/chain.js';
import { LocalIssuer } from '../auth/local-issuer.js';
import { Sealer } from '../crypto/seal.js';
import { encryptDir, decryptDir } from '../crypto/jwe.js';
import { masterKey } from './start.js';
import { resolve } from 'node:path';

export interface DemoOptions {
  config: KmsConfig;
  service: string;
  domain: string;
  users: { username: string; password: string }[];
  anchors: X509Certificate[];
  log: (line: string) => void;
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
  const issuer = await LocalIssuer.open(resolve(config.dataDir), config.auth.issuer, new Sealer(await masterKey(config)));
  const audience = config.auth.audience ?? `kms://${component}`;
  const [a, b] = o.users as [{ username: string; password: string }, { username: string; password: string }];
  const people = [];
  for (const u of [a, b]) {
    const jid = `${u.username}@${o.domain}`;
    const xmpp = await login(o.service, o.domain, u.username, u.password);
    log(`✓ ${jid} logged in to ${o.service}`);
    const id = await fetchKmsIdentity(xmpp, component, o.anchors);
    log(`✓ ${jid} validated the KMS key ${id.kid} (${id.sigAlg}) against the trust anchor`);
    const token = await issuer.mint({ subject: jid, audience });
    const session = new KmsSession({ kmsKid: id.kid, kmsKey: id.key, transport: xmppTransport(xmpp, component), bearer: () => token });
    const eph = await session.handshake();
    log(`✓ ${jid} made a secure channel (${eph.uri}, until ${eph.expirationDate})`);
    const key = generateEntityKey();
    await session.request('post', '/entity-keys', { jwk: key.publicJwk, proof: registrationProof(key, jid, eph.uri) });
    log(`✓ ${jid} registered its entity key ${key.kid}`);
    people.push({ jid, xmpp, session, key, kmsKey: id.key });
  }
  const [alice, bob] = people as [(typeof people)[0], (typeof people)[0]];
  const ping = await alice.session.request('update', '/ping');
  log(`✓ ping: ${ping.status}`);
  const genesis = (await alice.session.request('post', `kms://${component}/blocks`, {
    blockPayload: { operations: [{ entity: alice.jid, optype: 'add' }, { entity: bob.jid, optype: 'add' }] },
  })).block as string;
  log(`✓ ${alice.jid} created a chain with ${alice.jid} and ${bob.jid} (genesis ${blockHash(genesis).slice(0, 16)}…)`);
  const gk = openGk((await alice.session.request('post', `kms://${component}/gks`, { block: blockHash(genesis) })).gk as string, alice.kmsKey, alice.key);
  log(`✓ ${alice.jid} got group key ${gk.uri}, bound to the genesis block`);
  const secret = encryptDir(gk.key, 'Hello Bob, the XMPP server cannot read this.', { enc: 'A256GCM', kid: gk.uri });
  const forBob = openGk((await bob.session.request('get', gk.uri, { entity: bob.jid })).gk as string, bob.kmsKey, bob.key);
  const text = decryptDir(secret, forBob.key, ['A256GCM']).plaintext.toString('utf8');
  log(`✓ ${bob.jid} fetched the group key through the KMS and decrypted: "${text}"`);
  for (const p of people) {
    await p.session.close();
    await p.xmpp.stop();
  }
  log('demo complete: the KMS answers over XMPP');
}
