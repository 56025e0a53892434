/**
 * `kms chat`: a line-oriented terminal client for an end-to-end encrypted MUC room. It logs in,
 * validates the KMS's key against a trust anchor, opens a KMS session, joins the room with an
 * EncryptedRoom and then reads lines from stdin: a plain line is sent encrypted under the room's
 * group key, a line starting with '/' is a command (/help lists them). Every incoming message is
 * decrypted here; the XMPP server only ever carries ciphertext.
 */
import { Command, Option } from 'commander';
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import { clearLine, createInterface, cursorTo, type Interface } from 'node:readline';
import type { Client } from '@xmpp/client';
import { configFrom, type KmsConfig } from '../config.js';
import { login } from './demo.js';
import { localTokens, tokenAudience } from '../server.js';
import { deviceLogin } from './device-login.js';
import { KmsClient } from '../client/kms-client.js';
import { EncryptedRoom, type RoomMessage, type SharedFile, type Undecryptable } from '../client/room.js';
import { safeFileName } from '../client/files.js';
import { fetchKmsIdentity } from '../client/xmpp.js';
import type { ChainView } from '../client/kms-client.js';
import { pemCertificates } from '../crypto/x509.js';
import { currentMembers } from '../client/chain.js';
import { canonicalEntity } from '../protocol/entity.js';

export interface ChatOptions {
  xmpp: string;
  domain: string;
  user: string;
  password?: string;
  room: string;
  nick?: string;
  kms: string;
  anchor?: string;
  token?: string;
  config?: string;
  create?: string;
  chain?: string;
  /** Sign in at an OpenID Connect issuer with the device authorization grant (RFC 8628). */
  device?: boolean;
  issuer?: string;
}

/** A failure worth one line to the user (no stack trace). */
class ChatError extends Error {}

/** A signal before the chat started: not a failure, the user chose to stop. */
class Interrupted extends ChatError {}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

const HELP = [
  'commands:',
  '  <text>          send <text> to the room, encrypted under the current group key',
  "  /add <jid>      add a member to the room's chain (the next message uses a new group key)",
  "  /remove <jid>   remove a member from the room's chain (the next message uses a new group key)",
  '  /members        who is in the chain now, i.e. who can decrypt new messages',
  "  /history        decrypt the room's archive: each message, or why it cannot be read",
  '  /send <file>    share a file: encrypted under the group key, uploaded through HTTP File Upload',
  '  /get <n>        download and decrypt shared file number n into the current directory',
  '  /help           this list',
  '  /quit           leave the room, close the KMS session and exit (also Ctrl-C, Ctrl-D)',
];

/** The `chat` subcommand, for `program.addCommand(chatCommand())`. */
export function chatCommand(): Command {
  return new Command('chat')
    .description('an end-to-end encrypted chat in a MUC room: messages are encrypted with KMS group keys (type /help once joined)')
    .requiredOption('--xmpp <url>', "the XMPP server's client port, e.g. xmpp://127.0.0.1:5222")
    .option('--domain <domain>', "the users' XMPP domain", 'localhost')
    .requiredOption('--user <name>', 'your account on the XMPP server (the local part, e.g. alice)')
    .addOption(new Option('--password <password>', 'your XMPP password (visible in ps: prefer the environment variable)').env('KMS_CHAT_PASSWORD'))
    .requiredOption('--room <jid>', "the room's JID, e.g. planning@conference.localhost")
    .option('--nick <nick>', 'your nickname in the room (default: the user name)')
    .option('--kms <jid>', "the KMS component's JID", 'kms.localhost')
    .option('--anchor <pem file>', 'trust anchor(s) for the KMS certificate (default: <dataDir>/trust-anchor.pem of the configuration)')
    .addOption(
      new Option('--token <jwt>', 'your access token for the KMS (default: minted by the local issuer of the configuration, as `kms token` does)').env(
        'KMS_CHAT_TOKEN',
      ),
    )
    .option('-c, --config <file>', "the KMS's JSON configuration file (or KMS_CONFIG), for the default anchor and local tokens")
    .option(
      '--device',
      'sign in at the identity provider with the device authorization grant: open the URL shown and enter the code (the default when the configuration has auth.issuerUrl)',
    )
    .addOption(new Option('--issuer <url>', 'the OpenID Connect issuer for --device (default: auth.issuerUrl of the configuration)').env('KMS_CHAT_ISSUER'))
    .option('--create <jid,jid>', "create the room's chain with you and these members")
    .option('--chain <uri>', 'use this existing chain for the room (default: learnt from the first message)')
    .addHelpText('after', `\nOnce joined, type a line to send it encrypted, or a command:\n${HELP.slice(1).join('\n')}\n`)
    .action(async (opts: ChatOptions) => {
      process.exit(await runChat(opts));
    });
}

