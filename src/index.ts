/**
 * The server side (`xmpp-kms`): start a KMS from a configuration, or compose the engine, the store
 * and the XMPP component yourself. The client library is the separate entry `xmpp-kms/client`.
 */
export { startKms, masterKey, type RunningKms } from './cli/start.js';
export { loadConfig, ConfigError, type KmsConfig } from './cli/config.js';
export { KmsEngine, type EngineOptions, type HandleOptions } from './engine/engine.js';
export { engineConfig, type EngineConfig, type EngineOverrides, type RetrievalPolicy } from './engine/config.js';
export { KmsComponent, type ComponentSettings, type ComponentLimits } from './xmpp/component.js';
export { openLevelStore, openMemoryStore, type KvStore } from './store/kv.js';
export { LocalIssuer } from './auth/local-issuer.js';
export { createLogger, silentLogger } from './util/logger.js';
