/**
 * The `kms` command: run the component, check a configuration, mint development tokens, and a
 * demonstration client that proves the KMS answers over XMPP. Argument parsing by commander.
 */
import { Command } from 'commander';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { configFrom, ConfigError, ENV_SETTINGS, LOCAL_ISSUER, OTHER_ENV_VARS } from '../config.js';
import { showConfig, settingsHelp } from '../config.js';
import { startKms, localTokens, startDevIdp, tokenAudience } from '../server.js';
import { createLogger } from '../util/logger.js';
import { packageVersion } from './version.js';
import { runDemo } from './demo.js';
import { openInspector, listChains, describeChain, listGks, describeGk, render, type Inspector } from './inspect.js';

/** `--check-config` and `check-config`: the configuration validated and printed, secrets hidden. */
function checkConfig(opts: { config?: string }): void {
  console.log(showConfig(configFrom(opts)));
  console.log('configuration OK');
}

const program = new Command()
  .name('kms')
  .description('Key Management Service (draft-abiggs-saag-key-management-service-03) as an XMPP component')
  .version(packageVersion(), '-V, --version', 'print the version of xmpp-kms')
  .showHelpAfterError();

program
  .command('run')
  .description('run the KMS component: connect to the XMPP server and serve KMS requests until SIGTERM/SIGINT')
  .option('-c, --config <file>', 'JSON configuration file (or KMS_CONFIG); KMS_* environment variables override it')
  .option('--check-config', 'validate the configuration, print it (secrets hidden) and exit')
  .option(
    '--store <url>',
    'the store several instances share: etcd://host1:2379,host2:2379,... (as KMS_STORE, which it overrides); LevelDB in the data folder when unset',
  )
  .option(
    '--idp [port]',
    'also run the development OpenID Connect provider (as `kms idp` does, users of localhost) on 127.0.0.1:<port> (default 5580) and trust its tokens',
  )
  .addHelpText('after', () => settingsHelp())
  .action(async (opts: { config?: string; checkConfig?: boolean; idp?: boolean | string; store?: string }) => {
    if (opts.store !== undefined) process.env.KMS_STORE = opts.store;
    if (opts.checkConfig) return checkConfig(opts);
    // Everything the KMS writes is private to its user, the files LevelDB makes later (tables,
    // logs) included: 0600 files, 0700 folders.
    process.umask(0o077);
    let config = configFrom(opts);
    const logger = createLogger({ level: config.logLevel });
    if (opts.idp !== undefined) {
      const a = config.auth;
      if (a.jwksFile || a.jwksUrl || a.issuerUrl || a.issuer !== LOCAL_ISSUER)
        throw new ConfigError('--idp: the configuration already names an identity provider (auth.*); leave it out or drop --idp');
      const port = opts.idp === true ? 5580 : Number(opts.idp);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('--idp: a port number from 0 to 65535');
      const idp = await startDevIdp(config, { userDomain: 'localhost', port });
      config = { ...config, auth: { ...a, issuerUrl: idp.issuer, issuer: idp.issuer } };
      logger.info({ event: 'idp-ready', issuer: idp.issuer }, `development identity provider at ${idp.issuer}`);
    }
    // Signals are handled from the start: a KMS still waiting for its XMPP server stops cleanly too.
    const abort = new AbortController();
    let kms: Awaited<ReturnType<typeof startKms>> | undefined;
    const finish = async (running: NonNullable<typeof kms>) => {
      try {
        await running.stop();
      } catch (e) {
        logger.error({ event: 'stop-failed', reason: (e as Error).message }, `could not stop cleanly: ${(e as Error).message}`);
        process.exit(1);
      }
      process.exit(0);
    };
    const onSignal = (signal: NodeJS.Signals) => {
      if (abort.signal.aborted) {
        logger.info({ event: 'signal', signal }, `${signal}: already stopping`);
        return;
      }
      const inFlight = kms?.component?.inFlight ?? 0;
      logger.info({ event: 'signal', signal, inFlight }, `${signal}: stopping; answering the ${inFlight} request(s) in flight`);
      abort.abort();
      if (kms) void finish(kms);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    try {
      kms = await startKms(config, logger, { signal: abort.signal, watchdog: true });
    } catch (e) {
      if (abort.signal.aborted) {
        logger.info({ event: 'stopped' }, 'KMS stopped before it came online');
        process.exit(0);
      }
      throw e;
    }
    if (abort.signal.aborted) void finish(kms);
  });

program
  .command('check-config')
  .description('validate the configuration and print it (secrets hidden)')
  .option('-c, --config <file>', 'JSON configuration file (or KMS_CONFIG); KMS_* environment variables override it')
  .action(checkConfig);

program
  .command('token')
  .description('mint a development access token from the local issuer (the embedded default identity provider)')
  .requiredOption('-u, --user <jid>', 'the user the token is for, e.g. alice@localhost')
  .option('-t, --ttl <seconds>', 'lifetime in seconds', '3600')
  .option('-c, --config <file>', 'JSON configuration file')
  .action(async (opts: { user: string; ttl: string; config?: string }) => {
    const ttlSec = Number(opts.ttl);
    if (!Number.isInteger(ttlSec) || ttlSec <= 0) throw new ConfigError('--ttl: a positive whole number of seconds');
    const mint = await localTokens(configFrom(opts));
    console.log(await mint(opts.user, ttlSec));
  });

program
  .command('login')
  .description(
    'sign in at an OpenID Connect issuer with the device authorization grant (RFC 8628) and print the access token for the KMS on stdout ' +
      '(where to sign in goes to stderr): KMS_TOKEN=$(kms login --issuer http://127.0.0.1:5580)',
  )
  .option('--issuer <url>', 'the issuer (default: auth.issuerUrl of the configuration)')
  .option('--client-id <id>', 'the public client allowed the device grant', 'kms-chat')
  .option('-c, --config <file>', "the KMS's JSON configuration file (token audience, auth.issuerUrl)")
  .action(async (opts: { issuer?: string; clientId: string; config?: string }) => {
    const config = configFrom(opts);
    const issuer = opts.issuer ?? config.auth.issuerUrl;
    if (!issuer) throw new ConfigError('--issuer: give the identity provider (or a configuration with auth.issuerUrl)');
    const { deviceLogin } = await import('./device-login.js');
    const { accessToken } = await deviceLogin({
      issuer,
      clientId: opts.clientId,
      audience: tokenAudience(config),
      prompt: (p) =>
        console.error(
          `Sign in at ${p.verificationUriComplete ?? p.verificationUri} (code ${p.userCode}, valid ${Math.round(p.expiresInSec / 60)} minutes); waiting…`,
        ),
    });
    console.log(accessToken);
  });

program
  .command('idp')
  .description(
    'run the development OpenID Connect provider until SIGTERM/SIGINT: the demo users alice, bob, carol and dave (password <name>-password), ' +
      'client kms-web (authorization code + PKCE) and kms-chat (device authorization grant); run the KMS with KMS_AUTH_ISSUER_URL set to the issuer it prints',
  )
  .option('-c, --config <file>', "the KMS's JSON configuration file: its data folder, master key and token audience")
  .option('--host <address>', 'listening address', '127.0.0.1')
  .option('--port <port>', 'listening port', '5580')
  .option('--issuer <url>', 'the issuer URL, when clients reach it by another name than http://<host>:<port>')
  .option('--user-domain <domain>', "the users' XMPP domain (tokens name alice@<domain>)", 'localhost')
  .option('--redirect-uri <uri,uri>', 'redirect URIs of the browser client kms-web (the pages of `kms web`)', 'http://127.0.0.1:8080/,http://localhost:8080/')
  .action(async (opts: { config?: string; host: string; port: string; issuer?: string; userDomain: string; redirectUri: string }) => {
    const port = Number(opts.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('--port: a port number from 0 to 65535');
    const config = configFrom(opts);
    const idp = await startDevIdp(config, {
      userDomain: opts.userDomain.toLowerCase(),
      host: opts.host,
      port,
      ...(opts.issuer ? { issuer: opts.issuer } : {}),
      redirectUris: opts.redirectUri
        .split(',')
        .map((u) => u.trim())
        .filter(Boolean),
    });
    console.log(`identity provider ${idp.issuer} (discovery: ${idp.issuer}/.well-known/openid-configuration)`);
    console.log(`run the KMS with KMS_AUTH_ISSUER_URL=${idp.issuer}`);
    for (const signal of ['SIGINT', 'SIGTERM'] as const)
      process.once(signal, () => {
        void idp.close().then(() => process.exit(0));
      });
  });

const inspect = program
  .command('inspect')
  .description(
    "an operator's read-only view of the store: chains, blocks, members and group keys (never key material); " +
      "of a stopped KMS's store, of a running KMS's through its admin listener (a snapshot), or of a backup (--backup); never makes a store",
  );
const inspectAction =
  <A extends unknown[]>(fn: (i: Inspector, ...args: A) => Promise<unknown>, show: (v: never) => string) =>
  // commander calls an action with (...arguments, options, command).
  async (...args: unknown[]) => {
    const opts = args[args.length - 2] as { config?: string; json?: boolean; backup?: string };
    const i = await openInspector(configFrom(opts), opts.backup ? { backup: opts.backup } : {});
    try {
      const v = await fn(i, ...(args.slice(0, -2) as A));
      console.log(opts.json ? JSON.stringify(v, null, 2) : show(v as never));
    } finally {
      await i.close();
    }
  };
for (const [name, args, description, fn, show] of [
  ['chains', '', 'list the chains with their current members', listChains, render.chains],
  ['chain', '<uri-or-id>', 'one chain: every block, who signed it, what it changed, the members after it', describeChain, render.chain],
  ['gks', '', 'list the group keys with owner and binding', listGks, render.gks],
  ['gk', '<uri-or-id>', 'one group key: owner, creation, the block and chain it is bound to', describeGk, render.gk],
] as const) {
  inspect
    .command(`${name}${args ? ` ${args}` : ''}`)
    .description(description)
    .option('-c, --config <file>', "JSON configuration file (the component's)")
    .option('--json', 'print JSON instead of text')
    .option('--backup <file>', 'inspect a backup written by kms backup instead of the store')
    .action(inspectAction(fn as (i: Inspector, ...a: string[]) => Promise<unknown>, show as (v: never) => string));
}

program
  .command('demo')
  .description('a short demonstration against a running component: two users share a group key through the KMS over XMPP')
  .option('-c, --config <file>', "JSON configuration file (the same as the component's)")
  .requiredOption('--xmpp <url>', "the XMPP server's client port, e.g. xmpp://127.0.0.1:5222")
  .option('--xmpp-domain <domain>', "the users' XMPP domain", 'localhost')
  .option('--users <a:pw,b:pw>', 'two accounts that exist on the server (and at the identity provider, with --issuer)', 'alice:alice-password,bob:bob-password')
  .option('--issuer <url>', 'sign the users in at this OpenID Connect issuer with the device flow (default: auth.issuerUrl; else the local issuer mints)')
  .action(async (opts: { config?: string; xmpp: string; xmppDomain: string; users: string; issuer?: string }) => {
    const config = configFrom(opts);
    const issuer = opts.issuer ?? config.auth.issuerUrl;
    const anchorPem = await readFile(join(resolve(config.dataDir), 'trust-anchor.pem'), 'utf8');
    const users = opts.users.split(',').map((u) => {
      const [username, password] = u.split(':');
      if (!username || !password) throw new ConfigError('--users: username:password,username:password');
      return { username, password };
    });
    await runDemo({
      config,
      service: opts.xmpp,
      domain: opts.xmppDomain,
      users,
      anchors: [new X509Certificate(anchorPem)],
      ...(issuer ? { issuer } : {}),
      log: (s: string) => console.log(s),
    });
  });

// `kms chat`: an end-to-end encrypted terminal chat in a MUC room (src/cli/chat.ts).
program.addCommand((await import('./chat.js')).chatCommand());
// `kms web`: a converse.js page with the KMS plugin (src/cli/web.ts, src/converse/plugin.ts).
program.addCommand((await import('./web.js')).webCommand());
// `kms rekey`, `kms backup`, `kms restore` (src/cli/operator.ts).
for (const c of (await import('./operator.js')).operatorCommands()) program.addCommand(c);
// `kms audit`: verify, tail and search the audit log (src/cli/audit.ts).
program.addCommand((await import('./audit.js')).auditCommand());

program.addHelpText(
  'after',
  `\nEnvironment variables (override the config file):\n${Object.entries(ENV_SETTINGS)
    .map(([k, v]) => `  ${k.padEnd(28)} ${v.path.join('.')}`)
    .join('\n')}\n${Object.entries(OTHER_ENV_VARS)
    .map(([k, what]) => `  ${k.padEnd(28)} ${what}`)
    .join('\n')}\n`,
);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  console.error(`kms: ${(e as Error).message}`);
  process.exit(e instanceof ConfigError ? 2 : 1);
}
