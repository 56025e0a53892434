// A private Prosody run from prosody-config/prosody.test.cfg.lua, configured through environment
// variables (the config file reads them with os.getenv), with all its state under `dir`.
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { ManagedServer, mapLimit, type ServerSetup } from './managed-server.js';
import type { ProcessGroupOptions } from './process-group.js';
import type { UserAccount } from './servers.js';

const run = promisify(execFile);

const PROSODY_TEST_CONFIG = fileURLToPath(new URL('../../../prosody-config/prosody.test.cfg.lua', import.meta.url));

export class ProsodyServer extends ManagedServer {
  readonly kind = 'prosody' as const;
  readonly logFiles: string[];
  /** Where mod_http_file_share keeps the uploaded files (somewhere under the data directory). */
  readonly uploadDir: string;
  readonly #env: NodeJS.ProcessEnv;

  constructor(setup: ServerSetup) {
    super(setup);
    const data = join(setup.dir, 'data');
    const certs = join(setup.dir, 'certs');
    mkdirSync(data, { recursive: true });
    mkdirSync(certs, { recursive: true });
    const log = join(setup.dir, 'prosody.log');
    this.uploadDir = data;
    this.logFiles = [log];
    this.#env = {
      ...process.env,
      PROSODY_TEST_DATA_DIR: data,
      PROSODY_TEST_PID_FILE: join(setup.dir, 'prosody.pid'),
      PROSODY_TEST_LOG_FILE: log,
      PROSODY_TEST_LOG_LEVEL: process.env.KMS_TEST_SERVER_LOG_LEVEL ?? 'info',
      PROSODY_TEST_CERTS_DIR: certs,
      PROSODY_TEST_C2S_PORT: String(setup.c2sPort),
      PROSODY_TEST_COMPONENT_PORT: String(setup.componentPort),
      PROSODY_TEST_HTTP_PORT: String(setup.httpPort),
      PROSODY_TEST_COMPONENT_SECRET: setup.componentSecret,
    };
  }

  protected processOptions(): ProcessGroupOptions {
    return {
      command: 'prosody',
      args: ['-F', '--config', PROSODY_TEST_CONFIG],
      cwd: this.dir,
      env: this.#env,
      outputFile: join(this.dir, 'stdout.log'),
    };
  }

  /** prosodyctl per account (about 40 ms each; works while the server runs). Existing accounts get the new password. */
  async registerUsers(users: UserAccount[]): Promise<void> {
    await mapLimit(users, 4, async ({ username, password }) => {
      try {
        await run('prosodyctl', ['--config', PROSODY_TEST_CONFIG, 'register', username, this.domain, password], {
          env: this.#env,
          cwd: this.dir,
        });
      } catch (err) {
        const e = err as Error & { stdout?: string; stderr?: string };
        throw new Error(`prosodyctl register ${username}@${this.domain} failed: ${e.message}\n${e.stdout}${e.stderr}`);
      }
    });
  }
}
