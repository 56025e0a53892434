// A private tmux server (its own socket) for tests that drive terminal programs as people use them:
// windows opened with a command line and environment, typed into with `tmux send-keys`, read with
// `tmux capture-pane`. Every tmux server still running when the test process exits is killed.
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
/** How long waitFor and exited wait by default. */
const STEP_TIMEOUT_MS = 20_000;

/** The parent's environment without KMS_* variables (a developer's shell must not change the outcome). */
export function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KMS_')) env[k] = v;
  return env;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function tmuxInstalled(): boolean {
  const r = spawnSync('tmux', ['-V'], { encoding: 'utf8' });
  return r.status === 0 && /tmux/.test(r.stdout);
}

/** Tmux servers still running when the test process exits (a crash, a Ctrl-C) are killed too. */
const tmuxes = new Set<{ killSync(): void }>();
process.on('exit', () => {
  for (const t of tmuxes) t.killSync();
});

/** A private tmux server (its own socket, so it cannot clash with anyone else's tmux) and one session. */
export class Tmux {
  readonly socket = `kms-test-${process.pid}-${randomBytes(4).toString('hex')}`;
  readonly session = 'chat';
  #conf = '';
  #started = false;

  async exec(...args: string[]): Promise<string> {
    const { stdout } = await run('tmux', ['-L', this.socket, ...(this.#conf ? ['-f', this.#conf] : []), ...args], {
      env: cleanEnv(),
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  }

  /** Opens a window named `name` running `argv` in `dir` (where /get saves files), with `env` added to its environment. */
  async open(dir: string, name: string, argv: string[], env: Record<string, string>): Promise<void> {
    if (!this.#conf) {
      this.#conf = join(dir, 'tmux.conf');
      // Dead panes stay (their last output can be read), wide enough not to wrap much.
      await writeFile(this.#conf, 'set -g remain-on-exit on\nset -g history-limit 20000\nset -g default-size 200x50\n');
    }
    // The shell prints the exit status into the pane, then exits with it: tmux 3.3 sometimes leaves
    // a dead pane's process unreaped (no #{pane_dead_status}) until another child of its server
    // exits, and sometimes loses a pane's last output when the pty closes right after it (seen in
    // CI: "bye", then "Pane is dead (status 0, ...)" without the echo). Either line gives the status.
    const command = `${argv.map(shellQuote).join(' ')}; s=$?; echo "[exited with status $s]"; exit $s`;
    const envArgs = Object.entries(env).flatMap(([k, v]) => ['-e', `${k}=${v}`]);
    if (!this.#started) {
      await this.exec('new-session', '-d', '-s', this.session, '-n', name, '-x', '200', '-y', '50', '-c', dir, ...envArgs, command);
      this.#started = true;
    } else {
      await this.exec('new-window', '-d', '-t', `${this.session}:`, '-n', name, '-c', dir, ...envArgs, command);
    }
  }

  target(name: string): string {
    return `${this.session}:${name}`;
  }

  /** Types `text` (literally) and Enter. */
  async type(name: string, text: string): Promise<void> {
    await this.exec('send-keys', '-t', this.target(name), '-l', text);
    await this.exec('send-keys', '-t', this.target(name), 'Enter');
  }

  /** Everything the pane shows and has scrolled off, wrapped lines joined. */
  async capture(name: string): Promise<string> {
    return this.exec('capture-pane', '-p', '-J', '-S', '-', '-E', '-', '-t', this.target(name));
  }

  /** Polls the pane until `pattern` matches; on timeout the error shows the whole pane. */
  async waitFor(name: string, pattern: RegExp, timeoutMs = STEP_TIMEOUT_MS): Promise<RegExpMatchArray> {
    const end = Date.now() + timeoutMs;
    let text = '';
    for (;;) {
      text = await this.capture(name).catch((e: Error) => `(capture failed: ${e.message})`);
      const m = text.match(pattern);
      if (m) return m;
      if (Date.now() > end) {
        throw new Error(
          `timed out after ${timeoutMs} ms waiting for ${pattern} in ${name}'s pane; the pane:\n` +
            `----- ${name} -----\n${text.replace(/\n+$/, '')}\n-------------------`,
        );
      }
      await new Promise((r) => setTimeout(r, 150));
    }
  }

  /** How many times `pattern` (global) matches in the pane now. */
  async count(name: string, pattern: RegExp): Promise<number> {
    return (await this.capture(name)).match(pattern)?.length ?? 0;
  }

  /** Waits until the pane's process has exited; its exit status (the shell's echo, or tmux's own line). */
  async exited(name: string, timeoutMs = STEP_TIMEOUT_MS): Promise<number> {
    const m = await this.waitFor(name, /^\[exited with status (\d+)\]$|^Pane is dead \(status (\d+),/m, timeoutMs);
    return Number(m[1] ?? m[2]);
  }

  constructor() {
    tmuxes.add(this);
  }

  killSync(): void {
    spawnSync('tmux', ['-L', this.socket, 'kill-server'], { stdio: 'ignore' });
  }

  async kill(): Promise<void> {
    tmuxes.delete(this);
    await this.exec('kill-server').catch(() => undefined);
  }
}
