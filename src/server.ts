/**
 * The composition root: from a validated configuration to a running KMS (store, sealed keys,
 * identity, token verification, engine) and, unless asked not to, its XMPP component. The `kms`
 * command (src/cli), the integration tests and a program using the package (`startKms` from
 * `xmpp-kms`) all start the KMS through here; to compose one differently, do what startKms does
 * with the parts `xmpp-kms` exports.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { hostname } from 'node:os';
import { createLocalJWKSet, createRemoteJWKSet, type JWTVerifyGetKey } from 'jose';
import type { KmsConfig } from './config.js';
import { ConfigError } from './config.js';
import { Sealer } from './crypto/seal.js';
import { pemCertificates } from './crypto/x509.js';
import { loadIdentity, type StaticIdentity } from './engine/identity.js';
import { Authenticator } from './engine/credentials.js';
import { EngineDeps } from './engine/context.js';
import { engineConfig } from './engine/config.js';
import { PeerLinks, type FederationPeer } from './federation/peers.js';
import { KmsEngine } from './engine/engine.js';
import { KmsState } from './store/kms-state.js';
import type { KvStore } from './store/kv.js';
import { openConfiguredStore, type OpenedStore } from './store/open.js';
import { KEY_CHECK_FILE, keyCheckKeyId, keyCheckOpens, privateDir, sealedDataIn, sealedFilesOpen, recordKeyCheck } from './store/data-dir.js';
import { isWrapped, pkcs11Settings, unwrapMasterKey, wrapMasterKey } from './crypto/pkcs11.js';
import { olderKeysDir, readOlderKeys, rekeyProgress, RekeyRunner } from './store/rekey.js';
import { operatorRoutes } from './admin/operator.js';
import { warnDevDefaults } from './admin/dev-defaults.js';
import { LocalIssuer } from './auth/local-issuer.js';
import { discoveredKeys } from './auth/discovery.js';
import { startIdp, type RunningIdp } from './auth/idp.js';
import { KmsComponent, type ComponentSettings } from './xmpp/component.js';
import type { Logger } from './util/logger.js';
import { parseListen, type ListenAddress } from './admin/listen.js';
import { KmsMetrics, MeasuredStore } from './admin/metrics.js';
import { startAdminServer, storeProbe, type AdminServer } from './admin/server.js';
import { startHeartbeat } from './admin/watchdog.js';
import { AuditLog } from './audit/log.js';
import { StoreAuditLog } from './audit/store-log.js';
import { thumbprint } from './crypto/keys.js';

export interface RunningKms {
  config: KmsConfig;
  engine: KmsEngine;
  identity: StaticIdentity;
  /** The local token issuer, when the KMS uses it (no outside identity provider configured). */
  issuer?: LocalIssuer;
  component?: KmsComponent;
  /** The admin HTTP listener (/metrics, /healthz, /readyz), when admin.listen is set. */
  admin?: AdminServer;
  /** The audit log, when audit.enabled (README "Audit log"): in the shared store when there is one, else a file. */
  audit?: AuditLog | StoreAuditLog;
  /** Answers requests in flight, closes the XMPP stream and the store. */
  stop(): Promise<void>;
}

/** The master key, and whether the data folder is known to be sealed under it. */
interface OpenedMasterKey {
  /** The current key (it seals). */
  key: Buffer;
  /** Older keys of the ring, from `<masterKeyFile>.d/` (during a rotation, src/store/rekey.ts). */
  older: Buffer[];
  /** The key file (and `<keyFile>.d/` the older keys' folder); not read when the key comes from KMS_MASTER_KEY. */
  keyFile: string;
  keyFromEnv: boolean;
  /** False for a data folder made before the key check value, with only the store to check the key against (startKms does, once the store is open). */
  checked: boolean;
  dataDir: string;
  /** Where the key came from, for messages (never the key). */
  source: string;
}

/** Refusal to start on a master key that does not belong to the data folder (what to do included). */
function wrongKey(source: string, dataDir: string, what: string, ids?: { sealedBy: string; given: string[] }): ConfigError {
  const named = ids ? `it was sealed under master key ${ids.sealedBy}, the key(s) given are ${ids.given.join(', ')} (key ids, not keys); ` : '';
  return new ConfigError(
    `the master key from ${source} is not the key that sealed the data in ${dataDir} (${what} does not open under it): ${named}` +
      'give the key this data was sealed with (the right masterKeyFile or KMS_MASTER_KEY, e.g. from your backup). Refusing to start; nothing was changed.',
  );
}

/** An HSM operation, its failure as a ConfigError (the message names the setting). */
async function hsm<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw new ConfigError(`master key through PKCS#11: ${(e as Error).message}`);
  }
}

