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
 */
import { currentMembers } from '../client/chain.js';
import { xmlConnection } from '../client/connection.js';
import { KmsResponseError } from '../client/errors.js';
import type { GroupKey } from '../client/keys.js';
import { KmsClient } from '../client/kms-client.js';
import { encryptRoomMessage, FALLBACK_BODY, openRoomMessage, readEncrypted, UndecryptableError } from '../client/muc.js';
import type { TrustAnchor } from '../client/x509.js';
import { NS } from '../protocol/namespace.js';
import parseXml from '@xmpp/xml/lib/parse.js';

/** The name the plugin registers under (add it to converse's `whitelisted_plugins`). */
export const PLUGIN_NAME = 'xmpp-kms';

/* The little of converse's API the plugin uses (converse ships no TypeScript types). */
interface Model {
  get(key: string): unknown;
  set(key: string, value: unknown): unknown;
  save(key: string, value: unknown): unknown;
}
interface Occupant {
  get(key: string): unknown;
}
interface Chat extends Model {
  occupants?: { models: Occupant[] };
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
const { DOMParser } = globalThis as unknown as { DOMParser: new () => { parseFromString(text: string, type: string): { documentElement: Element } } };

function dom(text: string): Element {
  // Stanzas on a WebSocket (RFC 7395) carry their namespace: the library's IQs are built without one.
  const withNs = text.replace(/^<(iq|message|presence)(?![^>]*\sxmlns=)/, "<$1 xmlns='jabber:client'");
  return new DOMParser().parseFromString(withNs, 'text/xml').documentElement;
}

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

      api.listen.on('chatRoomInitialized', ((chat: Chat) => {
        if (chat.get('kms_active') === undefined && api.settings.get('kms_default')) chat.save('kms_active', true);
      }) as never);

      // Redraw the toolbar when the toggle or the members change (as converse's OMEMO views do).
      api.listen.on('chatRoomViewInitialized', ((view: RoomView) => {
        view.listenTo(view.model, 'change:kms_active change:kms_members', () => view.querySelector('converse-chat-toolbar')?.requestUpdate());
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
            @click=${(ev: Event) => {
              ev.preventDefault();
              void toggle(chat);
            }}>${active ? 'KMS: on' : 'KMS: off'}</button>`,
        );
        return buttons;
      }) as never);

      api.listen.on('getOutgoingMessageAttributes', ((chat: Chat, attrs: Attrs) => {
        if (chat.get('type') !== 'chatroom' || !chat.get('kms_active') || !attrs.body) return attrs;
        return { ...attrs, is_encrypted: true, kms_encrypted: true, plaintext: attrs.body, body: FALLBACK_BODY };
      }) as never);

      api.listen.on('createMessageStanza', (async (chat: Chat, data: { message: Model; stanza: { cnode(el: Element): { root(): unknown } } }) => {
        const { message, stanza } = data;
        if (!message.get('kms_encrypted')) return data;
        // Fails closed: an error here stops the send, nothing goes out in plaintext.
        const k = await kms();
        const room = (chat.get('jid') as string).toLowerCase();
        const chain = await roomChain(chat);
        const members = currentMembers(chain);
        if (!members.has(k.entity)) throw new Error(`${k.entity} is not a member of ${room}'s chain`);
        showMembers(chat, members);
        let gk = sendKeys.get(room);
        if (gk?.block !== chain.tail) {
          gk = await k.createGk(chain.tail);
          sendKeys.set(room, gk);
        }
        const built = dom(
          (
            await encryptRoomMessage({
              gk,
              kms: k.kmsJid,
              chain: chain.uri,
              from: k.entity,
              room,
              body: message.get('plaintext') as string,
              id: message.get('msgid') as string,
            })
          ).toString(),
        );
        for (const el of Array.from(built.children)) {
          if (el.localName !== 'body') stanza.cnode(el).root();
        }
        return data;
      }) as never);

      api.listen.on('parseMUCMessage', (async (stanza: Element, attrs: Attrs, chat: Chat | undefined) => {
        const encrypted = sizzle(`encrypted[xmlns="${NS}"]`, stanza).pop();
        if (!encrypted?.parentElement) return attrs;
        const room = (chat?.get('jid') as string | undefined)?.toLowerCase() ?? String(attrs.from_muc ?? '').toLowerCase();
        const at = typeof attrs.time === 'string' ? new Date(attrs.time) : new Date();
        try {
          const ref = readEncrypted(parseXml(Strophe.serialize(encrypted.parentElement)));
          if (!ref) return attrs;
          const k = await kms();
          if (ref.kms.toLowerCase() !== k.kmsJid.toLowerCase()) {
            throw new UndecryptableError('key-refused', `the message uses another KMS (${ref.kms}); this client trusts ${k.kmsJid}`);
          }
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
          const reason = e instanceof KmsResponseError ? `the KMS refused: ${e.message}` : (e as Error).message;
          const code = e instanceof UndecryptableError ? e.code : e instanceof KmsResponseError ? 'key-refused' : 'malformed';
          return { ...attrs, is_encrypted: true, plaintext: `[cannot decrypt: ${reason}]`, kms_undecryptable: code, kms_reason: reason };
        }
      }) as never);
    },
  });
}
