/**
 * The KMS component's configuration: a JSON file (KMS_CONFIG or --config) overlaid by KMS_*
 * environment variables, validated with zod at start. A bad setting stops the start with a
 * message naming it. Every setting has a development default, so that the embedded default runs
 * with no configuration at all.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { largestBlockReplyBytes, minReplyBytes, RESERVED_PER_MESSAGE } from './xmpp/reply-budget.js';
import { parseListen } from './admin/listen.js';
import { PKCS11_ENV } from './crypto/pkcs11.js';
import { parseStoreUrl } from './store/store-url.js';

const positiveInt = z.number().int().positive();
/** A file path: a set but empty path would resolve to the working directory. */
const path = z.string().min(1, 'must not be empty (leave it out instead)');
/** A domain name, compared in lower case. */
const hostname = z
  .string()
  .regex(/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i, 'must be a domain name, e.g. kms.example.org')
  .transform((d) => d.toLowerCase());

/** xmpp://host[:port]: XEP-0114 is plain TCP (@xmpp/component has no TLS transport). */
function checkService(value: string, ctx: z.RefinementCtx): void {
  const m = /^([a-z][a-z0-9+.-]*):\/\/(\[[0-9a-f:.]+\]|[^/:[\]]+)(?::([^/]*))?\/?$/i.exec(value);
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

/** etcd://host[:port],host[:port],...: the etcd cluster's client endpoints (src/store/store-url.ts). */
function checkStoreUrl(value: string, ctx: z.RefinementCtx): void {
  const r = parseStoreUrl(value, false);
  if ('error' in r) ctx.addIssue({ code: 'custom', message: r.error });
}

/** The admin listener's address: a port (on loopback), host:port or [IPv6]:port (src/admin/listen.ts). */
function checkListen(value: string, ctx: z.RefinementCtx): void {
  const r = parseListen(value);
  if ('error' in r) ctx.addIssue({ code: 'custom', message: r.error });
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
    domain: z
      .string()
      .regex(/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i, 'must be a domain name, e.g. kms.example.org')
      .default('kms.localhost')
      .describe("the component's domain (its JID on the XMPP server); the KMS's identity is kms://<domain>"),
    xmpp: z
      .object({
        service: z
          .string()
          .superRefine(checkService)
          .default('xmpp://127.0.0.1:5347')
          .describe("the XMPP server's component listener (XEP-0114), xmpp://host:port; plain TCP, so keep it on loopback or tunnel it"),
        secret: z
          .string()
          .min(1, 'must not be empty')
          .default('kms-dev-secret')
          .describe('the shared secret of the component, as the XMPP server has it; set your own outside development'),
        keepaliveSec: z.number().int().min(0).default(60).describe('seconds between whitespace keepalives on the component stream; 0 turns them off'),
        reconnectInitialMs: positiveInt
          .default(500)
          .describe(
            'first delay before connecting again after a failed or lost connection; it doubles at each attempt, except in the first 30 s after losing a link that was up for 5 s or more (a server restart), when attempts stay at most 1 s apart',
          ),
        reconnectMaxMs: positiveInt.default(30_000).describe('longest delay between connection attempts'),
        standby: z
          .boolean()
          .default(false)
          .describe(
            'several instances of one domain on a server that takes one connection per component name (Prosody): when the name is taken (conflict), keep trying (at most reconnectMaxMs apart) and take over when the active instance drops, instead of stopping; needs store.url (a shared store)',
          ),
        drainMs: positiveInt.default(5_000).describe('at SIGTERM/SIGINT, how long the requests in flight may take to be answered before the stream closes'),
        maxMessagesPerIq: positiveInt.max(256).default(16).describe('most KMS messages in one request IQ (disco max-messages)'),
        maxMessageBytes: positiveInt.default(64 * 1024).describe('largest KMS message in a request, in bytes (disco max-message-size)'),
        maxStanzaBytes: positiveInt.default(256 * 1024).describe('largest sum of the messages of one request IQ, in bytes (disco max-stanza-size)'),
        maxReplyBytes: positiveInt
          .default(512 * 1024)
          .describe(
            "largest reply stanza, in bytes (disco max-reply-size): keep it below the server's stanza limit for components (Prosody and ejabberd: 1 MiB)",
          ),
        ratePerSec: positiveInt
          .default(200)
          .describe('KMS messages per second allowed to each sender on average; over it a request is refused as rate-limited'),
        rateBurst: positiveInt.default(400).describe('KMS messages a sender may send at once above its rate (the size of its token bucket)'),
      })
      .strict()
      .refine((x) => x.reconnectInitialMs <= x.reconnectMaxMs, { path: ['reconnectInitialMs'], message: 'must not be above xmpp.reconnectMaxMs' })
      .superRefine((x, ctx) => {
        // XEP "Reading a Chain": a get-chain request first in a full IQ must still get one block.
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
    dataDir: path
      .default('./data')
      .describe("folder of the LevelDB store, the sealed development identity, the local issuer's key and the trust anchor (made private, 0700)"),
    store: z
      .object({
        url: z
          .string()
          .superRefine(checkStoreUrl)
          .optional()
          .describe(
            "the shared store of several KMS instances serving one domain: etcd://host1:port,host2:port,... (the etcd cluster's client endpoints, port 2379 when left out; https with store.tls.caFile); the keys live under kms/<domain>/. LevelDB in <dataDir>/db when unset",
          ),
        tls: z
          .object({
            caFile: path.optional().describe("PEM file of the CA that signed the etcd members' certificates: the store is reached over TLS when set"),
            certFile: path.optional().describe("PEM file of this KMS's client certificate, when etcd asks for one (with keyFile)"),
            keyFile: path.optional().describe('PEM file of the private key of store.tls.certFile'),
          })
          .strict()
          .superRefine((t, ctx) => {
            if ((t.certFile === undefined) !== (t.keyFile === undefined))
              ctx.addIssue({
                code: 'custom',
                path: [t.certFile === undefined ? 'certFile' : 'keyFile'],
                message: 'give store.tls.certFile and store.tls.keyFile together',
              });
            if (t.certFile !== undefined && t.caFile === undefined)
              ctx.addIssue({ code: 'custom', path: ['caFile'], message: 'missing: a client certificate needs store.tls.caFile' });
          })
          .prefault({}),
        username: z.string().min(1).optional().describe("etcd's user authentication: the user (with store.password)"),
        password: z.string().min(1).optional().describe('the password of store.username; better given in KMS_STORE_PASSWORD than in the file'),
        timeoutMs: positiveInt.default(5_000).describe('deadline of each request to the store (ms)'),
      })
      .strict()
      .superRefine((s, ctx) => {
        if ((s.username === undefined) !== (s.password === undefined))
          ctx.addIssue({
            code: 'custom',
            path: [s.username === undefined ? 'username' : 'password'],
            message: 'give store.username and store.password together',
          });
        const etcdOnly = s.username !== undefined || s.tls.caFile !== undefined;
        if (etcdOnly && s.url === undefined)
          ctx.addIssue({ code: 'custom', path: ['url'], message: 'missing: the etcd options (tls, username) need store.url' });
      })
      .prefault({}),
    masterKeyFile: path
      .optional()
      .describe(
        'file holding the master key (base64url of 32 bytes; made on first start, in a new data folder only: with data sealed by a key, a missing or different key stops the start); <dataDir>/master.key when unset; KMS_MASTER_KEY gives the key itself instead',
      ),
    identity: z
      .object({
        keyType: z.enum(['EC', 'RSA']).default('EC').describe('kind of static key of the self-signed development identity (EC P-256 or RSA-2048)'),
        rsaSigAlg: z.enum(['PS256', 'RS256']).default('PS256').describe('signature algorithm of an RSA identity key'),
        keyFile: path.optional().describe("PEM file of the KMS's static private key (with certFile); a self-signed development identity when unset"),
        certFile: path.optional().describe("PEM file of the KMS's certificate chain, leaf first, for the key of keyFile"),
      })
      .strict()
      .superRefine((i, ctx) => {
        if (i.keyFile !== undefined && i.certFile === undefined)
          ctx.addIssue({ code: 'custom', path: ['certFile'], message: 'missing: identity.keyFile is set, so identity.certFile is required too' });
        if (i.certFile !== undefined && i.keyFile === undefined)
          ctx.addIssue({ code: 'custom', path: ['keyFile'], message: 'missing: identity.certFile is set, so identity.keyFile is required too' });
      })
      .prefault({}),
    auth: z
      .object({
        issuer: z
          .string()
          .min(1)
          .optional()
          .describe(`the access tokens' issuer (iss): required with jwksFile or jwksUrl; issuerUrl when that is set, else ${LOCAL_ISSUER} (the local issuer)`),
        audience: z.string().min(1).optional().describe('the audience (aud) access tokens must name; kms://<domain> when unset'),
        jwksFile: path
          .optional()
          .describe("JSON file of the identity provider's token signing keys (a JWKS); the local development issuer when neither it nor jwksUrl is set"),
        jwksUrl: z.string().superRefine(checkHttpUrl).optional().describe("http(s) URL of the identity provider's JWKS (instead of jwksFile)"),
        issuerUrl: z
          .string()
          .superRefine(checkHttpUrl)
          .optional()
          .describe(
            "an OpenID Connect issuer (e.g. https://keycloak.example.org/realms/chat): its keys are found through <issuerUrl>/.well-known/openid-configuration, whose issuer must be this URL exactly; it is the tokens' iss too (instead of issuer with jwksFile or jwksUrl)",
          ),
        algorithms: z
          .array(z.enum(['ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512']))
          .min(1)
          .default(['ES256', 'PS256', 'RS256'])
          .describe('signature algorithms accepted on access tokens'),
        userClaim: z.string().min(1).default('sub').describe('the token claim that names the user (a JID, made a canonical bare JID)'),
        clockToleranceSec: z.number().int().min(0).max(600).default(30).describe("seconds of clock difference allowed when checking a token's exp and nbf"),
        allowedDomains: z.array(z.string()).optional().describe('when set, only users of these domains may use the KMS; every domain when unset'),
        serviceAnchorsFile: path
          .optional()
          .describe('PEM file of trust anchors for services that authenticate with a jwk credential (an x5c chain); none when unset'),
      })
      .strict()
      .superRefine((a, ctx) => {
        if (a.jwksFile && a.jwksUrl) ctx.addIssue({ code: 'custom', path: ['jwksUrl'], message: 'give auth.jwksFile or auth.jwksUrl, not both' });
        if (a.issuerUrl && (a.jwksFile || a.jwksUrl))
          ctx.addIssue({ code: 'custom', path: ['issuerUrl'], message: 'give auth.issuerUrl (keys by discovery) or auth.jwksFile/auth.jwksUrl, not both' });
        if (a.issuerUrl && a.issuer !== undefined && a.issuer !== a.issuerUrl)
          ctx.addIssue({
            code: 'custom',
            path: ['issuer'],
            message: `must be auth.issuerUrl (${a.issuerUrl}) or unset: the discovered issuer is the tokens' iss`,
          });
        // The local issuer's name would make every token of an outside identity provider fail.
        if ((a.jwksFile || a.jwksUrl) && a.issuer === undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['issuer'],
            message: "missing: with auth.jwksFile or auth.jwksUrl, give the identity provider's issuer (the tokens' iss)",
          });
        }
      })
      .transform((a) => ({ ...a, issuer: a.issuer ?? a.issuerUrl ?? LOCAL_ISSUER }))
      .prefault({}),
    policy: z
      .number()
      .int('must be 1, 2 or 3')
      .min(1, 'must be 1, 2 or 3 (the retrieval policies of PCG-01)')
      .max(3, 'must be 1, 2 or 3 (the retrieval policies of PCG-01)')
      .default(1)
      .transform((p) => p as 1 | 2 | 3)
      .describe("group key retrieval policy: 1 a member at the key's block (PCG-01), 2 a member at the chain's last block, 3 both"),
    chainReadPolicy: z
      .enum(['ever', 'current'])
      .default('ever')
      .describe('who may read a chain: anyone who has ever been a member, or its current members only'),
    ephemeralLifetimeSec: positiveInt.default(3600).describe("lifetime of a client's ephemeral key (secure channel), in seconds"),
    admin: z
      .object({
        listen: z
          .string()
          .superRefine(checkListen)
          .optional()
          .describe(
            'address of the admin HTTP listener (GET /metrics in Prometheus text, /healthz, /readyz): a port alone (on 127.0.0.1), host:port or [IPv6]:port; no authentication, so keep it on loopback or a private network; off when unset',
          ),
        stallExitSec: z
          .number()
          .int()
          .min(0)
          .default(10)
          .describe(
            'seconds the event loop may stall before `kms run` logs it (fatal, event-loop-stalled) and exits (SIGKILL) for its supervisor to restart it, and before /healthz fails; 0 turns the exit off',
          ),
      })
      .strict()
      .prefault({}),
    federation: z
      .object({
        peers: z
          .array(
            z
              .object({
                kms: hostname.describe("the peer KMS's component domain (its identity is kms://<kms>; its certificate must name it)"),
                domains: z.array(hostname).min(1).describe('the user domains the peer speaks for'),
                anchorsFile: path.describe("PEM file of the trust anchors the peer's certificate chain must lead to"),
              })
              .strict(),
          )
          .default([])
          .describe(
            'KMSes this one federates with (XEP "Federation"): its users get their group keys and chains through it, and it answers for the users of their domains; JSON in KMS_FEDERATION_PEERS, e.g. [{"kms":"kms.b.example","domains":["b.example"],"anchorsFile":"/etc/kms/b-ca.pem"}]',
          ),
      })
      .strict()
      .superRefine((f, ctx) => {
        const seen = new Map<string, string>();
        for (const [i, p] of f.peers.entries()) {
          for (const d of p.domains) {
            const other = seen.get(d);
            if (other && other !== p.kms)
              ctx.addIssue({ code: 'custom', path: ['peers', i, 'domains'], message: `${d} is spoken for by ${other} already: one peer per domain` });
            seen.set(d, p.kms);
          }
          if (f.peers.findIndex((q) => q.kms === p.kms) !== i) ctx.addIssue({ code: 'custom', path: ['peers', i, 'kms'], message: `${p.kms} is listed twice` });
        }
      })
      .prefault({}),
    audit: z
      .object({
        enabled: z
          .boolean()
          .default(true)
          .describe(
            'keep the audit log: every key release, refusal, chain and entity-key change and channel, hash-chained, in JSON lines; a key is released only once its record is on disk (README "Audit log")',
          ),
        dir: path.optional().describe('folder of the audit log (audit.jsonl; made 0700, the file 0600); <dataDir>/audit when unset'),
        checkpointEvery: positiveInt.default(1000).describe('records between two checkpoints signed with the static key (also written at stop)'),
        checkpointSec: z
          .number()
          .int()
          .min(0)
          .default(300)
          .describe('at most this many seconds between a record and the next signed checkpoint; 0: by count and at stop only'),
      })
      .strict()
      .prefault({}),
    logLevel: z
      .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
      .default('info')
      .describe('the least level of the JSON log lines written to stderr'),
  })
  .strict()
  .superRefine((c, ctx) => {
    // A standby with its own LevelDB would take over serving other data than the active instance's.
    if (c.xmpp.standby && c.store.url === undefined)
      ctx.addIssue({
        code: 'custom',
        path: ['xmpp', 'standby'],
        message:
          'needs store.url (--store, KMS_STORE): instances that take over from one another must share one store (etcd), or the standby would serve other data than the active instance',
      });
  });

