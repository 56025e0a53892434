/**
 * The KMS component's configuration: a JSON file (KMS_CONFIG or --config) overlaid by KMS_*
 * environment variables, validated with zod at start. A bad setting stops the start with a
 * message naming it. Every setting has a development default, so that the embedded default runs
 * with no configuration at all.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { largestBlockReplyBytes, minReplyBytes, RESERVED_PER_MESSAGE } from '../xmpp/reply-budget.js';

const positiveInt = z.number().int().positive();
/** A file path: a set but empty path would resolve to the working directory. */
const path = z.string().min(1, 'must not be empty (leave it out instead)');

/** xmpp://host[:port]: XEP-0114 is plain TCP (@xmpp/component has no TLS transport). */
function checkService(value: string, ctx: z.RefinementCtx): void {
  const m = /^([a-z][a-z0-9+.-]*):\/\/(\[[0-9a-f:.]+\]|[^/:\[\]]+)(?::([^/]*))?\/?$/i.exec(value);
  if (!m) {
    ctx.addIssue({ code: 'custom', message: `must look like xmpp://host:port, got "${value}"` });
    return;
  }
  if (m[1]!.toLowerCase() !== 'xmpp') {
    ctx.addIssue({ code: 'custom', message: `must use xmpp:// (a component link is plain TCP; tunnel it for TLS), got "${m[1]}://"` });
  }
  if (m[3] !== undefined) {
    const port = /^\d{1,5}$/.test(m[3]) ? Number(m[3]) : NaN;
    if (!(port >= 1 && port <= 65535)) ctx.addIssue({ code: 'custom', message: `port must be a number from 1 to 65535, got "${m[3]}"` });
  }
}

/** An http(s) URL, as jose's remote JWKS needs. */
function checkHttpUrl(value: string, ctx: z.RefinementCtx): void {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    // reported below
  }
  if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:') || !url.hostname) {
    ctx.addIssue({ code: 'custom', message: `must be an http:// or https:// URL, got "${value}"` });
  }
}

/** The local token issuer's name (the embedded default identity provider). */
export const LOCAL_ISSUER = 'urn:kms:local-issuer';

