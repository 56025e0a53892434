/**
 * The KMS as one client sees it: discovery and validation of the KMS's static key, the secure
 * channel (KmsSession), the client's entity key, chains it can verify itself, and group keys
 * fetched once and cached. This is the API an XMPP client uses; room.ts builds the encrypted
 * multi-user chat on it.
 */
import { KmsSession, type CredentialSource, type KmsResponse, type Transport } from './session.js';
import type { RetryOptions } from './retry.js';
import { discoverKms, fetchKmsIdentity, xmppTransport, type KmsIdentityInfo, type XmppEntity } from './xmpp.js';
import { createEntityKey, openGk, registrationProof, type EntityKey, type EntityKeyOptions, type GroupKey } from './keys.js';
import { blockHash, signBlock, verifyChain, type Operation, type VerifiedChain } from './chain.js';
import { KmsError, isClientCode } from '../protocol/errors.js';
import { BadResponseError, ChainVerificationError, KmsResponseError } from './errors.js';
import { publicJwk, type JWK } from './webcrypto.js';
import type { TrustAnchor } from './x509.js';
import { canonicalEntity } from '../protocol/entity.js';
import { encodeSegment } from '../protocol/uri.js';
import { kmsAuthority } from '../protocol/federation.js';
import { Lru } from '../util/lru.js';

export interface KmsClientOptions extends RetryOptions {
  /** The client's XMPP connection (an @xmpp/client instance, online). */
  xmpp?: XmppEntity;
  /** The KMS component's JID, e.g. kms.example.com; found with disco on the user's domain when omitted. */
  kms?: string;
  /** Trust anchors for the KMS certificate: the client's own configuration, never the server's word. */
  anchors: TrustAnchor[];
  /** The user's access token for the KMS; called again at every handshake, so it may refresh. */
  bearer: CredentialSource;
  /** The entity key of this device (default: a new one, registered at connect; see entityKeyType). */
  entityKey?: EntityKey;
  /** The kind of entity key to make when none is given (default RSA-2048, PCG-01's mandatory-to-implement type). */
  entityKeyType?: EntityKeyOptions;
  /** How long one IQ may take before it is retried (default 10 s). */
  timeoutMs?: number;
  /** Renew the ephemeral key this long before it expires (default 60 s). */
  renewBeforeMs?: number;
  /** How many group keys to keep (default 10,000). */
  gkCacheSize?: number;
  /**
   * How long to keep asking for a group key that the KMS says is not bound yet (409 NOT_BOUND: its
   * creator may still bind it, XEP "Sharing a File"), with backoff, before giving up (default 15 s; 0 = never retry).
   */
  notBoundWaitMs?: number;
  /** Tests: a transport other than XMPP, and the identity it would have discovered. */
  transport?: Transport;
  identity?: KmsIdentityInfo;
}

/** A chain as the client last verified it, with its blocks. */
export interface ChainView extends VerifiedChain {
  blocks: string[];
}

/** One user's (one device's) access to one KMS. */
export class KmsClient {
  readonly session: KmsSession;
  readonly kmsJid: string;
  readonly kmsId: string;
  readonly kmsKey: JWK;
  readonly entityKey: EntityKey;
  #entity = '';
  readonly #gks: Lru<string, GroupKey>;
  readonly #gkInFlight = new Map<string, Promise<GroupKey>>();
  readonly #chains = new Map<string, ChainView>();
  readonly #entityKeys = new Map<string, { kid: string; key: JWK }[]>();
  /** Peers' static keys by authority, as this client's KMS vouches for them (see #curator). */
  readonly #peerKeys = new Map<string, Promise<JWK>>();
  readonly #notBoundWaitMs: number;

  private constructor(o: KmsClientOptions & { kms: string; entityKey: EntityKey }, identity: KmsIdentityInfo, transport: Transport) {
    this.kmsJid = o.kms;
    this.kmsId = identity.kid;
    this.kmsKey = identity.key;
    this.entityKey = o.entityKey;
    this.#gks = new Lru(o.gkCacheSize ?? 10_000);
    this.#notBoundWaitMs = o.notBoundWaitMs ?? 15_000;
    this.session = new KmsSession({
      kmsKid: identity.kid,
      kmsKey: identity.key,
      transport,
      bearer: o.bearer,
      retry: {
        ...(o.retries !== undefined ? { retries: o.retries } : {}),
        ...(o.backoffMs !== undefined ? { backoffMs: o.backoffMs } : {}),
        ...(o.maxBackoffMs !== undefined ? { maxBackoffMs: o.maxBackoffMs } : {}),
      },
      ...(o.renewBeforeMs !== undefined ? { renewBeforeMs: o.renewBeforeMs } : {}),
    });
  }