export type KmsConfig = z.infer<typeof configSchema>;

/** Environment variables and the setting each one sets. */
export const ENV_SETTINGS: Record<string, { path: string[]; type: 'string' | 'int' | 'list' | 'json' }> = {
  KMS_DOMAIN: { path: ['domain'], type: 'string' },
  KMS_XMPP_SERVICE: { path: ['xmpp', 'service'], type: 'string' },
  KMS_XMPP_SECRET: { path: ['xmpp', 'secret'], type: 'string' },
  KMS_KEEPALIVE_SEC: { path: ['xmpp', 'keepaliveSec'], type: 'int' },
  KMS_XMPP_STANDBY: { path: ['xmpp', 'standby'], type: 'json' },
  KMS_RATE_PER_SEC: { path: ['xmpp', 'ratePerSec'], type: 'int' },
  KMS_MAX_REPLY_BYTES: { path: ['xmpp', 'maxReplyBytes'], type: 'int' },
  KMS_DATA_DIR: { path: ['dataDir'], type: 'string' },
  KMS_MASTER_KEY_FILE: { path: ['masterKeyFile'], type: 'string' },
  KMS_STORE: { path: ['store', 'url'], type: 'string' },
  KMS_STORE_TLS_CA_FILE: { path: ['store', 'tls', 'caFile'], type: 'string' },
  KMS_STORE_TLS_CERT_FILE: { path: ['store', 'tls', 'certFile'], type: 'string' },
  KMS_STORE_TLS_KEY_FILE: { path: ['store', 'tls', 'keyFile'], type: 'string' },
  KMS_STORE_USERNAME: { path: ['store', 'username'], type: 'string' },
  KMS_STORE_PASSWORD: { path: ['store', 'password'], type: 'string' },
  KMS_IDENTITY_KEY_TYPE: { path: ['identity', 'keyType'], type: 'string' },
  KMS_IDENTITY_KEY_FILE: { path: ['identity', 'keyFile'], type: 'string' },
  KMS_IDENTITY_CERT_FILE: { path: ['identity', 'certFile'], type: 'string' },
  KMS_AUTH_ISSUER: { path: ['auth', 'issuer'], type: 'string' },
  KMS_AUTH_AUDIENCE: { path: ['auth', 'audience'], type: 'string' },
  KMS_AUTH_JWKS_FILE: { path: ['auth', 'jwksFile'], type: 'string' },
  KMS_AUTH_JWKS_URL: { path: ['auth', 'jwksUrl'], type: 'string' },
  KMS_AUTH_ISSUER_URL: { path: ['auth', 'issuerUrl'], type: 'string' },
  KMS_AUTH_USER_CLAIM: { path: ['auth', 'userClaim'], type: 'string' },
  KMS_AUTH_ALLOWED_DOMAINS: { path: ['auth', 'allowedDomains'], type: 'list' },
  KMS_POLICY: { path: ['policy'], type: 'int' },
  KMS_EPHEMERAL_LIFETIME_SEC: { path: ['ephemeralLifetimeSec'], type: 'int' },
  KMS_LOG_LEVEL: { path: ['logLevel'], type: 'string' },
  KMS_ADMIN_LISTEN: { path: ['admin', 'listen'], type: 'string' },
  KMS_FEDERATION_PEERS: { path: ['federation', 'peers'], type: 'json' },
  KMS_STALL_EXIT_SEC: { path: ['admin', 'stallExitSec'], type: 'int' },
  KMS_AUDIT_ENABLED: { path: ['audit', 'enabled'], type: 'json' },
  KMS_AUDIT_DIR: { path: ['audit', 'dir'], type: 'string' },
  KMS_AUDIT_CHECKPOINT_EVERY: { path: ['audit', 'checkpointEvery'], type: 'int' },
  KMS_AUDIT_CHECKPOINT_SEC: { path: ['audit', 'checkpointSec'], type: 'int' },
};