async function openMasterKey(config: KmsConfig, env: NodeJS.ProcessEnv): Promise<OpenedMasterKey> {
  const dataDir = resolve(config.dataDir);
  const sealed = await sealedDataIn(dataDir);
  const fromEnv = env.KMS_MASTER_KEY;
  const file = resolve(config.masterKeyFile ?? join(dataDir, 'master.key'));
  let key: Buffer;
  let source: string;
  if (fromEnv) {
    key = Buffer.from(fromEnv.trim(), 'base64url');
    if (key.length !== 32) throw new ConfigError('KMS_MASTER_KEY: must be 32 bytes, base64url-encoded');
    source = 'KMS_MASTER_KEY';
  } else if (existsSync(file)) {
    const content = await readFile(file, 'utf8');
    if (isWrapped(content)) {
      // Wrapped by an HSM key (src/crypto/pkcs11.ts): the HSM unwraps it.
      key = await hsm(() => unwrapMasterKey(content, pkcs11Settings(env), file));
      source = `the file ${file} (unwrapped by the HSM key "${env.KMS_PKCS11_KEY_LABEL}")`;
    } else {
      key = Buffer.from(content.trim(), 'base64url');
      if (key.length !== 32) throw new ConfigError(`masterKeyFile ${file}: must hold 32 bytes, base64url-encoded`);
      source = `the file ${file}`;
    }
  } else {
    // Only a new data folder gets a new key: a new key over sealed data would open none of it.
    if (sealed.length > 0) {
      throw new ConfigError(
        `the master key file ${file} is missing, but the data folder ${dataDir} holds data sealed under a master key (${sealed.join(', ')}): ` +
          'restore that key file from your backup (or give the key in KMS_MASTER_KEY); a new key could not open this data. ' +
          'To start over with a new key instead, move the data folder away. Refusing to start; nothing was changed.',
      );
    }
    await privateDir(dataDir);
    key = randomBytes(32);
    const settings = await hsm(async () => pkcs11Settings(env));
    // With an HSM configured, the new key is written wrapped by its key.
    const content = settings ? await hsm(() => wrapMasterKey(key, settings)) : key.toString('base64url');
    await writeFile(file, `${content}\n`, { mode: 0o600, flag: 'wx' });
    source = `the file ${file}${settings ? ` (wrapped by the HSM key "${settings.keyLabel}")` : ''}`;
  }
  let older: Buffer[];
  try {
    older = (await readOlderKeys(file)).map((o) => o.key);
  } catch (e) {
    throw new ConfigError(`older master keys in ${olderKeysDir(file)}: ${(e as Error).message}`);
  }
  if (older.length > 0) source += ` and the older key(s) in ${olderKeysDir(file)}`;
  const found = { key, older, keyFile: file, keyFromEnv: Boolean(fromEnv), dataDir, source };
  const sealer = new Sealer([key, ...older]);
  if (sealed.includes(KEY_CHECK_FILE)) {
    if (!(await keyCheckOpens(dataDir, sealer)))
      throw wrongKey(source, dataDir, KEY_CHECK_FILE, { sealedBy: await keyCheckKeyId(dataDir), given: sealer.keyIds() });
    return { ...found, checked: true };
  }
  if (sealed.length > 0) {
    // A data folder from before the key check value: check the key against a sealed file, then record it.
    const tried = await sealedFilesOpen(dataDir, sealer);
    if (tried && !tried.opens) throw wrongKey(source, dataDir, tried.file);
    if (!tried) return { ...found, checked: false };
  }
  await privateDir(dataDir);
  if (!(await recordKeyCheck(dataDir, sealer))) throw wrongKey(source, dataDir, KEY_CHECK_FILE);
  return { ...found, checked: true };
}

/** The keyring (the current master key and any older ones) as a Sealer; see masterKey. */
async function masterSealer(config: KmsConfig, env: NodeJS.ProcessEnv = process.env): Promise<Sealer> {
  const opened = await openMasterKey(config, env);
  const sealer = new Sealer([opened.key, ...opened.older]);
  for (const k of [opened.key, ...opened.older]) k.fill(0);
  return sealer;
}

/**
 * Reads the master key from KMS_MASTER_KEY or its file, making the file on the first start in a
 * new data folder. Refuses (ConfigError, nothing changed) a key file that is missing while the
 * data folder holds sealed data, and a key that is not the one the data folder was sealed with.
 */
export async function masterKey(config: KmsConfig, env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  return (await openMasterKey(config, env)).key;
}

/**
 * For a data folder from before the key check value, whose only sealed data is in the store: checks
 * the key against a stored group key or channel key, then records the key check value.
 */
