/**
 * An end-to-end encrypted multi-user chat room (use case 3.2 of -03, xep/kms.xml "Multi-User
 * Chat"): the room's membership is a GMBC at the KMS, every message is encrypted with a group
 * key bound to the chain's last block, and a membership change makes the next message use a new
 * group key. The XMPP server and the MUC service only ever see ciphertext.
 */
import { Emitter } from './emitter.js';
import { randomUUID } from './webcrypto.js';
import xml, { type Element } from '@xmpp/xml';
import type { KmsClient, ChainView } from './kms-client.js';
import { KmsResponseError } from './errors.js';
import type { GroupKey } from './keys.js';
import { encryptRoomMessage, openRoomMessage, readEncrypted, UndecryptableError, type EncryptedRef } from './muc.js';
import { kmsAuthority } from '../protocol/federation.js';
import { currentMembers } from './chain.js';
import {
  decryptFile,
  discoverUpload,
  encryptFile,
  FILE_MEDIA_TYPE,
  fetchEncryptedFile,
  fileMessage,
  putSlot,
  readFile,
  requestSlot,
  type FileRef,
} from './files.js';
import { utf8Encode } from './webcrypto.js';
import { canonicalEntity } from '../protocol/entity.js';

const NS_MUC = 'http://jabber.org/protocol/muc';
const NS_MUC_USER = 'http://jabber.org/protocol/muc#user';
const NS_MUC_OWNER = 'http://jabber.org/protocol/muc#owner';
const NS_MAM = 'urn:xmpp:mam:2';
const NS_RSM = 'http://jabber.org/protocol/rsm';
const NS_FORWARD = 'urn:xmpp:forward:0';
const NS_DELAY = 'urn:xmpp:delay';
const NS_DATA = 'jabber:x:data';

/** A message read from the room, live or from the archive. */
export interface RoomMessage {
  /** The occupant's nickname in the room. */
  nick: string;
  /** The sender's bare JID from the encrypted envelope, checked against the chain. */
  from: string;
  body: string;
  time: Date;
  /** The group key it was encrypted with, and the block that key is bound to. */
  gk: string;
  block: string;
  /** True when the room told us the occupant's real JID and it equals `from`. */
  senderVerified: boolean;
  archived: boolean;
  /** The stanza id the room assigned (XEP-0359), when it gave one. */
  stanzaId?: string;
}

/** A message this client could not read, with the reason. */
export interface Undecryptable {
  nick: string;
  gk?: string;
  code: UndecryptableError['code'];
  reason: string;
  archived: boolean;
  /** When it was received, or its archive (<delay/>) stamp. */
  at: Date;
}

/**
 * What a room needs of the XMPP connection; an online @xmpp/client `Client` is one. Declared here
 * so that the library's types do not depend on @xmpp/client's (whose `@types` package does not
 * type-check under `moduleResolution: NodeNext`).
 */
export interface RoomConnection {
  on(event: 'stanza', listener: (stanza: Element) => void): unknown;
  off(event: 'stanza', listener: (stanza: Element) => void): unknown;
  send(stanza: Element): Promise<unknown>;
  iqCaller: { request(stanza: Element, timeout?: number): Promise<Element> };
}

export interface RoomOptions {
  xmpp: RoomConnection;
  kms: KmsClient;
  /** The room's bare JID, e.g. planning@conference.example.com. */
  room: string;
  nick: string;
  /** The room's chain, when known (a member learns it from the first message otherwise). */
  chain?: string;
  /** Fetch the chain's new blocks before every send, so a membership change rotates the key at once (default true). */
  refreshBeforeSend?: boolean;
  /** Time allowed between a message's <time/> and its receipt (default 5 minutes). */
  maxSkewMs?: number;
}

/** A file shared in the room (XEP "Sharing a File"): where it is and which key opens it; download() fetches and decrypts it. */
export interface SharedFile {
  nick: string;
  /** The occupant's real bare JID, when the room discloses it. */
  jid?: string;
  file: FileRef;
  at: Date;
  stanzaId?: string;
}

/** How to share a file: its name and media type, and optionally a group key made ahead of time. */
export interface SendFileOptions {
  name: string;
  type?: string;
  /**
   * An unbound group key of this user's (KmsClient.createUnboundGks): the file is encrypted and
   * uploaded under it, the message sent, and the key bound to the chain's last block right after.
   * Default: the room's current sending key.
   */
  key?: GroupKey;
  /** The XEP-0363 service (default: found by disco on the user's domain). */
  uploadService?: string;
}

type Result = { ok: true; message: RoomMessage } | { ok: false; error: Undecryptable };