/** Other KMS_* variables the KMS reads (not settings of the file). Any other KMS_* name is refused as a likely typo. */
export const OTHER_ENV_VARS: Record<string, string> = {
  KMS_CONFIG: 'the config file',
  KMS_MASTER_KEY: 'the master key itself (base64url, 32 bytes)',
  KMS_IDENTITY_KEY_PASSPHRASE: 'passphrase of an encrypted identity.keyFile',
  // A master key file wrapped by an HSM key (src/crypto/pkcs11.ts).
  ...PKCS11_ENV,
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
    } else if (s.type === 'json') {
      try {
        value = JSON.parse(v);
      } catch (e) {
        problems.push(`${name} (setting ${s.path.join('.')}): not JSON (${(e as Error).message})`);
        continue;
      }
    } else if (s.type === 'list')
      value = v
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean);
    let node = raw;
    for (const k of s.path.slice(0, -1)) {
      let child = node[k];
      if (!child || typeof child !== 'object' || Array.isArray(child)) {
        child = {};
        node[k] = child;
      }
      node = child as Record<string, unknown>;
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
  const masterKey = env.KMS_MASTER_KEY
    ? 'from KMS_MASTER_KEY (hidden)'
    : `in ${config.masterKeyFile ?? `${config.dataDir}/master.key`} (made on first start in a new data folder)`;
  const store = config.store.password === undefined ? config.store : { ...config.store, password: '[hidden]' };
  return JSON.stringify({ ...config, xmpp: { ...config.xmpp, secret: '[hidden]' }, store, masterKey }, null, 2);
}