  /**
   * Validates the KMS's static key (certificate chain to `anchors`, certificate for the kid's
   * host), makes a channel and registers this device's entity key.
   */
  static async connect(o: KmsClientOptions): Promise<KmsClient> {
    let identity = o.identity;
    let transport = o.transport;
    let kms = o.kms;
    if (!identity || !transport) {
      const xmpp = o.xmpp as (XmppEntity & { jid?: { domain?: string } | null }) | undefined;
      if (!xmpp) throw new Error('KmsClient.connect: give an XMPP connection (xmpp) or a transport and identity');
      if (!kms) {
        const domain = xmpp.jid?.domain;
        if (!domain) throw new Error('KmsClient.connect: the XMPP connection is not online; cannot discover the KMS');
        kms = await discoverKms(xmpp, domain, o.timeoutMs ?? 10_000);
        if (!kms) throw new Error(`no KMS found on ${domain} (no disco item with the feature urn:xmpp:kms:0)`);
      }
      identity ??= await fetchKmsIdentity(xmpp, kms, o.anchors, o.timeoutMs ?? 10_000);
      transport ??= xmppTransport(xmpp, kms, o.timeoutMs ?? 10_000);
    }
    if (!kms) throw new Error('KmsClient.connect: name the KMS (kms) when giving a transport');
    const entityKey = o.entityKey ?? (await createEntityKey(o.entityKeyType));
    const client = new KmsClient({ ...o, kms, entityKey }, identity, transport);
    await client.#register();
    return client;
  }

  /** The user's bare JID as the KMS authenticated it. */
  get entity(): string {
    return this.#entity;
  }