async function checkKeyAgainstStore(kv: KvStore, opened: OpenedMasterKey, sealer: Sealer): Promise<void> {
  for (const [prefix, context] of [
    ['g!', 'gk:'],
    ['e!', 'ecdhe:'],
  ] as const) {
    for await (const [, v] of kv.entries({ gte: prefix, lt: `${prefix}~`, limit: 1 })) {
      const record = JSON.parse(v) as { id: string; key: string };
      try {
        sealer.open(record.key, `${context}${record.id}`).fill(0);
      } catch {
        throw wrongKey(opened.source, opened.dataDir, `the stored key ${prefix === 'g!' ? 'GK' : 'channel'} ${record.id}`);
      }
    }
  }
  if (!(await recordKeyCheck(opened.dataDir, sealer))) throw wrongKey(opened.source, opened.dataDir, KEY_CHECK_FILE);
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

/** A peer's trust anchors: at least one certificate, else the start stops saying which peer. */
async function peerAnchors(kms: string, file: string): Promise<X509Certificate[]> {
  let found: X509Certificate[];
  try {
    found = await anchors(file);
  } catch (e) {
    throw new ConfigError(`federation.peers (${kms}).anchorsFile: cannot read ${file}: ${(e as Error).message}`);
  }
  if (found.length === 0) throw new ConfigError(`federation.peers (${kms}).anchorsFile: ${file} holds no certificate`);
  return found;
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
  const issuer = await LocalIssuer.open(dir, config.auth.issuer, await masterSealer(config));
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
  const sealer = await masterSealer(config);
  await privateDir(dataDir);
  return startIdp({
    userDomain: o.userDomain,
    audience: tokenAudience(config),
    dataDir,
    sealer,
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
    standby: x.standby,
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
  /**
   * Ends the process (SIGKILL, after a fatal log line) when its event loop stalls for
   * admin.stallExitSec (src/admin/watchdog.ts): for a process that is only the KMS, under a
   * supervisor (`kms run` sets it). Off by default: a program embedding the KMS decides for itself.
   */
  watchdog?: boolean;
}

/**
 * Starts the KMS from a validated configuration (see `loadConfig`): the store in `config.dataDir`,
 * the identity, token verification, the engine and, unless `xmpp: false`, the XMPP component,
 * online when the promise resolves.
 */
export async function startKms(config: KmsConfig, logger: Logger, opts: StartOptions = {}): Promise<RunningKms> {
  // The master key first: a data folder it does not belong to is refused before anything is written.
  const opened = await openMasterKey(config, process.env);
  const dataDir = opened.dataDir;
  const looseMode = await privateDir(dataDir);
  if (looseMode !== undefined) {
    logger.warn(
      { event: 'data-dir-permissions', dataDir, mode: looseMode.toString(8) },
      `the data folder ${dataDir} is readable by other users (mode ${looseMode.toString(8)}): make it private with chmod 700 ${dataDir}`,
    );
  }
  const sealer = new Sealer([opened.key, ...opened.older]);
  for (const k of [opened.key, ...opened.older]) k.fill(0);
  // A data folder from before the key check value, with sealed data in the store only: the key is
  // checked against a stored record before anything is written (a development identity, say).
  // LevelDB in <dataDir>/db, or the etcd cluster of store.url (several instances; src/store/open.ts).
  let early: OpenedStore | undefined;
  if (!opened.checked) {
    early = await openConfiguredStore(config, dataDir);
    try {
      await checkKeyAgainstStore(early.kv, opened, sealer);
    } catch (e) {
      await early.kv.close();
      throw e;
    }
  }
  const { identity, keys, issuer } = await (async () => {
    try {
      return {
        identity: await loadIdentity(
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
        ),
        ...(await tokenKeys(config, sealer)),
      };
    } catch (e) {
      await early?.kv.close();
      throw e;
    }
  })();
  const store = early ?? (await openConfiguredStore(config, dataDir));
  const kv = store.kv;
  // Metrics only with the admin listener: otherwise nothing is measured.
  const adminAddress = config.admin.listen === undefined ? undefined : (parseListen(config.admin.listen) as ListenAddress);
  const metrics = adminAddress ? new KmsMetrics() : undefined;
  const state = new KmsState(metrics ? new MeasuredStore(kv, metrics) : kv, { shared: store.shared });
  // XEP "Federation": the peers, each with the anchors its certificate must lead to.
  const peers: FederationPeer[] = [];
  for (const p of config.federation.peers) peers.push({ kms: p.kms, domains: p.domains, anchors: await peerAnchors(p.kms, p.anchorsFile) });
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
    peers,
    ...(config.auth.allowedDomains ? { allowedDomains: config.auth.allowedDomains } : {}),
  });
  let audit: AuditLog | StoreAuditLog | undefined;
  if (config.audit.enabled) {
    const common = {
      actor: identity.kid,
      kid: thumbprint(identity.publicKey),
      sign: (payload: unknown) => deps.signAsKms(payload),
      checkpointEvery: config.audit.checkpointEvery,
      checkpointSec: config.audit.checkpointSec,
      logger,
    };
    // Several instances: one chain in the shared store, in one order (src/audit/store-log.ts); else a file.
    const dir = resolve(config.audit.dir ?? join(dataDir, 'audit'));
    try {
      audit = store.shared ? await StoreAuditLog.open({ ...common, kv, instance: `${hostname()}:${process.pid}` }) : await AuditLog.open({ ...common, dir });
    } catch (e) {
      await state.close();
      throw new Error(`audit log ${store.shared ? 'in the store' : `in ${dir}`}: ${(e as Error).message}`);
    }
  }
  const engine = new KmsEngine({ deps, authenticator, logger, ...(metrics ? { metrics } : {}), ...(audit ? { audit } : {}) });
  const swept = await state.sweepEphemeral(new Date());
  const sweeper = setInterval(() => state.sweepEphemeral(new Date()).catch(() => undefined), 10 * 60_000);
  sweeper.unref();
  logger.info(
    {
      event: 'engine-ready',
      domain: config.domain,
      kid: identity.kid,
      keyType: identity.keyType,
      policy: config.policy,
      dataDir,
      store: store.where,
      sweptEphemeralKeys: swept,
    },
    'KMS engine ready',
  );
  warnDevDefaults(config, logger);
  // Master key rotation (src/store/rekey.ts): started below when the ring holds an older key, and by POST /rekey.
  const rekey = new RekeyRunner({ state, sealer, dataDir, logger, keyFile: opened.keyFile, keyFromEnv: opened.keyFromEnv });

  let component: KmsComponent | undefined;
  const stallExit = opts.watchdog === true && config.admin.stallExitSec > 0;
  const heartbeat =
    adminAddress || stallExit ? startHeartbeat({ stallMs: (config.admin.stallExitSec || 10) * 1000, exitOnStall: stallExit, name: 'kms' }) : undefined;
  let admin: AdminServer | undefined;
  if (adminAddress && metrics && heartbeat) {
    metrics.sources.cacheSizes = () => state.cacheSizes();
    metrics.sources.inFlight = () => component?.inFlight ?? 0;
    const offline = { ok: false, reason: `the component is not online at ${config.xmpp.service} (connecting or reconnecting)` };
    const xmpp = () => (component?.online ? { ok: true } : offline);
    try {
      // Before the component connects: /readyz says "not ready" while it does.
      admin = await startAdminServer({
        address: adminAddress,
        metrics,
        heartbeat,
        logger,
        checks: { ...(opts.xmpp !== false ? { xmpp } : {}), store: storeProbe(kv) },
        routes: operatorRoutes({ rekey, kv, dataDir }),
      });
    } catch (e) {
      clearInterval(sweeper);
      await heartbeat.stop();
      await audit?.close().catch(() => undefined);
      await state.close();
      throw e;
    }
  }
  if (peers.length > 0) {
    deps.federation = new PeerLinks({ peers, self: identity, entity: () => component?.xmpp, logger });
    logger.info(
      { event: 'federation', peers: peers.map((p) => p.kms) },
      `federating with ${peers.map((p) => `${p.kms} (${p.domains.join(', ')})`).join('; ')}`,
    );
  }
  if (opts.xmpp !== false) {
    component = new KmsComponent({ handle: (m, o) => engine.handle(m, o), identity }, componentSettings(config), logger, metrics);
    const c = component;
    const abort = () => void c.stop();
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      if (opts.signal?.aborted) throw new Error('stopped before the component came online');
      await component.start();
    } catch (e) {
      clearInterval(sweeper);
      await component.stop().catch(() => undefined);
      await admin?.close();
      await heartbeat?.stop();
      await audit?.close().catch(() => undefined);
      await state.close();
      throw e;
    } finally {
      opts.signal?.removeEventListener('abort', abort);
    }
  }
  // A rotation left unfinished (a stop, a crash) resumes in the background.
  const progress = await rekeyProgress(kv);
  if (sealer.keyIds().length > 1 || (progress !== undefined && progress.finished === undefined)) rekey.start();
  let stopped: Promise<void> | undefined;
  return {
    config,
    engine,
    identity,
    ...(issuer ? { issuer } : {}),
    ...(component ? { component } : {}),
    ...(admin ? { admin } : {}),
    ...(audit ? { audit } : {}),
    stop() {
      stopped ??= (async () => {
        clearInterval(sweeper);
        if (component) await component.stop();
        await admin?.close();
        await heartbeat?.stop();
        await rekey.stop();
        // The last checkpoint, once no request is in flight.
        await audit?.close().catch((e: Error) => logger.error({ event: 'audit-failed', reason: e.message }, 'the final audit checkpoint could not be written'));
        await state.close();
        logger.info({ event: 'stopped' }, 'KMS stopped');
      })();
      return stopped;
    },
  };
}
