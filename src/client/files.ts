/**
 * Encrypted file sharing (use case 3.1 of -03; xep/kms.xml "Sharing a File"): a file is encrypted
 * under a group key as a compact JWE (dir + A256GCM, kid = the group key's URI, the file's bytes as
 * the plaintext), the JWE is uploaded through HTTP File Upload (XEP-0363) and the room message
 * carries <file xmlns='urn:xmpp:kms:0' gk kms chain url name size type/>: where to get the file
 * and which key opens it, never the key. Pure functions and HTTP: no KMS here.
 */
import xml, { type Element } from '@xmpp/xml';
import { NS } from '../protocol/namespace.js';
import { decodeJweHeader, decryptDir, encryptDir, randomUUID } from './webcrypto.js';
import type { GroupKey } from './keys.js';
import { NS_EME, NS_HINTS, UndecryptableError } from './muc.js';
import type { XmppEntity } from './xmpp.js';

/** XEP-0363's namespace. */
export const NS_UPLOAD = 'urn:xmpp:http:upload:0';
/** The media type of what is uploaded: the compact serialization of a JWE (RFC 7516 section 9). */
export const FILE_MEDIA_TYPE = 'application/jose';
const NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items';
const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';

/** The fallback body of a file message, for clients without this protocol. */
export const FILE_FALLBACK_BODY = '[A file encrypted with a KMS group key was shared here; your client does not support it.]';

/** What a room message says about a shared file (not yet fetched or decrypted). */
export interface FileRef {
  gk: string;
  kms: string;
  chain: string;
  /** Where the encrypted file is (an https: or http: URL of the upload service). */
  url: string;
  /** The file's name, as the sender gave it: not a safe path (see safeFileName). */
  name: string;
  /** The plaintext's size in bytes. */
  size: number;
  /** The plaintext's media type. */
  type: string;
}

function host(uri: string): string {
  const m = /^kms:\/\/([^/]+)\//.exec(uri);
  return m ? m[1]!.toLowerCase() : '';
}

/** Encrypts a file's bytes under a group key: a compact JWE, dir + A256GCM, kid = the group key's URI. */
export function encryptFile(gk: GroupKey, data: Uint8Array): Promise<string> {
  return encryptDir(gk.key, data, gk.uri);
}

/** Decrypts what `encryptFile` made, after checking its header names this group key; checks the size the message announced. */
export async function decryptFile(ref: FileRef, gk: GroupKey, jwe: string): Promise<Uint8Array> {
  if (gk.uri !== ref.gk) throw new UndecryptableError('key-mismatch', 'this is not the group key the file message names');
  let header: ReturnType<typeof decodeJweHeader>;
  try {
    header = decodeJweHeader(jwe.trim());
  } catch {
    throw new UndecryptableError('malformed', 'the downloaded file is not a compact JWE');
  }
  if (header.alg !== 'dir' || header.enc !== 'A256GCM' || header.kid !== ref.gk) {
    throw new UndecryptableError('malformed', 'the file must be a JWE dir + A256GCM with kid equal to the gk attribute');
  }
  let plaintext: Uint8Array;
  try {
    ({ plaintext } = await decryptDir(jwe.trim(), gk.key));
  } catch {
    throw new UndecryptableError('decrypt-failed', 'the file does not decrypt with its group key (tampered or forged)');
  }
  if (plaintext.length !== ref.size) throw new UndecryptableError('malformed', `the file has ${plaintext.length} bytes, the message announced ${ref.size}`);
  return plaintext;
}

/** The room message announcing a file: <file/>, an XEP-0380 declaration, a fallback body and a store hint. */
export function fileMessage(o: { room: string; ref: FileRef; id?: string }): Element {
  const { gk, kms, chain, url, name, size, type } = o.ref;
  if (host(gk) !== kms.toLowerCase() || host(chain) !== kms.toLowerCase()) throw new Error(`the group key and chain must be served by ${kms}`);
  return xml(
    'message',
    { type: 'groupchat', to: o.room, id: o.id ?? randomUUID() },
    xml('body', {}, FILE_FALLBACK_BODY),
    xml('encryption', { xmlns: NS_EME, namespace: NS, name: 'KMS group key' }),
    xml('file', { xmlns: NS, gk, kms, chain, url, name, size: String(size), type }),
    xml('store', { xmlns: NS_HINTS }),
  );
}

/** Reads the <file/> element of a message; undefined if there is none; throws if it is malformed. */
export function readFile(message: Element): FileRef | undefined {
  const el = message.getChild('file', NS);
  if (!el) return undefined;
  const { gk, kms, chain, url, name, size, type } = el.attrs as Record<string, string | undefined>;
  if (!gk || !kms || !chain || !url || name === undefined || !size || !type) {
    throw new UndecryptableError('malformed', '<file/> needs gk, kms, chain, url, name, size and type');
  }
  if (host(gk) !== kms.toLowerCase() || host(chain) !== kms.toLowerCase()) {
    throw new UndecryptableError('malformed', `the group key and chain are not served by the KMS the message names (${kms})`);
  }
  if (!/^(0|[1-9][0-9]{0,14})$/.test(size)) throw new UndecryptableError('malformed', '<file/> size is not a number of bytes');
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UndecryptableError('malformed', '<file/> url is not a URL');
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new UndecryptableError('malformed', '<file/> url is not http(s)');
  return { gk, kms, chain, url, name, size: Number(size), type };
}