  async #register(): Promise<void> {
    const eph = await this.session.handshake();
    this.#entity = eph.userId;
    await this.session.request('post', '/entity-keys', {
      jwk: this.entityKey.publicJwk,
      proof: await registrationProof(this.entityKey, eph.userId, eph.uri),
    });
  }

  #abs(path: string): string {
    return `${this.kmsId}${path}`;
  }

  async ping(): Promise<KmsResponse> {
    return this.session.request('update', '/ping');
  }

  // ---- chains ----

  /** Creates a chain whose genesis adds this user and `members`; returns it verified. */
  async createChain(members: string[]): Promise<ChainView> {
    const entities = [...new Set([this.entity, ...members.map(toEntity)])];
    const res = await this.session.request('post', this.#abs('/blocks'), {
      blockPayload: { operations: entities.map((entity) => ({ entity, optype: 'add' })) },
    });
    const genesis = res.block as string;
    const view = await this.#verify([genesis], this.kmsId);
    this.#chains.set(view.uri, view);
    return view;
  }

  /**
   * The chain, brought up to date and verified here: only blocks after the known tail are fetched,
   * a page at a time (XEP "Reading a Chain"): while the KMS answers "more", the next get names the
   * last block received as its antecedent, and each page is verified after the blocks before it.
   * Every get goes in an IQ of its own, where the KMS has room for at least one block: a page that
   * comes back empty is asked for once more, and a second empty one is a bad response.
   */
  async chain(uri: string): Promise<ChainView> {
    const known = this.#chains.get(uri);
    let view = known;
    let empty = 0;
    for (;;) {
      const res = await this.session.request('get', uri, view ? { antecedent: view.tail } : undefined);
      const fresh = res.blocks;
      if (!Array.isArray(fresh) || !fresh.every((b) => typeof b === 'string')) throw new BadResponseError('the get-chain response has no "blocks"');
      if (fresh.length > 0) {
        empty = 0;
        view = await this.#verify(fresh, uri, view);
        if (view.uri !== uri) throw new BadResponseError(`the KMS returned chain ${view.uri} for ${uri}`);
      }
      // A KMS before paging sends no "more": its one response is the whole chain.
      if (res.more !== true) break;
      if (fresh.length === 0 && ++empty > 1) throw new BadResponseError(`the KMS answered "more" but no block of ${uri}, twice`);
    }
    if (!view) throw new BadResponseError(`the KMS returned no block of ${uri}`);
    if (view !== known) this.#chains.set(uri, view);
    return view;
  }

  /** The chain as last verified, without asking the KMS. */
  knownChain(uri: string): ChainView | undefined {
    return this.#chains.get(uri);
  }

  /**
   * The static key of the KMS that keeps `uri`: this client's, or a peer's as this client's KMS
   * validated it (get /peers/<kms>, XEP "Federation"), asked once.
   */
  async #curator(uri: string): Promise<{ kmsKey: JWK; kmsId: string }> {
    const authority = kmsAuthority(uri);
    if (!authority || `kms://${authority}` === this.kmsId) return { kmsKey: this.kmsKey, kmsId: this.kmsId };
    let key = this.#peerKeys.get(authority);
    if (!key) {
      key = this.session.request('get', `/peers/${encodeSegment(authority)}`).then((res) => {
        if (res.kid !== `kms://${authority}` || !res.jwk || typeof res.jwk !== 'object')
          throw new BadResponseError(`the KMS answered no key for kms://${authority}`);
        return publicJwk(res.jwk as JWK);
      });
      key.catch(() => this.#peerKeys.delete(authority));
      this.#peerKeys.set(authority, key);
    }
    return { kmsKey: await key, kmsId: `kms://${authority}` };
  }

  /** Verifies `fresh` of chain `uri`: a whole chain, or, after `known`, only the blocks that follow it (known ones are not checked again). */
  async #verify(fresh: string[], uri: string, known?: ChainView): Promise<ChainView> {
    const opts = { ...(await this.#curator(uri)), keysOf: (e: string) => this.#keysOf(e) };
    const blocks = known ? [...known.blocks, ...fresh] : fresh;
    try {
      return { ...(await verifyChain(fresh, opts, known)), blocks };
    } catch {
      // A member may have registered a key since we cached theirs: fetch again, verify once more.
      this.#entityKeys.clear();
    }
    try {
      return { ...(await verifyChain(fresh, opts, known)), blocks };
    } catch (e) {
      // Failures of the requests for keys (KMS refusals, timeouts, bad responses) pass as they are;
      // anything else means that the chain does not verify.
      if (e instanceof KmsResponseError || (e instanceof KmsError && isClientCode(e.code))) throw e;
      throw new ChainVerificationError(`the chain does not verify: ${(e as Error).message}`, { cause: e });
    }
  }

  async #keysOf(entity: string): Promise<{ kid: string; key: JWK }[]> {
    let keys = this.#entityKeys.get(entity);
    if (!keys) {
      const res = await this.session.request('get', `/entity-keys/${encodeSegment(entity)}`);
      keys = (res.entityKeys as { kid: string; jwk: JWK }[]).map((k) => ({ kid: k.kid, key: publicJwk(k.jwk) }));
      this.#entityKeys.set(entity, keys);
    }
    return keys;
  }

  /**
   * Appends one block with `operations`, signed by this device's key. When another member
   * appended first (409), the chain is fetched again and the block re-signed on the new tail.
   */
  async append(uri: string, operations: Operation[], attempts = 3): Promise<ChainView> {
    for (let i = 0; ; i++) {
      const chain = await this.chain(uri);
      const block = await signBlock(
        this.entityKey,
        this.entity,
        chain.tail,
        operations.map((o) => ({ entity: toEntity(o.entity), optype: o.optype })),
      );
      try {
        await this.session.request('post', uri, { blocks: [block] });
      } catch (e) {
        if (!(e instanceof KmsResponseError && e.code === 'CONFLICT') || i + 1 >= attempts) throw e;
        continue;
      }
      const after = await this.chain(uri);
      if (!after.hashes.includes(await blockHash(block))) {
        throw new BadResponseError('the appended block is not in the chain the KMS returns');
      }
      return after;
    }
  }

  addMembers(uri: string, entities: string[]): Promise<ChainView> {
    return this.append(
      uri,
      entities.map((entity) => ({ entity, optype: 'add' })),
    );
  }

  removeMembers(uri: string, entities: string[]): Promise<ChainView> {
    return this.append(
      uri,
      entities.map((entity) => ({ entity, optype: 'remove' })),
    );
  }

  // ---- group keys ----

  /** A new group key, bound at once to `block` (a block hash) when given, made by the KMS that keeps `chain` (default: this client's). */
  async createGk(block?: string, chain?: string): Promise<GroupKey> {
    // A key for a chain that a peer KMS keeps is made there, through this client's KMS (XEP "Federation").
    const authority = chain === undefined ? undefined : kmsAuthority(chain);
    const where = authority && `kms://${authority}` !== this.kmsId ? `kms://${authority}/gks` : this.#abs('/gks');
    const res = await this.session.request('post', where, block ? { block, kid: this.entityKey.kid } : { kid: this.entityKey.kid });
    return this.#keep(res.gk as string);
  }

  /** Checks the KMS's signature on a GK, unwraps it with this device's key and caches it. */
  async #keep(gkJws: string, expectedUri?: string): Promise<GroupKey> {
    let gk: GroupKey;
    try {
      gk = await openGk(gkJws, this.kmsKey, this.entityKey);
    } catch (e) {
      throw new BadResponseError(`the group key the KMS returned cannot be opened: ${(e as Error).message}`, { cause: e });
    }
    if (expectedUri !== undefined && gk.uri !== expectedUri) throw new BadResponseError(`the KMS returned ${gk.uri} for ${expectedUri}`);
    this.#gks.set(gk.uri, gk);
    return gk;
  }

  /** Binds an unbound group key of this user's to a block. */
  async bindGk(uri: string, block: string): Promise<GroupKey> {
    const res = await this.session.request('post', uri, { block, kid: this.entityKey.kid });
    return this.#keep(res.gk as string, uri);
  }

  /**
   * `n` new unbound group keys, made ahead of time (-03 §3.1): encrypt with one now, bind it to a
   * block when sharing (bindGk). Unbound, only this user can fetch them.
   */
  async createUnboundGks(n: number): Promise<GroupKey[]> {
    if (!Number.isInteger(n) || n < 1 || n > 100) throw new RangeError('make 1 to 100 group keys at a time');
    const out: GroupKey[] = [];
    for (let i = 0; i < n; i++) out.push(await this.createGk());
    return out;
  }

  /**
   * The group key `uri`: from the cache, or fetched from the KMS once however many callers ask
   * at the same time. A refusal (403: not a member under the policy) is thrown to every caller.
   * "Not bound yet" (409 NOT_BOUND) is asked again with backoff for up to notBoundWaitMs (XEP
   * "Sharing a File"), then thrown.
   */
  async gk(uri: string): Promise<GroupKey> {
    const cached = this.#gks.get(uri);
    if (cached) return cached;
    let p = this.#gkInFlight.get(uri);
    if (!p) {
      p = (async () => {
        const deadline = Date.now() + this.#notBoundWaitMs;
        for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
          try {
            const res = await this.session.request('get', uri, { entity: this.entity, kid: this.entityKey.kid });
            return await this.#keep(res.gk as string, uri);
          } catch (e) {
            const left = deadline - Date.now();
            if (!(e instanceof KmsResponseError && e.code === 'NOT_BOUND') || left <= 0) throw e;
            await new Promise((r) => setTimeout(r, Math.min(left, delay / 2 + Math.random() * (delay / 2))));
          }
        }
      })().finally(() => this.#gkInFlight.delete(uri));
      this.#gkInFlight.set(uri, p);
    }
    return p;
  }

  /** Is this group key cached (no KMS request needed)? */
  hasGk(uri: string): boolean {
    return this.#gks.get(uri) !== undefined;
  }

  /** Deletes the ephemeral key on the KMS and wipes cached key material. */
  async close(): Promise<void> {
    for (const gk of this.#gks.values()) gk.key.fill(0);
    this.#gks.clear();
    await this.session.close().catch(() => undefined);
  }
}

/**
 * The canonical spelling of a user address given by a caller (`Bob@Example.com/phone` becomes
 * `bob@example.com`), as the XEP requires on the wire ("Entities and Hashes"); a RangeError when it
 * is not a user address at all.
 */
function toEntity(input: string): string {
  const e = canonicalEntity(input);
  if (e === undefined) throw new RangeError(`not a user address (a bare JID, user@domain): ${JSON.stringify(String(input).slice(0, 100))}`);
  return e;
}
