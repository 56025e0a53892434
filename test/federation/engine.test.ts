// Federation between two KMS engines in one process (XEP "Federation"): KMS B (kms.b.test) asks
// KMS A (kms.a.test) on behalf of its user Bob, through the real PeerLinks and the real client
// session, over a transport that hands A's engine each message with the 'from' a server would
// stamp. The same flows over real XMPP servers and s2s are in test/e2e/federation.test.ts.
import { expect } from 'chai';
import { createHash, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import xml, { type Element } from '@xmpp/xml';
import { LocalIssuer } from '../../src/auth/local-issuer.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { KmsSession } from '../../src/client/session.js';
import type { XmppEntity } from '../../src/client/xmpp.js';
import { createDevIdentity, issueCertificate } from '../../src/crypto/x509.js';
import { Sealer } from '../../src/crypto/seal.js';
import { signCompact } from '../../src/crypto/jws.js';
import { generateEcKeyPair, thumbprint } from '../../src/crypto/keys.js';
import { engineConfig } from '../../src/engine/config.js';
import { EngineDeps } from '../../src/engine/context.js';
import { Authenticator, type PeerSettings } from '../../src/engine/credentials.js';
import { KmsEngine } from '../../src/engine/engine.js';
import { makeIdentity, type StaticIdentity } from '../../src/engine/identity.js';
import { PeerLinks } from '../../src/federation/peers.js';
import { NS } from '../../src/protocol/namespace.js';
import { peerProofClaims } from '../../src/protocol/federation.js';
import { KmsState } from '../../src/store/kms-state.js';
import type { KvStore } from '../../src/store/kv.js';
import { openMemoryStore } from '../support/memory-store.js';

interface Node {
  domain: string;
  engine: KmsEngine;
  deps: EngineDeps;
  identity: StaticIdentity;
  caCertPem: string;
  caKey: KeyObject;
  issuer: LocalIssuer;
  kv: KvStore;
}

async function node(domain: string): Promise<Node> {
  const dev = await createDevIdentity({ domain, keyType: 'EC' });
  const identity = makeIdentity(domain, dev.privateKey, dev.chainPem);
  const kv = await openMemoryStore();
  const issuer = await LocalIssuer.ephemeral(`https://idp.${domain}`);
  const deps = new EngineDeps({ config: engineConfig(domain, {}), state: new KmsState(kv), sealer: new Sealer(randomBytes(32)), identity });
  const n: Node = { domain, engine: undefined as unknown as KmsEngine, deps, identity, caCertPem: dev.caCertPem, caKey: dev.caPrivateKey, issuer, kv };
  arm(n, []);
  return n;
}

/** (Re)makes a node's engine, federating with `peers`. */
function arm(n: Node, peers: PeerSettings[]): KmsEngine {
  const authenticator = new Authenticator({
    bearer: {
      keys: n.issuer.keys(),
      issuer: `https://idp.${n.domain}`,
      audience: `kms://${n.domain}`,
      algorithms: ['ES256'],
      userClaim: 'sub',
      clockToleranceSec: 30,
    },
    serviceAnchors: [],
    peers,
  });
  n.engine = new KmsEngine({ deps: n.deps, authenticator });
  return n.engine;
}

const peer = (n: Node, domains: string[], extra: string[] = []): PeerSettings => ({
  kms: n.domain,
  domains,
  anchors: [n.caCertPem, ...extra].map((p) => new X509Certificate(p)),
});

/** What a server routes to `target` from the component `from`: identity IQs and KMS IQs. */
function link(target: Node, from: string, log?: string[]): XmppEntity {
  return {
    status: 'online',
    iqCaller: {
      async request(stanza: Element): Promise<Element> {
        const child = stanza.getChildElements()[0]!;
        if (child.name === 'identity') {
          const { x5c, ...jwk } = target.identity.jwk;
          return xml(
            'iq',
            { type: 'result' },
            xml(
              'identity',
              { xmlns: NS, kid: target.identity.kid, 'sig-alg': target.identity.sigAlg, 'enc-alg': target.identity.handshakeAlgs[0] },
              xml('jwk', {}, JSON.stringify(jwk)),
              ...x5c.map((c) => xml('x5c', {}, c)),
            ),
          );
        }
        const messages = child.getChildren('message').map((m) => m.getText());
        log?.push(...messages);
        const out = await Promise.all(messages.map((m) => target.engine.handle(m, { from })));
        return xml('iq', { type: 'result' }, xml('kms', { xmlns: NS }, ...out.map((m) => xml('message', {}, m))));
      },
    },
  };
}

async function user(n: Node, jid: string): Promise<KmsClient> {
  const token = await n.issuer.mint({ subject: jid, audience: `kms://${n.domain}` });
  const { x5c: _x5c, kid: _kid, ...key } = n.identity.jwk;
  return KmsClient.connect({
    kms: n.domain,
    transport: (messages) => Promise.all(messages.map((m) => n.engine.handle(m))),
    identity: { kid: n.identity.kid, key: key as never, sigAlg: n.identity.sigAlg, encAlg: n.identity.handshakeAlgs[0]! },
    bearer: () => token,
    anchors: [],
  });
}

async function digest(kv: KvStore): Promise<string> {
  const h = createHash('sha256');
  for await (const [k, v] of kv.entries({})) h.update(`${k}\u0000${v}\u0000`);
  return h.digest('hex');
}

/** The store's digest once writes behind have landed (two reads 50 ms apart agree). */
async function settled(kv: KvStore): Promise<string> {
  let last = await digest(kv);
  for (;;) {
    await new Promise((r) => setTimeout(r, 50));
    const now = await digest(kv);
    if (now === last) return now;
    last = now;
  }
}

type Send = (m: string) => Promise<string>;

/**
 * A KMS session to `target` with a jwk credential of `identity` (made by `make` when given), as
 * from `from`; `replay` may send each request again (from whom it likes) and answer with that.
 * Resolves with the handshake's refusal (status and reason) or the open session.
 */
async function handshakeAs(
  target: Node,
  from: string,
  identity: StaticIdentity,
  o: { make?: (eph: Record<string, unknown>) => Record<string, unknown>; replay?: { on: boolean; send?: (m: string, send: Send) => Promise<string> } } = {},
) {
  const { x5c: _x5c, kid: _kid, ...key } = target.identity.jwk;
  const { kid: _own, ...jwk } = identity.jwk;
  const send: Send = (m) => target.engine.handle(m, { from });
  const session = new KmsSession({
    kmsKid: target.identity.kid,
    kmsKey: key as never,
    transport: (messages) =>
      Promise.all(
        messages.map(async (m) => {
          const answer = await send(m);
          return o.replay?.on && o.replay.send ? o.replay.send(m, send) : answer;
        }),
      ),
    credential: async (eph) => {
      if (o.make && eph) return o.make(eph as Record<string, unknown>);
      if (!eph) return { jwk };
      const claims = peerProofClaims(target.identity.kid, thumbprint(eph as never), new Date());
      return { jwk, proof: signCompact(identity.privateKey, identity.sigAlg, JSON.stringify(claims)) };
    },
  });
  try {
    await session.handshake();
    return { status: 201, reason: '', session };
  } catch (e) {
    const err = e as { status?: number; message: string };
    return { status: err.status ?? 0, reason: err.message, session };
  }
}

async function refusal(p: Promise<unknown>): Promise<{ status?: number; code?: string; message: string }> {
  try {
    await p;
  } catch (e) {
    return e as { status?: number; code?: string; message: string };
  }
  throw new Error('expected a refusal');
}

describe('federation: KMS B asks KMS A for its user (engines in process)', function () {
  this.timeout(30_000);
  let a: Node;
  let b: Node;
  let alice: KmsClient;
  let bob: KmsClient;
  let sent: string[];
  let chain: string;
  let gkUri: string;

  before(async () => {
    // Each KMS has its own CA and trusts the other's for the other's name and users.
    a = await node('kms.a.test');
    b = await node('kms.b.test');
    arm(a, [peer(b, ['b.test'])]);
    arm(b, [peer(a, ['a.test'])]);
    sent = [];
    b.deps.federation = new PeerLinks({ peers: [peer(a, ['a.test'])], self: b.identity, entity: () => link(a, 'kms.b.test', sent) });
    a.deps.federation = new PeerLinks({ peers: [peer(b, ['b.test'])], self: a.identity, entity: () => link(b, 'kms.a.test') });
    alice = await user(a, 'alice@a.test');
    bob = await user(b, 'bob@b.test');
    const c = await alice.createChain(['bob@b.test']);
    chain = c.uri;
    gkUri = (await alice.createGk(c.tail)).uri;
  });

  it("gives Bob, through his own KMS, the group key Alice made on hers: the same key, signed by KMS B, after KMS A's check", async () => {
    const forBob = await bob.gk(gkUri);
    const forAlice = await alice.gk(gkUri);
    expect(Buffer.from(forBob.key).equals(Buffer.from(forAlice.key))).to.equal(true);
    expect(forBob.block).to.equal(forAlice.block);
    expect(sent.length, 'B asked A').to.be.greaterThan(0);
  });

  it("lets Bob verify A's chain: A's static key vouched for by B, Alice's entity key fetched through B", async () => {
    const view = await bob.chain(chain);
    expect([...view.members[view.members.length - 1]!].sort()).to.deep.equal(['alice@a.test', 'bob@b.test']);
  });

  it('lets Bob make a group key on the chain at A, through B, that Alice then fetches', async () => {
    const view = await bob.chain(chain);
    const gk = await bob.createGk(view.tail, chain);
    expect(gk.uri.startsWith('kms://kms.a.test/gks/')).to.equal(true);
    const same = await alice.gk(gk.uri);
    expect(Buffer.from(same.key).equals(Buffer.from(gk.key))).to.equal(true);
  });

  it('refuses Bob at once through B after Alice removes him on A (403, the reason naming A)', async () => {
    const view = await alice.removeMembers(chain, ['bob@b.test']);
    const after = await alice.createGk(view.tail);
    let err: { status?: number; code?: string; message: string } | undefined;
    try {
      await bob.gk(after.uri);
    } catch (e) {
      err = e as typeof err;
    }
    expect(err?.status).to.equal(403);
    expect(err?.code).to.equal('FORBIDDEN');
    expect(err?.message).to.match(/^kms\.a\.test: bob@b\.test may not have/);
  });

  it('answers 404 to an object of a KMS that is not one of its peers', async () => {
    const err = await refusal(bob.gk(`kms://kms.c.test/gks/${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`));
    expect(err.status).to.equal(404);
    expect(err.message).to.match(/kms:\/\/kms\.c\.test, a KMS this one does not federate with/);
  });

  it('asks nothing of a peer whose static key does not validate against its anchors: 502 PEER_FAILED', async () => {
    const c = await node('kms.c.test');
    const asked: string[] = [];
    const other = await node('kms.b.test');
    // B2 federates with "kms.c.test" under A's anchors: C's key does not chain to them.
    other.deps.federation = new PeerLinks({
      peers: [{ ...peer(a, ['c.test']), kms: 'kms.c.test' }],
      self: other.identity,
      entity: () => link(c, 'kms.b.test', asked),
    });
    arm(other, [{ ...peer(a, ['c.test']), kms: 'kms.c.test' }]);
    const carolOfB = await user(other, 'bob@b.test');
    const err = await refusal(carolOfB.gk(`kms://kms.c.test/gks/${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`));
    expect(err.status).to.equal(502);
    expect(err.code).to.equal('PEER_FAILED');
    expect(asked, 'no KMS request sent to it').to.deep.equal([]);
  });

  it("a group key that A's static key did not sign: 502 PEER_FAILED, and Bob gets no key", async () => {
    const fresh = await alice.createChain(['bob@b.test']);
    const gk = await alice.createGk(fresh.tail);
    const sign = a.deps.signAsKms.bind(a.deps);
    const forger = generateEcKeyPair();
    a.deps.signAsKms = (payload: unknown) => signCompact(forger.privateKey, 'ES256', JSON.stringify(payload), { kid: a.identity.kid });
    try {
      const err = await refusal(bob.gk(gk.uri));
      expect(err.status).to.equal(502);
      expect(err.message).to.match(/not signed by its static key/);
    } finally {
      a.deps.signAsKms = sign;
    }
  });

  it("validates a peer's static key again when its answers stop verifying (a new key): one 502, then the new key", async () => {
    const a2 = await node('kms.a.test');
    const bb = await node('kms.b.test');
    let target = a;
    bb.deps.federation = new PeerLinks({
      peers: [{ ...peer(a, ['a.test']), anchors: [new X509Certificate(a.caCertPem), new X509Certificate(a2.caCertPem)] }],
      self: bb.identity,
      entity: () => link(target, 'kms.b.test'),
    });
    arm(a2, [peer(bb, ['b.test'])]);
    const bobOfBb = await user(bb, 'bob@b.test');
    const keyOf = async () => (await bobOfBb.session.request('get', '/peers/kms.a.test')).jwk as Record<string, unknown>;
    expect((await keyOf()).x).to.equal(a.identity.jwk.x);
    // A's key is replaced (a new certificate): what B sends is sealed to the old key, and what comes back does not verify with it.
    target = a2;
    const err = await refusal(bobOfBb.gk(gkUri));
    expect(err.status).to.equal(502);
    expect((await keyOf()).x, 'the new key, validated against the anchors').to.equal(a2.identity.jwk.x);
  });

  describe('refusals at KMS A, with its store unchanged', () => {
    let before: string;
    beforeEach(async () => {
      before = await settled(a.kv);
    });
    afterEach(async () => {
      expect(await settled(a.kv), "A's store").to.equal(before);
    });

    it('a KMS whose certificate leads to no anchor of A (a domain A does not trust): 401', async () => {
      const c = await node('kms.c.test');
      const r = await handshakeAs(a, 'kms.c.test', c.identity);
      expect(r.status).to.equal(401);
      expect(r.reason).to.match(/jwk credential rejected/);
    });

    it("a certificate from B's CA for another name than kms.b.test: 403, not a peer", async () => {
      const pair = generateEcKeyPair();
      const pem = await issueCertificate({
        issuerKey: b.caKey,
        issuerCertPem: b.caCertPem,
        subjectPublicKey: pair.publicKey,
        commonName: 'kms.c.test',
        dnsNames: ['kms.c.test'],
      });
      const impostor = makeIdentity('kms.c.test', pair.privateKey, [pem, b.caCertPem]);
      const r = await handshakeAs(a, 'kms.c.test', impostor);
      expect(r.status).to.equal(403);
      expect(r.reason).to.match(/kms:\/\/kms\.c\.test is not a KMS this KMS federates with/);
    });

    it('an expired certificate for kms.b.test: 401', async () => {
      const old = await createDevIdentity({ domain: 'kms.b.test', keyType: 'EC', validityDays: 1, now: new Date(Date.now() - 30 * 86_400_000) });
      const strict: Node = { ...a };
      arm(strict, [peer(b, ['b.test'], [old.caCertPem])]);
      const r = await handshakeAs(strict, 'kms.b.test', makeIdentity('kms.b.test', old.privateKey, old.chainPem));
      expect(r.status).to.equal(401);
      expect(r.reason).to.match(/expired|not valid/i);
    });

    it("B's certificate without the proof, or with a proof for another KMS or another handshake: 401 / 403", async () => {
      const { kid: _k, ...jwk } = b.identity.jwk;
      const none = await handshakeAs(a, 'kms.b.test', b.identity, { make: () => ({ jwk }) });
      expect(none.status).to.equal(401);
      expect(none.reason).to.match(/proof of possession/);
      const sign = (claims: unknown) => signCompact(b.identity.privateKey, 'ES256', JSON.stringify(claims));
      const elsewhere = await handshakeAs(a, 'kms.b.test', b.identity, {
        make: (eph) => ({ jwk, proof: sign(peerProofClaims('kms://kms.z.test', thumbprint(eph as never), new Date())) }),
      });
      expect(elsewhere.status).to.equal(403);
      expect(elsewhere.reason).to.match(/made for kms:\/\/kms\.z\.test/);
      const otherHandshake = await handshakeAs(a, 'kms.b.test', b.identity, {
        make: () => ({ jwk, proof: sign(peerProofClaims(a.identity.kid, 'x'.repeat(43), new Date())) }),
      });
      expect(otherHandshake.status).to.equal(403);
      expect(otherHandshake.reason).to.match(/another handshake/);
    });

    it('B asking for a user of a third domain (carol@c.test): 403', async () => {
      const r = await handshakeAs(a, 'kms.b.test', b.identity);
      expect(r.status).to.equal(201);
      before = await settled(a.kv); // the channel is state; the refused request must add none
      const err = await refusal(r.session.request('get', gkUri, { entity: 'carol@c.test' }));
      expect(err.status).to.equal(403);
      expect(err.message).to.match(/kms\.b\.test does not speak for carol@c\.test/);
    });

    it('Bob, not a member of a chain, asking through B: 403 with the reason of A', async () => {
      const other = await alice.createChain([]);
      const gk = await alice.createGk(other.tail);
      before = await settled(a.kv);
      const err = await refusal(bob.gk(gk.uri));
      expect(err.status).to.equal(403);
      expect(err.message).to.match(/kms\.a\.test: bob@b\.test may not have/);
    });

    it("Bob appending to A's chain or binding A's group key through B, and B creating a chain at A: 403", async () => {
      const view = await bob.chain(chain);
      before = await settled(a.kv);
      const append = await refusal(bob.addMembers(chain, ['dave@b.test']));
      expect(append.status).to.equal(403);
      expect(append.message).to.match(/not available through federation/);
      const bind = await refusal(bob.bindGk(gkUri, view.tail));
      expect(bind.status).to.equal(403);
      const r = await handshakeAs(a, 'kms.b.test', b.identity);
      before = await settled(a.kv);
      const genesis = await refusal(r.session.request('post', '/blocks', { blockPayload: { operations: [{ entity: 'bob@b.test', optype: 'add' }] } }));
      expect(genesis.status).to.equal(403);
    });

    it('a request B makes at A for an object of a third KMS is not forwarded: 403', async () => {
      const r = await handshakeAs(a, 'kms.b.test', b.identity);
      before = await settled(a.kv);
      const err = await refusal(r.session.request('get', `kms://kms.b.test/gks/${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`, { entity: 'bob@b.test' }));
      expect(err.status).to.equal(403);
      expect(err.message).to.match(/not forwarded again/);
    });

    it("a request of B's sent again by another peer: 403; sent again as from B: 409 (a repeated requestId)", async () => {
      const replay: { on: boolean; send?: (m: string, send: Send) => Promise<string> } = { on: false };
      const r = await handshakeAs(a, 'kms.b.test', b.identity, { replay });
      expect(r.status).to.equal(201);
      before = await settled(a.kv);
      replay.on = true;
      replay.send = (m) => a.engine.handle(m, { from: 'kms.c.test' });
      const fromC = await refusal(r.session.request('get', chain, { entity: 'bob@b.test' }));
      expect(fromC.status).to.equal(403);
      expect(fromC.message).to.match(/came from kms\.c\.test/);
      replay.send = (m, send) => send(m);
      const again = await refusal(r.session.request('get', chain, { entity: 'bob@b.test' }));
      expect(again.status).to.equal(409);
      expect(again.message).to.match(/requestId .* was already used/);
    });
  });
});
