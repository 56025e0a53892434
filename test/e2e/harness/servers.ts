// Real XMPP servers for integration tests and benchmarks: a private Prosody or ejabberd per call,
// in a temporary directory, on free loopback ports, killed when the test process exits.
//
// Environment:
//   KMS_TEST_SERVER_KINDS=prosody,ejabberd  restrict serverKinds() (default: every installed kind)
//   KMS_TEST_SERVER_LOG_LEVEL=debug         server log level (default info)
//   KMS_TEST_KEEP_SERVER_DIRS=1             keep the temporary directories (logs, data) after exit
//   KMS_TEST_SERVER_START_TIMEOUT_MS=30000  how long start() waits for the ports
import { randomBytes } from 'node:crypto';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

import { EjabberdServer } from './ejabberd.js';
import { freePorts } from './net.js';
import { ProsodyServer } from './prosody.js';

export type ServerKind = 'prosody' | 'ejabberd';

export interface UserAccount {
  username: string;
  password: string;
}

export interface XmppServer {
  kind: ServerKind;
  domain: 'localhost';
  componentDomain: 'kms.localhost';
  mucDomain: 'conference.localhost';
  c2sPort: number;
  componentPort: number;
  /** HTTP port (BOSH and WebSocket on both servers; mod_http_api on ejabberd). */
  httpPort: number;
  componentSecret: string;
  /** The directory under which the server stores what HTTP File Upload (upload.localhost, on httpPort) receives. */
  uploadDir: string;
  /** Temporary directory holding the server's config, data and logs. */
  dir: string;
  /** The server's log files (stdout/stderr go to a further file in `dir`). */
  logFiles: string[];
  /** Creates the accounts on `domain`; an existing account gets the given password. */
  registerUsers(users: UserAccount[]): Promise<void>;
  /** Graceful stop (SIGTERM, SIGKILL after 15 s); resolves when every server process has exited. */
  stop(): Promise<void>;
  /**
   * SIGKILL to every server process; resolves when they have exited. For "server dies" tests.
   * ejabberd loses what it wrote in the last ~3 s (Mnesia dets tables; e.g. MAM, rooms): the
   * harness re-creates the accounts it registered when start() follows kill(). Prosody's files are
   * written synchronously.
   */
  kill(): Promise<void>;
  /** (Re)starts on the same ports and data; resolves when the c2s, component and HTTP ports accept. */
  start(): Promise<void>;
}

const ALL_KINDS: readonly ServerKind[] = ['prosody', 'ejabberd'];
const EXTRA_BIN_DIRS = ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin'];

function onPath(name: string): boolean {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), ...EXTRA_BIN_DIRS].filter((d) => d !== '');
  return dirs.some((dir) => {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function installed(kind: ServerKind): boolean {
  switch (kind) {
    case 'prosody':
      return onPath('prosody') && onPath('prosodyctl');
    case 'ejabberd':
      // Debian's ejabberdctl runs only as root or as the ejabberd user.
      return onPath('ejabberdctl') && process.getuid?.() === 0;
  }
}

/** Server kinds whose binaries are installed (see scripts/install-system-deps.sh), optionally filtered by KMS_TEST_SERVER_KINDS. */
export function serverKinds(): ServerKind[] {
  const wanted = process.env.KMS_TEST_SERVER_KINDS?.split(',').map((k) => k.trim());
  return ALL_KINDS.filter((kind) => (wanted === undefined || wanted.includes(kind)) && installed(kind));
}

const createdDirs = new Set<string>();
process.on('exit', () => {
  if (process.env.KMS_TEST_KEEP_SERVER_DIRS) return;
  for (const dir of createdDirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // a process that was just killed may still be writing; the OS cleans tmp eventually
    }
  }
});

/**
 * Starts a private server of `kind` in a new directory under os.tmpdir() on free loopback ports;
 * resolves when it accepts connections.
 * @example
 *   const server = await startServer('prosody');
 *   await server.registerUsers([{ username: 'alice', password: 'secret' }]);
 *   // ...
 *   await server.stop();
 */
export async function startServer(kind: ServerKind, opts: { componentSecret?: string } = {}): Promise<XmppServer> {
  if (!installed(kind)) {
    throw new Error(`${kind} is not installed (run scripts/install-system-deps.sh as root)`);
  }
  const dir = mkdtempSync(join(tmpdir(), `kms-${kind}-`));
  createdDirs.add(dir);
  const componentSecret = opts.componentSecret ?? randomBytes(16).toString('hex');
  const [c2sPort, componentPort, httpPort, distPort] = (await freePorts(4)) as [number, number, number, number];
  const setup = { dir, c2sPort, componentPort, httpPort, componentSecret };
  const server = kind === 'prosody' ? new ProsodyServer(setup) : new EjabberdServer({ ...setup, distPort });
  try {
    await server.start();
  } catch (err) {
    createdDirs.delete(dir); // keep the logs of a failed start
    throw err;
  }
  return server;
}
