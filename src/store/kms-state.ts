/**
 * The KMS's records on a KvStore: chains, blocks, the hash index, membership intervals, group
 * keys, entity keys and ephemeral keys. Each logical change is one atomic batch, and the indexes
 * make "is X a member at block n" and "which block has this hash" single lookups that never
 * replay the chain. Reads go through bounded caches; on LevelDB this process is the only writer
 * (LevelDB takes an exclusive lock on its directory), so the caches are updated on every write.
 *
 * On a store that several KMS instances share (etcd, `shared`), another instance may change a
 * record at any time. Then what others may change is read through, never served from a cache:
 * chain records (length, tail), memberships, entity keys, ephemeral keys and unbound GKs; only
 * records that never change once written are cached (block refs, bound GKs). etcd's reads are
 * linearizable, so a decision made after a write was acknowledged (on any instance) sees it: the
 * staleness bound is zero for requests that start after the acknowledgement. Appends and binds are
 * conditional (batchIf): an append commits only if its first block's number is still free (the tail
 * is still the one checked), a bind only if the GK record is still the unbound one read.
 *
 * Key layout (all values JSON unless noted):
 *   c!<chain>              ChainRecord
 *   b!<chain>!<seq:10>     the block's compact JWS, exactly as received or signed
 *   h!<hash>               BlockRef
 *   m!<chain>!<entity>     Interval[]: the entity is a member at seq s iff from <= s < to
 *   g!<gk>                 GkRecord (key material sealed)
 *   k!<entity>!<kid>       EntityKeyRecord (public)
 *   e!<ephemeral>          EphemeralRecord (key material sealed)
 */
import type { JsonWebKey } from 'node:crypto';
import type { BatchOp, KvStore } from './kv.js';
import { Lru } from '../util/lru.js';
import { KeyedMutex } from '../util/mutex.js';

export interface ChainRecord {
  id: string;
  uri: string;
  created: string;
  /** Number of blocks, genesis included. */
  length: number;
  /** Hex SHA-256 of the last block's compact JWS. */
  tail: string;
}

export interface BlockRef {
  chain: string;
  seq: number;
}

/** [from, to): to is null while the membership is open. */
export type Interval = [number, number | null];

export interface GkRecord {
  id: string;
  uri: string;
  created: string;
  /** The authenticated user that created it (-03 is silent; XEP "Group Key Retrieval Policy"). */
  owner: string;
  clientId: string;
  /** Sealed raw key bytes. */
  key: string;
  /** Hash of the block it is bound to, when bound. */
  block?: string;
}

export interface EntityKeyRecord {
  entity: string;
  kid: string;
  jwk: JsonWebKey;
  created: string;
  /** Registration order, so "the entity's newest key" needs no clock. */
  seq: number;
}

export interface EphemeralRecord {
  id: string;
  uri: string;
  userId: string;
  clientId: string;
  createDate: string;
  expirationDate: string;
  /** Sealed K_ephemeral. */
  key: string;
  /** The KMS's public half, as sent in the handshake response. */
  jwk: JsonWebKey;
}

const pad = (n: number) => n.toString().padStart(10, '0');
const chainKey = (id: string) => `c!${id}`;
const blockKey = (chain: string, seq: number) => `b!${chain}!${pad(seq)}`;
const hashKey = (hash: string) => `h!${hash.toLowerCase()}`;
const memberKey = (chain: string, entity: string) => `m!${chain}!${entity}`;
const gkKey = (id: string) => `g!${id}`;
const entityKeyKey = (entity: string, kid: string) => `k!${entity}!${kid}`;
const ephemeralKey = (id: string) => `e!${id}`;

/** Is `intervals` open at seq s? */
export function isMemberAt(intervals: readonly Interval[], seq: number): boolean {
  for (const [from, to] of intervals) {
    if (from <= seq && (to === null || seq < to)) return true;
  }
  return false;
}

/** The staged writes of one append (or genesis), applied in one batch by `commitBlocks`. */
export interface BlockWrite {
  chain: ChainRecord;
  blocks: { seq: number; jws: string; hash: string }[];
  members: Map<string, Interval[]>;
}

