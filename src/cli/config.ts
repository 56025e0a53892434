/**
 * The KMS component's configuration: a JSON file (KMS_CONFIG or --config) overlaid by KMS_*
 * environment variables, validated with zod at start. A bad setting stops the start with a
 * message naming it. Every setting has a development default, so that the embedded default runs
 * with no configuration at all.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';

const positiveInt = z.number().int().positive();

export const configSchema = z
  .object({
    /** The component's domain; the KMS identity is kms://<domain>. */
    domain: z.string().regex(/^[a-z0-9.-]+$/i, 'must be a domain name').default('kms.localhost'),
    xmpp: z
      .object({
        service: z.string().regex(/^xmpps?:\/\/[^/]+$/, 'must look like xmpp://host:port').default('xmpp://127.0.0.1:5347'),
        secret: z.string().min(1, 'must not be empty').default('kms-dev-secret'),
        keepaliveSec: z.number().int().min(0).default(60),
        reconnectInitialMs: positiveInt.default(500),
        reconnectMaxMs: positiveInt.default(30_000),
        drainMs: positiveInt.default(5_000),
        maxMessagesPerIq: positiveInt.max(256).default(16),
        maxMessageBytes: positiveInt.default(64 * 1024),
        maxStanzaBytes: positiveInt.default(256 * 1024),
        ratePerSec: positiveInt.default(200),
        rateBurst: positiveInt.default(400),
      })
      .strict()
      .prefault({}),
    /** LevelDB store, sealed identity and local issuer live here. */
    dataDir: z.string().min(1).default('./data'),
    /** The master key: base64url of 32 bytes in KMS_MASTER_KEY, or a file holding it (made on first start when missing). */
    masterKeyFile: z.string().optional(),
    identity: z
      .object({
        keyType: z.enum(['EC', 'RSA']).default('EC'),
        rsaSigAlg: z.enum(['PS256', 'RS256']).default('PS256'),
        keyFile: z.string().optional(),
        certFile: z.string().optional(),
      })
      .strict()
      .refine((i) => (i.keyFile === undefined) === (i.certFile === undefined), 'keyFile and certFile go together')
      .prefault({}),
    auth: z
      .object({
        /** Token issuer (iss). The local issuer's name by default. */
        issuer: z.string().min(1).default('urn:kms:local-issuer'),
        /** Our audience (aud); kms://<domain> by default. */
        audience: z.string().min(1).optional(),
        jwksFile: z.string().optional(),
        jwksUrl: z.string().url().optional(),
        algorithms: z.array(z.enum(['ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512'])).min(1).default(['ES256', 'PS256', 'RS256']),
        userClaim: z.string().min(1).default('sub'),
        clockToleranceSec: z.number().int().min(0).max(600).default(30),
        allowedDomains: z.array(z.string()).optional(),
        /** PEM file of trust anchors for services (jwk credentials); none by default. */
        serviceAnchorsFile: z.string().optional(),
      })
      .strict()
      .refine((a) => !(a.jwksFile && a.jwksUrl), 'give jwksFile or jwksUrl, not both')
      .prefault({}),
    policy: z.number().int().min(1, 'must be 1, 2 or 3').max(3, 'must be 1, 2 or 3').default(1).transform((p) => p as 1 | 2 | 3),
    chainReadPolicy: z.enum(['ever', 'current']).default('ever'),
    ephemeralLifetimeSec: positiveInt.default(3600),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .strict();

export type KmsConfig = z.infer<typeof configSchema>;

/** Environment variables and the setting each one sets. */
export const ENV_SETTINGS: Record<string, { path: string[]; type: 'string' | 'int' | 'list' }> = {
  KMS_DOMAIN: { path: ['domain'], type: 'string' },
  KMS_XMPP_SERVICE: { path: ['xmpp', 'service'], type: 'string' },
  KMS_XMPP_SECRET: { path: ['xmpp', 'secret'], type: 'string' },
  KMS_KEEPALIVE_SEC: { path: ['xmpp', 'keepaliveSec'], type: 'int' },
  KMS_RATE_PER_SEC: { path: ['xmpp', 'ratePerSec'], type: 'int' },
  KMS_DATA_DIR: { path: ['dataDir'], type: 'string' },
  KMS_MASTER_KEY_FILE: { path: ['masterKeyFile'], type: 'string' },
  KMS_IDENTITY_KEY_TYPE: { path: ['identity', 'keyType'], type: 'string' },
  KMS_IDENTITY_KEY_FILE: { path: ['identity', 'keyFile'], type: 'string' },
  KMS_IDENTITY_CERT_FILE: { path: ['identity', 'certFile'], type: 'string' },
  KMS_AUTH_ISSUER: { path: ['auth', 'issuer'], type: 'string' },
  KMS_AUTH_AUDIENCE: { path: ['auth', 'audience'], type: 'string' },
  KMS_AUTH_JWKS_FILE: { path: ['auth', 'jwksFile'], type: 'string' },
  KMS_AUTH_JWKS_URL: { path: ['auth', 'jwksUrl'], type: 'string' },
  KMS_AUTH_USER_CLAIM: { path: ['auth', 'userClaim'], type: 'string' },
  KMS_AUTH_ALLOWED_DOMAINS: { path: ['auth', 'allowedDomains'], type: 'list' },
  KMS_POLICY: { path: ['policy'], type: 'int' },
  KMS_EPHEMERAL_LIFETIME_SEC: { path: ['ephemeralLifetimeSec'], type: 'int' },
  KMS_LOG_LEVEL: { path: ['logLevel'], type: 'string' },
};

/** A configuration problem, naming the setting. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Reads the file (if any), overlays the environment, validates. */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): KmsConfig {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.KMS_CONFIG;
  let raw: Record<string, unknown> = {};
  if (file) {
    try {
      raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new ConfigError(`config file ${file}: ${(e as Error).message}`);
    }
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`config file ${file}: must hold a JSON object`);
  }
  for (const [name, s] of Object.entries(ENV_SETTINGS)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    let value: unknown = v;
    if (s.type === 'int') {
      value = Number(v);
      if (!Number.isInteger(value)) throw new ConfigError(`${name}: must be a whole number, got "${v}"`);
    } else if (s.type === 'list') value = v.split(',').map((x) => x.trim()).filter(Boolean);
    let node = raw;
    for (const k of s.path.slice(0, -1)) node = (node[k] ??= {}) as Record<string, unknown>;
    node[s.path[s.path.length - 1]!] = value;
  }
  const r = configSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const setting = issue.path.join('.') || '(root)';
    const envName = Object.entries(ENV_SETTINGS).find(([, s]) => s.path.join('.') === setting)?.[0];
    throw new ConfigError(`setting ${setting}${envName ? ` (${envName})` : ''}: ${issue.message}`);
  }
  return r.data;
}
