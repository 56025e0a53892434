// The lifecycle shared by every server kind: (re)start on fixed ports, readiness, graceful stop,
// SIGKILL, and start-up failures that carry the server's own logs.
import { open } from 'node:fs/promises';

import { waitForPorts } from './net.js';
import { ProcessGroup, type ProcessGroupOptions } from './process-group.js';
import type { ServerKind, UserAccount, XmppServer } from './servers.js';

/** Ports and secret chosen once per server; a restart reuses them (and the data under `dir`). */
export interface ServerSetup {
  dir: string;
  c2sPort: number;
  componentPort: number;
  httpPort: number;
  componentSecret: string;
}

const START_TIMEOUT_MS = Number(process.env.KMS_TEST_SERVER_START_TIMEOUT_MS ?? 30_000);
const STOP_GRACE_MS = 15_000;
const LOG_TAIL_LINES = 60;

async function tail(file: string, lines: number): Promise<string> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, 'r');
  } catch {
    return `(${file}: missing)`;
  }
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, 64 * 1024);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    const text = buffer
      .toString('utf8')
      .split('\n')
      .slice(-lines - 1)
      .join('\n')
      .trimEnd();
    return text === '' ? `(${file}: empty)` : `--- ${file} ---\n${text}`;
  } finally {
    await handle.close();
  }
}

export abstract class ManagedServer implements XmppServer {
  abstract readonly kind: ServerKind;
  abstract readonly uploadDir: string;
  readonly domain = 'localhost' as const;
  readonly componentDomain = 'kms.localhost' as const;
  readonly mucDomain = 'conference.localhost' as const;
  readonly dir: string;
  readonly c2sPort: number;
  readonly componentPort: number;
  readonly httpPort: number;
  readonly componentSecret: string;
  #group: ProcessGroup | undefined;

  constructor(setup: ServerSetup) {
    this.dir = setup.dir;
    this.c2sPort = setup.c2sPort;
    this.componentPort = setup.componentPort;
    this.httpPort = setup.httpPort;
    this.componentSecret = setup.componentSecret;
  }

  /** The command, environment and output file of one run. */
  protected abstract processOptions(): ProcessGroupOptions;
  /** The server's log files, quoted (their tails) in start-up errors. */
  abstract readonly logFiles: string[];
  abstract registerUsers(users: UserAccount[]): Promise<void>;

  /** Ports that must accept connections before the server counts as started. */
  protected readyPorts(): number[] {
    return [this.c2sPort, this.componentPort, this.httpPort];
  }

  /** Further readiness checks after the ports accept (e.g. an HTTP API that answers). */
  protected async waitReady(_deadline: number): Promise<void> {}

  async start(): Promise<void> {
    if (this.#group !== undefined) {
      // Allowed after the server died by itself; otherwise stop() or kill() first.
      if (!(await this.#group.waitGone(0))) {
        throw new Error(`${this.kind} in ${this.dir} is already running; stop() or kill() it first`);
      }
      this.#group = undefined;
    }
    const started = Date.now();
    const options = this.processOptions();
    const group = new ProcessGroup(options);
    this.#group = group;
    try {
      await waitForPorts(
        this.readyPorts(),
        started + START_TIMEOUT_MS,
        () => group.socketInodes(),
        () => (group.hasExited ? 'the server process exited during start-up' : undefined),
      );
      await this.waitReady(started + START_TIMEOUT_MS);
    } catch (err) {
      this.#group = undefined;
      await group.kill().catch(() => {});
      const logs = await Promise.all([options.outputFile, ...this.logFiles].map((f) => tail(f, LOG_TAIL_LINES)));
      throw new Error(
        `${this.kind} did not start within ${Date.now() - started} ms (${(err as Error).message}); ` + `directory ${this.dir}\n${logs.join('\n')}`,
      );
    }
  }

  async stop(): Promise<void> {
    const group = this.#group;
    if (group === undefined) return;
    await group.terminate(STOP_GRACE_MS);
    this.#group = undefined;
  }

  async kill(): Promise<void> {
    const group = this.#group;
    if (group === undefined) return;
    await group.kill();
    this.#group = undefined;
  }

  /** Whether start() succeeded and neither stop() nor kill() was called since. */
  get running(): boolean {
    return this.#group !== undefined;
  }
}

/** Runs `task` over `items` with at most `limit` at a time; rejects with the first failure. */
export async function mapLimit<T>(items: T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