/** Typed, cached access to the KMS's records. */
export class KmsState {
  readonly kv: KvStore;
  readonly #chains = new Lru<string, ChainRecord>(10_000);
  readonly #hashes = new Lru<string, BlockRef>(100_000);
  readonly #members = new Lru<string, Interval[]>(100_000);
  readonly #gks = new Lru<string, GkRecord>(100_000);
  readonly #entityKeys = new Lru<string, EntityKeyRecord[]>(50_000);
  readonly #ephemeral = new Lru<string, EphemeralRecord>(50_000);
  /** Recently deleted ephemeral keys (ids are random UUIDs, never reused): a read racing a delete must not re-cache one. */
  readonly #deletedEphemeral = new Lru<string, true>(10_000);
  /** GK writes, one at a time per GK (a binding and a re-seal must not undo each other). */
  readonly #gkLocks = new KeyedMutex();

  /** True when other instances write to the store too (see the file's comment). */
  readonly shared: boolean;

  constructor(kv: KvStore, opts: { shared?: boolean } = {}) {
    this.kv = kv;
    this.shared = opts.shared === true;
    if (this.shared && kv.batchIf === undefined) throw new TypeError('KmsState: a shared store must have conditional batches (batchIf)');
  }

  async #json<T>(key: string): Promise<T | undefined> {
    const v = await this.kv.get(key);
    return v === undefined ? undefined : (JSON.parse(v) as T);
  }

  /** A record read through `cache` (by `id`); a missing record is not cached. */
  async #cached<T>(cache: Lru<string, T>, id: string, key: string): Promise<T | undefined> {
    let r = cache.get(id);
    if (!r) {
      r = await this.#json<T>(key);
      if (r) cache.set(id, r);
    }
    return r;
  }

  // ---- chains and blocks ----

  async chain(id: string): Promise<ChainRecord | undefined> {
    if (this.shared) return this.#json<ChainRecord>(chainKey(id));
    return this.#cached(this.#chains, id, chainKey(id));
  }

  async blockRef(hash: string): Promise<BlockRef | undefined> {
    const h = hash.toLowerCase();
    return this.#cached(this.#hashes, h, hashKey(h));
  }

  /** Blocks of `chain` with seq >= from, in order. */
  async blocks(chain: string, from = 0): Promise<string[]> {
    const out: string[] = [];
    for await (const v of this.blocksFrom(chain, from)) out.push(v);
    return out;
  }

  /** Blocks of `chain` with seq >= from, in order, read as the caller goes (stop early to read no further). */
  async *blocksFrom(chain: string, from = 0): AsyncIterable<string> {
    for await (const [, v] of this.kv.entries({ gte: blockKey(chain, from), lt: `b!${chain}!~` })) yield v;
  }

  async intervals(chain: string, entity: string): Promise<Interval[]> {
    const k = memberKey(chain, entity);
    if (this.shared) return (await this.#json<Interval[]>(k)) ?? [];
    let m = this.#members.get(k);
    if (!m) {
      m = (await this.#json<Interval[]>(k)) ?? [];
      this.#members.set(k, m);
    }
    return m;
  }

  /**
   * Writes a genesis or a run of appended blocks, the chain record and the touched memberships,
   * atomically and durably. On a shared store, only if the first block's number is still free and
   * no block is stored already (another instance's append or genesis got there first): false then,
   * and nothing is written. In one process the callers serialise appends per chain (true always).
   */
  async commitBlocks(w: BlockWrite): Promise<boolean> {
    const ops: BatchOp[] = [{ type: 'put', key: chainKey(w.chain.id), value: JSON.stringify(w.chain) }];
    for (const b of w.blocks) {
      ops.push({ type: 'put', key: blockKey(w.chain.id, b.seq), value: b.jws });
      ops.push({ type: 'put', key: hashKey(b.hash), value: JSON.stringify({ chain: w.chain.id, seq: b.seq }) });
    }
    for (const [entity, iv] of w.members) {
      ops.push({ type: 'put', key: memberKey(w.chain.id, entity), value: JSON.stringify(iv) });
    }
    if (this.shared) {
      const first = w.blocks[0];
      const conditions = first === undefined ? [] : [{ key: blockKey(w.chain.id, first.seq), equals: undefined }];
      for (const b of w.blocks) conditions.push({ key: hashKey(b.hash), equals: undefined });
      return this.kv.batchIf!(conditions, ops, { durable: true });
    }
    await this.kv.batch(ops, { durable: true });
    this.#chains.set(w.chain.id, w.chain);
    for (const b of w.blocks) this.#hashes.set(b.hash, { chain: w.chain.id, seq: b.seq });
    for (const [entity, iv] of w.members) this.#members.set(memberKey(w.chain.id, entity), iv);
    return true;
  }

  // ---- group keys ----

  async gk(id: string): Promise<GkRecord | undefined> {
    if (this.shared) {
      // A bound GK never changes again (but for its seal, see putGk): cached; an unbound one is read through.
      const cached = this.#gks.get(id);
      if (cached?.block !== undefined) return cached;
      const g = await this.#json<GkRecord>(gkKey(id));
      if (g?.block !== undefined) this.#gks.set(id, g);
      return g;
    }
    return this.#cached(this.#gks, id, gkKey(id));
  }

  /**
   * Binds an unbound GK to `block`; returns the GK as stored after (bound to `block`, or to another
   * block when it was bound already), or undefined when there is no such GK. On a shared store the
   * write is conditional on the record read being still the stored one, so two instances binding
   * one GK at once bind it once.
   */
  async bindGk(id: string, block: string): Promise<GkRecord | undefined> {
    if (!this.shared) {
      const g = await this.gk(id);
      if (!g || g.block !== undefined) return g;
      const next = { ...g, block };
      await this.putGk(next);
      return next;
    }
    for (;;) {
      const raw = await this.kv.get(gkKey(id));
      if (raw === undefined) return undefined;
      const g = JSON.parse(raw) as GkRecord;
      if (g.block !== undefined) return g;
      const next = { ...g, block };
      // Lost only to a concurrent bind or re-seal: read again (at most one bind wins).
      if (await this.kv.batchIf!([{ key: gkKey(id), equals: raw }], [{ type: 'put', key: gkKey(id), value: JSON.stringify(next) }], { durable: true })) {
        this.#gks.set(id, next);
        return next;
      }
    }
  }

  /**
   * Writes a GK record. A GK's key never changes once made, but its seal may have been renewed
   * meanwhile (a master key rotation, resealGk): the stored seal is kept over the one `g` carries.
   */
  async putGk(g: GkRecord): Promise<void> {
    await this.#gkLocks.run(g.id, async () => {
      const stored = await this.gk(g.id);
      if (stored && stored.key !== g.key) g.key = stored.key;
      await this.kv.batch([{ type: 'put', key: gkKey(g.id), value: JSON.stringify(g) }], { durable: true });
      this.#gks.set(g.id, g);
    });
  }

  /**
   * Re-seals a stored GK's key (`reseal` maps the sealed value to the new one) in the cached
   * record itself, so that its unsealed key stays cached; false when there is no such GK.
   */
  async resealGk(id: string, reseal: (sealed: string) => string): Promise<boolean> {
    return this.#gkLocks.run(id, async () => {
      const g = await this.gk(id);
      if (!g) return false;
      const next = reseal(g.key);
      if (next === g.key) return true;
      await this.kv.batch([{ type: 'put', key: gkKey(id), value: JSON.stringify({ ...g, key: next }) }], { durable: true });
      g.key = next;
      return true;
    });
  }

  // ---- entity keys ----

  /** The entity's registered keys, oldest first. */
  async entityKeys(entity: string): Promise<EntityKeyRecord[]> {
    let list = this.shared ? undefined : this.#entityKeys.get(entity);
    if (!list) {
      list = [];
      for await (const [, v] of this.kv.entries({ gte: `k!${entity}!`, lt: `k!${entity}!~` })) {
        // The range also holds the keys of an entity whose id extends this one ("a@b!x"): keep only this entity's.
        const r = JSON.parse(v) as EntityKeyRecord;
        if (r.entity === entity) list.push(r);
      }
      list.sort((a, b) => a.seq - b.seq);
      if (!this.shared) this.#entityKeys.set(entity, list);
    }
    return list;
  }

  async putEntityKey(r: EntityKeyRecord): Promise<void> {
    await this.kv.batch([{ type: 'put', key: entityKeyKey(r.entity, r.kid), value: JSON.stringify(r) }], { durable: true });
    this.#entityKeys.delete(r.entity);
  }

  async deleteEntityKey(entity: string, kid: string): Promise<void> {
    await this.kv.batch([{ type: 'del', key: entityKeyKey(entity, kid) }], { durable: true });
    this.#entityKeys.delete(entity);
  }

  // ---- ephemeral keys ----

  async ephemeral(id: string): Promise<EphemeralRecord | undefined> {
    // Shared: another instance may have deleted it; read through.
    if (this.shared) return this.#json<EphemeralRecord>(ephemeralKey(id));
    let e = this.#ephemeral.get(id);
    if (!e) {
      if (this.#deletedEphemeral.get(id)) return undefined;
      e = await this.#json<EphemeralRecord>(ephemeralKey(id));
      // Deleted while it was being read: it must not come back through the cache.
      if (e && !this.#deletedEphemeral.get(id)) this.#ephemeral.set(id, e);
      else e = undefined;
    }
    return e;
  }

  /**
   * Ephemeral keys are written behind (KvStore `deferred`): readable at once, on disk within
   * milliseconds, in batches. Losing one in a crash only costs the client a new handshake (its
   * next request gets the signed 401 "unknown ephemeral key"). On a shared store it is written at
   * once (committed by etcd before the handshake is answered), so that the client's next request
   * may reach any instance.
   */
  async putEphemeral(e: EphemeralRecord): Promise<void> {
    if (!this.shared) this.#ephemeral.set(e.id, e);
    await this.kv.batch([{ type: 'put', key: ephemeralKey(e.id), value: JSON.stringify(e) }], this.shared ? {} : { deferred: true });
  }

  /**
   * Re-seals a stored ephemeral key (as resealGk), written behind like the key itself; a key
   * deleted meanwhile stays deleted (the check and the write are in one turn of the event loop,
   * and batches land in call order).
   */
  async resealEphemeral(id: string, reseal: (sealed: string) => string): Promise<boolean> {
    const e = await this.ephemeral(id);
    if (!e) return false;
    const next = reseal(e.key);
    if (next === e.key) return true;
    if (this.#deletedEphemeral.get(id)) return false;
    if (this.shared) {
      // Another instance may delete it meanwhile: written only over the record read (stored as JSON.stringify makes it).
      const read = JSON.stringify(e);
      return this.kv.batchIf!([{ key: ephemeralKey(id), equals: read }], [{ type: 'put', key: ephemeralKey(id), value: JSON.stringify({ ...e, key: next }) }]);
    }
    e.key = next;
    await this.kv.batch([{ type: 'put', key: ephemeralKey(id), value: JSON.stringify(e) }], { deferred: true });
    return true;
  }

  /** Deletes durably: the delete lands after the key's deferred put, so the key never comes back. */
  async deleteEphemeral(id: string): Promise<void> {
    this.#deletedEphemeral.set(id, true);
    this.#ephemeral.delete(id);
    await this.kv.batch([{ type: 'del', key: ephemeralKey(id) }], { durable: true });
  }

  /** Deletes expired ephemeral keys; returns how many. */
  async sweepEphemeral(now: Date): Promise<number> {
    const ops: BatchOp[] = [];
    for await (const [k, v] of this.kv.entries({ gte: 'e!', lt: 'e!~' })) {
      const e = JSON.parse(v) as EphemeralRecord;
      if (Date.parse(e.expirationDate) <= now.getTime()) {
        ops.push({ type: 'del', key: k });
        this.#deletedEphemeral.set(e.id, true);
        this.#ephemeral.delete(e.id);
      }
    }
    await this.kv.batch(ops);
    return ops.length;
  }

  /** Entries in each read cache, by name (for metrics: counting them costs nothing). */
  cacheSizes(): Record<string, number> {
    return {
      chains: this.#chains.size,
      hashes: this.#hashes.size,
      members: this.#members.size,
      gks: this.#gks.size,
      entityKeys: this.#entityKeys.size,
      ephemeral: this.#ephemeral.size,
    };
  }

  /** Writes every deferred record (ephemeral keys) to the store. */
  async flush(): Promise<void> {
    await this.kv.flush();
  }

  /** Flushes the deferred writes, then closes the store. */
  async close(): Promise<void> {
    await this.kv.close();
  }
}
