/**
 * The KMS engine: a function from one compact JOSE request message to one compact JOSE response
 * message, plus the state it keeps. Transport-agnostic (-03 leaves the transport open; XEP "Introduction"): the XMPP
 * component, tests and benchmarks all call `handle`.
 *
 * Message classes (-03 §4.5):
 *   - a handshake (create /ecdhe) is a JWE to the static key; its response a JWS by the static key;
 *   - every other message is a JWE dir+A256GCM under the ephemeral key, kid = its URI;
 *   - a failure without a usable ephemeral key is a JWS by the static key; any other failure an
 *     encrypted response with status and reason.
 */
import { createECDH, randomUUID, type JsonWebKey, type KeyObject } from 'node:crypto';
import {
  KmsError,
  badRequest,
  conflict,
  errorResponse,
  forbidden,
  methodNotAllowed,
  notFound,
  tooLarge,
  unauthenticated,
  unsupported,
} from '../protocol/errors.js';
import { checkPeerProofClaims } from '../protocol/federation.js';
import { decodeCompactJws, verifyDecoded } from '../crypto/jws.js';
import { thumbprint } from '../crypto/keys.js';
import type { Principal } from './principal.js';
import { forwardEntityKeys, forwardToPeer, peerKey } from '../federation/forward.js';
import { requireCanonicalEntity } from '../protocol/entity.js';
import { parseRequestValue, peekRequestId, type KmsRequest, type Method } from '../protocol/messages.js';
import { parseKmsUri } from '../protocol/uri.js';
import { refusePrivateMembers } from '../protocol/jwk.js';
import { decryptDirParsed, decryptJweParsed, dirEncrypter, parseCompactJwe, type ParsedJwe } from '../crypto/jwe.js';
import { deriveChannelKey } from '../crypto/channel.js';
import { decode as b64uDecode, encode as b64u } from '../crypto/base64url.js';
import type { EphemeralRecord } from '../store/kms-state.js';
import type { Authenticator } from './credentials.js';
import { EngineDeps, type HandlerResult, type RequestContext } from './context.js';
import { appendBlocks, getChain, postGenesis } from './gmbc.js';
import { bindGk, createGk, getGk } from './gk.js';
import { deleteEntityKey, listEntityKeys, registerEntityKey } from './entity-keys.js';
import { b64uLength, defaultResponseBudget, type ResponseSizer } from './response-size.js';
import type { Logger } from '../util/logger.js';
import type { AuditEntry, AuditSink } from '../audit/log.js';

type Verb = 'create' | 'read' | 'update' | 'delete';

/** Both method vocabularies, folded (XEP "Sending KMS Requests"). `post` means create on a collection, update on an object. */
function verbOf(method: Method, onObject: boolean): Verb {
  switch (method) {
    case 'post':
      return onObject ? 'update' : 'create';
    case 'create':
      return 'create';
    case 'get':
    case 'retrieve':
      return 'read';
    case 'update':
      return 'update';
    case 'delete':
      return 'delete';
  }
}

type Handler = (ctx: RequestContext) => Promise<HandlerResult>;

/** Routes: collection name → [handlers on the collection, handlers on an object in it]. */
const ROUTES: Record<string, [Partial<Record<Verb, Handler>>, Partial<Record<Verb, Handler>>]> = {
  blocks: [{ create: postGenesis }, { update: appendBlocks, read: getChain }],
  gks: [{ create: createGk }, { update: bindGk, read: getGk }],
  'entity-keys': [{ create: registerEntityKey }, { read: listEntityKeys, delete: deleteEntityKey }],
  ping: [{ update: ping, read: ping }, {}],
  ecdhe: [{}, { delete: deleteEphemeral }],
};

async function ping(): Promise<HandlerResult> {
  return { status: 200 };
}

async function deleteEphemeral(ctx: RequestContext): Promise<HandlerResult> {
  const id = ctx.segments[0];
  // Only the owner may delete; a client deletes the key it is talking under (-03 §4.6.2).
  if (id !== ctx.ephemeral.id) throw notFound('only the ephemeral key of this channel can be deleted on it');
  // The 204 is encrypted under the key being deleted; the key goes after that (XEP "Ending a Channel").
  return { status: 204, after: () => ctx.deps.state.deleteEphemeral(id) };
}

