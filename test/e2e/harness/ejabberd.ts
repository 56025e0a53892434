// A private ejabberd run through Debian's ejabberdctl, from configs rendered per run out of
// ejabberd-config/*.tmpl (ejabberd has no environment substitution), with all its state under `dir`.
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { ManagedServer, mapLimit, type ServerSetup } from './managed-server.js';
import type { ProcessGroupOptions } from './process-group.js';
import type { UserAccount } from './servers.js';

const CONFIG_SOURCE = fileURLToPath(new URL('../../../ejabberd-config/', import.meta.url));
const SYSTEM_INETRC = '/etc/ejabberd/inetrc';
const FALLBACK_INETRC = '{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n{file, resolv, "/etc/resolv.conf"}.\n';

/** Replaces every @KEY@; throws if a placeholder outside a comment is left. */
function renderTemplate(template: string, values: Record<string, string>, name: string): string {
  const text = template.replace(/@([A-Z][A-Z0-9_]*)@/g, (whole, key: string) => values[key] ?? whole);
  for (const line of text.split('\n')) {
    if (line.trimStart().startsWith('#')) continue;
    const left = /@[A-Z][A-Z0-9_]*@/.exec(line);
    if (left) throw new Error(`${name}: placeholder ${left[0]} has no value`);
  }
  return text;
}

function yamlString(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
}

export class EjabberdServer extends ManagedServer {
  readonly kind = 'ejabberd' as const;
  readonly logFiles: string[];
  /** Where mod_http_upload keeps the uploaded files. */
  readonly uploadDir: string;
  readonly #configDir: string;
  readonly #spoolDir: string;
  readonly #logsDir: string;
  readonly #accounts = new Map<string, string>();
  #killed = false;

  constructor(setup: ServerSetup & { distPort: number }) {
    super(setup);
    this.#configDir = join(setup.dir, 'config');
    this.#spoolDir = join(setup.dir, 'spool');
    this.#logsDir = join(setup.dir, 'logs');
    for (const d of [this.#configDir, this.#spoolDir, this.#logsDir]) mkdirSync(d, { recursive: true });
    this.logFiles = [join(this.#logsDir, 'ejabberd.log'), join(this.#logsDir, 'error.log')];
    this.uploadDir = join(setup.dir, 'upload');
    mkdirSync(this.uploadDir, { recursive: true });

    const yml = renderTemplate(
      readFileSync(join(CONFIG_SOURCE, 'ejabberd.test.yml.tmpl'), 'utf8'),
      {
        C2S_PORT: String(setup.c2sPort),
        COMPONENT_PORT: String(setup.componentPort),
        HTTP_PORT: String(setup.httpPort),
        UPLOAD_DIR: yamlString(this.uploadDir),
        COMPONENT_SECRET: yamlString(setup.componentSecret),
        LOG_LEVEL: process.env.KMS_TEST_SERVER_LOG_LEVEL ?? 'info',
      },
      'ejabberd.test.yml.tmpl',
    );
    // The node name stays the same across restarts: Mnesia's data in the spool belongs to it.
    const ctl = renderTemplate(
      readFileSync(join(CONFIG_SOURCE, 'ejabberdctl.test.cfg.tmpl'), 'utf8'),
      {
        NODE_NAME: `kmstest_${process.pid}_${randomBytes(4).toString('hex')}@localhost`,
        DIST_PORT: String(setup.distPort),
        COOKIE: randomBytes(16).toString('hex'),
        PID_FILE: join(setup.dir, 'ejabberd.pid'),
      },
      'ejabberdctl.test.cfg.tmpl',
    );
    writeFileSync(join(this.#configDir, 'ejabberd.yml'), yml);
    writeFileSync(join(this.#configDir, 'ejabberdctl.cfg'), ctl);
    // --config-dir must hold an inetrc (Erlang's resolver configuration).
    if (existsSync(SYSTEM_INETRC)) copyFileSync(SYSTEM_INETRC, join(this.#configDir, 'inetrc'));
    else writeFileSync(join(this.#configDir, 'inetrc'), FALLBACK_INETRC);
  }

  protected processOptions(): ProcessGroupOptions {
    return {
      command: 'ejabberdctl',
      args: [
        '--config-dir',
        this.#configDir,
        '--config',
        join(this.#configDir, 'ejabberd.yml'),
        '--ctl-config',
        join(this.#configDir, 'ejabberdctl.cfg'),
        '--spool',
        this.#spoolDir,
        '--logs',
        this.#logsDir,
        'foreground',
      ],
      cwd: this.dir,
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/usr/bin` },
      outputFile: join(this.#logsDir, 'stdout.log'),
    };
  }

  /** The HTTP port accepts before mod_http_api's commands exist ("unknown_command"): wait for them. */
  protected override async waitReady(deadline: number): Promise<void> {
    for (;;) {
      const reply = await this.#api('registered_users', { host: this.domain }).catch((err: Error) => ({
        status: 0,
        text: err.message,
      }));
      if (reply.status === 200) return;
      if (Date.now() > deadline) throw new Error(`mod_http_api not ready: HTTP ${reply.status} ${reply.text}`);
      await sleep(25);
    }
  }

  async #api(command: string, body: Record<string, string>): Promise<{ status: number; text: string }> {
    const response = await fetch(`http://127.0.0.1:${this.httpPort}/api/${command}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: response.status, text: await response.text() };
  }

  /**
   * One mod_http_api request per account (7-35 ms each). Existing accounts get the new password.
   * ejabberd keeps accounts in a Mnesia disc_only (dets) table whose writes reach the disk up to
   * about 3 s later: an account made shortly before kill() is lost. start() after kill() therefore
   * creates again every account registered through this object.
   */
  async registerUsers(users: UserAccount[]): Promise<void> {
    for (const { username, password } of users) this.#accounts.set(username, password);
    await this.#register(users);
  }

  override async kill(): Promise<void> {
    await super.kill();
    this.#killed = true;
  }

  override async start(): Promise<void> {
    await super.start();
    if (this.#killed) {
      await this.#register([...this.#accounts].map(([username, password]) => ({ username, password })));
      this.#killed = false;
    }
  }

  async #register(users: UserAccount[]): Promise<void> {
    await mapLimit(users, 8, async ({ username, password }) => {
      let reply = await this.#api('register', { user: username, host: this.domain, password });
      // Right after a (re)start ejabberd's HTTP API may answer before its commands are registered.
      for (let i = 0; i < 50 && reply.status === 400 && reply.text.includes('unknown_command'); i++) {
        await new Promise((r) => setTimeout(r, 200));
        reply = await this.#api('register', { user: username, host: this.domain, password });
      }
      if (reply.status === 409) {
        reply = await this.#api('change_password', { user: username, host: this.domain, newpass: password });
      }
      if (reply.status !== 200) {
        throw new Error(`ejabberd /api/register ${username}@${this.domain}: HTTP ${reply.status} ${reply.text}`);
      }
    });
  }
}
