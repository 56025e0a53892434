/**
 * The client side of the KMS secure channel, independent of any transport: makes the handshake,
 * encrypts requests under the ephemeral key, decrypts and checks responses, and does the handshake
 * again when the KMS answers with a signed "unknown or expired key" error. A transport (XMPP, or
 * the engine in process for tests) is a function from request messages to response messages.
 */
import {
  decodeJweHeader,
  decodeJws,
  decryptDir,
  deriveChannelKey,
  encryptDir,
  encryptToKey,
  generateEphemeralKeyPair,
  randomUUID,
  signatureAlgsFor,
  verifyJws,
  type ClientJwsAlg,
  type JWK,
} from './webcrypto.js';
import { responseCode } from '../protocol/errors.js';
import { BadResponseError, KmsResponseError } from './errors.js';
import { retrying, type RetryOptions } from './retry.js';

/** Sends request messages, returns one response message each, in order. */
export type Transport = (messages: string[]) => Promise<string[]>;

/** A credential of -03 §4.5.1: a bearer token (re-read on every handshake, so it can be refreshed). */
export type CredentialSource = () => string | Promise<string>;

/**
 * Any other credential (a federating KMS's "jwk" with its "x5c" chain and proof, XEP "Federation"):
 * called with the handshake's ephemeral public key on a handshake, without it on the channel.
 */
type CredentialMaker = (handshakeJwk?: JWK) => Promise<Record<string, unknown>>;

export interface SessionOptions {
  /** The KMS's static key id, kms://<domain>, and its validated public key (a public JWK). */
  kmsKid: string;
  kmsKey: JWK;
  transport: Transport;
  /** The user's bearer token; or give `credential`. */
  bearer?: CredentialSource;
  credential?: CredentialMaker;
  clientId?: string;
  /** Renew the ephemeral key this long before it expires (ms). */
  renewBeforeMs?: number;
  /** Retries after a transient failure (a timeout, a lost connection, a stanza error of type wait), none by default; each retry is sealed anew with fresh requestIds. */
  retry?: RetryOptions;
  clock?: () => number;
}

/** The ephemeral key object of a handshake response. */
export interface EphemeralKeyInfo {
  uri: string;
  userId: string;
  clientId: string;
  createDate: string;
  expirationDate: string;
}

/** A decrypted response: status, requestId and the operation's fields; an error response also has code and reason (XEP "KMS Error Codes"). */
export type KmsResponse = { status: number; code?: string; reason?: string; requestId?: string | number } & Record<string, unknown>;

interface Channel {
  info: EphemeralKeyInfo;
  key: Uint8Array;
  expiresAt: number;
}

/** One client's secure channel to one KMS. */
export class KmsSession {
  readonly clientId: string;
  readonly #o: SessionOptions;
  readonly #sigAlgs: ClientJwsAlg[];
  /** No retries unless asked for (KmsClient asks for its RetryOptions). */
  readonly #retry: RetryOptions;
  #channel: Channel | undefined;
  #handshaking: Promise<Channel> | undefined;

  constructor(opts: SessionOptions) {
    this.#o = opts;
    this.clientId = opts.clientId ?? `kms-client-${randomUUID()}`;
    this.#sigAlgs = signatureAlgsFor(opts.kmsKey);
    this.#retry = opts.retry ?? { retries: 0 };
  }

  /** The current ephemeral key, if a handshake has been made. */
  get ephemeral(): EphemeralKeyInfo | undefined {
    return this.#channel?.info;
  }