/**
 * A name to save a received file under in a directory: the last path segment of what the sender
 * gave, without control, separator or reserved characters, leading dots or trailing dots and spaces,
 * at most 120 characters; "file" when nothing is left.
 */
export function safeFileName(name: string): string {
  const last = name.split(/[/\\]/).pop() ?? '';
  const cleaned = last
    .normalize('NFC')
    .replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069<>:"|?*]/g, '_')
    .replace(/^[.\s]+/, '')
    .replace(/[.\s]+$/, '')
    .slice(0, 120);
  return cleaned === '' ? 'file' : cleaned;
}

// ---- HTTP File Upload (XEP-0363) ----

/** An upload slot: where to PUT (with which headers) and where the file will be to GET. */
export interface UploadSlot {
  put: string;
  get: string;
  headers: Record<string, string>;
}

/** Finds the upload service of a domain: the first disco item with the feature urn:xmpp:http:upload:0 (or the domain itself). */
export async function discoverUpload(entity: XmppEntity, domain: string, timeoutMs = 10_000): Promise<string | undefined> {
  const has = async (jid: string) => {
    const info = await entity.iqCaller.request(xml('iq', { type: 'get', to: jid }, xml('query', { xmlns: NS_DISCO_INFO })), timeoutMs).catch(() => undefined);
    return (
      info
        ?.getChild('query', NS_DISCO_INFO)
        ?.getChildren('feature')
        .some((f) => f.attrs.var === NS_UPLOAD) ?? false
    );
  };
  const items = await entity.iqCaller.request(xml('iq', { type: 'get', to: domain }, xml('query', { xmlns: NS_DISCO_ITEMS })), timeoutMs);
  const jids = (items.getChild('query', NS_DISCO_ITEMS)?.getChildren('item') ?? []).map((i) => i.attrs.jid).filter((j): j is string => !!j);
  for (const jid of jids) if (await has(jid)) return jid;
  return (await has(domain)) ? domain : undefined;
}

/** Asks the upload service for a slot (XEP-0363 section 4), for `size` bytes of `contentType`. */
export async function requestSlot(
  entity: XmppEntity,
  service: string,
  o: { filename: string; size: number; contentType: string },
  timeoutMs = 10_000,
): Promise<UploadSlot> {
  const reply = await entity.iqCaller.request(
    xml('iq', { type: 'get', to: service }, xml('request', { xmlns: NS_UPLOAD, filename: o.filename, size: String(o.size), 'content-type': o.contentType })),
    timeoutMs,
  );
  const slot = reply.getChild('slot', NS_UPLOAD);
  const put = slot?.getChild('put')?.attrs.url;
  const get = slot?.getChild('get')?.attrs.url;
  if (!put || !get) throw new Error(`${service} answered the upload request without a put and a get URL`);
  const headers: Record<string, string> = {};
  // XEP-0363 section 5: only these headers may be passed on from the slot to the PUT.
  for (const h of slot!.getChild('put')!.getChildren('header')) {
    const name = h.attrs.name ?? '';
    if (['authorization', 'cookie', 'expires'].includes(name.toLowerCase())) headers[name] = h.getText().replace(/[\r\n]/g, '');
  }
  return { put, get, headers };
}

/** Uploads `body` to a slot with an HTTP PUT. */
export async function putSlot(slot: UploadSlot, body: Uint8Array, contentType: string): Promise<void> {
  const res = await fetch(slot.put, { method: 'PUT', headers: { ...slot.headers, 'content-type': contentType }, body: body as Uint8Array<ArrayBuffer> });
  if (!res.ok) throw new Error(`the upload to ${slot.put} failed: HTTP ${res.status}`);
}

/** Downloads a shared file's JWE (at most `maxBytes`, by default four times the announced size plus 4 KiB). */
export async function fetchEncryptedFile(ref: FileRef, maxBytes = ref.size * 4 + 4096): Promise<string> {
  const res = await fetch(ref.url);
  if (!res.ok) throw new Error(`the download of ${ref.url} failed: HTTP ${res.status}`);
  const length = Number(res.headers.get('content-length') ?? '0');
  if (length > maxBytes) throw new Error(`${ref.url} holds ${length} bytes, more than a JWE of ${ref.size} bytes can be`);
  const text = await res.text();
  if (text.length > maxBytes) throw new Error(`${ref.url} holds more than a JWE of ${ref.size} bytes can be`);
  return text;
}
