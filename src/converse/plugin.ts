/**
 * A converse.js (14) plugin for rooms encrypted through the KMS (`xmpp-kms/converse`): in a
 * groupchat, a toolbar toggle encrypts what the user sends in the XEP's format (xep/kms.xml
 * "Encrypted Messages"), every KMS-encrypted message received is decrypted, one that cannot be
 * is marked with the reason (the KMS's refusal, a chain check), and the toggle's title lists who
 * can decrypt (the chain's members). It speaks to the KMS over converse's own connection, through
 * the client library (KmsClient, encryptRoomMessage, openRoomMessage) and xmlConnection.
 *
 * Settings (converse.initialize): `kms_jid`, `kms_trust_anchors` (PEM texts), `kms_bearer` (a
 * function returning the access token, called at every handshake), `kms_default` (toggle on in
 * new rooms). A room's chain is the one named by the first encrypted message received, or, when
 * the toggle is turned on in a room without one, a new chain with the occupants whose real JIDs
 * the room shows. Do not run it with converse's OMEMO plugin (`blacklisted_plugins:
 * ['converse-omemo']`): both mark outgoing messages `is_encrypted`.
 *
 * Files (xep/kms.xml "Sharing a File"): with the toggle on, a file chosen in converse's upload
 * control is encrypted under the room's sending key (beforeFileUpload) and uploaded as a JWE under
 * a random name; the message converse then sends carries the XEP's <file/> and the fallback body,
 * no out-of-band URL. A received <file/> shows "📎 name (size bytes)" and a `kms-download` button
 * that fetches, checks (EncryptedRoom.download) and decrypts it, and saves it under its name.
 *
 * Commands in a room with a chain: `/kms add <jid>...`, `/kms remove <jid>...` (a block on the
 * room's chain; the next message uses a new group key), `/kms members`, `/kms help`.
 *
 * History: archived messages (MAM, join history) go through the same decryption, at their
 * <delay/> time; a group key the KMS's policy refuses to this user marks them "cannot decrypt".
 */
import { currentMembers } from '../client/chain.js';
import { xmlConnection } from '../client/connection.js';
import { KmsResponseError } from '../client/errors.js';
import type { GroupKey } from '../client/keys.js';
import { KmsClient } from '../client/kms-client.js';
import { encryptRoomMessage, FALLBACK_BODY, openRoomMessage, readEncrypted, UndecryptableError } from '../client/muc.js';
import { encryptFile, FILE_FALLBACK_BODY, FILE_MEDIA_TYPE, type FileRef, fileMessage, readFile, safeFileName } from '../client/files.js';
import { EncryptedRoom, type RoomConnection } from '../client/room.js';
import { randomUUID } from '../client/webcrypto.js';
import type { TrustAnchor } from '../client/x509.js';
import { NS } from '../protocol/namespace.js';
import { kmsAuthority } from '../protocol/federation.js';
import parseXml from '@xmpp/xml/lib/parse.js';

/** The name the plugin registers under (add it to converse's `whitelisted_plugins`). */
export const PLUGIN_NAME = 'xmpp-kms';

/* The little of converse's API the plugin uses (converse ships no TypeScript types). */
interface Model {
  get(key: string): unknown;
  set(key: string, value: unknown): unknown;
  save(key: string | Record<string, unknown>, value?: unknown): unknown;
}
interface Occupant {
  get(key: string): unknown;
}
interface Chat extends Model {
  occupants?: { models: Occupant[] };
  createMessage?(attrs: Record<string, unknown>): unknown;
}
/** A message of converse's; `file` is what is being uploaded (sendFiles), `collection.chatbox` its chat. */
interface Message extends Model {
  file?: object;
  collection?: { chatbox?: Chat };
}
interface RoomView {
  model: Chat;
  listenTo(model: Chat, events: string, handler: () => void): void;
  querySelector(selector: string): { requestUpdate(): void } | null;
}
interface StropheConnection {
  addHandler(handler: (el: Element) => boolean, ns: string | null, name: string | null): unknown;
  deleteHandler(ref: unknown): void;
}
interface ConverseApi {
  settings: { extend(defaults: Record<string, unknown>): void; get(key: string): unknown };
  listen: { on(event: string, handler: (...args: never[]) => unknown): void };
  send(el: Element): void;
  sendIQ(el: Element, timeoutMs?: number, reject?: boolean): Promise<Element | null>;
  connection: { get(): StropheConnection };
  alert?(type: string, title: string, messages: string[]): void;
}
interface ConverseEnv {
  Strophe: { serialize(el: Element): string };
  html: (strings: TemplateStringsArray, ...values: unknown[]) => unknown;
  sizzle: (selector: string, context: Element) => Element[];
}
interface ConversePrivate {
  api: ConverseApi;
  session?: Model;
}
/** converse.js's global (window.converse). */
export interface ConverseGlobal {
  plugins: { add(name: string, plugin: { initialize(this: { _converse: ConversePrivate }): void }): void };
  env: ConverseEnv;
}