/** How the transport bounds one response (see `KmsEngine.handle`). */
export interface HandleOptions {
  /**
   * The most bytes the response message may have: the transport's room for it (the XMPP
   * component's share of its max-reply-size, XEP "Transport of KMS Messages"). Get chain returns the blocks that fit
   * (and "more"); any other response over it becomes 413 TOO_LARGE. Without it, get chain pages at
   * defaultResponseBudget(limits) and nothing else is limited. Signed responses (handshakes,
   * failures without a channel) are small and not held to it.
   */
  maxResponseBytes?: number;
  /**
   * The bare JID the request came from, as the XMPP server reported it. Never evidence of a user's
   * identity; for a federating KMS, whose server-to-server link the servers authenticated, it must
   * be the peer's own domain (XEP "Federation"), so that one peer cannot replay another's requests.
   */
  from?: string;
}

/**
 * What the engine reports of each request for an operator's metrics (src/admin/metrics.ts), when
 * given one: bounded labels only, never a URI's id, a user, a token or key material.
 */
export interface EngineMetrics {
  /** One request answered: `operation` is "handshake", "<method> <resource kind>" (e.g. "get gks") or "unknown"; `status` the response's. */
  request(operation: string, status: number, seconds: number): void;
}

/** What a request was, for EngineMetrics: filled in as the engine learns it. */
interface Observed {
  operation: string;
  status: number;
}

export interface EngineOptions {
  deps: EngineDeps;
  authenticator: Authenticator;
  logger?: Logger;
  metrics?: EngineMetrics;
  /**
   * The audit log (src/audit/log.ts): key releases, refusals, chain and entity-key changes and
   * channels are recorded, and a response that releases or changes something waits until its record is
   * durable; when it cannot be written, the request is answered 500 instead (fail closed).
   */
  audit?: AuditSink;
}

/** One channel-less failure: answered as a JWS by the static key. */
class ChannelError extends Error {
  constructor(
    readonly error: KmsError,
    readonly requestId?: string | number,
  ) {
    super(error.message);
  }
}

const EPHEMERAL_PREFIX = '/ecdhe/';
/** RequestIds remembered per service channel: a peer's requests in an hour are far fewer. */
const MAX_TRACKED_REQUEST_IDS = 100_000;
/** The AAD that binds a sealed channel key to its ephemeral record. */
const sealContext = (id: string) => `ecdhe:${id}`;

/** An open channel: its key, unsealed, and the encrypter of its responses. */
interface Channel {
  key: KeyObject;
  encrypt: (plaintext: string) => string;
  /** Bytes of a response message besides its ciphertext (header, IV, tag, dots): the size of an empty one. */
  overhead: number;
}

/** The KMS engine. */
export class KmsEngine {
  readonly deps: EngineDeps;
  readonly #auth: Authenticator;
  readonly #log: Logger | undefined;
  readonly #metrics: EngineMetrics | undefined;
  readonly #audit: AuditSink | undefined;
  /** Channels by the ephemeral record KmsState caches, their keys from EngineDeps.unsealedKey: unsealed once, not on every request. */
  readonly #channels = new WeakMap<EphemeralRecord, Channel>();
  /** RequestIds seen on services' channels, by their ephemeral record (see #seenRequestIds). */
  readonly #requestIds = new WeakMap<EphemeralRecord, Set<string>>();

  constructor(opts: EngineOptions) {
    this.deps = opts.deps;
    this.#auth = opts.authenticator;
    this.#log = opts.logger;
    this.#metrics = opts.metrics;
    this.#audit = opts.audit;
  }

  /** Handles one request message and returns its response message. Never throws. */
  async handle(message: string, opts?: HandleOptions): Promise<string> {
    const observed: Observed = { operation: 'unknown', status: 500 };
    const started = this.#metrics ? performance.now() : 0;
    try {
      return await this.#handle(message, this.#budget(opts), opts?.from, observed);
    } catch (e) {
      const ce = e instanceof ChannelError ? e : new ChannelError(this.#internal(e));
      observed.status = ce.error.status ?? 500;
      return this.#signedError(ce.error, ce.requestId);
    } finally {
      this.#metrics?.request(observed.operation, observed.status, (performance.now() - started) / 1000);
    }
  }

  /** The response budget of a request: the transport's, or the default page size. */
  #budget(opts: HandleOptions | undefined): number {
    const max = opts?.maxResponseBytes;
    if (typeof max === 'number' && max >= 0) return Math.floor(max);
    return defaultResponseBudget(this.deps.config.limits);
  }

