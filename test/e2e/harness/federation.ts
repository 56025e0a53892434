// Two XMPP domains on two real servers joined by server-to-server links, for KMS federation tests:
// a.test (always Prosody) on 127.0.0.2 and b.test (Prosody or ejabberd) on 127.0.0.3, each with
// users, a MUC service with MAM (conference.<domain>) and an external component port for
// kms.<domain>. s2s runs on port 5269 of each address over STARTTLS, authenticated by certificates
// from a CA made for the run (SASL EXTERNAL; dialback is not loaded). The names come from a marked
// block in /etc/hosts (so the test process must run as root).
//
// Environment: KMS_TEST_SERVER_KINDS, KMS_TEST_SERVER_LOG_LEVEL, KMS_TEST_KEEP_SERVER_DIRS and
// KMS_TEST_SERVER_START_TIMEOUT_MS as in servers.ts.
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { client, xml, type Client } from '@xmpp/client';
import { component, type Component } from '@xmpp/component';

import { issueCert, makeCa, type ServerCert, type TestCa } from './federation-certs.js';
import { removeHostsBlock, writeHostsBlock } from './federation-hosts.js';
import { mapLimit } from './managed-server.js';
import { freePorts } from './net.js';
import { ProcessGroup, type ProcessGroupOptions } from './process-group.js';
import { serverKinds, type ServerKind, type UserAccount } from './servers.js';

export type FederationPair = 'prosody-prosody' | 'prosody-ejabberd';
export type DomainName = 'a.test' | 'b.test';

export interface Domain {
  name: DomainName;
  kind: ServerKind;
  /** The loopback address every listener of this server binds (127.0.0.2 for a.test, 127.0.0.3 for b.test). */
  address: string;
  c2sPort: number;
  /** Always 5269: peers find the server by name (/etc/hosts), without SRV records. */
  s2sPort: number;
  componentPort: number;
  /** BOSH and WebSocket (and mod_http_api on ejabberd). */
  httpPort: number;
  componentSecret: string;
  /** kms.<name> */
  componentDomain: string;
  /** conference.<name> */
  mucDomain: string;
  /** Temporary directory holding the server's config, data, certificates and logs. */
  dir: string;
  logFiles: string[];
  /** Creates the accounts on `name`; an existing account gets the given password. */
  registerUsers(users: UserAccount[]): Promise<void>;
  /** The current text of every log file, concatenated. */
  readLogs(): Promise<string>;
  /** Graceful stop (SIGTERM, SIGKILL after 15 s); resolves when every server process has exited. */
  stop(): Promise<void>;
}

export interface Federation {
  a: Domain;
  b: Domain;
  /** The CA both servers trust. */
  ca: { certPem: string; keyPem: string };
  /** Stops both servers, removes the /etc/hosts block and the temporary directories. */
  stop(): Promise<void>;
}

export interface FederationOptions {
  /**
   * Issue this domain's certificate from another CA, which the other domain does not trust (the
   * named domain itself still trusts the shared CA). The other server must then refuse every s2s
   * link with it, in both directions. For negative tests.
   */
  certFromOtherCa?: DomainName;
}

const S2S_PORT = 5269;
const ADDRESSES: Record<DomainName, string> = { 'a.test': '127.0.0.2', 'b.test': '127.0.0.3' };
const START_TIMEOUT_MS = Number(process.env.KMS_TEST_SERVER_START_TIMEOUT_MS ?? 30_000);
const STOP_GRACE_MS = 15_000;
const CONFIG_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PROSODY_CONFIG = join(CONFIG_ROOT, 'prosody-config', 'prosody.federation.cfg.lua');
const EJABBERD_TEMPLATE = join(CONFIG_ROOT, 'ejabberd-config', 'ejabberd.federation.yml.tmpl');
const EJABBERDCTL_TEMPLATE = join(CONFIG_ROOT, 'ejabberd-config', 'ejabberdctl.test.cfg.tmpl');
const LOG_LEVEL = process.env.KMS_TEST_SERVER_LOG_LEVEL ?? 'info';

const runFile = promisify(execFile);

