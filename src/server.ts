/**
 * The composition root: from a validated configuration to a running KMS (store, sealed keys,
 * identity, token verification, engine) and, unless asked not to, its XMPP component. The `kms`
 * command (src/cli), the integration tests and a program using the package (`startKms` from
 * `xmpp-kms`) all start the KMS through here; to compose one differently, do what startKms does
 * with the parts `xmpp-kms` exports.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createLocalJWKSet, createRemoteJWKSet, type JWTVerifyGetKey } from 'jose';
import type { KmsConfig } from './config.js';
import { ConfigError } from './config.js';
import { Sealer } from './crypto/seal.js';
import { pemCertificates } from './crypto/x509.js';
import { loadIdentity, type StaticIdentity } from './engine/identity.js';
import { Authenticator } from './engine/credentials.js';
import { EngineDeps } from './engine/context.js';
import { engineConfig } from './engine/config.js';
import { KmsEngine } from './engine/engine.js';
import { KmsState } from './store/kms-state.js';
import { openLevelStore } from './store/kv.js';
import { LocalIssuer } from './auth/local-issuer.js';
import { discoveredKeys } from './auth/discovery.js';
import { startIdp, type RunningIdp } from './auth/idp.js';
import { KmsComponent, type ComponentSettings } from './xmpp/component.js';
import type { Logger } from './util/logger.js';

export interface RunningKms {
  config: KmsConfig;
  engine: KmsEngine;
  identity: StaticIdentity;
  /** The local token issuer, when the KMS uses it (no outside identity provider configured). */
  issuer?: LocalIssuer;
  component?: KmsComponent;
  /** Answers requests in flight, closes the XMPP stream and the store. */
  stop(): Promise<void>;
}

