/** What every operation handler gets: the engine's dependencies and the request being served. */
import { createSecretKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import type { EngineConfig } from './config.js';
import type { KmsState, EphemeralRecord } from '../store/kms-state.js';
import type { Sealer } from '../crypto/seal.js';
import type { StaticIdentity } from './identity.js';
import type { KmsRequest } from '../protocol/messages.js';
import type { Principal } from './principal.js';
import type { ResponseSizer } from './response-size.js';
import type { JwsAlg } from '../crypto/jws.js';
import type { PeerLinks } from '../federation/peers.js';
import { compactSigner } from '../crypto/jws.js';
import { importPublicJwk } from '../crypto/keys.js';
import { Lru } from '../util/lru.js';

/** Long-lived dependencies shared by all handlers. */
export class EngineDeps {
  readonly config: EngineConfig;
  readonly state: KmsState;
  readonly sealer: Sealer;
  readonly identity: StaticIdentity;
  readonly clock: () => Date;
  /** This KMS's links to the KMSes it federates with (XEP "Federation"); none when it does not. */
  federation: PeerLinks | undefined;
  /** Imported public keys by RFC 7638 thumbprint: importing costs more than using. */
  readonly #keyObjects = new Lru<string, KeyObject>(50_000);
  /** Unsealed keys by the cached record that holds them sealed (see unsealedKey). */
  readonly #unsealed = new WeakMap<{ key: string }, KeyObject>();
  /** The static key's signer, header encoded once. */
  #sign: ((payload: string) => string) | undefined;

  constructor(d: { config: EngineConfig; state: KmsState; sealer: Sealer; identity: StaticIdentity; clock?: () => Date; federation?: PeerLinks }) {
    this.config = d.config;
    this.state = d.state;
    this.sealer = d.sealer;
    this.identity = d.identity;
    this.clock = d.clock ?? (() => new Date());
    this.federation = d.federation;
  }

  /** The KeyObject of a registered entity key (cached by its thumbprint). */
  keyObject(kid: string, jwk: JsonWebKey): KeyObject {
    let k = this.#keyObjects.get(kid);
    if (!k) {
      k = importPublicJwk(jwk);
      this.#keyObjects.set(kid, k);
    }
    return k;
  }

  /**
   * Seals a new key into `record.key` and remembers it unsealed, so that the record's first use
   * (the channel's first request, the GK's first wrap) does not open what was just sealed. The
   * caller still owns `raw` and zeroes it.
   */
  sealKey(record: { key: string }, raw: Buffer, context: string): void {
    record.key = this.sealer.seal(raw, context);
    this.#unsealed.set(record, createSecretKey(raw));
  }

  /**
   * The key a stored record holds sealed (a channel's or a GK's), unsealed on first use and then
   * kept for as long as the record object stays in KmsState's caches: when the record is evicted,
   * expires or is deleted, KmsState drops it and this entry goes with it. The key is held as a
   * KeyObject, in native memory, not in the JavaScript heap; at rest it stays sealed. Throws if
   * the record was sealed under another master key.
   */
  unsealedKey(record: { key: string }, context: string): KeyObject {
    let key = this.#unsealed.get(record);
    if (!key) {
      const raw = this.sealer.open(record.key, context);
      key = createSecretKey(raw);
      raw.fill(0);
      this.#unsealed.set(record, key);
    }
    return key;
  }

  /** Signs a JSON payload with the KMS's static key (-03: genesis blocks, GKs, handshake responses, channel-less errors). */
  signAsKms(payload: unknown): string {
    this.#sign ??= compactSigner(this.identity.privateKey, this.identity.sigAlg, { kid: this.identity.kid });
    return this.#sign(JSON.stringify(payload));
  }

  /** The signature algorithms accepted from an entity key of this type. */
  static entityAlgs(jwk: JsonWebKey): JwsAlg[] {
    return jwk.kty === 'EC' ? ['ES256'] : ['PS256', 'RS256'];
  }
}

/** One authenticated request on an established channel. */
export interface RequestContext {
  deps: EngineDeps;
  req: KmsRequest;
  principal: Principal;
  ephemeral: EphemeralRecord;
  now: Date;
  /** Path segments of the request URI, after the collection name. */
  segments: string[];
  /** The response's budget and its size arithmetic (get chain fills its page up to the budget). */
  response: ResponseSizer;
}

/** What a handler returns: the status and the body fields beside status/requestId. */
export interface HandlerResult {
  status: number;
  body?: Record<string, unknown>;
  /** Runs after the response is encrypted (delete of the ephemeral key answers under the key it deletes). */
  after?: () => Promise<void>;
}
