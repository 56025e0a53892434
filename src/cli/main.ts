/**
 * The `kms` command: run the component, check a configuration, mint development tokens, and a
 * demonstration client that proves the KMS answers over XMPP. Argument parsing by commander.
 */
import { Command } from 'commander';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadConfig, ConfigError, ENV_SETTINGS, type KmsConfig } from './config.js';
import { startKms, masterKey } from './start.js';
import { createLogger } from '../util/logger.js';
import { Sealer } from '../crypto/seal.js';
import { LocalIssuer } from '../auth/local-issuer.js';
import { runDemo } from './demo.js';

function configFrom(opts: { config?: string }): KmsConfig {
  return loadConfig(opts.config ? { file: opts.config } : {});
}

const program = new Command()
  .name('kms')
  .description('Key Management Service (draft-abiggs-saag-key-management-service-03) as an XMPP component')
  .showHelpAfterError();

program
  .command('run')
  .description('run the KMS component: connect to the XMPP server and serve KMS requests until SIGTERM/SIGINT')
  .option('-c, --config <file>', 'JSON configuration file (or KMS_CONFIG); KMS_* environment variables override it')
  .option('--check-config', 'validate the configuration, print it (secrets hidden) and exit')
  .action(async (opts: { config?: string; checkConfig?: boolean }) => {
    const config = configFrom(opts);
    if (opts.checkConfig) {
      console.log(JSON.stringify({ ...config, xmpp: { ...config.xmpp, secret: '[hidden]' } }, null, 2));
      console.log('configuration OK');
      return;
    }
    const logger = createLogger({ level: config.logLevel });
    const kms = await startKms(config, logger);
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ event: 'signal', signal }, 'stopping: answering requests in flight');
      await kms.stop();
      process.exit(0);
    };
    process.on('SIGTERM', () => void stop('SIGTERM'));
    process.on('SIGINT', () => void stop('SIGINT'));
  });

program
  .command('check-config')
  .description('validate the configuration and print it (secrets hidden)')
  .option('-c, --config <file>', 'JSON configuration file')
  .action((opts: { config?: string }) => {
    const config = configFrom(opts);
    console.log(JSON.stringify({ ...config, xmpp: { ...config.xmpp, secret: '[hidden]' } }, null, 2));
    console.log('configuration OK');
  });

program
  .command('token')
  .description('mint a development access token from the local issuer (the embedded default identity provider)')
  .requiredOption('-u, --user <jid>', 'the user the token is for, e.g. alice@localhost')
  .option('-t, --ttl <seconds>', 'lifetime in seconds', '3600')
  .option('-c, --config <file>', 'JSON configuration file')
  .action(async (opts: { user: string; ttl: string; config?: string }) => {
    const config = configFrom(opts);
    if (config.auth.jwksFile || config.auth.jwksUrl) throw new ConfigError('this KMS trusts an outside identity provider; get tokens from it');
    const issuer = await LocalIssuer.open(resolve(config.dataDir), config.auth.issuer, new Sealer(await masterKey(config)));
    const ttlSec = Number(opts.ttl);
    if (!Number.isInteger(ttlSec) || ttlSec <= 0) throw new ConfigError('--ttl: a positive whole number of seconds');
    console.log(await issuer.mint({ subject: opts.user, audience: config.auth.audience ?? `kms://${config.domain}`, ttlSec }));
  });

program
  .command('demo')
  .description('a short demonstration against a running component: two users share a group key through the KMS over XMPP')
  .option('-c, --config <file>', 'JSON configuration file (the same as the component\'s)')
  .requiredOption('--xmpp <url>', 'the XMPP server\'s client port, e.g. xmpp://127.0.0.1:5222')
  .option('--xmpp-domain <domain>', 'the users\' XMPP domain', 'localhost')
  .option('--users <a:pw,b:pw>', 'two accounts that exist on the server', 'alice:alice-password,bob:bob-password')
  .action(async (opts: { config?: string; xmpp: string; xmppDomain: string; users: string }) => {
    const config = configFrom(opts);
    const anchorPem = await readFile(join(resolve(config.dataDir), 'trust-anchor.pem'), 'utf8');
    const users = opts.users.split(',').map((u) => {
      const [username, password] = u.split(':');
      if (!username || !password) throw new ConfigError('--users: username:password,username:password');
      return { username, password };
    });
    await runDemo({ config, service: opts.xmpp, domain: opts.xmppDomain, users, anchors: [new X509Certificate(anchorPem)], log: (s: string) => console.log(s) });
  });

program.addHelpText(
  'after',
  `\nEnvironment variables (override the config file):\n${Object.entries(ENV_SETTINGS)
    .map(([k, v]) => `  ${k.padEnd(28)} ${v.path.join('.')}`)
    .join('\n')}\n  ${'KMS_MASTER_KEY'.padEnd(28)} the master key itself (base64url, 32 bytes)\n  ${'KMS_CONFIG'.padEnd(28)} the config file\n`,
);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  console.error(`kms: ${(e as Error).message}`);
  process.exit(e instanceof ConfigError ? 2 : 1);
}