/** One setting of the configuration file, as `kms run --help` shows it. */
interface SettingHelp {
  /** Dotted path in the file, e.g. xmpp.maxReplyBytes. */
  path: string;
  /** The kind of value, e.g. `integer >= 1`, `EC | RSA`, `list of strings`. */
  type: string;
  /** `default <JSON>`, or `unset by default`. */
  default: string;
  /** The setting's `.describe()` text in configSchema. */
  description: string | undefined;
  /** The KMS_* variable that overrides it, if any. */
  env: string | undefined;
}

/** The part of a JSON Schema (z.toJSONSchema's output) the help reads. */
interface JsonSchemaNode {
  type?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  items?: JsonSchemaNode;
  properties?: Record<string, JsonSchemaNode>;
  minimum?: number;
  exclusiveMinimum?: number;
  maximum?: number;
}

function typeOf(node: JsonSchemaNode): string {
  if (node.enum) return node.enum.map(String).join(' | ');
  if (node.type === 'array') {
    const items = node.items;
    return items?.enum ? `list of ${typeOf(items)}` : `list of ${items?.type ?? 'value'}s`;
  }
  if (node.type === 'integer' || node.type === 'number') {
    const min = node.minimum ?? (node.exclusiveMinimum === undefined ? undefined : node.type === 'integer' ? node.exclusiveMinimum + 1 : undefined);
    const max = node.maximum !== undefined && node.maximum < Number.MAX_SAFE_INTEGER ? node.maximum : undefined;
    if (min !== undefined && max !== undefined) return `${node.type} ${min}-${max}`;
    if (min !== undefined) return `${node.type} >= ${min}`;
    if (max !== undefined) return `${node.type} <= ${max}`;
  }
  return node.type ?? 'value';
}