  #now(): number {
    return this.#o.clock ? this.#o.clock() : Date.now();
  }

  async #credential(handshakeJwk?: JWK) {
    if (this.#o.credential) return { clientId: this.clientId, credential: await this.#o.credential(handshakeJwk) };
    if (!this.#o.bearer) throw new TypeError('a KmsSession needs bearer or credential');
    return { clientId: this.clientId, credential: { bearer: await this.#o.bearer() } };
  }

  /** Makes a new ephemeral key (create /ecdhe, -03 §4.6.1). Concurrent callers share one handshake. */
  async handshake(): Promise<EphemeralKeyInfo> {
    // A retried handshake is a new one: a fresh key pair and requestId each time.
    this.#handshaking ??= retrying(() => this.#doHandshake(), this.#retry).finally(() => (this.#handshaking = undefined));
    this.#channel = await this.#handshaking;
    return this.#channel.info;
  }

  async #doHandshake(): Promise<Channel> {
    const ephemeral = await generateEphemeralKeyPair();
    const requestId = randomUUID();
    const payload = {
      client: await this.#credential(ephemeral.publicJwk),
      method: 'create',
      uri: '/ecdhe',
      requestId,
      jwk: ephemeral.publicJwk,
    };
    // RSA-OAEP to an RSA static key, ECDH-ES to a P-256 one.
    const message = await encryptToKey(this.#o.kmsKey, JSON.stringify(payload), this.#o.kmsKid);
    const [reply] = await this.#o.transport([message]);
    const res = await this.#verifySigned(reply ?? '');
    if (res.requestId !== undefined && res.requestId !== requestId) throw new BadResponseError('the handshake response answers another request');
    // A refusal the KMS could not match to the request (it could not decrypt it) has no requestId.
    if (res.status >= 400) throw KmsResponseError.from(res);
    if (res.requestId !== requestId) throw new BadResponseError('the handshake response has no requestId');
    if (res.status !== 201) throw new BadResponseError(`the handshake response has status ${res.status}, not 201`);
    const key = (res.key ?? res['ephemeral-key']) as (EphemeralKeyInfo & { jwk: unknown }) | undefined;
    if (!key || typeof key.uri !== 'string' || typeof key.expirationDate !== 'string') {
      throw new BadResponseError('the handshake response has no ephemeral key');
    }
    let channelKey: Uint8Array;
    try {
      channelKey = await deriveChannelKey(ephemeral.privateKey, key.jwk as JWK);
    } catch (e) {
      throw new BadResponseError("the handshake response's ephemeral key is not a P-256 public key", { cause: e });
    }
    const info: EphemeralKeyInfo = {
      uri: key.uri,
      userId: key.userId,
      clientId: key.clientId,
      createDate: key.createDate,
      expirationDate: key.expirationDate,
    };
    return { info, key: channelKey, expiresAt: Date.parse(key.expirationDate) };
  }

  /** A JWS by the static key: a handshake response, or an error sent without a channel. */
  /** The KMS-signed response `message`. */
  async #verifySigned(message: string): Promise<KmsResponse> {
    let payload: Uint8Array;
    try {
      ({ payload } = await verifyJws(message, this.#o.kmsKey, this.#sigAlgs));
    } catch (e) {
      throw new BadResponseError('the response is not signed by the KMS', { cause: e });
    }
    return parseResponse(payload);
  }

  async #currentChannel(): Promise<Channel> {
    const renewBefore = this.#o.renewBeforeMs ?? 60_000;
    if (!this.#channel || this.#channel.expiresAt - renewBefore <= this.#now()) await this.handshake();
    return this.#channel!;
  }

  /** Sends several requests in one transport call; responses are matched by requestId. */
  async batch(requests: { method: string; uri: string; body?: Record<string, unknown> }[]): Promise<KmsResponse[]> {
    for (let attempt = 0; ; attempt++) {
      // A retry after a transient failure is a new exchange: sealed again, with fresh requestIds.
      const channel = await this.#currentChannel();
      const { ids, replies } = await retrying(async () => {
        const client = await this.#credential();
        const ids = requests.map(() => randomUUID());
        const messages = await Promise.all(
          requests.map((r, i) =>
            encryptDir(channel.key, JSON.stringify({ client, method: r.method, uri: r.uri, requestId: ids[i], ...(r.body ?? {}) }), channel.info.uri),
          ),
        );
        return { ids, replies: await this.#o.transport(messages) };
      }, this.#retry);
      const byId = new Map<string | number | undefined, KmsResponse>();
      let channelLost = false;
      const opened = await Promise.all(replies.map((reply) => this.#open(reply, channel)));
      for (const res of opened) {
        // A signed UNAUTHENTICATED: the KMS cannot read our channel (XEP "Ending a Channel").
        if (res.signed && res.response.status >= 400 && responseCode(res.response) === 'UNAUTHENTICATED') channelLost = true;
        byId.set(res.response.requestId, res.response);
      }
      if (channelLost && attempt === 0) {
        // The KMS no longer knows our key (expired, deleted, KMS restarted without it): handshake again once.
        // Only if no concurrent batch has made a new channel meanwhile.
        if (this.#channel === channel) this.#channel = undefined;
        continue;
      }
      // By requestId; by position only for a response that carries none (the KMS could not read the
      // request). A response with another requestId answers nothing we asked: a replay (XEP "Replay").
      return ids.map((id, i) => {
        const own = byId.get(id);
        if (own) return own;
        const at = opened[i]?.response;
        return at !== undefined && at.requestId === undefined ? at : missing();
      });
    }
  }

  /** One request; a status >= 400 becomes a KmsResponseError with the response's code. */
  async request(method: string, uri: string, body?: Record<string, unknown>): Promise<KmsResponse> {
    const [res] = await this.batch([{ method, uri, ...(body ? { body } : {}) }]);
    if (res!.status >= 400) throw KmsResponseError.from(res!);
    return res!;
  }

  async #open(message: string, channel: Channel): Promise<{ signed: boolean; response: KmsResponse }> {
    const parts = message.split('.').length;
    // A malformed reply throws here, before any key is tried.
    if (parts === 3) {
      try {
        decodeJws(message);
      } catch (e) {
        throw new BadResponseError('the response is not a compact JWS', { cause: e });
      }
      return { signed: true, response: await this.#verifySigned(message) };
    }
    let plaintext: Uint8Array;
    try {
      if (decodeJweHeader(message).kid !== channel.info.uri) throw new BadResponseError('the response is under another ephemeral key');
      ({ plaintext } = await decryptDir(message, channel.key));
    } catch (e) {
      throw e instanceof BadResponseError ? e : new BadResponseError('the response does not decrypt under the channel key', { cause: e });
    }
    return { signed: false, response: parseResponse(plaintext) };
  }

  /** Deletes the ephemeral key on the KMS (-03 §4.6.2) and forgets it. */
  async close(): Promise<void> {
    const ch = this.#channel;
    if (!ch) return;
    try {
      await this.request('delete', ch.info.uri);
    } finally {
      this.#channel = undefined;
      ch.key.fill(0);
    }
  }
}

function missing(): never {
  throw new BadResponseError('the KMS did not answer every request');
}

/** A response payload: a JSON object with a numeric status, or a BadResponseError. */
const UTF8 = new TextDecoder();

function parseResponse(payload: Uint8Array): KmsResponse {
  let res: unknown;
  try {
    res = JSON.parse(UTF8.decode(payload));
  } catch (e) {
    throw new BadResponseError('the response is not JSON', { cause: e });
  }
  if (!res || typeof res !== 'object' || Array.isArray(res) || typeof (res as { status?: unknown }).status !== 'number') {
    throw new BadResponseError('the response has no numeric status');
  }
  return res as KmsResponse;
}
