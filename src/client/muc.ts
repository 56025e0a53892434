/**
 * The encrypted group-chat message of xep/kms.xml ("Encrypted Messages"): an XEP-0420 envelope,
 * encrypted as a compact JWE (dir + A256GCM, kid = the group key's URI) under a KMS group key,
 * carried in <encrypted xmlns='urn:xmpp:kms:0' gk kms chain/> with an XEP-0380 declaration, a
 * fallback body and an XEP-0334 store hint. Pure functions: no network, no KMS.
 */
import xml, { type Element } from '@xmpp/xml';
import parseXml from '@xmpp/xml/lib/parse.js';
import { NS } from '../protocol/namespace.js';
import { b64uEncode, decodeJweHeader, decryptDir, encryptDir, randomBytes, randomInt, randomUUID, utf8 } from './webcrypto.js';
import type { GroupKey } from './keys.js';

export const NS_SCE = 'urn:xmpp:sce:1';
export const NS_EME = 'urn:xmpp:eme:0';
export const NS_HINTS = 'urn:xmpp:hints';
export const NS_CLIENT = 'jabber:client';
const EME_NAME = 'KMS group key';
export const FALLBACK_BODY = '[This message is end-to-end encrypted with a KMS group key; your client does not support it.]';

/** Why a message could not be read; `code` is stable for programs, the message is for people. */
export class UndecryptableError extends Error {
  constructor(
    readonly code: 'malformed' | 'key-refused' | 'key-mismatch' | 'decrypt-failed' | 'replay-suspect' | 'not-a-member' | 'sender-mismatch' | 'wrong-room',
    message: string,
  ) {
    super(message);
    this.name = 'UndecryptableError';
  }
}

export interface EncryptOptions {
  gk: GroupKey;
  /** The KMS component's JID (the 'kms' attribute). */
  kms: string;
  /** The room's chain URI. */
  chain: string;
  /** The sender's bare JID, as the KMS knows it. */
  from: string;
  /** The room's bare JID. */
  room: string;
  body: string;
  now?: Date;
  id?: string;
}

function host(uri: string): string {
  const m = /^kms:\/\/([^/]+)\//.exec(uri);
  return m ? m[1]!.toLowerCase() : '';
}

/** Builds the <message type='groupchat'/> to send to the room. */
export async function encryptRoomMessage(o: EncryptOptions): Promise<Element> {
  if (host(o.gk.uri) !== o.kms.toLowerCase() || host(o.chain) !== o.kms.toLowerCase()) {
    throw new Error(`the group key and chain must be served by ${o.kms}`);
  }
  const envelope = xml(
    'envelope',
    { xmlns: NS_SCE },
    xml('content', {}, xml('body', { xmlns: NS_CLIENT }, o.body)),
    // Random padding of random length hides the length of the content (affix profile: rpad).
    xml('rpad', {}, b64uEncode(randomBytes(150)).slice(0, randomInt(1, 201))),
    xml('time', { stamp: (o.now ?? new Date()).toISOString() }),
    xml('from', { jid: o.from }),
    xml('to', { jid: o.room }),
  );
  const jwe = await encryptDir(o.gk.key, envelope.toString(), o.gk.uri);
  return xml(
    'message',
    { type: 'groupchat', to: o.room, id: o.id ?? randomUUID() },
    xml('body', {}, FALLBACK_BODY),
    xml('encryption', { xmlns: NS_EME, namespace: NS, name: EME_NAME }),
    xml('encrypted', { xmlns: NS, gk: o.gk.uri, kms: o.kms, chain: o.chain }, jwe),
    xml('store', { xmlns: NS_HINTS }),
  );
}

/** The <encrypted/> element of a message, checked for shape (not yet decrypted). */
export interface EncryptedRef {
  gk: string;
  kms: string;
  chain: string;
  jwe: string;
}

/** Reads the <encrypted/> element of a message; undefined if there is none; throws if it is malformed. */
export function readEncrypted(message: Element): EncryptedRef | undefined {
  const el = message.getChild('encrypted', NS);
  if (!el) return undefined;
  const { gk, kms, chain } = el.attrs;
  const jwe = el.getText().trim();
  if (!gk || !kms || !chain || !jwe) throw new UndecryptableError('malformed', '<encrypted/> needs gk, kms, chain and a JWE');
  if (host(gk) !== kms.toLowerCase() || host(chain) !== kms.toLowerCase()) {
    throw new UndecryptableError('malformed', `the group key and chain are not served by the KMS the message names (${kms})`);
  }
  let header: ReturnType<typeof decodeJweHeader>;
  try {
    header = decodeJweHeader(jwe);
  } catch {
    throw new UndecryptableError('malformed', 'the content is not a compact JWE');
  }
  // A "zip" header never gets here: decodeJweHeader refuses it (compression is not supported).
  if (header.alg !== 'dir' || header.enc !== 'A256GCM' || header.kid !== gk) {
    throw new UndecryptableError('malformed', 'the JWE must be dir + A256GCM with kid equal to the gk attribute');
  }
  return { gk, kms, chain, jwe };
}

/** What the envelope says, after decryption and the affix checks that need no chain. */
export interface OpenedMessage {
  body: string;
  /** The sender's bare JID from the <from/> affix: still to be checked against the room and the chain. */
  from: string;
  time: Date;
}

export interface OpenOptions {
  /** The room's bare JID. */
  room: string;
  /** When the message was received, or the <delay/> stamp of an archived one. */
  at: Date;
  /** Largest accepted difference between <time/> and `at` (default 5 minutes). */
  maxSkewMs?: number;
}

/** Decrypts a message with its group key and checks the envelope's affixes (time and room). */
export async function openRoomMessage(ref: EncryptedRef, gk: GroupKey, o: OpenOptions): Promise<OpenedMessage> {
  if (gk.uri !== ref.gk) throw new UndecryptableError('key-mismatch', 'this is not the group key the message names');
  let plaintext: Uint8Array;
  try {
    ({ plaintext } = await decryptDir(ref.jwe, gk.key));
  } catch {
    throw new UndecryptableError('decrypt-failed', 'the message does not decrypt with its group key (tampered or forged)');
  }
  let envelope: Element;
  try {
    envelope = parseXml(utf8(plaintext));
  } catch {
    throw new UndecryptableError('malformed', 'the decrypted envelope is not XML');
  }
  if (!envelope.is('envelope', NS_SCE)) throw new UndecryptableError('malformed', 'the decrypted content is not an XEP-0420 envelope');
  const body = envelope.getChild('content')?.getChild('body', NS_CLIENT)?.getText();
  const from = envelope.getChild('from')?.attrs.jid;
  const stamp = envelope.getChild('time')?.attrs.stamp;
  if (body === undefined || !from || !stamp) throw new UndecryptableError('malformed', 'the envelope lacks content, <from/> or <time/>');
  const time = new Date(stamp);
  if (Number.isNaN(time.getTime())) throw new UndecryptableError('malformed', 'the envelope <time/> is not a date');
  if (Math.abs(time.getTime() - o.at.getTime()) > (o.maxSkewMs ?? 5 * 60_000)) {
    throw new UndecryptableError('replay-suspect', `sent at ${stamp} but received at ${o.at.toISOString()}: possibly replayed`);
  }
  const to = envelope.getChild('to')?.attrs.jid;
  if (to !== undefined && to.toLowerCase() !== o.room.toLowerCase()) {
    throw new UndecryptableError('wrong-room', `the message was written for ${to}, not for ${o.room}`);
  }
  return { body, from: from.toLowerCase(), time };
}