type Attrs = Record<string, unknown>;
/** A DOM element, as much of it as the plugin reads (the project's TypeScript has no DOM library). */
interface Element {
  readonly localName: string;
  readonly parentElement: Element | null;
  readonly children: ArrayLike<Element>;
}
interface Event {
  preventDefault(): void;
}
/** A browser File, as much of it as the plugin reads. */
interface BrowserFile {
  readonly name: string;
  readonly size: number;
  readonly type: string;
  arrayBuffer(): Promise<ArrayBuffer>;
}
interface Anchor {
  href: string;
  download: string;
  rel: string;
  click(): void;
  remove(): void;
}
const browser = globalThis as unknown as {
  DOMParser: new () => { parseFromString(text: string, type: string): { documentElement: Element } };
  File: new (parts: string[], name: string, o: { type: string }) => BrowserFile;
  Blob: new (parts: Uint8Array[], o: { type: string }) => object;
  URL: { createObjectURL(blob: object): string; revokeObjectURL(url: string): void };
  document: { createElement(tag: 'a'): Anchor; body: { append(el: Anchor): void } };
};

function dom(text: string): Element {
  // Stanzas on a WebSocket (RFC 7395) carry their namespace: the library's IQs are built without one.
  const withNs = text.replace(/^<(iq|message|presence)(?![^>]*\sxmlns=)/, "<$1 xmlns='jabber:client'");
  return new browser.DOMParser().parseFromString(withNs, 'text/xml').documentElement;
}

/** What a received or sent file message shows. */
function fileLabel(ref: FileRef): string {
  return `📎 ${safeFileName(ref.name)} (${ref.size} bytes)`;
}

/** Why something cannot be decrypted, as the messages say it, and its code. */
function failure(e: unknown): { reason: string; code: string } {
  const reason = e instanceof KmsResponseError ? `the KMS refused: ${e.message}` : (e as Error).message;
  const code = e instanceof UndecryptableError ? e.code : e instanceof KmsResponseError ? 'key-refused' : 'malformed';
  return { reason, code };
}

/**
 * EncryptedRoom.download speaks to the KMS and the upload service only: the plugin uses it for its
 * checks (the same as the library's) on a room it never joins, whose XMPP connection is this one.
 */
const NOT_CONNECTED: RoomConnection = {
  on: () => undefined,
  off: () => undefined,
  send: () => Promise.reject(new Error('not connected')),
  iqCaller: { request: () => Promise.reject(new Error('not connected')) },
};

const HELP = [
  'KMS commands, in a room whose messages are encrypted with the KMS:',
  '/kms add <jid> [<jid>...]: add members to the room’s chain',
  '/kms remove <jid> [<jid>...]: remove members from the room’s chain',
  '/kms members: who can decrypt new messages',
  '/kms help: this text',
  'After a change, the next message is encrypted with a new group key.',
];