/** Pairs whose servers are installed (and KMS_TEST_SERVER_KINDS allows), when the process is root (/etc/hosts). */
export function federationPairs(): FederationPair[] {
  if (process.getuid?.() !== 0) return [];
  const kinds = serverKinds();
  const pairs: FederationPair[] = [];
  if (kinds.includes('prosody')) pairs.push('prosody-prosody');
  if (kinds.includes('prosody') && kinds.includes('ejabberd')) pairs.push('prosody-ejabberd');
  return pairs;
}

function subdomains(name: string): string[] {
  return [name, `kms.${name}`, `conference.${name}`, `upload.${name}`];
}

/** A TCP port that was free on `address` a moment ago. */
function freePortOn(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, address, () => {
      const a = server.address();
      server.close(() => (a !== null && typeof a !== 'string' ? resolve(a.port) : reject(new Error('no TCP address'))));
    });
  });
}

/** Rejects, naming the port, when `address`:`port` cannot be bound (another server holds it). */
function assertBindable(address: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', (err) =>
      reject(new Error(`${address}:${port} is not free (${(err as Error).message}); a stale test server or a system XMPP server holds it`)),
    );
    server.listen(port, address, () => server.close(() => resolve()));
  });
}

function accepts(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: address, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

async function tail(file: string, lines: number): Promise<string> {
  try {
    const handle = await open(file, 'r');
    try {
      const { size } = await handle.stat();
      const length = Math.min(size, 32 * 1024);
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, size - length);
      return `--- ${file} ---\n${buffer.toString('utf8').split('\n').slice(-lines).join('\n')}`;
    } finally {
      await handle.close();
    }
  } catch {
    return `(${file}: missing)`;
  }
}

function renderTemplate(template: string, values: Record<string, string>, name: string): string {
  const text = template.replace(/@([A-Z][A-Z0-9_]*)@/g, (whole, key: string) => values[key] ?? whole);
  for (const line of text.split('\n')) {
    if (line.trimStart().startsWith('#')) continue;
    const left = /@[A-Z][A-Z0-9_]*@/.exec(line);
    if (left) throw new Error(`${name}: placeholder ${left[0]} has no value`);
  }
  return text;
}

interface DomainSetup {
  name: DomainName;
  dir: string;
  cert: ServerCert;
  caFile: string;
}

abstract class FederatedServer implements Domain {
  abstract readonly kind: ServerKind;
  abstract readonly logFiles: string[];
  readonly name: DomainName;
  readonly address: string;
  readonly s2sPort = S2S_PORT;
  readonly componentDomain: string;
  readonly mucDomain: string;
  readonly componentSecret = randomBytes(16).toString('hex');
  readonly dir: string;
  c2sPort = 0;
  componentPort = 0;
  httpPort = 0;
  #group: ProcessGroup | undefined;

  constructor(setup: DomainSetup) {
    this.name = setup.name;
    this.address = ADDRESSES[setup.name];
    this.componentDomain = `kms.${setup.name}`;
    this.mucDomain = `conference.${setup.name}`;
    this.dir = setup.dir;
  }

  protected abstract processOptions(): ProcessGroupOptions;
  abstract registerUsers(users: UserAccount[]): Promise<void>;
  protected async waitReady(_deadline: number): Promise<void> {}

  async allocatePorts(): Promise<void> {
    await assertBindable(this.address, S2S_PORT);
    this.c2sPort = await freePortOn(this.address);
    this.componentPort = await freePortOn(this.address);
    this.httpPort = await freePortOn(this.address);
  }

  async start(): Promise<void> {
    const started = Date.now();
    const deadline = started + START_TIMEOUT_MS;
    const options = this.processOptions();
    const group = new ProcessGroup(options);
    this.#group = group;
    try {
      for (const port of [this.c2sPort, S2S_PORT, this.componentPort, this.httpPort]) {
        while (!(await accepts(this.address, port))) {
          if (group.hasExited) throw new Error('the server process exited during start-up');
          if (Date.now() > deadline) throw new Error(`${this.address}:${port} did not accept connections in time`);
          await sleep(25);
        }
      }
      await this.waitReady(deadline);
    } catch (err) {
      this.#group = undefined;
      await group.kill().catch(() => {});
      const logs = await Promise.all([options.outputFile, ...this.logFiles].map((f) => tail(f, 40)));
      throw new Error(
        `${this.kind} for ${this.name} did not start within ${Date.now() - started} ms (${(err as Error).message}); directory ${this.dir}\n${logs.join('\n')}`,
      );
    }
  }