/** Reads the master key from KMS_MASTER_KEY or its file, making the file on first start. */
export async function masterKey(config: KmsConfig, env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  const fromEnv = env.KMS_MASTER_KEY;
  if (fromEnv) {
    const key = Buffer.from(fromEnv.trim(), 'base64url');
    if (key.length !== 32) throw new ConfigError('KMS_MASTER_KEY: must be 32 bytes, base64url-encoded');
    return key;
  }
  const file = resolve(config.masterKeyFile ?? join(config.dataDir, 'master.key'));
  if (existsSync(file)) {
    const key = Buffer.from((await readFile(file, 'utf8')).trim(), 'base64url');
    if (key.length !== 32) throw new ConfigError(`masterKeyFile ${file}: must hold 32 bytes, base64url-encoded`);
    return key;
  }
  await mkdir(resolve(config.dataDir), { recursive: true });
  const key = randomBytes(32);
  await writeFile(file, `${key.toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
  return key;
}

/** Resolves the identity provider's keys: a JWKS file, a JWKS URL, an OpenID Connect issuer's discovery document, or the local issuer. */
async function tokenKeys(config: KmsConfig, sealer: Sealer): Promise<{ keys: JWTVerifyGetKey; issuer?: LocalIssuer }> {
  const a = config.auth;
  if (a.jwksFile) return { keys: createLocalJWKSet(JSON.parse(await readFile(a.jwksFile, 'utf8'))) };
  if (a.jwksUrl) return { keys: createRemoteJWKSet(new URL(a.jwksUrl)) };
  if (a.issuerUrl) return { keys: discoveredKeys(a.issuerUrl) };
  const issuer = await LocalIssuer.open(resolve(config.dataDir), a.issuer, sealer);
  return { keys: issuer.keys(), issuer };
}

async function anchors(file: string | undefined): Promise<X509Certificate[]> {
  if (!file) return [];
  const pem = await readFile(file, 'utf8');
  return pemCertificates(pem).map((p) => new X509Certificate(p));
}

/** The audience the KMS requires in access tokens: auth.audience, or kms://<domain>. */
export function tokenAudience(config: KmsConfig): string {
  return config.auth.audience ?? `kms://${config.domain}`;
}

/**
 * Development tokens from the local issuer the KMS trusts (the embedded default identity
 * provider). Refuses when an outside identity provider is configured. With `mustExist`, refuses
 * to make a new issuer too: a KMS already running would not trust its tokens.
 */
export async function localTokens(config: KmsConfig, o: { mustExist?: boolean } = {}): Promise<(subject: string, ttlSec?: number) => Promise<string>> {
  if (config.auth.jwksFile || config.auth.jwksUrl || config.auth.issuerUrl)
    throw new ConfigError('this KMS trusts an outside identity provider; get tokens from it');
  const dir = resolve(config.dataDir);
  if (o.mustExist && !existsSync(join(dir, 'issuer.json'))) throw new ConfigError(`no local token issuer in ${dir}: start the KMS first`);
  const issuer = await LocalIssuer.open(dir, config.auth.issuer, new Sealer(await masterKey(config)));
  const audience = tokenAudience(config);
  return (subject, ttlSec = 3600) => issuer.mint({ subject, audience, ttlSec });
}

/** Options of `startDevIdp`. */
export interface DevIdpOptions {
  /** The users' XMPP domain (`alice` is `alice@<userDomain>`). */
  userDomain: string;
  host?: string;
  port?: number;
  /** The issuer URL, when it is not http://<host>:<port>. */
  issuer?: string;
  /** Redirect URIs of the browser client `kms-web`. */
  redirectUris?: string[];
}

/**
 * The development OpenID Connect provider (src/auth/idp.ts) for this configuration: tokens for
 * its audience (auth.audience or kms://<domain>), its signing key sealed under the master key in
 * the data folder. The KMS trusts it with auth.issuerUrl set to the returned issuer.
 */
export async function startDevIdp(config: KmsConfig, o: DevIdpOptions): Promise<RunningIdp> {
  const dataDir = resolve(config.dataDir);
  await mkdir(dataDir, { recursive: true });
  return startIdp({
    userDomain: o.userDomain,
    audience: tokenAudience(config),
    dataDir,
    sealer: new Sealer(await masterKey(config)),
    ...(o.host ? { host: o.host } : {}),
    ...(o.port !== undefined ? { port: o.port } : {}),
    ...(o.issuer ? { issuer: o.issuer } : {}),
    ...(o.redirectUris ? { redirectUris: o.redirectUris } : {}),
  });
}

/** The component's settings from a validated configuration. */
export function componentSettings(config: KmsConfig): ComponentSettings {
  const x = config.xmpp;
  return {
    service: x.service,
    domain: config.domain,
    secret: x.secret,
    keepaliveSec: x.keepaliveSec,
    reconnect: { initialMs: x.reconnectInitialMs, maxMs: x.reconnectMaxMs },
    drainMs: x.drainMs,
    limits: {
      maxMessagesPerIq: x.maxMessagesPerIq,
      maxMessageBytes: x.maxMessageBytes,
      maxStanzaBytes: x.maxStanzaBytes,
      maxReplyBytes: x.maxReplyBytes,
      ratePerSec: x.ratePerSec,
      rateBurst: x.rateBurst,
    },
  };
}

/** Options of `startKms`. */
export interface StartOptions {
  /** `false`: only the engine runs, no XMPP component (tools, tests). */
  xmpp?: boolean;
  /** Aborts a start that is still waiting for the XMPP server: the store is closed and the promise rejects. */
  signal?: AbortSignal;
}

/**
 * Starts the KMS from a validated configuration (see `loadConfig`): the store in `config.dataDir`,
 * the identity, token verification, the engine and, unless `xmpp: false`, the XMPP component,
 * online when the promise resolves.
 */
export async function startKms(config: KmsConfig, logger: Logger, opts: StartOptions = {}): Promise<RunningKms> {
  const dataDir = resolve(config.dataDir);
  await mkdir(dataDir, { recursive: true });
  const sealer = new Sealer(await masterKey(config));
  const identity = await loadIdentity(
    {
      domain: config.domain,
      keyType: config.identity.keyType,
      rsaSigAlg: config.identity.rsaSigAlg,
      dataDir,
      ...(config.identity.keyFile ? { keyFile: config.identity.keyFile } : {}),
      ...(config.identity.certFile ? { certFile: config.identity.certFile } : {}),
      ...(process.env.KMS_IDENTITY_KEY_PASSPHRASE ? { keyPassphrase: process.env.KMS_IDENTITY_KEY_PASSPHRASE } : {}),
    },
    sealer,
  );
  const { keys, issuer } = await tokenKeys(config, sealer);
  const kv = await openLevelStore(join(dataDir, 'db'));
  const state = new KmsState(kv);
  const deps = new EngineDeps({
    config: engineConfig(config.domain, {
      policy: config.policy,
      chainReadPolicy: config.chainReadPolicy,
      ephemeralLifetimeSec: config.ephemeralLifetimeSec,
    }),
    state,
    sealer,
    identity,
  });
  const authenticator = new Authenticator({
    bearer: {
      keys,
      issuer: config.auth.issuer,
      audience: tokenAudience(config),
      algorithms: config.auth.algorithms,
      userClaim: config.auth.userClaim,
      clockToleranceSec: config.auth.clockToleranceSec,
    },
    serviceAnchors: await anchors(config.auth.serviceAnchorsFile),
    ...(config.auth.allowedDomains ? { allowedDomains: config.auth.allowedDomains } : {}),
  });
  const engine = new KmsEngine({ deps, authenticator, logger });
  const swept = await state.sweepEphemeral(new Date());
  const sweeper = setInterval(() => state.sweepEphemeral(new Date()).catch(() => undefined), 10 * 60_000);
  sweeper.unref();
  logger.info(
    { event: 'engine-ready', domain: config.domain, kid: identity.kid, keyType: identity.keyType, policy: config.policy, dataDir, sweptEphemeralKeys: swept },
    'KMS engine ready',
  );

  let component: KmsComponent | undefined;
  if (opts.xmpp !== false) {
    component = new KmsComponent({ handle: (m, o) => engine.handle(m, o), identity }, componentSettings(config), logger);
    const c = component;
    const abort = () => void c.stop();
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      if (opts.signal?.aborted) throw new Error('stopped before the component came online');
      await component.start();
    } catch (e) {
      clearInterval(sweeper);
      await component.stop().catch(() => undefined);
      await state.close();
      throw e;
    } finally {
      opts.signal?.removeEventListener('abort', abort);
    }
  }
  let stopped: Promise<void> | undefined;
  return {
    config,
    engine,
    identity,
    ...(issuer ? { issuer } : {}),
    ...(component ? { component } : {}),
    stop() {
      stopped ??= (async () => {
        clearInterval(sweeper);
        if (component) await component.stop();
        await state.close();
        logger.info({ event: 'stopped' }, 'KMS stopped');
      })();
      return stopped;
    },
  };
}