/** A JID from a command argument: a bare local part gets the user's domain. */
function jidArg(s: string, domain: string): string {
  const t = s.trim();
  if (!t) throw new ChatError(`give a JID, e.g. bob@${domain}`);
  if (/[\s/]/.test(t)) throw new ChatError(`not a bare JID: "${t}"`);
  // The one spelling the KMS accepts (XEP "Entities and Hashes").
  const jid = canonicalEntity(t.includes('@') ? t : `${t}@${domain}`);
  if (!jid) throw new ChatError(`not a user address: "${t}"`);
  return jid;
}

/** Text from the room or the KMS, made safe for a terminal: no control or bidi characters. */
function clean(s: string): string {
  return s
    .replace(/\r\n?/g, '\n')
    .replace(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    .replace(/\n/g, '\n    ');
}

function hhmmss(d: Date): string {
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

function messageLine(m: RoomMessage): string {
  const verified = m.senderVerified ? ' [verified]' : '';
  return `[${hhmmss(m.time)}] ${clean(m.nick)} (${m.from})${verified}: ${clean(m.body)}`;
}

function refusalLine(u: Undecryptable, at: Date | undefined = u.at): string {
  return `[${at ? hhmmss(at) : '--:--:--'}] ${clean(u.nick)}: [cannot decrypt: ${clean(u.reason)}]`;
}

function fileLine(n: number, f: SharedFile): string {
  return `[${hhmmss(f.at)}] ${clean(f.nick)}${f.jid ? ` (${f.jid})` : ''} shared file #${n}: "${clean(f.file.name)}" (${f.file.size} bytes, ${clean(f.file.type)}); /get ${n} saves it`;
}

/** A few media types by extension; anything else is application/octet-stream. */
const MEDIA_TYPES: Record<string, string> = {
  '.txt': 'text/plain',
  '.md': 'text/markdown',
  '.pdf': 'application/pdf',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.json': 'application/json',
  '.zip': 'application/zip',
};

/** Writes `data` in the current directory under a safe form of `name`, never over an existing file; returns the name used. */
async function saveNew(name: string, data: Uint8Array): Promise<string> {
  const safe = safeFileName(name);
  const ext = extname(safe);
  const stem = safe.slice(0, safe.length - ext.length) || 'file';
  for (let i = 0; i < 1000; i++) {
    const candidate = i === 0 ? safe : `${stem} (${i})${ext}`;
    try {
      await writeFile(resolve(candidate), data, { flag: 'wx' });
      return candidate;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  throw new ChatError(`too many files named like ${safe} here`);
}

function lastMembers(chain: ChainView): string[] {
  return [...currentMembers(chain)].sort();
}

async function readAnchors(file: string): Promise<X509Certificate[]> {
  let pem: string;
  try {
    pem = await readFile(file, 'utf8');
  } catch (e) {
    throw new ChatError(`cannot read the trust anchor ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const blocks = pemCertificates(pem);
  if (blocks.length === 0) throw new ChatError(`${file} holds no PEM certificate`);
  try {
    return blocks.map((b) => new X509Certificate(b));
  } catch (e) {
    throw new ChatError(`${file}: not a valid certificate (${(e as Error).message})`);
  }
}

/** Runs the chat until /quit, end of input or a signal; resolves with the exit code. */
export async function runChat(o: ChatOptions): Promise<number> {
  const out = new Output();
  let xmpp: Client | undefined;
  let kms: KmsClient | undefined;
  let room: EncryptedRoom | undefined;
  let closing: Promise<number> | undefined;

  /** Leaves the room, deletes the KMS session's ephemeral key and closes the stream (once). */
  const shutdown = (code: number): Promise<number> =>
    (closing ??= (async () => {
      out.close();
      if (room) await room.leave().catch(() => undefined);
      // Deleting the ephemeral key at the KMS is one IQ: not worth more than a few seconds at exit.
      if (kms) await Promise.race([kms.close().catch(() => undefined), new Promise((r) => setTimeout(r, 3000).unref())]);
      if (xmpp) {
        xmpp.reconnect.stop();
        await Promise.race([xmpp.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 3000).unref())]);
      }
      return code;
    })());

  // Until the interactive loop starts, a signal stops what is under way and cleans up (exit 0).
  let interrupted: ((signal: NodeJS.Signals) => void) | undefined;
  const earlySignal = (signal: NodeJS.Signals) => interrupted?.(signal);
  for (const sig of SIGNALS) process.once(sig, earlySignal);
  const interruption = new Promise<never>((_, reject) => {
    interrupted = (signal) => reject(new Interrupted(`${signal}: stopped before the chat started`));
  });
  interruption.catch(() => undefined);
  /** `p`, unless a signal comes first; with `failing`, an error other than a ChatError becomes one, its message after that prefix. */
  const step = async <T>(p: Promise<T>, failing?: string): Promise<T> => {
    try {
      return await Promise.race([p, interruption]);
    } catch (e) {
      if (failing === undefined || e instanceof ChatError) throw e;
      throw new ChatError(`${failing}${(e as Error).message}`);
    }
  };

  try {
    const domain = o.domain.toLowerCase();
    const me = `${o.user.toLowerCase()}@${domain}`;
    const nick = o.nick ?? o.user;
    const roomJid = o.room.toLowerCase();
    if (!o.password) throw new ChatError('give the password with --password or, better, the environment variable KMS_CHAT_PASSWORD');
    if (o.user.includes('@')) throw new ChatError(`--user takes the local part only (e.g. ${o.user.split('@')[0]}); --domain gives the domain`);
    if (!/^[^@/\s]+@[^@/\s]+$/.test(roomJid)) throw new ChatError(`--room: a room JID like planning@conference.${domain}, got "${o.room}"`);
    if (o.create !== undefined && o.chain !== undefined) throw new ChatError('give --create or --chain, not both');
    const createWith =
      o.create !== undefined
        ? o.create
            .split(',')
            .filter((s) => s.trim() !== '')
            .map((s) => jidArg(s, domain))
        : undefined;

    let config: KmsConfig | undefined;
    // loadConfig leaves the chat's own KMS_CHAT_* variables alone (they are no configuration settings).
    const cfg = (): KmsConfig => (config ??= configFrom(o));
    const anchorFile = o.anchor ?? join(resolve(cfg().dataDir), 'trust-anchor.pem');
    const anchors = await readAnchors(anchorFile);
    const issuer = o.issuer ?? (o.token ? undefined : cfg().auth.issuerUrl);
    if (o.device && !issuer) throw new ChatError('--device: give --issuer, or a configuration with auth.issuerUrl');
    const bearer = o.token
      ? () => o.token!
      : issuer
        ? await step(deviceBearer(issuer, tokenAudience(cfg()), out), `could not sign in at ${issuer}: `)
        : await chatTokens(cfg(), me);

    xmpp = await step(login(o.xmpp, domain, o.user, o.password), `could not log in as ${me} to ${o.xmpp}: `);
    out.line(`✓ logged in as ${me} to ${o.xmpp}`);

    const identity = await step(fetchKmsIdentity(xmpp, o.kms, anchors), `could not validate the key of the KMS ${o.kms}: `);
    out.line(`✓ KMS key validated: ${identity.kid} (${identity.sigAlg}) chains to the trust anchor ${anchorFile}`);

    kms = await step(KmsClient.connect({ xmpp, kms: o.kms, anchors, identity, bearer }), `could not open a KMS session with ${o.kms}: `);
    if (kms.entity !== me) out.line(`! the KMS knows you as ${kms.entity}, not ${me}`);
    out.line(`✓ KMS session open as ${kms.entity} (entity key ${kms.entityKey.kid})`);

    room = new EncryptedRoom({ xmpp, kms, room: roomJid, nick, ...(o.chain ? { chain: o.chain } : {}) });
    const present = new Set<string>();
    let ownChange = false;
    room.on('message', (m) => out.line(messageLine(m)));
    room.on('undecryptable', (u) => out.line(refusalLine(u)));
    const files: SharedFile[] = [];
    room.on('file', (f) => {
      files.push(f);
      out.line(fileLine(files.length, f));
    });
    room.on('occupant', (p) => {
      if (p.available && !present.has(p.nick)) {
        present.add(p.nick);
        if (p.nick !== nick) out.line(`* ${clean(p.nick)}${p.jid ? ` (${p.jid})` : ''} is in the room`);
      } else if (!p.available && present.delete(p.nick)) {
        out.line(`* ${clean(p.nick)}${p.jid ? ` (${p.jid})` : ''} left the room`);
      }
    });
    room.on('membership', (c) => {
      if (!ownChange) out.line(`* the chain changed: members now ${lastMembers(c).join(', ')}; new messages use a new group key`);
    });
    const r = room;
    room.on('refused', (e) => out.line(`! the room refused a message: ${clean(e.text ?? e.condition)}`));
    xmpp.on('offline', () => {
      if (closing) return;
      out.line('! disconnected from the XMPP server');
      void shutdown(1).then((code) => process.exit(code));
    });

    await step(room.join(), '');
    out.line(`✓ joined ${roomJid} as ${nick}`);

    try {
      if (createWith) {
        ownChange = true;
        const chain = await step(room.create(createWith));
        out.line(`✓ chain created with members ${lastMembers(chain).join(', ')}`);
        out.line(`  chain ${chain.uri} (others can start with --chain ${chain.uri})`);
      } else if (o.chain) {
        const chain = await step(room.chain());
        const members = lastMembers(chain);
        out.line(`✓ using chain ${chain.uri}, members ${members.join(', ')}`);
        if (!members.includes(kms.entity)) out.line(`! you (${kms.entity}) are not a member of this chain: you cannot send or read new messages`);
      } else {
        out.line("  the room's chain is learnt from the first message (start with --create or --chain to send first)");
      }
    } catch (e) {
      if (e instanceof ChatError) throw e;
      throw new ChatError(`${createWith ? 'could not create the chain' : `could not read the chain ${o.chain}`}: ${(e as Error).message}`);
    } finally {
      ownChange = false;
    }

    for (const sig of SIGNALS) process.off(sig, earlySignal);
    out.line('type a message and press Enter to send it encrypted; /help lists the commands');

    // ---- the interactive loop: one line at a time, in order ----
    const commands: Record<string, (arg: string) => Promise<void>> = {
      help: async () => {
        for (const l of HELP) out.line(l);
      },
      members: async () => {
        const members = await r.members();
        out.line(`members (${members.length}): ${members.join(', ')}`);
      },
      add: async (arg) => {
        const jid = jidArg(arg, domain);
        ownChange = true;
        const chain = await r.add([jid]);
        out.line(`✓ added ${jid}; members now ${lastMembers(chain).join(', ')}`);
      },
      remove: async (arg) => {
        const jid = jidArg(arg, domain);
        ownChange = true;
        const chain = await r.remove([jid]);
        out.line(`✓ removed ${jid}; members now ${lastMembers(chain).join(', ')}`);
      },
      send: async (arg) => {
        const path = arg.trim();
        if (!path) throw new ChatError('give a file, e.g. /send notes.txt');
        let data: Uint8Array;
        try {
          data = await readFile(resolve(path));
        } catch (e) {
          throw new ChatError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
        const name = basename(path);
        const ref = await r.sendFile(data, { name, type: MEDIA_TYPES[extname(name).toLowerCase()] ?? 'application/octet-stream' });
        out.line(`✓ shared "${clean(name)}" (${data.length} bytes), encrypted under ${ref.gk}`);
      },
      get: async (arg) => {
        const n = Number(arg.trim());
        const f = Number.isInteger(n) ? files[n - 1] : undefined;
        if (!f) throw new ChatError(files.length ? `give a file number from 1 to ${files.length}` : 'no file has been shared since you joined');
        const data = await r.download(f);
        const saved = await saveNew(f.file.name, data);
        out.line(`✓ saved file #${n} (${data.length} bytes) as ${clean(saved)}`);
      },
      history: async () => {
        const results = await r.history();
        out.line(`--- history of ${r.room}: ${results.length} message(s) ---`);
        for (const x of results) out.line(x.ok ? messageLine(x.message) : refusalLine(x.error));
        out.line('--- end of history ---');
      },
    };

    const k = kms;
    const code = await new Promise<number>((done) => {
      let queue = Promise.resolve();
      let quitting = false;
      const quit = (why?: string) => {
        if (quitting) return;
        quitting = true;
        if (why) out.line(why);
        // Whatever is running finishes first (a send in flight is not cut off).
        void queue.then(() => done(0));
      };
      const handle = async (line: string) => {
        const text = line.replace(/\s+$/, '');
        if (text.trim() === '') return;
        if (text.startsWith('/') && !text.startsWith('//')) {
          const [, name = '', arg = ''] = /^\/(\S*)\s*(.*)$/.exec(text) ?? [];
          if (name === 'quit' || name === 'exit') return quit();
          const command = commands[name.toLowerCase()];
          if (!command) return out.line(`! unknown command /${clean(name)}; /help lists the commands`);
          try {
            await command(arg);
          } catch (e) {
            out.line(`! /${name} failed: ${clean((e as Error).message)}`);
          } finally {
            ownChange = false;
          }
          return;
        }
        const body = text.startsWith('//') ? text.slice(1) : text;
        try {
          await r.send(body);
          const chain = r.chainUri ? k.knownChain(r.chainUri) : undefined;
          if (chain) out.line(`  (to: ${lastMembers(chain).join(', ')})`);
        } catch (e) {
          out.line(`! not sent: ${clean((e as Error).message)}`);
        }
      };
      const rl = out.start();
      rl.on('line', (line) => {
        if (quitting) return;
        queue = queue
          .then(() => handle(line))
          .then(() => {
            if (!quitting) out.prompt();
          });
      });
      rl.on('close', () => quit());
      // In a terminal, readline turns Ctrl-C into its own SIGINT event; otherwise it is a signal.
      rl.on('SIGINT', () => quit('interrupted'));
      for (const sig of SIGNALS) process.on(sig, () => quit(sig === 'SIGINT' ? 'interrupted' : `${sig}: stopping`));
      out.prompt();
    });
    const result = await shutdown(code);
    out.line('bye');
    return result;
  } catch (e) {
    if (e instanceof Interrupted) {
      out.line(e.message);
      return shutdown(0);
    }
    // One line: what the server or the KMS said may hold anything, even line breaks and escapes.
    process.stderr.write(`kms chat: ${clean(String((e as Error)?.message ?? e)).replace(/\n\s*/g, ' ')}\n`);
    return shutdown(1);
  } finally {
    for (const sig of SIGNALS) process.off(sig, earlySignal);
  }
}

/** An access token from the device authorization grant; the flow runs again when the token has expired. */
async function deviceBearer(issuer: string, audience: string, out: Output): Promise<() => Promise<string>> {
  const login = () =>
    deviceLogin({
      issuer,
      audience,
      prompt: (p) => {
        out.line(
          `to sign in, open ${p.verificationUriComplete ?? p.verificationUri} and enter the code ${p.userCode} (valid ${Math.round(p.expiresInSec / 60)} min)`,
        );
      },
    });
  let tokens = await login();
  out.line(`✓ signed in at ${issuer}`);
  return async () => {
    if (tokens.expiresAt !== undefined && tokens.expiresAt - 60_000 < Date.now()) tokens = await login();
    return tokens.accessToken;
  };
}

/** Tokens minted by the configuration's local issuer, a fresh one at every handshake. */
async function chatTokens(config: KmsConfig, subject: string): Promise<() => Promise<string>> {
  try {
    // Never make a new issuer (or master key) here: the KMS would not trust its tokens.
    const mint = await localTokens(config, { mustExist: true });
    return () => mint(subject);
  } catch (e) {
    throw new ChatError(`${(e as Error).message} (or give --token)`);
  }
}

/**
 * Lines to the terminal. Once the prompt is shown, an incoming line clears the prompt and what is
 * being typed, prints above it and redraws them, so output stays one line per event.
 */
class Output {
  #rl: Interface | undefined;
  readonly #tty = Boolean(process.stdin.isTTY && process.stdout.isTTY);

  start(): Interface {
    this.#rl = createInterface({ input: process.stdin, output: process.stdout, terminal: this.#tty, prompt: '> ' });
    return this.#rl;
  }

  line(s: string): void {
    if (this.#rl && this.#tty) {
      clearLine(process.stdout, 0);
      cursorTo(process.stdout, 0);
    }
    process.stdout.write(`${s}\n`);
    if (this.#rl && this.#tty) this.#rl.prompt(true);
  }

  prompt(): void {
    if (this.#rl && this.#tty) this.#rl.prompt(true);
  }

  /** Stops reading; the prompt line is wiped so that what follows starts a clean line. */
  close(): void {
    const rl = this.#rl;
    this.#rl = undefined;
    if (rl && this.#tty) {
      clearLine(process.stdout, 0);
      cursorTo(process.stdout, 0);
    }
    rl?.close();
  }
}