  async #handle(message: string, budget: number, from: string | undefined, observed: Observed): Promise<string> {
    if (typeof message !== 'string') throw new ChannelError(badRequest('the message must be a string'));
    const max = this.deps.config.limits.maxMessageBytes;
    // UTF-8 takes at most 3 bytes per UTF-16 code unit: short messages need no byte count.
    if (message.length > max || (message.length * 3 > max && Buffer.byteLength(message, 'utf8') > max)) {
      throw new ChannelError(tooLarge(`the message exceeds ${max} bytes`));
    }
    // Parsed once: the header routes, the same parse is then decrypted.
    let parsed: ParsedJwe;
    try {
      parsed = parseCompactJwe(message);
    } catch (e) {
      throw new ChannelError(badRequest('the message is not a compact JWE', e));
    }
    if (parsed.header.alg === 'dir') return this.#onChannel(parsed, budget, from, observed);
    return this.#handshake(parsed, from, observed);
  }

  // ---- the handshake (-03 §4.6.1) ----

  async #handshake(parsed: ParsedJwe, from: string | undefined, observed: Observed): Promise<string> {
    observed.operation = 'handshake';
    const { deps } = this;
    const header = parsed.header;
    const id = deps.identity;
    // XEP "Failure Responses": every handshake failure is a JWS signed by the static key.
    if (typeof header.kid === 'string' && this.#isEphemeralKid(header.kid)) {
      throw new ChannelError(badRequest(`a message under an ephemeral key uses alg dir and enc A256GCM, not alg ${quoted(header.alg)}`));
    }
    if (header.kid !== undefined && header.kid !== id.kid) {
      // A static key given to a JOSE library without its kid makes it address the key's thumbprint.
      throw new ChannelError(badRequest(`the handshake is addressed to ${String(header.kid).slice(0, 100)}, not to this KMS's static key ${id.kid}`));
    }
    if (!id.handshakeAlgs.includes(String(header.alg))) {
      throw new ChannelError(unsupported(`handshake alg ${quoted(header.alg)} is not accepted (use ${id.handshakeAlgs.join(' or ')})`));
    }
    if (header.enc !== 'A256GCM') throw new ChannelError(unsupported(`handshake enc ${quoted(header.enc)} is not accepted (use A256GCM)`));
    let plaintext: Buffer;
    try {
      ({ plaintext } = decryptJweParsed(parsed, id.privateKey, { alg: id.handshakeAlgs, enc: ['A256GCM'] }));
    } catch (e) {
      throw new ChannelError(badRequest('the handshake could not be decrypted with the KMS static key', e));
    }
    const payload = safeJson(plaintext);
    const requestId = peekRequestId(payload);
    let actor: string | undefined;
    let op = 'create';
    try {
      const req = parseJsonRequest(payload);
      op = req.method;
      const { segments } = parseKmsUri(req.uri, deps.config.domain);
      if (segments.length !== 1 || segments[0] !== 'ecdhe') throw badRequest('a message to the static key must create an ephemeral key (uri /ecdhe)');
      if (req.method !== 'create' && req.method !== 'post') throw methodNotAllowed(`/ecdhe accepts create, not ${req.method}`);
      const now = deps.clock();
      const principal = await this.#auth.authenticate(req.credential, now);
      actor = principal.id;
      const clientKey = this.#clientEcdhKey(req.body.jwk);
      if (principal.kind === 'service') {
        this.#checkPeerOrigin(principal, from);
        this.#checkServiceProof(req, principal, now);
      }
      // -03 §4.6.1: a fresh KMS key on the client's curve. createECDH, not generateKeyPairSync+JWK export (a Node 20 hang).
      const ecdh = createECDH('prime256v1');
      const point = ecdh.generateKeys();
      let key: Buffer;
      try {
        key = deriveChannelKey(ecdh, clientKey);
      } catch (e) {
        throw badRequest('jwk: not a point on P-256', e);
      }
      const uuid = randomUUID();
      const lifetime = deps.config.ephemeralLifetimeSec * 1000;
      const record: EphemeralRecord = {
        id: uuid,
        uri: EPHEMERAL_PREFIX + uuid,
        userId: principal.id,
        clientId: req.clientId,
        createDate: now.toISOString(),
        expirationDate: new Date(now.getTime() + lifetime).toISOString(),
        key: '',
        jwk: { kty: 'EC', crv: 'P-256', x: b64u(point.subarray(1, 33)), y: b64u(point.subarray(33, 65)) },
      };
      deps.sealKey(record, key, sealContext(uuid));
      key.fill(0);
      const keyObject = {
        uri: record.uri,
        jwk: record.jwk,
        userId: record.userId,
        clientId: record.clientId,
        createDate: record.createDate,
        expirationDate: record.expirationDate,
      };
      // XEP "Choices Made Where the Draft Is Open": `key` (the -03 content rule) and the -03 example's `ephemeral-key`.
      // Signed before the key is stored, so that a failure here stores nothing.
      const response = deps.signAsKms(withRequestId({ status: 201, key: keyObject, 'ephemeral-key': keyObject }, requestId));
      // Recorded before the key is stored: a channel the audit log does not know is never made.
      await this.#mustRecord({
        event: 'channel.create',
        actor: principal.id,
        op: req.method,
        object: record.uri,
        decision: 'allow',
        status: 201,
        ...(requestId !== undefined ? { requestId: boundedId(requestId) } : {}),
      });
      // Written behind (KmsState.putEphemeral): readable at once, on disk within milliseconds.
      await deps.state.putEphemeral(record);
      this.#log?.info({ event: 'handshake', user: principal.id, ephemeralKey: record.uri }, 'ephemeral key created');
      observed.status = 201;
      return response;
    } catch (e) {
      const err = this.#asKmsError(e);
      if (!(e instanceof AuditFailed)) await this.#recordDenial({ event: 'channel.create', op, ...(actor ? { actor } : {}) }, err, requestId);
      throw new ChannelError(err, requestId);
    }
  }

  /** A peer's requests come from its own component: another sender is replaying them (XEP "Federation"). */
  #checkPeerOrigin(principal: Principal, from: string | undefined): void {
    if (!principal.peer || from === undefined) return;
    if (from.toLowerCase() !== principal.peer.kms) throw forbidden(`a request of ${principal.id} came from ${from.slice(0, 100)}`);
  }

  /** The requestIds seen under a service's ephemeral key (kept while the key is cached; bounded). */
  #seenRequestIds(eph: EphemeralRecord): Set<string> {
    let seen = this.#requestIds.get(eph);
    if (!seen) {
      seen = new Set();
      this.#requestIds.set(eph, seen);
    }
    if (seen.size >= MAX_TRACKED_REQUEST_IDS) seen.delete(seen.values().next().value!);
    return seen;
  }

  /**
   * XEP "Federation": a jwk credential is a certificate anyone may have seen; its "proof" shows the
   * sender holds the key, for this KMS and this handshake's ephemeral key (src/protocol/federation.ts).
   */
  #checkServiceProof(req: KmsRequest, principal: Principal, now: Date): void {
    const proof = 'proof' in req.credential ? req.credential.proof : undefined;
    if (proof === undefined) throw unauthenticated('a jwk credential needs a proof of possession (credential.proof) on the handshake');
    let decoded: ReturnType<typeof decodeCompactJws>;
    try {
      decoded = decodeCompactJws(proof);
    } catch (e) {
      throw badRequest(`credential.proof: not a compact JWS (${(e as Error).message})`, e);
    }
    const key = principal.key!;
    try {
      verifyDecoded(decoded, this.deps.keyObject(key.thumbprint, key.jwk as JsonWebKey), EngineDeps.entityAlgs(key.jwk as JsonWebKey));
    } catch (e) {
      throw forbidden(`credential.proof: not a valid signature by the credential's key (${(e as Error).message})`);
    }
    checkPeerProofClaims(safeJson(decoded.payload), {
      receiver: this.deps.identity.kid,
      ecdhe: thumbprint(req.body.jwk as JsonWebKey),
      now,
    });
  }

  #clientEcdhKey(jwk: unknown) {
    if (!jwk || typeof jwk !== 'object') throw badRequest("jwk: the client's ephemeral public key is required");
    const j = jwk as Record<string, unknown>;
    // XEP "Establishing a Secure Channel": P-256, the mandatory-to-implement curve, only.
    if (j.kty !== 'EC' || j.crv !== 'P-256') throw unsupported('jwk: the ephemeral key must be EC P-256');
    // A private key sent by mistake would be lost to the channel's forward secrecy: refused, not ignored.
    refusePrivateMembers(j, 'jwk');
    let x: Buffer;
    let y: Buffer;
    try {
      x = b64uDecode(String(j.x));
      y = b64uDecode(String(j.y));
    } catch (e) {
      throw badRequest('jwk: x and y must be base64url', e);
    }
    if (x.length !== 32 || y.length !== 32) throw badRequest('jwk: P-256 coordinates are 32 bytes');
    return Buffer.concat([Buffer.of(4), x, y]);
  }

  // ---- the channel ----

  async #onChannel(parsed: ParsedJwe, budget: number, from: string | undefined, observed: Observed): Promise<string> {
    const { deps } = this;
    const header = parsed.header;
    const now = deps.clock();
    const eph = await this.#ephemeralFor(header.kid);
    const channel = this.#channel(eph);
    // -03 §4.6.1: MUST reject messages under an expired ephemeral key. The KMS still holds this one,
    // so it reads the request to echo its requestId in the signed 401 (XEP "Ending a Channel").
    if (Date.parse(eph.expirationDate) <= now.getTime()) {
      let requestId: string | number | undefined;
      try {
        requestId = peekRequestId(safeJson(decryptDirParsed(parsed, channel.key, ['A256GCM']).plaintext));
      } catch {
        // unreadable: answered without a requestId
      }
      throw new ChannelError(unauthenticated(`ephemeral key ${eph.uri} expired`), requestId);
    }
    let requestId: string | number | undefined;
    let audited: Pick<AuditEntry, 'event' | 'op' | 'actor' | 'onBehalfOf' | 'object' | 'channel'> | undefined;
    try {
      if (header.enc !== 'A256GCM') throw unsupported(`a message under an ephemeral key uses enc A256GCM, not ${quoted(header.enc)}`);
      let plaintext: Buffer;
      try {
        ({ plaintext } = decryptDirParsed(parsed, channel.key, ['A256GCM']));
      } catch (e) {
        throw badRequest('the message could not be decrypted under its ephemeral key', e);
      }
      const payload = safeJson(plaintext);
      requestId = peekRequestId(payload);
      const req = parseJsonRequest(payload);
      if (this.#metrics) observed.operation = operationOf(req, deps.config.domain);
      if (this.#audit) audited = this.#auditSubject(req, eph);
      const principal = await this.#auth.authenticate(req.credential, now);
      if (audited) {
        audited.actor = principal.id;
        const entity = (req.body as { entity?: unknown } | undefined)?.entity;
        if (principal.kind === 'service' && typeof entity === 'string') audited.onBehalfOf = entity.slice(0, 300);
      }
      // XEP "Failure Responses": the credential is checked on every request, and the channel
      // belongs to the identity (and client) that made it.
      if (principal.id !== eph.userId || req.clientId !== eph.clientId) {
        throw unauthenticated('the credential is not the one this ephemeral key was made for');
      }
      if (principal.kind === 'service') {
        this.#checkPeerOrigin(principal, from);
        // XEP "Federation": a KMS that serves peers remembers the requestIds under each of their
        // ephemeral keys and refuses a repeated one without executing it.
        const seen = this.#seenRequestIds(eph);
        const key = `${typeof req.requestId}:${req.requestId}`;
        if (seen.has(key)) throw conflict(`requestId ${String(req.requestId).slice(0, 64)} was already used under ${eph.uri}`);
        seen.add(key);
      }
      const response: ResponseSizer = {
        budget,
        plaintextBytes: (status, body) => Buffer.byteLength(JSON.stringify(withRequestId({ status, ...body }, req.requestId))),
        encryptedBytes: (n) => channel.overhead + b64uLength(n),
      };
      const result = await this.#route({ deps, req, principal, ephemeral: eph, now, segments: [], response });
      const json = JSON.stringify(withRequestId({ status: result.status, ...(result.body ?? {}) }, req.requestId));
      // Measured before encrypting (XEP "Transport of KMS Messages"); a large write response (a genesis block) was checked before it was stored.
      const size = channel.overhead + b64uLength(Buffer.byteLength(json));
      if (size > budget)
        throw tooLarge(`the response (${size} bytes) exceeds the ${budget} bytes left for it in this reply: send this request in an IQ of its own`);
      // XEP "Security Considerations": a key is released, a change acknowledged, only once its audit record is durable.
      if (audited && !UNAUDITED_READS.has(audited.event)) await this.#mustRecord(allowed(audited, result, req.requestId));
      const encrypted = channel.encrypt(json);
      if (result.after) await result.after();
      observed.status = result.status;
      return encrypted;
    } catch (e) {
      const err = this.#fitting(this.#asKmsError(e), requestId, channel, budget);
      if (audited && !(e instanceof AuditFailed)) await this.#recordDenial(audited, err, requestId);
      observed.status = err.status ?? 500;
      return channel.encrypt(JSON.stringify(withRequestId(errorResponse(err), requestId)));
    }
  }

  /** The channel of an ephemeral record, its key unsealed on first use (see #channels). */
  #channel(eph: EphemeralRecord): Channel {
    let channel = this.#channels.get(eph);
    if (channel) return channel;
    let key: KeyObject;
    try {
      key = this.deps.unsealedKey(eph, sealContext(eph.id));
    } catch {
      // Sealed under another master key (a rotated KMS): as good as unknown, so the client handshakes again.
      throw new ChannelError(unauthenticated(`unknown ephemeral key ${eph.uri}`));
    }
    const encrypt = dirEncrypter(key, { enc: 'A256GCM', kid: eph.uri });
    channel = { key, encrypt, overhead: encrypt('').length };
    this.#channels.set(eph, channel);
    return channel;
  }

  /** Does `kid` look like an ephemeral key's URI, in any spelling (relative or absolute)? */
  #isEphemeralKid(kid: string): boolean {
    return kid.startsWith(EPHEMERAL_PREFIX) || kid.startsWith(`kms://${this.deps.config.domain}${EPHEMERAL_PREFIX}`);
  }

  /**
   * The ephemeral record a channel message names. The kid must be the key's URI exactly as the
   * handshake returned it (XEP "Transport of KMS Messages"): any other spelling is an unknown key.
   */
  async #ephemeralFor(kid: unknown): Promise<EphemeralRecord> {
    if (typeof kid !== 'string') throw new ChannelError(unauthenticated('the message names no ephemeral key (kid)'));
    const id = kid.startsWith(EPHEMERAL_PREFIX) ? kid.slice(EPHEMERAL_PREFIX.length) : '';
    const eph = /^[0-9a-f-]{36}$/.test(id) ? await this.deps.state.ephemeral(id) : undefined;
    if (!eph) {
      const hint = this.#isEphemeralKid(kid) ? " (the kid must be the key's uri exactly as the handshake returned it, /ecdhe/<id>)" : '';
      throw new ChannelError(unauthenticated(`unknown ephemeral key ${kid.slice(0, 100)}${hint}`));
    }
    return eph;
  }

  async #route(ctx: RequestContext): Promise<HandlerResult> {
    const req: KmsRequest = ctx.req;
    const links = this.deps.federation;
    const { segments, foreign } = parseKmsUri(req.uri, this.deps.config.domain, links !== undefined);
    if (foreign !== undefined) {
      // XEP "Federation": an object of another KMS, asked of that KMS on the user's behalf when it is a peer.
      const peer = links!.byAuthority(foreign);
      if (!peer) throw notFound(`${req.uri.slice(0, 200)} belongs to kms://${foreign}, a KMS this one does not federate with`);
      return forwardToPeer({ ...ctx, segments }, links!, peer, verbOf(req.method, segments.length > 1));
    }
    const [collection, ...rest] = segments;
    if (links && rest.length === 1 && verbOf(req.method, true) === 'read') {
      if (collection === 'peers') {
        const peer = links.byAuthority(rest[0]!);
        if (!peer) throw notFound(`${rest[0]!.slice(0, 100)} is not a KMS this one federates with`);
        return peerKey(links, peer);
      }
      if (collection === 'entity-keys') {
        const entity = requireCanonicalEntity(rest[0], 'uri entity');
        const peer = links.byEntity(entity);
        if (peer) return forwardEntityKeys(ctx, links, peer, entity);
      }
    }
    // Own properties only: '/constructor' or '/__proto__' must be a 404, not Object's members.
    const route = collection === undefined || !Object.hasOwn(ROUTES, collection) ? undefined : ROUTES[collection];
    if (!route || rest.length > 1) throw notFound(`no such resource ${req.uri}`);
    const onObject = rest.length === 1;
    const handler = route[onObject ? 1 : 0][verbOf(req.method, onObject)];
    if (!handler) {
      if (collection === 'ecdhe' && !onObject) throw methodNotAllowed('a new ephemeral key is made by a handshake to the static key, not on a channel');
      throw methodNotAllowed(`${req.uri} does not accept ${req.method}`);
    }
    return handler({ ...ctx, segments: rest });
  }

  // ---- the audit log ----

  /** What a request is about, for its audit record: known before it is authenticated or routed. */
  #auditSubject(req: KmsRequest, eph: EphemeralRecord): Pick<AuditEntry, 'event' | 'op' | 'object' | 'channel'> {
    const domain = this.deps.config.domain;
    let event = 'unknown';
    let object = req.uri.slice(0, 300);
    try {
      const { segments, foreign } = parseKmsUri(req.uri, domain, this.deps.federation !== undefined);
      const [collection, ...rest] = segments;
      event = auditEvent(collection, verbOf(req.method, rest.length > 0));
      if (foreign === undefined && object.startsWith('/')) object = `kms://${domain}${object}`;
    } catch {
      // a URI of no KMS: recorded as it came, under "unknown"
    }
    return { event, op: req.method, object, channel: eph.uri };
  }

  /** Writes a record the response depends on; AuditFailed (answered 500, nothing released) when it cannot be written. */
  async #mustRecord(entry: AuditEntry): Promise<void> {
    if (!this.#audit) return;
    try {
      await this.#audit.record(entry);
    } catch (e) {
      this.#log?.error({ event: 'audit-failed', auditEvent: entry.event, reason: (e as Error).message }, 'an audit record could not be written');
      throw new AuditFailed();
    }
  }

  /** Records a refusal; a refusal is answered even when its record cannot be written (it releases nothing). */
  async #recordDenial(subject: Omit<AuditEntry, 'decision' | 'status'>, err: KmsError, requestId: string | number | undefined): Promise<void> {
    if (!this.#audit) return;
    const entry: AuditEntry = {
      ...subject,
      decision: 'deny',
      status: err.status ?? 500,
      code: err.code,
      reason: err.message.slice(0, 500),
      ...(requestId !== undefined ? { requestId: boundedId(requestId) } : {}),
    };
    try {
      await this.#audit.record(entry);
    } catch (e) {
      this.#log?.error({ event: 'audit-failed', auditEvent: entry.event, reason: (e as Error).message }, 'an audit record could not be written');
    }
  }

  // ---- errors ----

  /** The error itself, or 413 when its encrypted response would exceed the budget (a reason that quotes a long request field). */
  #fitting(err: KmsError, requestId: string | number | undefined, channel: Channel, budget: number): KmsError {
    const plaintext = JSON.stringify(withRequestId(errorResponse(err), requestId));
    const size = channel.overhead + b64uLength(Buffer.byteLength(plaintext));
    if (size <= budget) return err;
    return tooLarge(`the response (${size} bytes) exceeds the ${budget} bytes left for it in this reply: send this request in an IQ of its own`);
  }

  #asKmsError(e: unknown): KmsError {
    if (e instanceof AuditFailed) return new KmsError('INTERNAL', 'the audit record could not be written; nothing was released');
    return e instanceof KmsError ? e : this.#internal(e);
  }

  #internal(e: unknown): KmsError {
    // Logged by type and message only: never the request, which may hold key material.
    this.#log?.error({ event: 'internal-error', err: { name: (e as Error)?.name, message: (e as Error)?.message } }, 'unexpected failure');
    return new KmsError('INTERNAL', 'internal error; nothing was changed');
  }

  #signedError(err: KmsError, requestId: string | number | undefined): string {
    try {
      return this.deps.signAsKms(withRequestId(errorResponse(err), requestId));
    } catch {
      return this.deps.signAsKms({ status: 500, code: 'INTERNAL', reason: 'internal error' });
    }
  }
}