/** Registers the plugin with converse; call it before converse.initialize. */
export function registerKmsPlugin(converse: ConverseGlobal): void {
  const { Strophe, html, sizzle } = converse.env;
  converse.plugins.add(PLUGIN_NAME, {
    initialize() {
      const api = this._converse.api;
      api.settings.extend({ kms_jid: '', kms_trust_anchors: [], kms_bearer: null, kms_default: false });

      const connection = () =>
        xmlConnection({
          send: (text) => api.send(dom(text)),
          subscribe: (listener) => {
            const c = api.connection.get();
            const ref = c.addHandler(
              (el) => {
                listener(Strophe.serialize(el));
                return true;
              },
              null,
              null,
            );
            return () => c.deleteHandler(ref);
          },
          request: async (text, timeoutMs) => {
            const reply = await api.sendIQ(dom(text), timeoutMs, false);
            if (!reply) {
              const e = new Error(`no reply to an IQ within ${timeoutMs ?? 'the stanza timeout'} ms`);
              e.name = 'TimeoutError';
              throw e;
            }
            return Strophe.serialize(reply);
          },
        });

      let client: Promise<KmsClient> | undefined;
      /** The KMS client of this login, made at first use. */
      const kms = (): Promise<KmsClient> => {
        if (!client) {
          const bearer = api.settings.get('kms_bearer') as (() => string | Promise<string>) | null;
          if (typeof bearer !== 'function') throw new Error('the xmpp-kms plugin needs the kms_bearer setting (a function returning an access token)');
          const jid = api.settings.get('kms_jid') as string;
          client = KmsClient.connect({
            xmpp: connection(),
            ...(jid ? { kms: jid } : {}),
            anchors: api.settings.get('kms_trust_anchors') as TrustAnchor[],
            bearer: () => bearer(),
          });
          client.catch(() => (client = undefined));
        }
        return client;
      };
      api.listen.on('disconnected', () => {
        const c = client;
        client = undefined;
        void c?.then((k) => k.close()).catch(() => undefined);
      });

      const sendKeys = new Map<string, GroupKey>();
      /** Files encrypted for upload (the File converse uploads), with what their message will say but the URL. */
      const encryptedUploads = new WeakMap<object, Omit<FileRef, 'url'>>();
      /** Files uploaded, by GET URL: the message converse sends next with that URL announces this file. */
      const uploaded = new Map<string, FileRef>();

      /** The room's chain, verified; created with the occupants whose real JIDs are known if there is none yet. */
      const roomChain = async (chat: Chat) => {
        const k = await kms();
        const uri = chat.get('kms_chain') as string | undefined;
        if (uri) return k.chain(uri);
        const members = (chat.occupants?.models ?? [])
          .map((o) => o.get('jid') as string | undefined)
          .filter((j): j is string => !!j)
          .map((j) => j.split('/')[0]!.toLowerCase())
          .filter((j) => j !== k.entity);
        const chain = await k.createChain([...new Set(members)]);
        chat.save('kms_chain', chain.uri);
        return chain;
      };

      const showMembers = (chat: Chat, members: Iterable<string>) => chat.set('kms_members', [...members].sort().join(', '));

      /** A line in the chat from the plugin (not sent): command results and errors. */
      const say = (chat: Chat, type: 'info' | 'error', message: string) => void chat.createMessage?.({ type, message, is_ephemeral: 60_000 });

      /** The group key to send with: bound to the chain's last block (the chain read again), a new one after a membership change. */
      const sendingKey = async (chat: Chat) => {
        const k = await kms();
        const room = (chat.get('jid') as string).toLowerCase();
        const chain = await roomChain(chat);
        const members = currentMembers(chain);
        if (!members.has(k.entity)) throw new Error(`${k.entity} is not a member of ${room}'s chain`);
        showMembers(chat, members);
        let gk = sendKeys.get(room);
        if (gk?.block !== chain.tail) {
          // Made by the KMS that keeps the chain: this user's, or a peer through it (XEP "Federation").
          gk = await k.createGk(chain.tail, chain.uri);
          sendKeys.set(room, gk);
        }
        return { k, room, chain, gk };
      };

      const toggle = async (chat: Chat) => {
        const on = !chat.get('kms_active');
        chat.save('kms_active', on);
        if (!on) return;
        try {
          showMembers(chat, currentMembers(await roomChain(chat)));
        } catch (e) {
          chat.save('kms_active', false);
          api.alert?.('error', 'KMS', [`Cannot encrypt in this room: ${(e as Error).message}`]);
        }
      };

      /** `/kms <verb> <args>`: membership changes on the room's chain, and what it holds. */
      const command = async (chat: Chat, verb: string, args: string[]) => {
        if (verb === 'help') {
          for (const line of HELP) say(chat, 'info', line); // one line each: converse shows an info message on one line
          return;
        }
        try {
          const uri = chat.get('kms_chain') as string | undefined;
          if (!uri) throw new Error('this room has no KMS chain yet: turn the KMS toggle on (or wait for an encrypted message)');
          const k = await kms();
          if (verb === 'members') {
            const members = currentMembers(await k.chain(uri));
            showMembers(chat, members);
            return say(chat, 'info', `Can decrypt new messages: ${[...members].sort().join(', ')}`);
          }
          if (verb !== 'add' && verb !== 'remove') throw new Error(`unknown command /kms ${verb} (see /kms help)`);
          const jids = [...new Set(args.map((a) => a.split('/')[0]!.toLowerCase()))];
          if (jids.length === 0 || jids.some((j) => !/^[^\s@/]+@[^\s@/]+$/.test(j))) throw new Error(`usage: /kms ${verb} <jid> [<jid>...] (bare JIDs)`);
          const chain = verb === 'add' ? await k.addMembers(uri, jids) : await k.removeMembers(uri, jids);
          sendKeys.delete((chat.get('jid') as string).toLowerCase()); // the next message: a key bound to the new tail
          const members = currentMembers(chain);
          showMembers(chat, members);
          say(chat, 'info', `${verb === 'add' ? 'Added' : 'Removed'} ${jids.join(', ')}. Can decrypt new messages: ${[...members].sort().join(', ')}`);
        } catch (e) {
          say(chat, 'error', `KMS: /kms ${verb} failed: ${failure(e).reason}`);
        }
      };

      /** Fetches, checks (as the library's EncryptedRoom.download), decrypts and saves a shared file. */
      const download = async (message: Message) => {
        const ref = message.get('kms_file') as FileRef;
        const chat = message.collection?.chatbox;
        try {
          const k = await kms();
          const known = chat?.get('kms_chain') as string | undefined;
          const room = String(chat?.get('jid') ?? String(message.get('from') ?? '').split('/')[0]);
          const checker = new EncryptedRoom({ xmpp: NOT_CONNECTED, kms: k, room, nick: '', ...(known ? { chain: known } : {}) });
          const sender = message.get('kms_sender') as string | undefined;
          const data = await checker.download(sender ? { nick: String(message.get('nick') ?? ''), jid: sender, file: ref, at: new Date() } : ref);
          // application/octet-stream whatever the sender said: the browser saves it, never opens it.
          const href = browser.URL.createObjectURL(new browser.Blob([data], { type: 'application/octet-stream' }));
          const a = browser.document.createElement('a');
          a.href = href;
          a.download = safeFileName(ref.name);
          a.rel = 'noopener';
          browser.document.body.append(a);
          a.click();
          a.remove();
          setTimeout(() => browser.URL.revokeObjectURL(href), 60_000);
        } catch (e) {
          const { reason, code } = failure(e);
          if (e instanceof UndecryptableError || e instanceof KmsResponseError) {
            message.save({ plaintext: `${fileLabel(ref)}: [cannot decrypt: ${reason}]`, kms_undecryptable: code, kms_reason: reason });
          } else if (chat) say(chat, 'error', `Cannot download ${safeFileName(ref.name)}: ${reason}`);
        }
      };

      api.listen.on('chatRoomInitialized', ((chat: Chat) => {
        if (chat.get('kms_active') === undefined && api.settings.get('kms_default')) chat.save('kms_active', true);
      }) as never);

      // Redraw the toolbar when the toggle or the members change (as converse's OMEMO views do).
      api.listen.on('chatRoomViewInitialized', ((view: RoomView) => {
        view.listenTo(view.model, 'change:kms_active change:kms_members change:kms_chain', () => view.querySelector('converse-chat-toolbar')?.requestUpdate());
      }) as never);

      api.listen.on('getToolbarButtons', ((toolbar: { model: Chat }, buttons: unknown[]) => {
        const chat = toolbar.model;
        if (chat.get('type') !== 'chatroom') return buttons;
        const active = !!chat.get('kms_active');
        const members = chat.get('kms_members') as string | undefined;
        const title = active
          ? `Messages are encrypted with the KMS${members ? `; can decrypt: ${members}` : ''}`
          : 'Messages are sent in plaintext: click to encrypt with the KMS';
        buttons.push(
          html`<button type="button" class="btn toggle-kms" title=${title} data-kms-active=${String(active)} data-kms-members=${members ?? ''}
            data-kms-chain=${(chat.get('kms_chain') as string | undefined) ?? ''}
            @click=${(ev: Event) => {
              ev.preventDefault();
              void toggle(chat);
            }}>${active ? 'KMS: on' : 'KMS: off'}</button>`,
        );
        return buttons;
      }) as never);

      api.listen.on('parseMessageForCommands', ((data: { model: Chat; text: string }, handled: boolean) => {
        if (handled || data.model.get('type') !== 'chatroom') return handled;
        const m = /^\s*\/kms(?:\s+(\S+)([\s\S]*))?\s*$/i.exec(data.text);
        if (!m) return handled;
        void command(data.model, (m[1] ?? 'help').toLowerCase(), (m[2] ?? '').split(/[\s,]+/).filter(Boolean));
        return true;
      }) as never);

      // Files: encrypted before converse uploads them; fails closed (a throw here stops the upload).
      api.listen.on('beforeFileUpload', (async (chat: Chat, file: BrowserFile) => {
        if (chat.get('type') !== 'chatroom' || !chat.get('kms_active')) return file;
        try {
          const { k, chain, gk } = await sendingKey(chat);
          const data = new Uint8Array(await file.arrayBuffer());
          // The upload service sees a random name and a JWE: the real name travels in <file/>.
          const upload = new browser.File([await encryptFile(gk, data)], `${randomUUID()}.jwe`, { type: FILE_MEDIA_TYPE });
          encryptedUploads.set(upload, {
            gk: gk.uri,
            kms: kmsAuthority(gk.uri) ?? k.kmsJid,
            chain: chain.uri,
            name: file.name,
            size: data.length,
            type: file.type || 'application/octet-stream',
          });
          return upload;
        } catch (e) {
          say(chat, 'error', `${safeFileName(file.name)} was not sent: it could not be encrypted (${failure(e).reason})`);
          throw e;
        }
      }) as never);

      api.listen.on('afterFileUploaded', ((message: Message, attrs: Attrs) => {
        const meta = message.file ? encryptedUploads.get(message.file) : undefined;
        if (!meta || typeof attrs.oob_url !== 'string') return attrs;
        const ref: FileRef = { ...meta, url: attrs.oob_url };
        uploaded.set(ref.url, ref);
        return { ...attrs, message: fileLabel(ref) };
      }) as never);

      api.listen.on('getOutgoingMessageAttributes', ((chat: Chat, attrs: Attrs) => {
        if (chat.get('type') !== 'chatroom') return attrs;
        const file = typeof attrs.oob_url === 'string' ? uploaded.get(attrs.oob_url) : undefined;
        if (file) {
          // The message that announces an uploaded file: <file/> and the fallback body, no out-of-band URL.
          uploaded.delete(file.url);
          const label = fileLabel(file);
          return {
            ...attrs,
            is_encrypted: true,
            kms_file: file,
            body: FILE_FALLBACK_BODY,
            plaintext: label,
            message: label,
            original_text: label,
            oob_url: undefined,
            media_urls: [],
            references: [],
          };
        }
        if (!chat.get('kms_active') || !attrs.body) return attrs;
        return { ...attrs, is_encrypted: true, kms_encrypted: true, plaintext: attrs.body, body: FALLBACK_BODY };
      }) as never);

      api.listen.on('createMessageStanza', (async (chat: Chat, data: { message: Model; stanza: { cnode(el: Element): { root(): unknown } } }) => {
        const { message, stanza } = data;
        const file = message.get('kms_file') as FileRef | undefined;
        if (!message.get('kms_encrypted') && !file) return data;
        let built: Element;
        if (file) {
          const room = (chat.get('jid') as string).toLowerCase();
          built = dom(fileMessage({ room, ref: file, id: message.get('msgid') as string }).toString());
        } else {
          // Fails closed: an error here stops the send, nothing goes out in plaintext.
          const { k, room, chain, gk } = await sendingKey(chat);
          built = dom(
            (
              await encryptRoomMessage({
                gk,
                kms: kmsAuthority(gk.uri) ?? k.kmsJid,
                chain: chain.uri,
                from: k.entity,
                room,
                body: message.get('plaintext') as string,
                id: message.get('msgid') as string,
              })
            ).toString(),
          );
        }
        for (const el of Array.from(built.children)) {
          if (el.localName !== 'body') stanza.cnode(el).root();
        }
        return data;
      }) as never);

      // A download button on each file message that can still be decrypted.
      api.listen.on('getMessageActionContent', ((el: { model: Message }, content: unknown) => {
        const ref = el.model.get('kms_file') as FileRef | undefined;
        if (!ref || el.model.get('kms_undecryptable')) return content;
        const name = safeFileName(ref.name);
        return html`${content}<button type="button" class="btn btn-sm kms-download" title=${`Download and decrypt ${name}`} data-kms-file=${name}
          @click=${(ev: Event) => {
            ev.preventDefault();
            void download(el.model);
          }}>⬇ ${name}</button>`;
      }) as never);

      api.listen.on('parseMUCMessage', (async (stanza: Element, attrs: Attrs, chat: Chat | undefined) => {
        const fileEl = sizzle(`file[xmlns="${NS}"]`, stanza).pop();
        if (fileEl?.parentElement) {
          // A shared file: shown with its name and size; fetched, checked and decrypted on download.
          try {
            const ref = readFile(parseXml(Strophe.serialize(fileEl.parentElement)));
            if (!ref) return attrs;
            const real = typeof attrs.from_real_jid === 'string' ? attrs.from_real_jid.split('/')[0]!.toLowerCase() : undefined;
            return { ...attrs, is_encrypted: true, plaintext: fileLabel(ref), kms_file: ref, ...(real ? { kms_sender: real } : {}), oob_url: undefined };
          } catch (e) {
            const { reason, code } = failure(e);
            return { ...attrs, is_encrypted: true, plaintext: `[cannot decrypt: ${reason}]`, kms_undecryptable: code, kms_reason: reason };
          }
        }
        const encrypted = sizzle(`encrypted[xmlns="${NS}"]`, stanza).pop();
        if (!encrypted?.parentElement) return attrs;
        const room = (chat?.get('jid') as string | undefined)?.toLowerCase() ?? String(attrs.from_muc ?? '').toLowerCase();
        // Archived messages (MAM, join history) are checked at their <delay/> time, which converse parsed into attrs.time.
        const at = typeof attrs.time === 'string' ? new Date(attrs.time) : new Date();
        try {
          const ref = readEncrypted(parseXml(Strophe.serialize(encrypted.parentElement)));
          if (!ref) return attrs;
          const k = await kms();
          // Every key is asked of this user's KMS, whichever KMS serves it: its own, or a peer's through it (XEP "Federation").
          const known = chat?.get('kms_chain') as string | undefined;
          if (known && ref.chain !== known) throw new UndecryptableError('key-mismatch', `the message names another chain (${ref.chain})`);
          const gk = await k.gk(ref.gk);
          if (!gk.block) throw new UndecryptableError('key-mismatch', 'the group key is not bound to a block');
          const opened = await openRoomMessage(ref, gk, { room, at });
          let chain = k.knownChain(ref.chain);
          if (!chain?.hashes.includes(gk.block)) chain = await k.chain(ref.chain);
          const i = chain.hashes.indexOf(gk.block);
          if (i < 0) throw new UndecryptableError('key-mismatch', 'the group key is not bound to a block of the announced chain');
          if (!chain.members[i]!.has(opened.from)) throw new UndecryptableError('not-a-member', `${opened.from} was not a member at the group key's block`);
          const real = typeof attrs.from_real_jid === 'string' ? attrs.from_real_jid.split('/')[0]!.toLowerCase() : undefined;
          if (real && real !== opened.from) throw new UndecryptableError('sender-mismatch', `the envelope says ${opened.from} but the occupant is ${real}`);
          if (chat && !known) chat.save('kms_chain', ref.chain);
          if (chat) showMembers(chat, currentMembers(chain));
          return { ...attrs, is_encrypted: true, plaintext: opened.body, kms_sender: opened.from, kms_gk: gk.uri };
        } catch (e) {
          const { reason, code } = failure(e);
          return { ...attrs, is_encrypted: true, plaintext: `[cannot decrypt: ${reason}]`, kms_undecryptable: code, kms_reason: reason };
        }
      }) as never);
    },
  });
}