export interface EncryptedRoom {
  on(event: 'message', listener: (m: RoomMessage) => void): this;
  on(event: 'undecryptable', listener: (u: Undecryptable) => void): this;
  on(event: 'membership', listener: (chain: ChainView) => void): this;
  on(event: 'occupant', listener: (o: { nick: string; jid?: string; available: boolean }) => void): this;
  /** A file was shared (not yet downloaded: see download()). */
  on(event: 'file', listener: (f: SharedFile) => void): this;
  /** The room bounced a message we sent (a stanza error): the message did not reach the room. */
  on(event: 'refused', listener: (r: { id?: string; condition: string; text?: string }) => void): this;
}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the interface of the same name types the events this class emits.
export class EncryptedRoom extends Emitter {
  readonly room: string;
  readonly nick: string;
  readonly #o: RoomOptions;
  #chain: string | undefined;
  #sendKey: GroupKey | undefined;
  /** nick -> real bare JID, from presence (non-anonymous rooms). */
  readonly #occupants = new Map<string, string | undefined>();
  readonly #onStanza = (el: Element) => void this.#stanza(el);
  #joined = false;

  constructor(o: RoomOptions) {
    super();
    this.#o = o;
    this.room = o.room.toLowerCase();
    this.nick = o.nick;
    this.#chain = o.chain;
  }

  get chainUri(): string | undefined {
    return this.#chain;
  }

  /** The group key new messages are sent with, if one has been made. */
  get sendKey(): GroupKey | undefined {
    return this.#sendKey;
  }

  /** Occupants by nickname, with their real JID when the room discloses it. */
  get occupants(): ReadonlyMap<string, string | undefined> {
    return this.#occupants;
  }