/** A record the response depends on could not be written (see KmsEngine.#mustRecord). */
class AuditFailed extends Error {}

/** Successful requests that change and release nothing: not recorded (their refusals are). */
const UNAUDITED_READS = new Set(['ping', 'chain.read', 'entity-key.list', 'peer.key']);

/** The audit event of a request: what it does to which kind of object. */
function auditEvent(collection: string | undefined, verb: Verb): string {
  switch (collection) {
    case 'gks':
      return { create: 'gk.create', update: 'gk.bind', read: 'gk.get', delete: 'gk.delete' }[verb];
    case 'blocks':
      return { create: 'chain.create', update: 'chain.append', read: 'chain.read', delete: 'chain.delete' }[verb];
    case 'entity-keys':
      return { create: 'entity-key.register', update: 'entity-key.update', read: 'entity-key.list', delete: 'entity-key.delete' }[verb];
    case 'ecdhe':
      return 'channel.delete';
    case 'ping':
      return 'ping';
    case 'peers':
      return 'peer.key';
    default:
      return 'unknown';
  }
}

/** A requestId as recorded: a string is cut to 128 characters. */
function boundedId(id: string | number): string | number {
  return typeof id === 'string' ? id.slice(0, 128) : id;
}

/** The fields of a signed GK or genesis block the audit log keeps (its URI and block), never its key. */
function signedFields(jws: unknown): { uri?: string; block?: string } {
  if (typeof jws !== 'string') return {};
  try {
    const p = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as { uri?: unknown; block?: unknown };
    return { ...(typeof p.uri === 'string' ? { uri: p.uri } : {}), ...(typeof p.block === 'string' ? { block: p.block } : {}) };
  } catch {
    return {};
  }
}

