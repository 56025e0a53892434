/** The engine's settings. The composition root (src/server.ts) makes them from the validated configuration; the engine only uses them. */

/** -03 §4.6.8: who may get a bound GK. */
export type RetrievalPolicy = 1 | 2 | 3;

export interface EngineLimits {
  /** Largest compact JOSE message accepted, in bytes. */
  maxMessageBytes: number;
  maxBlocksPerAppend: number;
  maxOperationsPerBlock: number;
  maxKeysPerEntity: number;
}

export interface EngineConfig {
  /** The KMS's domain: its identity is kms://<domain>, its objects kms://<domain>/blocks/…, /gks/…. */
  domain: string;
  /**
   * 1: a member at the GK's block; 2: a member at the chain's tail; 3: both (-03 §4.6.8).
   * Policy 1 is PCG-01's curator rule and the default.
   */
  policy: RetrievalPolicy;
  /** Who may read a chain: anyone who has ever been a member, or current members only (-03 §4.6.5 leaves it open). */
  chainReadPolicy: 'ever' | 'current';
  /** Lifetime of an ephemeral key; node-kms uses one hour. */
  ephemeralLifetimeSec: number;
  /** How far a proof-of-possession `iat` may be from the KMS's clock. */
  clockSkewSec: number;
  limits: EngineLimits;
}

export const DEFAULT_LIMITS: EngineLimits = {
  maxMessageBytes: 64 * 1024,
  maxBlocksPerAppend: 100,
  maxOperationsPerBlock: 1000,
  maxKeysPerEntity: 32,
};

/** Defaults for everything but the domain. */
export type EngineOverrides = Partial<Omit<EngineConfig, 'domain' | 'limits'>> & { limits?: Partial<EngineLimits> };

export function engineConfig(domain: string, overrides: EngineOverrides = {}): EngineConfig {
  return {
    domain,
    policy: 1,
    chainReadPolicy: 'ever',
    ephemeralLifetimeSec: 3600,
    clockSkewSec: 300,
    ...overrides,
    limits: { ...DEFAULT_LIMITS, ...(overrides.limits ?? {}) },
  };
}