  /** Enters the room (creating it, non-anonymous and persistent, if it does not exist). */
  async join(timeoutMs = 10_000): Promise<void> {
    const xmpp = this.#o.xmpp;
    xmpp.on('stanza', this.#onStanza);
    const self = await new Promise<Element>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`no answer from ${this.room} within ${timeoutMs} ms`)), timeoutMs);
      const onPresence = (el: Element) => {
        if (!el.is('presence') || (el.attrs.from ?? '').toLowerCase() !== `${this.room}/${this.nick}`.toLowerCase()) return;
        if (el.attrs.type === 'error') {
          const cond = el.getChild('error')?.children.find((c) => typeof c !== 'string') as Element | undefined;
          done(new Error(`could not join ${this.room}: ${cond?.name ?? 'error'}`));
        } else done(undefined, el);
      };
      const done = (err?: Error, el?: Element) => {
        clearTimeout(timer);
        xmpp.off('stanza', onPresence);
        if (err) reject(err);
        else resolve(el!);
      };
      xmpp.on('stanza', onPresence);
      xmpp
        .send(xml('presence', { to: `${this.room}/${this.nick}` }, xml('x', { xmlns: NS_MUC }, xml('history', { maxstanzas: '0' }))))
        .catch((e: Error) => done(e));
    });
    const codes =
      self
        .getChild('x', NS_MUC_USER)
        ?.getChildren('status')
        .map((s) => s.attrs.code) ?? [];
    if (codes.includes('201')) {
      // A new room: make it an instant room that shows real JIDs (so receivers can check senders) and outlives us.
      await xmpp.iqCaller.request(
        xml(
          'iq',
          { type: 'set', to: this.room },
          xml(
            'query',
            { xmlns: NS_MUC_OWNER },
            xml(
              'x',
              { xmlns: NS_DATA, type: 'submit' },
              field('FORM_TYPE', 'http://jabber.org/protocol/muc#roomconfig'),
              field('muc#roomconfig_whois', 'anyone'),
              field('muc#roomconfig_persistentroom', '1'),
            ),
          ),
        ),
        timeoutMs,
      );
    }
    this.#joined = true;
  }

  /** Creates the room's chain with this user and `members`, and uses it from now on. */
  async create(members: string[]): Promise<ChainView> {
    const chain = await this.#o.kms.createChain(members);
    this.#chain = chain.uri;
    this.#sendKey = undefined;
    this.emit('membership', chain);
    return chain;
  }

  /** The room's chain, brought up to date and verified. */
  async chain(): Promise<ChainView> {
    if (!this.#chain) throw new Error(`the chain of ${this.room} is not known yet`);
    return this.#o.kms.chain(this.#chain);
  }

  /** Members now (the KMS curator aside). */
  async members(): Promise<string[]> {
    const c = await this.chain();
    return [...currentMembers(c)].sort();
  }

  async add(entities: string[]): Promise<ChainView> {
    return this.#changed(await this.#o.kms.addMembers(this.#requireChain(), entities));
  }

  async remove(entities: string[]): Promise<ChainView> {
    return this.#changed(await this.#o.kms.removeMembers(this.#requireChain(), entities));
  }

  #changed(chain: ChainView): ChainView {
    this.#sendKey = undefined; // the next message uses a key bound to the new last block
    this.emit('membership', chain);
    return chain;
  }

  #requireChain(): string {
    if (!this.#chain) throw new Error(`the chain of ${this.room} is not known yet: create() it or receive a message first`);
    return this.#chain;
  }

  /** A group key bound to the chain's last block: the current one, or a new one after a membership change. */
  async #keyForSending(): Promise<GroupKey> {
    const kms = this.#o.kms;
    const uri = this.#requireChain();
    const chain = (this.#o.refreshBeforeSend === false ? kms.knownChain(uri) : undefined) ?? (await kms.chain(uri));
    if (!currentMembers(chain).has(kms.entity)) {
      // The client's own finding on the chain it verified (the KMS would refuse the key with FORBIDDEN).
      throw new Error(`${kms.entity} is no longer a member of ${this.room}'s chain`);
    }
    if (this.#sendKey?.block !== chain.tail) {
      if (this.#sendKey) this.emit('membership', chain);
      // Made by the KMS that keeps the chain: this client's, or, through it, a peer (XEP "Federation").
      this.#sendKey = await kms.createGk(chain.tail, chain.uri);
    }
    return this.#sendKey;
  }

  /** Encrypts `body` and sends it to the room; resolves with the message id. */
  async send(body: string): Promise<string> {
    const gk = await this.#keyForSending();
    const id = randomUUID();
    await this.#o.xmpp.send(
      await encryptRoomMessage({ gk, kms: servedBy(gk.uri), chain: this.#requireChain(), from: this.#o.kms.entity, room: this.room, body, id }),
    );
    return id;
  }

  /**
   * Shares a file (XEP "Sharing a File"): encrypts it under a group key, uploads the ciphertext
   * through HTTP File Upload and sends a message with the key's URI and the file's URL, never the
   * key. Resolves with what receivers get.
   */
  async sendFile(data: Uint8Array, o: SendFileOptions): Promise<FileRef> {
    const kms = this.#o.kms;
    const chain = this.#requireChain();
    if (o.key?.block !== undefined) throw new Error('the group key given to sendFile is already bound: give an unbound one, or none');
    const gk = o.key ?? (await this.#keyForSending());
    const jwe = utf8Encode(await encryptFile(gk, data));
    const xmpp = this.#o.xmpp;
    const domain = kms.entity.split('@')[1] ?? '';
    const service = o.uploadService ?? (await discoverUpload(xmpp, domain));
    if (!service) throw new Error(`no HTTP File Upload service (urn:xmpp:http:upload:0) found on ${domain}`);
    // The upload service sees a random name: the file's own name travels in the room message.
    const slot = await requestSlot(xmpp, service, { filename: `${randomUUID()}.jwe`, size: jwe.length, contentType: FILE_MEDIA_TYPE });
    await putSlot(slot, jwe, FILE_MEDIA_TYPE);
    const ref: FileRef = {
      gk: gk.uri,
      kms: servedBy(gk.uri),
      chain,
      url: slot.get,
      name: o.name,
      size: data.length,
      type: o.type || 'application/octet-stream',
    };
    await xmpp.send(fileMessage({ room: this.room, ref }));
    if (o.key) {
      // Bound after the message is out: a receiver asking meanwhile hears NOT_BOUND and asks again.
      const c = await kms.chain(chain);
      await kms.bindGk(gk.uri, c.tail);
    }
    return ref;
  }

  /**
   * Fetches and decrypts a shared file: the ciphertext from its URL, the group key from the KMS
   * (asked again while the KMS answers "not bound yet"), checked like a message's key (bound to a
   * block of the announced chain where the sender, when the room discloses it, was a member).
   */
  async download(f: SharedFile | FileRef): Promise<Uint8Array> {
    const ref = 'file' in f ? f.file : f;
    const sender = 'file' in f ? f.jid : undefined;
    const kms = this.#o.kms;
    if (this.#chain && ref.chain !== this.#chain) throw new UndecryptableError('key-mismatch', `the file message names another chain (${ref.chain})`);
    const [jwe, gk] = await Promise.all([fetchEncryptedFile(ref), kms.gk(ref.gk)]);
    if (!gk.block) throw new UndecryptableError('key-mismatch', 'the group key is not bound to a block');
    let chain = kms.knownChain(ref.chain);
    if (!chain?.hashes.includes(gk.block)) chain = await kms.chain(ref.chain);
    const at = chain.hashes.indexOf(gk.block);
    if (at < 0) throw new UndecryptableError('key-mismatch', 'the group key is not bound to a block of the announced chain');
    if (sender !== undefined && !chain.members[at]!.has(sender)) {
      throw new UndecryptableError('not-a-member', `${sender} was not a member at the group key's block`);
    }
    return decryptFile(ref, gk, jwe);
  }

  /** Leaves the room. */
  async leave(): Promise<void> {
    this.#o.xmpp.off('stanza', this.#onStanza);
    if (this.#joined) await this.#o.xmpp.send(xml('presence', { to: `${this.room}/${this.nick}`, type: 'unavailable' })).catch(() => undefined);
    this.#joined = false;
  }

  async #stanza(el: Element): Promise<void> {
    const from = (el.attrs.from ?? '').toLowerCase();
    if (!from.startsWith(`${this.room}/`)) return;
    const nick = (el.attrs.from ?? '').slice(this.room.length + 1);
    if (el.is('presence')) {
      const jid = el.getChild('x', NS_MUC_USER)?.getChild('item')?.attrs.jid;
      const available = el.attrs.type !== 'unavailable';
      if (available) this.#occupants.set(nick, jid ? bare(jid) : undefined);
      else this.#occupants.delete(nick);
      this.emit('occupant', { nick, ...(jid ? { jid: bare(jid) } : {}), available });
      return;
    }
    if (el.is('message') && el.attrs.type === 'error') {
      const cond = el.getChild('error')?.children.find((c) => typeof c !== 'string') as Element | undefined;
      const text = el.getChild('error')?.getChildText('text', 'urn:ietf:params:xml:ns:xmpp-stanzas');
      this.emit('refused', { id: el.attrs.id, condition: cond?.name ?? 'undefined-condition', ...(text ? { text } : {}) });
      return;
    }
    if (!el.is('message') || el.attrs.type !== 'groupchat') return;
    const delay = el.getChild('delay', NS_DELAY)?.attrs.stamp;
    let file: FileRef | undefined;
    try {
      file = readFile(el);
    } catch (e) {
      this.emit('undecryptable', { nick, code: 'malformed', reason: (e as Error).message, archived: false, at: delay ? new Date(delay) : new Date() });
      return;
    }
    if (file) {
      const jid = this.#occupants.get(nick);
      const stanzaId = el.getChildren('stanza-id', 'urn:xmpp:sid:0').find((s) => (s.attrs.by ?? '').toLowerCase() === this.room)?.attrs.id;
      this.emit('file', { nick, ...(jid ? { jid } : {}), file, at: delay ? new Date(delay) : new Date(), ...(stanzaId ? { stanzaId } : {}) });
      return;
    }
    const r = await this.#read(el, nick, this.#occupants.get(nick), delay ? new Date(delay) : new Date(), false);
    if (!r) return;
    if (r.ok) this.emit('message', r.message);
    else this.emit('undecryptable', r.error);
  }

  /** Decrypts and checks one room message; undefined when it carries no <encrypted/>. */
  async #read(el: Element, nick: string, realJid: string | undefined, at: Date, archived: boolean): Promise<Result | undefined> {
    let ref: EncryptedRef | undefined;
    const fail = (e: unknown): Result => {
      const u = e instanceof UndecryptableError ? e : undefined;
      const k = e instanceof KmsResponseError ? e : undefined;
      return {
        ok: false,
        error: {
          nick,
          ...(ref ? { gk: ref.gk } : {}),
          code: u?.code ?? (k ? 'key-refused' : 'malformed'),
          reason: k ? `the KMS refused: ${k.message}` : (e as Error).message,
          archived,
          at,
        },
      };
    };
    try {
      ref = readEncrypted(el);
      if (!ref) return undefined;
      if (this.#chain && ref.chain !== this.#chain) throw new UndecryptableError('key-mismatch', `the message names another chain (${ref.chain})`);
      const gk = await this.#o.kms.gk(ref.gk);
      if (!gk.block) throw new UndecryptableError('key-mismatch', 'the group key is not bound to a block');
      const opened = await openRoomMessage(ref, gk, { room: this.room, at, ...(this.#o.maxSkewMs !== undefined ? { maxSkewMs: this.#o.maxSkewMs } : {}) });
      const known = this.#o.kms.knownChain(ref.chain);
      let chain = known;
      if (!chain?.hashes.includes(gk.block)) {
        chain = await this.#o.kms.chain(ref.chain);
        // Someone else changed the membership: say so, and send with a key bound to the new tail.
        if (known && chain.tail !== known.tail) {
          if (this.#sendKey && this.#sendKey.block !== chain.tail) this.#sendKey = undefined;
          this.emit('membership', chain);
        }
      }
      const at_ = chain.hashes.indexOf(gk.block);
      if (at_ < 0) throw new UndecryptableError('key-mismatch', 'the group key is not bound to a block of the announced chain');
      if (!chain.members[at_]!.has(opened.from)) {
        throw new UndecryptableError('not-a-member', `${opened.from} was not a member at the group key's block`);
      }
      if (!archived && !currentMembers(chain).has(opened.from)) {
        throw new UndecryptableError('not-a-member', `${opened.from} is no longer a member of the room's chain`);
      }
      if (realJid !== undefined && realJid !== opened.from) {
        throw new UndecryptableError('sender-mismatch', `the envelope says ${opened.from} but the occupant ${nick} is ${realJid}`);
      }
      this.#chain ??= ref.chain;
      const stanzaId = el.getChildren('stanza-id', 'urn:xmpp:sid:0').find((s) => (s.attrs.by ?? '').toLowerCase() === this.room)?.attrs.id;
      return {
        ok: true,
        message: {
          nick,
          from: opened.from,
          body: opened.body,
          time: opened.time,
          gk: gk.uri,
          block: gk.block,
          senderVerified: realJid === opened.from,
          archived,
          ...(stanzaId ? { stanzaId } : {}),
        },
      };
    } catch (e) {
      return fail(e);
    }
  }

  /**
   * Reads the room's archive (XEP-0313) and decrypts what it can: every group key is fetched
   * once, so each message costs a KMS request only for a key not seen before.
   */
  async history(opts: { max?: number; timeoutMs?: number } = {}): Promise<Result[]> {
    const xmpp = this.#o.xmpp;
    const out: { el: Element; nick: string; jid?: string; at: Date }[] = [];
    let after: string | undefined;
    for (;;) {
      const queryid = randomUUID();
      let last: string | undefined;
      const collect = (el: Element) => {
        const result = el.is('message') ? el.getChild('result', NS_MAM) : undefined;
        if (!result || result.attrs.queryid !== queryid || (el.attrs.from ?? this.room).toLowerCase() !== this.room) return;
        const fwd = result.getChild('forwarded', NS_FORWARD);
        const msg = fwd?.getChild('message');
        if (!msg) return;
        const stamp = fwd!.getChild('delay', NS_DELAY)?.attrs.stamp;
        const nick = (msg.attrs.from ?? '').slice(this.room.length + 1);
        const jid = msg.getChild('x', NS_MUC_USER)?.getChild('item')?.attrs.jid;
        last = result.attrs.id;
        out.push({ el: msg, nick, ...(jid ? { jid: bare(jid) } : {}), at: stamp ? new Date(stamp) : new Date() });
      };
      xmpp.on('stanza', collect);
      let fin: Element | undefined;
      try {
        const rsm = xml('set', { xmlns: NS_RSM }, xml('max', {}, String(Math.min(opts.max ?? 100, 100))), ...(after ? [xml('after', {}, after)] : []));
        const reply = await xmpp.iqCaller.request(
          xml('iq', { type: 'set', to: this.room }, xml('query', { xmlns: NS_MAM, queryid }, rsm)),
          opts.timeoutMs ?? 10_000,
        );
        fin = reply.getChild('fin', NS_MAM);
      } finally {
        xmpp.off('stanza', collect);
      }
      if (!fin || fin.attrs.complete === 'true' || !last || (opts.max !== undefined && out.length >= opts.max)) break;
      after = fin.getChild('set', NS_RSM)?.getChildText('last') ?? last;
    }
    const results: Result[] = [];
    for (const m of out) {
      const r = await this.#read(m.el, m.nick, m.jid, m.at, true);
      if (r) results.push(r);
    }
    return results;
  }
}

function field(v: string, value: string): Element {
  return xml('field', { var: v }, xml('value', {}, value));
}

/** An occupant's real JID as the entity the chain lists (XEP "Entities and Hashes"). */
function bare(jid: string): string {
  return canonicalEntity(jid) ?? jid.split('/')[0]!.toLowerCase();
}

/**
 * The KMS that serves a group key: its URI's authority. A client asks its own KMS for every key,
 * whichever KMS serves it; its KMS answers for its peers (XEP "Federation") and refuses the rest.
 */
function servedBy(gkUri: string): string {
  const authority = kmsAuthority(gkUri);
  if (!authority) throw new Error(`not an absolute group key URI: ${gkUri}`);
  return authority;
}
