// `kms run` as a child process (node bin/kms.js run), as an operator runs it: for tests and scripts
// that kill it (SIGKILL), restart it on the same data folder, or read its memory (/proc/<pid>/status).
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root (the cwd of the children). */
export const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
/** The `kms` command (run with node). */
export const KMS_BIN = join(ROOT, 'bin', 'kms.js');

/** One JSON log line of the KMS (pino). */
export interface LogRecord {
  level: number;
  event?: string;
  msg?: string;
  [k: string]: unknown;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** The parent's environment without KMS_* variables (a developer's shell must not change the outcome). */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
  return { ...env, ...extra };
}

/** A `kms` child process with its output: JSON log records (stderr) and everything it printed. */
export class KmsProcess {
  readonly child: ChildProcess;
  readonly records: LogRecord[] = [];
  output = '';
  /** Its exit: code, signal and when (Date.now()). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  #partial = '';
  #listeners = new Set<() => void>();

  constructor(args: string[], env: Record<string, string>) {
    this.child = spawn(process.execPath, [KMS_BIN, ...args], { cwd: ROOT, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this.child);
    this.exited = new Promise((res) => {
      this.child.on('exit', (code, signal) => {
        live.delete(this.child);
        res({ code, signal, at: Date.now() });
        this.#notify();
      });
    });
    this.child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => this.#onStderr(d.toString()));
  }

  #onStderr(text: string): void {
    this.output += text;
    const lines = (this.#partial + text).split('\n');
    this.#partial = lines.pop()!;
    for (const line of lines) {
      if (process.env.KMS_TEST_DEBUG) console.error('[kms]', line);
      try {
        this.records.push(JSON.parse(line) as LogRecord);
      } catch {
        // not a log record (e.g. "kms: <error>")
      }
    }
    this.#notify();
  }

  #notify(): void {
    for (const l of [...this.#listeners]) l();
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The records of one event (`event` field), in order. */
  events(event: string): LogRecord[] {
    return this.records.filter((r) => r.event === event);
  }

  /** Resolves with the first record that matches; rejects after `ms` or when the process exits first. */
  waitFor(match: (r: LogRecord) => boolean, ms: number, what: string): Promise<LogRecord> {
    return new Promise((res, rej) => {
      const check = () => {
        const found = this.records.find(match);
        if (found) done(() => res(found));
        else if (!this.running) done(() => rej(new Error(`kms exited before ${what}:\n${this.output.slice(-4000)}`)));
      };
      const timer = setTimeout(() => done(() => rej(new Error(`no ${what} within ${ms} ms:\n${this.output.slice(-4000)}`))), ms);
      const done = (f: () => void) => {
        clearTimeout(timer);
        this.#listeners.delete(check);
        f();
      };
      this.#listeners.add(check);
      check();
    });
  }

  /** The process's resident set size in KiB (VmRSS in /proc/<pid>/status; Linux). */
  rssKiB(): number {
    const status = readFileSync(`/proc/${this.child.pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    if (!m) throw new Error(`no VmRSS in /proc/${this.child.pid}/status`);
    return Number(m[1]);
  }

  /** SIGKILL if still running; resolves when it has exited. */
  async kill(): Promise<void> {
    if (this.running) this.child.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM (graceful: drains, closes the store) if still running; resolves when it has exited. */
  async stop(): Promise<void> {
    if (this.running) this.child.kill('SIGTERM');
    await this.exited;
  }
}

/** Where a `kms run` child keeps its data and how it reaches `server`, with the quick reconnect of tests. */
export interface KmsRunSetup {
  dataDir: string;
  configFile: string;
  /** A new `kms run --config <configFile>` process on `dataDir` (KMS_LOG_LEVEL info). */
  spawn(): KmsProcess;
}

/** Writes `<dir>/kms.json` for kms.localhost on `server` (its component port and secret); data in `dataDir` (default `<dir>/data`); the admin listener (GET /metrics) on 127.0.0.1:`adminPort` if given; NODE_OPTIONS of the process. */
export async function kmsRunSetup(
  server: { componentPort: number; componentSecret: string },
  dir: string,
  dataDir = join(dir, 'data'),
  o: { adminPort?: number; nodeOptions?: string } = {},
): Promise<KmsRunSetup> {
  const configFile = join(dir, 'kms.json');
  await writeFile(
    configFile,
    JSON.stringify({
      domain: 'kms.localhost',
      dataDir,
      xmpp: {
        service: `xmpp://127.0.0.1:${server.componentPort}`,
        secret: server.componentSecret,
        reconnectInitialMs: 200,
        reconnectMaxMs: 1000,
        ratePerSec: 100_000,
        rateBurst: 100_000,
      },
      ...(o.adminPort === undefined ? {} : { admin: { listen: String(o.adminPort) } }),
    }),
  );
  const env: Record<string, string> = { KMS_LOG_LEVEL: 'info', ...(o.nodeOptions === undefined ? {} : { NODE_OPTIONS: o.nodeOptions }) };
  return { dataDir, configFile, spawn: () => new KmsProcess(['run', '--config', configFile], env) };
}