  async stop(): Promise<void> {
    const group = this.#group;
    this.#group = undefined;
    await group?.terminate(STOP_GRACE_MS);
  }

  async readLogs(): Promise<string> {
    const texts = await Promise.all(this.logFiles.map((f) => readFile(f, 'utf8').catch(() => '')));
    return texts.join('\n');
  }
}

class FederatedProsody extends FederatedServer {
  readonly kind = 'prosody' as const;
  readonly logFiles: string[];
  readonly #env: NodeJS.ProcessEnv;

  constructor(setup: DomainSetup) {
    super(setup);
    const data = join(setup.dir, 'data');
    const certs = join(setup.dir, 'certs');
    mkdirSync(data, { recursive: true });
    mkdirSync(certs, { recursive: true });
    const log = join(setup.dir, 'prosody.log');
    this.logFiles = [log];
    this.#env = {
      ...process.env,
      PROSODY_FED_DOMAIN: setup.name,
      PROSODY_FED_ADDRESS: this.address,
      PROSODY_FED_DATA_DIR: data,
      PROSODY_FED_CERTS_DIR: certs,
      PROSODY_FED_PID_FILE: join(setup.dir, 'prosody.pid'),
      PROSODY_FED_LOG_FILE: log,
      PROSODY_FED_LOG_LEVEL: LOG_LEVEL,
      PROSODY_FED_CERT_FILE: setup.cert.certFile,
      PROSODY_FED_KEY_FILE: setup.cert.keyFile,
      PROSODY_FED_CA_FILE: setup.caFile,
      PROSODY_FED_S2S_PORT: String(S2S_PORT),
      PROSODY_FED_COMPONENT_SECRET: this.componentSecret,
    };
  }

  #fullEnv(): NodeJS.ProcessEnv {
    return {
      ...this.#env,
      PROSODY_FED_C2S_PORT: String(this.c2sPort),
      PROSODY_FED_COMPONENT_PORT: String(this.componentPort),
      PROSODY_FED_HTTP_PORT: String(this.httpPort),
    };
  }

  protected processOptions(): ProcessGroupOptions {
    return { command: 'prosody', args: ['-F', '--config', PROSODY_CONFIG], cwd: this.dir, env: this.#fullEnv(), outputFile: join(this.dir, 'stdout.log') };
  }

  async registerUsers(users: UserAccount[]): Promise<void> {
    await mapLimit(users, 4, async ({ username, password }) => {
      try {
        await runFile('prosodyctl', ['--config', PROSODY_CONFIG, 'register', username, this.name, password], { env: this.#fullEnv(), cwd: this.dir });
      } catch (err) {
        const e = err as Error & { stdout?: string; stderr?: string };
        throw new Error(`prosodyctl register ${username}@${this.name} failed: ${e.message}\n${e.stdout}${e.stderr}`);
      }
    });
  }
}

class FederatedEjabberd extends FederatedServer {
  readonly kind = 'ejabberd' as const;
  readonly logFiles: string[];
  readonly #setup: DomainSetup;
  readonly #configDir: string;
  readonly #spoolDir: string;
  readonly #logsDir: string;

  constructor(setup: DomainSetup) {
    super(setup);
    this.#setup = setup;
    this.#configDir = join(setup.dir, 'config');
    this.#spoolDir = join(setup.dir, 'spool');
    this.#logsDir = join(setup.dir, 'logs');
    for (const d of [this.#configDir, this.#spoolDir, this.#logsDir]) mkdirSync(d, { recursive: true });
    this.logFiles = [join(this.#logsDir, 'ejabberd.log'), join(this.#logsDir, 'error.log')];
  }

  async writeConfig(): Promise<void> {
    const [distPort] = (await freePorts(1)) as [number];
    const yml = renderTemplate(
      readFileSync(EJABBERD_TEMPLATE, 'utf8'),
      {
        DOMAIN: this.name,
        ADDRESS: this.address,
        C2S_PORT: String(this.c2sPort),
        S2S_PORT: String(S2S_PORT),
        COMPONENT_PORT: String(this.componentPort),
        HTTP_PORT: String(this.httpPort),
        CERT_BUNDLE: this.#setup.cert.bundleFile,
        CA_FILE: this.#setup.caFile,
        COMPONENT_SECRET: this.componentSecret,
        LOG_LEVEL: LOG_LEVEL,
      },
      'ejabberd.federation.yml.tmpl',
    );
    const ctl = renderTemplate(
      readFileSync(EJABBERDCTL_TEMPLATE, 'utf8'),
      {
        NODE_NAME: `kmsfed_${process.pid}_${randomBytes(4).toString('hex')}@localhost`,
        DIST_PORT: String(distPort),
        COOKIE: randomBytes(16).toString('hex'),
        PID_FILE: join(this.dir, 'ejabberd.pid'),
      },
      'ejabberdctl.test.cfg.tmpl',
    );
    writeFileSync(join(this.#configDir, 'ejabberd.yml'), yml);
    writeFileSync(join(this.#configDir, 'ejabberdctl.cfg'), ctl);
    // Erlang's resolver: /etc/hosts first (where the harness names a.test and b.test).
    const inetrc = '/etc/ejabberd/inetrc';
    writeFileSync(
      join(this.#configDir, 'inetrc'),
      existsSync(inetrc) ? readFileSync(inetrc, 'utf8') : '{lookup,["file","native"]}.\n{file, resolv, "/etc/resolv.conf"}.\n',
    );
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

  /** mod_http_api answers "unknown_command" for a while after its port accepts. */
  protected override async waitReady(deadline: number): Promise<void> {
    for (;;) {
      const reply = await this.api('registered_users', { host: this.name }).catch((err: Error) => ({ status: 0, text: err.message }));
      if (reply.status === 200) return;
      if (Date.now() > deadline) throw new Error(`mod_http_api not ready: HTTP ${reply.status} ${reply.text}`);
      await sleep(25);
    }
  }

  /** One mod_http_api command (see api_permissions in the template for the allowed ones). */
  async api(command: string, body: Record<string, string>): Promise<{ status: number; text: string }> {
    const response = await fetch(`http://${this.address}:${this.httpPort}/api/${command}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: response.status, text: await response.text() };
  }

  async registerUsers(users: UserAccount[]): Promise<void> {
    await mapLimit(users, 8, async ({ username, password }) => {
      let reply = await this.api('register', { user: username, host: this.name, password });
      if (reply.status === 409) reply = await this.api('change_password', { user: username, host: this.name, newpass: password });
      if (reply.status !== 200) throw new Error(`ejabberd /api/register ${username}@${this.name}: HTTP ${reply.status} ${reply.text}`);
    });
  }
}

const liveDirs = new Set<string>();
let hostsBlockWritten = false;
process.on('exit', () => {
  if (hostsBlockWritten) {
    try {
      removeHostsBlock();
    } catch {
      // reported by stop(); a stale block is replaced by the next run
    }
  }
  if (process.env.KMS_TEST_KEEP_SERVER_DIRS) return;
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
});

/** Removes the temporary directories of earlier runs whose process is gone (killed with SIGKILL). */
function removeStaleDirs(): void {
  if (process.env.KMS_TEST_KEEP_SERVER_DIRS) return;
  for (const entry of readdirSync(tmpdir())) {
    const m = /^kms-federation-(\d+)-/.exec(entry);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0); // still running: keep
    } catch {
      rmSync(join(tmpdir(), entry), { recursive: true, force: true });
    }
  }
}

/**
 * Starts a.test (Prosody) and b.test (Prosody or ejabberd, after `pair`) with a fresh test CA and
 * the /etc/hosts block; resolves when both accept connections. Only one federation at a time
 * (both use port 5269). On failure everything started so far is stopped again.
 * @example
 *   const fed = await startFederation('prosody-ejabberd');
 *   await fed.a.registerUsers([{ username: 'alice', password: 'pw' }]);
 *   const alice = await connectFederatedClient(fed.a, { username: 'alice', password: 'pw' });
 *   // ...
 *   await fed.stop();
 */
export async function startFederation(pair: FederationPair, opts: FederationOptions = {}): Promise<Federation> {
  const bKind: ServerKind = pair === 'prosody-prosody' ? 'prosody' : 'ejabberd';
  if (!federationPairs().includes(pair)) {
    throw new Error(`federation pair ${pair} is not available: it needs root (for /etc/hosts) and ${bKind} installed (or allowed by KMS_TEST_SERVER_KINDS)`);
  }
  removeStaleDirs();
  const root = mkdtempSync(join(tmpdir(), `kms-federation-${process.pid}-${pair}-`));
  liveDirs.add(root);
  const started: FederatedServer[] = [];
  const cleanUp = async (): Promise<void> => {
    const errors: unknown[] = [];
    for (const server of started.reverse()) await server.stop().catch((err: unknown) => errors.push(err));
    try {
      if (hostsBlockWritten) removeHostsBlock();
      hostsBlockWritten = false;
    } catch (err) {
      errors.push(err);
    }
    if (!process.env.KMS_TEST_KEEP_SERVER_DIRS) rmSync(root, { recursive: true, force: true });
    liveDirs.delete(root);
    if (errors.length > 0) throw new AggregateError(errors, `stopping the ${pair} federation failed`);
  };
  try {
    const pki = join(root, 'pki');
    mkdirSync(pki);
    const ca: TestCa = await makeCa(pki, 'federation');
    const otherCa = opts.certFromOtherCa ? await makeCa(pki, 'other') : undefined;
    const issuer = (name: DomainName): TestCa => (name === opts.certFromOtherCa ? (otherCa as TestCa) : ca);
    const aCert = await issueCert(issuer('a.test'), pki, subdomains('a.test'));
    const bCert = await issueCert(issuer('b.test'), pki, subdomains('b.test'));

    hostsBlockWritten = true;
    writeHostsBlock([
      { address: ADDRESSES['a.test'], names: subdomains('a.test') },
      { address: ADDRESSES['b.test'], names: subdomains('b.test') },
    ]);

    const setup = (name: DomainName, cert: ServerCert): DomainSetup => {
      const dir = join(root, name);
      mkdirSync(dir);
      return { name, dir, cert, caFile: ca.certFile };
    };
    const a = new FederatedProsody(setup('a.test', aCert));
    const b = bKind === 'prosody' ? new FederatedProsody(setup('b.test', bCert)) : new FederatedEjabberd(setup('b.test', bCert));
    for (const server of [a, b]) {
      await server.allocatePorts();
      if (server instanceof FederatedEjabberd) await server.writeConfig();
    }
    // Sequentially: both share two cores with the test process (ejabberd boots in about 2 s).
    for (const server of [a, b]) {
      started.push(server);
      await server.start();
    }
    return { a, b, ca: { certPem: ca.certPem, keyPem: ca.keyPem }, stop: cleanUp };
  } catch (err) {
    await cleanUp().catch(() => {});
    throw err;
  }
}

async function startEntity<T extends Client | Component>(xmpp: T, name: string, what: string): Promise<T> {
  // An 'error' event without a listener would crash the test process.
  xmpp.on('error', (err: Error) => {
    if (process.env.KMS_TEST_DEBUG) console.error(`[${name} error]`, err);
  });
  xmpp.reconnect.stop();
  try {
    await xmpp.start();
  } catch (err) {
    await xmpp.stop().catch(() => {});
    throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
  }
  return xmpp;
}

/** A client logged in (SASL PLAIN, no TLS: loopback only) as `username`@`domain.name` on the domain's own server. */
export function connectFederatedClient(domain: Domain, opts: UserAccount & { resource?: string }): Promise<Client> {
  const xmpp = client({
    service: `xmpp://${domain.address}:${domain.c2sPort}`,
    domain: domain.name,
    resource: opts.resource ?? `test-${randomUUID().slice(0, 8)}`,
    credentials: async (authenticate, mechanisms) => {
      if (!mechanisms.includes('PLAIN')) throw new Error(`${domain.kind} does not offer SASL PLAIN (offered: ${mechanisms.join(', ')})`);
      await authenticate({ username: opts.username, password: opts.password }, 'PLAIN', xml('user-agent', { id: randomUUID() }));
    },
  });
  return startEntity(xmpp, `${opts.username}@${domain.name}`, `${opts.username}@${domain.name} could not log in to ${domain.kind}`);
}

/** An XEP-0114 component connected as `domain.componentDomain` (kms.<name>), without automatic reconnection. */
export function connectFederatedComponent(domain: Domain): Promise<Component> {
  const xmpp = component({
    service: `xmpp://${domain.address}:${domain.componentPort}`,
    domain: domain.componentDomain,
    password: domain.componentSecret,
  });
  return startEntity(xmpp, domain.componentDomain, `component ${domain.componentDomain} could not connect to ${domain.kind}`);
}