/** The audit record of a request that succeeded. */
function allowed(subject: Omit<AuditEntry, 'decision' | 'status'>, result: HandlerResult, requestId: string | number | undefined): AuditEntry {
  const entry: AuditEntry = { ...subject, decision: 'allow', status: result.status };
  const body = result.body ?? {};
  if (subject.event.startsWith('gk.') || subject.event === 'chain.create') {
    const f = signedFields(subject.event === 'chain.create' ? body.block : body.gk);
    if (f.uri) entry.object = f.uri;
    if (f.block) entry.block = f.block;
  } else if (subject.event === 'entity-key.register' || subject.event === 'entity-key.delete') {
    const kid = subject.event === 'entity-key.register' ? (body.entityKey as { kid?: unknown } | undefined)?.kid : subject.object?.split('/').pop();
    if (subject.actor) entry.object = subject.actor;
    if (typeof kid === 'string') entry.kid = kid.slice(0, 128);
  }
  if (requestId !== undefined) entry.requestId = boundedId(requestId);
  return entry;
}

function withRequestId<T extends Record<string, unknown>>(payload: T, requestId: string | number | undefined): T {
  return requestId === undefined ? payload : { ...payload, requestId };
}

/** A request's operation for EngineMetrics: its method and resource kind (a route's name, else "unknown"), never an id. */
function operationOf(req: KmsRequest, domain: string): string {
  let kind = 'unknown';
  try {
    const first = parseKmsUri(req.uri, domain).segments[0];
    if (first !== undefined && Object.hasOwn(ROUTES, first)) kind = first;
  } catch {
    // a URI that is not the KMS's: unknown
  }
  return `${req.method} ${kind}`;
}

/** A header value quoted in a reason: at most 100 characters, so that a hostile header cannot make a reply large. */
function quoted(v: unknown): string {
  return String(v).slice(0, 100);
}

/** The payload parsed from JSON, or NOT_JSON. */
function safeJson(b: Buffer): unknown {
  try {
    return JSON.parse(b.toString('utf8'));
  } catch {
    return NOT_JSON;
  }
}

const NOT_JSON = Symbol('not JSON');

/** parseRequestValue on the payload safeJson returned: JSON is parsed once per message. */
function parseJsonRequest(payload: unknown): KmsRequest {
  if (payload === NOT_JSON) throw badRequest('the payload is not JSON');
  return parseRequestValue(payload);
}
