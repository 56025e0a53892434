/**
 * An in-process KMS for tests: the real engine, real crypto, a real store (memory or LevelDB on
 * disk), a local token issuer, and users that talk to it through the real client session with
 * `engine.handle` as the transport.
 */
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmsEngine } from '../../src/engine/engine.js';
import { EngineDeps } from '../../src/engine/context.js';
import { engineConfig, type EngineOverrides } from '../../src/engine/config.js';
import { Authenticator } from '../../src/engine/credentials.js';
import { makeIdentity, type StaticIdentity } from '../../src/engine/identity.js';
import { createDevIdentity, type IdentityKeyType } from '../../src/crypto/x509.js';
import { Sealer } from '../../src/crypto/seal.js';
import { KmsState } from '../../src/store/kms-state.js';
import { openLevelStore, type KvStore } from '../../src/store/kv.js';
import { openMemoryStore } from './memory-store.js';
import type { JWTVerifyGetKey } from 'jose';
import { LocalIssuer } from '../../src/auth/local-issuer.js';
import { KmsSession, type KmsResponse } from '../../src/client/session.js';
import { generateEntityKey, jwkOf, registrationProof, signBlock, type EntityKey } from './node-client.js';
import type { Operation } from '../../src/protocol/blocks.js';
import type { AuditSink } from '../../src/audit/log.js';

export const DOMAIN = 'kms.example.com';
export const AUDIENCE = 'kms://kms.example.com';
export const ISSUER = 'https://idp.example.com';

const identities = new Map<IdentityKeyType, Promise<{ privateKey: KeyObject; chainPem: string[]; caCertPem: string }>>();

/** One dev identity per key type for the whole test run (RSA key generation is slow). */
export function sharedIdentity(keyType: IdentityKeyType) {
  let p = identities.get(keyType);
  if (!p) {
    p = createDevIdentity({ domain: DOMAIN, keyType });
    identities.set(keyType, p);
  }
  return p;
}

export interface FixtureOptions {
  keyType?: IdentityKeyType;
  config?: EngineOverrides;
  /** 'memory' (default), 'disk' (a fresh temp dir), a directory to (re)open, or a store given (`shared`: several instances on it, e.g. etcd). */
  storage?: 'memory' | 'disk' | { dir: string } | { kv: KvStore; shared?: boolean };
  masterKey?: Buffer;
  issuer?: LocalIssuer;
  /** The authenticator's token source, instead of the fixture's local issuer (e.g. an OpenID Connect issuer's discovered keys). */
  bearer?: { keys: JWTVerifyGetKey; issuer: string };
  clock?: () => Date;
  /** The engine's audit log (src/audit/log.ts); none by default. */
  audit?: AuditSink;
}

export class KmsFixture {
  constructor(
    readonly engine: KmsEngine,
    readonly deps: EngineDeps,
    readonly identity: StaticIdentity,
    readonly issuer: LocalIssuer,
    readonly kv: KvStore,
    readonly masterKey: Buffer,
    readonly dir: string | undefined,
  ) {}

  static async create(o: FixtureOptions = {}): Promise<KmsFixture> {
    const id = await sharedIdentity(o.keyType ?? 'EC');
    const identity = makeIdentity(DOMAIN, id.privateKey, id.chainPem);
    const masterKey = o.masterKey ?? randomBytes(32);
    let dir: string | undefined;
    let kv: KvStore;
    if (o.storage === 'disk') dir = await mkdtemp(join(tmpdir(), 'kms-test-'));
    else if (o.storage && typeof o.storage === 'object' && 'dir' in o.storage) dir = o.storage.dir;
    const given = o.storage && typeof o.storage === 'object' && 'kv' in o.storage ? o.storage : undefined;
    if (given) kv = given.kv;
    else if (dir) kv = await openLevelStore(join(dir, 'db'));
    else kv = await openMemoryStore();
    const issuer = o.issuer ?? (await LocalIssuer.ephemeral(ISSUER));
    const deps = new EngineDeps({
      config: engineConfig(DOMAIN, o.config ?? {}),
      state: new KmsState(kv, { shared: given?.shared === true }),
      sealer: new Sealer(masterKey),
      identity,
      ...(o.clock ? { clock: o.clock } : {}),
    });
    const authenticator = new Authenticator({
      bearer: {
        keys: o.bearer?.keys ?? issuer.keys(),
        issuer: o.bearer?.issuer ?? ISSUER,
        audience: AUDIENCE,
        algorithms: ['ES256', 'PS256', 'RS256'],
        userClaim: 'sub',
        clockToleranceSec: 30,
      },
      serviceAnchors: [],
    });
    return new KmsFixture(new KmsEngine({ deps, authenticator, ...(o.audit ? { audit: o.audit } : {}) }), deps, identity, issuer, kv, masterKey, dir);
  }