export const configSchema = z
  .object({
    /** The component's domain; the KMS identity is kms://<domain>. */
    domain: z
      .string()
      .regex(/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i, 'must be a domain name, e.g. kms.example.org')
      .default('kms.localhost'),
    xmpp: z
      .object({
        service: z.string().superRefine(checkService).default('xmpp://127.0.0.1:5347'),
        secret: z.string().min(1, 'must not be empty').default('kms-dev-secret'),
        keepaliveSec: z.number().int().min(0).default(60),
        reconnectInitialMs: positiveInt.default(500),
        reconnectMaxMs: positiveInt.default(30_000),
        drainMs: positiveInt.default(5_000),
        maxMessagesPerIq: positiveInt.max(256).default(16),
        maxMessageBytes: positiveInt.default(64 * 1024),
        maxStanzaBytes: positiveInt.default(256 * 1024),
        /** Largest reply stanza (max-reply-size): below the server's stanza limit for components (Prosody and ejabberd: 1 MiB). */
        maxReplyBytes: positiveInt.default(512 * 1024),
        ratePerSec: positiveInt.default(200),
        rateBurst: positiveInt.default(400),
      })
      .strict()
      .refine((x) => x.reconnectInitialMs <= x.reconnectMaxMs, { path: ['reconnectInitialMs'], message: 'must not be above xmpp.reconnectMaxMs' })
      .superRefine((x, ctx) => {
        // D7: a get-chain request first in a full IQ must still get one block.
        const min = minReplyBytes(x.maxMessagesPerIq, x.maxMessageBytes);
        if (x.maxReplyBytes < min) {
          ctx.addIssue({
            code: 'custom',
            path: ['maxReplyBytes'],
            message:
              `must be at least ${min} bytes with xmpp.maxMessagesPerIq ${x.maxMessagesPerIq} and xmpp.maxMessageBytes ${x.maxMessageBytes}: ` +
              `(${x.maxMessagesPerIq} - 1) x ${RESERVED_PER_MESSAGE} bytes reserved for the other messages of a request, plus ` +
              `${largestBlockReplyBytes(x.maxMessageBytes)} for a reply carrying one block of a chain; got ${x.maxReplyBytes}`,
          });
        }
      })
      .prefault({}),
    /** LevelDB store, sealed identity and local issuer live here. */
    dataDir: path.default('./data'),
    /** The master key: base64url of 32 bytes in KMS_MASTER_KEY, or a file holding it (made on first start when missing). */
    masterKeyFile: path.optional(),
    identity: z
      .object({
        keyType: z.enum(['EC', 'RSA']).default('EC'),
        rsaSigAlg: z.enum(['PS256', 'RS256']).default('PS256'),
        keyFile: path.optional(),
        certFile: path.optional(),
      })
      .strict()
      .superRefine((i, ctx) => {
        if (i.keyFile !== undefined && i.certFile === undefined) ctx.addIssue({ code: 'custom', path: ['certFile'], message: 'missing: identity.keyFile is set, so identity.certFile is required too' });
        if (i.certFile !== undefined && i.keyFile === undefined) ctx.addIssue({ code: 'custom', path: ['keyFile'], message: 'missing: identity.certFile is set, so identity.keyFile is required too' });
      })
      .prefault({}),
    auth: z
      .object({
        /** Token issuer (iss). The local issuer's name by default; required with jwksFile/jwksUrl. */
        issuer: z.string().min(1).optional(),
        /** Our audience (aud); kms://<domain> by default. */
        audience: z.string().min(1).optional(),
        jwksFile: path.optional(),
        jwksUrl: z.string().superRefine(checkHttpUrl).optional(),
        algorithms: z.array(z.enum(['ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512'])).min(1).default(['ES256', 'PS256', 'RS256']),
        userClaim: z.string().min(1).default('sub'),
        clockToleranceSec: z.number().int().min(0).max(600).default(30),
        allowedDomains: z.array(z.string()).optional(),
        /** PEM file of trust anchors for services (jwk credentials); none by default. */
        serviceAnchorsFile: path.optional(),
      })
      .strict()
      .superRefine((a, ctx) => {
        if (a.jwksFile && a.jwksUrl) ctx.addIssue({ code: 'custom', path: ['jwksUrl'], message: 'give auth.jwksFile or auth.jwksUrl, not both' });
        // The local issuer's name would make every token of an outside identity provider fail.
        if ((a.jwksFile || a.jwksUrl) && a.issuer === undefined) {
          ctx.addIssue({ code: 'custom', path: ['issuer'], message: "missing: with auth.jwksFile or auth.jwksUrl, give the identity provider's issuer (the tokens' iss)" });
        }
      })
      .transform((a) => ({ ...a, issuer: a.issuer ?? LOCAL_ISSUER }))
      .prefault({}),
    policy: z
      .number()
      .int('must be 1, 2 or 3')
      .min(1, 'must be 1, 2 or 3 (the retrieval policies of PCG-01)')
      .max(3, 'must be 1, 2 or 3 (the retrieval policies of PCG-01)')
      .default(1)
      .transform((p) => p as 1 | 2 | 3),
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
  KMS_MAX_REPLY_BYTES: { path: ['xmpp', 'maxReplyBytes'], type: 'int' },
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

/** Other KMS_* variables the KMS reads (not settings of the file). Any other KMS_* name is refused as a likely typo. */
export const OTHER_ENV_VARS: Record<string, string> = {
  KMS_CONFIG: 'the config file',
  KMS_MASTER_KEY: 'the master key itself (base64url, 32 bytes)',
  KMS_IDENTITY_KEY_PASSPHRASE: 'passphrase of an encrypted identity.keyFile',
};
/** Prefixes of KMS_* variables that belong to other tools (the test harness, `kms chat`), not to the component. */
const FOREIGN_ENV_PREFIXES = ['KMS_TEST_', 'KMS_CHAT_'];

/** The configuration of a command with a `--config <file>` option (KMS_CONFIG and KMS_* variables as loadConfig reads them). */
export function configFrom(opts: { config?: string }): KmsConfig {
  return loadConfig(opts.config ? { file: opts.config } : {});
}

/** A configuration problem, naming the setting. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ConfigError(`config file ${file}: no such file`);
    if (code === 'EISDIR') throw new ConfigError(`config file ${file}: is a directory, not a file`);
    if (code === 'EACCES') throw new ConfigError(`config file ${file}: permission denied`);
    throw new ConfigError(`config file ${file}: cannot read it (${(e as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config file ${file}: not valid JSON (${(e as Error).message})`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`config file ${file}: must hold a JSON object`);
  return raw as Record<string, unknown>;
}

/** Reads the file (if any), overlays the environment, validates. Every problem is reported, each naming its setting. */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): KmsConfig {
  const env = opts.env ?? process.env;
  const file = opts.file ?? (env.KMS_CONFIG || undefined);
  const raw: Record<string, unknown> = file ? readConfigFile(file) : {};
  const problems: string[] = [];
  for (const name of Object.keys(env)) {
    if (!name.startsWith('KMS_') || name in ENV_SETTINGS || name in OTHER_ENV_VARS || FOREIGN_ENV_PREFIXES.some((p) => name.startsWith(p))) continue;
    problems.push(`${name}: unknown environment variable (kms run --help lists the KMS_* variables)`);
  }
  const fromEnv = new Map<string, string>();
  for (const [name, s] of Object.entries(ENV_SETTINGS)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    let value: unknown = v;
    if (s.type === 'int') {
      if (!/^\s*[+-]?\d+\s*$/.test(v)) {
        problems.push(`${name} (setting ${s.path.join('.')}): must be a whole number, got "${v}"`);
        continue;
      }
      value = Number(v);
    } else if (s.type === 'list') value = v.split(',').map((x) => x.trim()).filter(Boolean);
    let node = raw;
    for (const k of s.path.slice(0, -1)) {
      const child = node[k];
      node = (child && typeof child === 'object' && !Array.isArray(child) ? child : (node[k] = {})) as Record<string, unknown>;
    }
    node[s.path[s.path.length - 1]!] = value;
    fromEnv.set(s.path.join('.'), name);
  }
  const master = env.KMS_MASTER_KEY;
  if (master !== undefined && master !== '' && (!/^[A-Za-z0-9_+/-]+={0,2}$/.test(master.trim()) || Buffer.from(master.trim(), 'base64url').length !== 32)) {
    problems.push('KMS_MASTER_KEY: must be 32 bytes, base64url-encoded, e.g. from `openssl rand -base64 32` (value not shown)');
  }
  const r = configSchema.safeParse(raw);
  if (!r.success) {
    for (const issue of r.error.issues) {
      const keys = issue.code === 'unrecognized_keys' ? issue.keys.map((k) => [...issue.path, k].join('.')) : [issue.path.join('.') || '(root)'];
      for (const setting of keys) {
        const source = fromEnv.has(setting) ? ` (from ${fromEnv.get(setting)})` : file ? ` (in ${file})` : '';
        const message = issue.code === 'unrecognized_keys' ? 'unknown setting (check the spelling; kms run --help lists the settings)' : issue.message;
        problems.push(`setting ${setting}${source}: ${message}`);
      }
    }
  }
  if (problems.length === 1) throw new ConfigError(problems[0]!);
  if (problems.length > 1) throw new ConfigError(`${problems.length} configuration problems:\n  ${problems.join('\n  ')}`);
  return r.data!;
}

/** The configuration as JSON for `kms check-config`, with the component secret hidden and the master key's source only. */
export function showConfig(config: KmsConfig, env: NodeJS.ProcessEnv = process.env): string {
  const masterKey = env.KMS_MASTER_KEY ? 'from KMS_MASTER_KEY (hidden)' : `in ${config.masterKeyFile ?? `${config.dataDir}/master.key`} (made on first start when missing)`;
  return JSON.stringify({ ...config, xmpp: { ...config.xmpp, secret: '[hidden]' }, masterKey }, null, 2);
}

/** The help text of `kms run`: every setting of the file, and the variable that overrides it. */
export function settingsHelp(): string {
  const byPath = new Map(Object.entries(ENV_SETTINGS).map(([name, s]) => [s.path.join('.'), name]));
  const lines: string[] = [];
  const walk = (shape: Record<string, z.ZodType>, prefix: string) => {
    for (const [key, type] of Object.entries(shape)) {
      const path = prefix + key;
      let inner: z.ZodType = type;
      // Unwrap defaults, optionals, refinements and transforms down to an object, if any.
      for (let i = 0; i < 8; i++) {
        const def = (inner as unknown as { def: { innerType?: z.ZodType; in?: z.ZodType; type: string } }).def;
        if (def.type === 'object') break;
        const next = def.innerType ?? def.in;
        if (!next) break;
        inner = next;
      }
      if ((inner as unknown as { def: { type: string } }).def.type === 'object') walk((inner as unknown as z.ZodObject).shape as Record<string, z.ZodType>, `${path}.`);
      else lines.push(`  ${path.padEnd(28)} ${byPath.get(path) ?? ''}`.trimEnd());
    }
  };
  walk(configSchema.shape as Record<string, z.ZodType>, '');
  const other = Object.entries(OTHER_ENV_VARS).map(([name, what]) => `  ${name.padEnd(28)} ${what}`);
  return `\nSettings of the JSON config file, and the environment variable that overrides each:\n${lines.join('\n')}\nOther environment variables:\n${other.join('\n')}\n`;
}
