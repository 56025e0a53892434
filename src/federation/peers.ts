/**
 * The asking side of federation (xep/kms.xml "Federation", use case 3.3 of -03): this KMS talks to
 * a peer KMS over XMPP, through its own component connection and the servers' s2s links, as a
 * client of the peer. It validates the peer's static key against the anchors configured for that
 * peer (never the XMPP servers' word), authenticates with a "jwk" credential (its own static key,
 * its "x5c" chain and a proof of possession, src/protocol/federation.ts), and keeps one channel per
 * peer, renewed before it expires and made again when the peer forgets it (the client library's
 * KmsSession). Requests name the user they are made for in "entity".
 */
import type { Element } from '@xmpp/xml';
import { signCompact } from '../crypto/jws.js';
import { thumbprint } from '../crypto/keys.js';
import { peerProofClaims, speaksFor } from '../protocol/federation.js';
import { KmsSession, type KmsResponse } from '../client/session.js';
import { fetchKmsIdentity, xmppTransport, type KmsIdentityInfo, type XmppEntity } from '../client/xmpp.js';
import type { StaticIdentity } from '../engine/identity.js';
import type { PeerSettings } from '../engine/credentials.js';
import type { Logger } from '../util/logger.js';

/** A peer KMS, as the configuration names it: its component domain, the user domains it speaks for, its anchors. */
export type FederationPeer = PeerSettings;

interface Link {
  identity: KmsIdentityInfo;
  session: KmsSession;
}

/** How long a peer's validated static key is trusted before it is fetched and validated again (a renewed or revoked certificate). */
const LINK_MAX_AGE_MS = 3_600_000;

/** How long to wait for a peer's answer (s2s may have to connect first). */
const PEER_TIMEOUT_MS = 20_000;

/** This KMS's links to its peers. */
export class PeerLinks {
  readonly #peers: FederationPeer[];
  readonly #self: StaticIdentity;
  readonly #entity: () => XmppEntity | undefined;
  readonly #log: Logger | undefined;
  readonly #links = new Map<string, Promise<Link>>();
  /** When each link was made: it is made again after LINK_MAX_AGE_MS. */
  readonly #made = new Map<string, number>();

  constructor(o: { peers: FederationPeer[]; self: StaticIdentity; entity: () => XmppEntity | undefined; logger?: Logger }) {
    this.#peers = o.peers;
    this.#self = o.self;
    this.#entity = o.entity;
    this.#log = o.logger;
  }

  /** The peer whose KMS is `authority` (a kms:// URI's authority). */
  byAuthority(authority: string): FederationPeer | undefined {
    return this.#peers.find((p) => p.kms === authority.toLowerCase());
  }

  /** The peer that speaks for `entity` (a canonical bare JID). */
  byEntity(entity: string): FederationPeer | undefined {
    return this.#peers.find((p) => speaksFor(p.domains, entity));
  }

  /** The peer's static key, validated against its anchors. */
  async identity(peer: FederationPeer): Promise<KmsIdentityInfo> {
    return (await this.#link(peer)).identity;
  }

  /** One request to the peer; a refusal (status >= 400) is thrown as the client library's KmsResponseError. */
  async request(peer: FederationPeer, method: string, uri: string, body?: Record<string, unknown>): Promise<KmsResponse> {
    const pending = this.#link(peer);
    const link = await pending;
    try {
      return await link.session.request(method, uri, body);
    } catch (e) {
      const status = (e as { status?: number }).status;
      // No answer or an answer that does not verify (a peer whose key changed): validate its key again next time.
      if (!status && this.#links.get(peer.kms) === pending) this.#links.delete(peer.kms);
      // The peer and the operation, never the user or the key.
      this.#log?.warn(
        { event: status ? 'peer-refused' : 'peer-failed', peer: peer.kms, method, resource: uri.split('/')[3] ?? uri.split('/')[1], status },
        `${peer.kms} ${status ? `refused a ${method} (${status})` : `did not answer a ${method}: ${(e as Error).message}`}`,
      );
      throw e;
    }
  }

  #link(peer: FederationPeer): Promise<Link> {
    let link = this.#links.get(peer.kms);
    if (link && this.#made.get(peer.kms)! + LINK_MAX_AGE_MS < Date.now()) link = undefined;
    if (!link) {
      this.#made.set(peer.kms, Date.now());
      link = this.#connect(peer);
      // A failed link is made again at the next request (the peer or the s2s link may come back).
      link.catch((e: unknown) => {
        this.#links.delete(peer.kms);
        this.#log?.warn({ event: 'peer-link-failed', peer: peer.kms, reason: (e as Error).message }, `no link to ${peer.kms}: ${(e as Error).message}`);
      });
      this.#links.set(peer.kms, link);
    }
    return link;
  }

  async #connect(peer: FederationPeer): Promise<Link> {
    const xmpp = this.#stamped();
    const anchors = peer.anchors.map((a) => a.toString());
    const identity = await fetchKmsIdentity(xmpp, peer.kms, anchors, PEER_TIMEOUT_MS);
    const self = this.#self;
    const receiver = `kms://${peer.kms}`;
    const jwk = { ...self.jwk } as Record<string, unknown>;
    delete jwk.kid;
    const session = new KmsSession({
      kmsKid: identity.kid,
      kmsKey: identity.key,
      transport: xmppTransport(xmpp, peer.kms, PEER_TIMEOUT_MS),
      clientId: `kms-federation-${self.domain}`,
      credential: async (handshakeJwk) => {
        if (!handshakeJwk) return { jwk };
        const claims = peerProofClaims(receiver, thumbprint(handshakeJwk as never), new Date());
        return { jwk, proof: signCompact(self.privateKey, self.sigAlg, JSON.stringify(claims), { kid: self.kid }) };
      },
    });
    this.#log?.info({ event: 'peer-link', peer: peer.kms }, `federation link to ${peer.kms}: static key validated`);
    return { identity, session };
  }

  /** The component connection, with this KMS's domain as the 'from' of what it sends (XEP-0114). */
  #stamped(): XmppEntity {
    const domain = this.#self.domain;
    const entity = () => {
      const e = this.#entity();
      if (!e) throw new Error('the KMS is not connected to its XMPP server');
      return e;
    };
    return {
      get status() {
        return entity().status ?? 'offline';
      },
      iqCaller: {
        request: (stanza: Element, timeout?: number) => {
          stanza.attrs.from ??= domain;
          return entity().iqCaller.request(stanza, timeout);
        },
      },
    };
  }
}