  /** The transport: the engine in process. */
  transport = (messages: string[]) => Promise.all(messages.map((m) => this.engine.handle(m)));

  /** A user with a session (not yet handshaken) and a fresh entity key. */
  async user(jid: string, opts: { clientId?: string; keyType?: 'RSA' | 'EC'; token?: string } = {}): Promise<TestUser> {
    const token = opts.token ?? (await this.issuer.mint({ subject: jid, audience: AUDIENCE }));
    const session = new KmsSession({
      kmsKid: this.identity.kid,
      kmsKey: jwkOf(this.identity.publicKey),
      transport: this.transport,
      bearer: () => token,
      ...(opts.clientId ? { clientId: opts.clientId } : {}),
    });
    return new TestUser(jid, session, generateEntityKey({ type: opts.keyType ?? 'RSA' }), token, this);
  }

  /** SHA-256 over every key and value in the store: "nothing changed" means the same digest. */
  async digest(): Promise<string> {
    const h = createHash('sha256');
    for await (const [k, v] of this.kv.entries({})) h.update(`${k}\u0000${v}\u0000`);
    return h.digest('hex');
  }

  async close(): Promise<void> {
    await this.kv.close();
  }
}

/** A test user: session, entity key and shorthands for the KMS operations. */
export class TestUser {
  constructor(
    readonly jid: string,
    readonly session: KmsSession,
    readonly key: EntityKey,
    readonly token: string,
    readonly kms: KmsFixture,
  ) {}

  async register(): Promise<KmsResponse> {
    const eph = this.session.ephemeral ?? (await this.session.handshake());
    return this.session.request('post', '/entity-keys', {
      jwk: this.key.publicJwk,
      proof: registrationProof(this.key, this.jid, eph.uri),
    });
  }

  async genesis(operations: Operation[]): Promise<{ block: string; uri: string }> {
    const res = await this.session.request('post', `kms://${DOMAIN}/blocks`, { blockPayload: { operations } });
    const block = res.block as string;
    const uri = JSON.parse(Buffer.from(block.split('.')[1]!, 'base64url').toString()).uri as string;
    return { block, uri };
  }

  block(antecedent: string, operations: Operation[]): string {
    return signBlock(this.key, this.jid, antecedent, operations);
  }

  async append(chainUri: string, blocks: string[]): Promise<KmsResponse> {
    return this.session.request('post', chainUri, { blocks });
  }

  async chain(chainUri: string, antecedent?: string): Promise<string[]> {
    const res = await this.session.request('get', chainUri, antecedent === undefined ? {} : { antecedent });
    return res.blocks as string[];
  }

  async createGk(block?: string): Promise<string> {
    const res = await this.session.request('post', `kms://${DOMAIN}/gks`, block ? { block } : {});
    return res.gk as string;
  }

  async bindGk(gkUri: string, block: string): Promise<string> {
    return (await this.session.request('post', gkUri, { block })).gk as string;
  }

  async getGk(gkUri: string, entity = this.jid): Promise<string> {
    return (await this.session.request('get', gkUri, { entity })).gk as string;
  }
}

/** The payload of a compact JWS, parsed (no verification: for reading fields in tests). */
export function payloadOf(jws: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jws.split('.')[1]!, 'base64url').toString('utf8'));
}

export const add = (entity: string): Operation => ({ entity, optype: 'add' });
export const remove = (entity: string): Operation => ({ entity, optype: 'remove' });