/**
 * Every setting of the configuration file, from configSchema itself (its JSON Schema, as the file
 * is written: before defaults and transforms): type, default, `.describe()` text and variable.
 */
function settingsReference(): SettingHelp[] {
  const byPath = new Map(Object.entries(ENV_SETTINGS).map(([name, s]) => [s.path.join('.'), name]));
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchemaNode;
  const out: SettingHelp[] = [];
  const walk = (node: JsonSchemaNode, prefix: string) => {
    for (const [key, child] of Object.entries(node.properties ?? {})) {
      const path = prefix + key;
      if (child.type === 'object' && child.properties) {
        walk(child, `${path}.`);
        continue;
      }
      out.push({
        path,
        type: typeOf(child),
        default: 'default' in child ? `default ${JSON.stringify(child.default)}` : 'unset by default',
        description: child.description,
        env: byPath.get(path),
      });
    }
  };
  walk(schema, '');
  return out;
}

/** The help text of `kms run`: every setting of the file with its type, default, description and the variable that overrides it. */
export function settingsHelp(): string {
  const lines = settingsReference().map(
    (s) => `  ${s.path}  ${s.type}, ${s.default}${s.env ? `, env ${s.env}` : ''}\n      ${s.description ?? '(no description)'}`,
  );
  const other = Object.entries(OTHER_ENV_VARS).map(([name, what]) => `  ${name.padEnd(28)} ${what}`);
  return `\nSettings of the JSON config file: type, default, the KMS_* variable that overrides it (a list variable is comma-separated):\n${lines.join('\n')}\nOther environment variables:\n${other.join('\n')}\n`;
}
