/**
 * The server side (`xmpp-kms`): start a KMS from a configuration (`loadConfig`, then `startKms`),
 * or compose the engine, the store and the XMPP component yourself from the parts below, as
 * `startKms` does (src/server.ts). The client library is the separate entry `xmpp-kms/client`.
 *
 * @module xmpp-kms
 */

// Start a KMS from a configuration.
export { startKms, masterKey, localTokens, tokenAudience, componentSettings, type RunningKms, type StartOptions } from './server.js';
export { loadConfig, configSchema, ConfigError, LOCAL_ISSUER, type KmsConfig } from './config.js';

// Compose one: the engine and what it is made of.
export { KmsEngine, type EngineOptions, type EngineMetrics, type HandleOptions } from './engine/engine.js';
export { EngineDeps } from './engine/context.js';
export { engineConfig, DEFAULT_LIMITS, type EngineConfig, type EngineLimits, type EngineOverrides, type RetrievalPolicy } from './engine/config.js';
export { Authenticator, type AuthenticatorSettings, type BearerSettings } from './engine/credentials.js';
export { loadIdentity, makeIdentity, type StaticIdentity, type IdentityOptions } from './engine/identity.js';
export { createDevIdentity, type IdentityKeyType } from './crypto/x509.js';
export { Sealer } from './crypto/seal.js';

// The store: KmsState on a KvStore (LevelDB, or LevelKvStore on any abstract-level database).
export { KmsState } from './store/kms-state.js';
export { openLevelStore, LevelKvStore, type KvStore, type BatchOp, type BatchOptions, type RangeOptions, type WriteBehindOptions } from './store/kv.js';

// Tokens, the XMPP component, logging.
export { LocalIssuer, type MintOptions } from './auth/local-issuer.js';
export { KmsComponent, type KmsBackend, type ComponentSettings, type ComponentLimits, type LinkMetrics } from './xmpp/component.js';
export { createLogger, silentLogger, type Logger } from './util/logger.js';

// For operators: metrics (Prometheus), the admin listener (/metrics, /healthz, /readyz), the event-loop watchdog.
export { KmsMetrics, MeasuredStore, type MetricSources } from './admin/metrics.js';
export { startAdminServer, storeProbe, type AdminServer, type AdminOptions, type CheckResult } from './admin/server.js';
export { startHeartbeat, type Heartbeat, type HeartbeatOptions } from './admin/watchdog.js';
export { parseListen, type ListenAddress } from './admin/listen.js';
