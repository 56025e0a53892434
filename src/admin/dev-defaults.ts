/**
 * Start-up warnings for development defaults left in a setting that is not on loopback (the XMPP
 * server or the admin listener reached over a network): one warn line each, with its event name.
 *   dev-component-secret     xmpp.secret is the default 'kms-dev-secret'
 *   master-key-in-data-dir   the master key file is inside the data folder (a copy of the folder is a copy of the key)
 *   dev-token-issuer         tokens come from the local issuer or a development identity provider on loopback
 */
import { relative, resolve, isAbsolute, join } from 'node:path';
import type { KmsConfig } from '../config.js';
import type { Logger } from '../util/logger.js';

const DEV_SECRET = 'kms-dev-secret';

/** Whether `host` is a loopback name or address. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h.endsWith('.localhost') || /^127\./.test(h) || h === '::1' || /^::ffff:127\./.test(h);
}

function hostOf(url: string): string | undefined {
  try {
    return new URL(url).hostname;
  } catch {
    return undefined;
  }
}

/** The development defaults in `config` worth a warning, as [event, message] pairs (none on loopback). */
export function devDefaults(config: KmsConfig, env: NodeJS.ProcessEnv = process.env): [event: string, message: string][] {
  const xmppHost = hostOf(config.xmpp.service);
  const adminHost =
    config.admin.listen === undefined ? undefined : /^\d+$/.test(config.admin.listen.trim()) ? '127.0.0.1' : config.admin.listen.replace(/:\d+$/, '');
  const exposed = [xmppHost, adminHost].filter((h): h is string => h !== undefined && !isLoopbackHost(h));
  if (exposed.length === 0) return [];
  const where = `(not on loopback: ${exposed.join(', ')})`;
  const out: [string, string][] = [];
  if (config.xmpp.secret === DEV_SECRET)
    out.push([
      'dev-component-secret',
      `the component secret is the development default ${where}: set xmpp.secret / KMS_XMPP_SECRET to your own, as the XMPP server has it`,
    ]);
  if (!env.KMS_MASTER_KEY) {
    const dataDir = resolve(config.dataDir);
    const keyFile = resolve(config.masterKeyFile ?? join(dataDir, 'master.key'));
    const rel = relative(dataDir, keyFile);
    if (!rel.startsWith('..') && !isAbsolute(rel))
      out.push([
        'master-key-in-data-dir',
        `the master key file ${keyFile} is inside the data folder ${where}: a copy of the folder (a backup, a volume snapshot) is a copy of the key; keep it elsewhere (masterKeyFile, a systemd credential, KMS_MASTER_KEY)`,
      ]);
  }
  const a = config.auth;
  const issuerHost = a.issuerUrl ? hostOf(a.issuerUrl) : undefined;
  if (!a.jwksFile && !a.jwksUrl && !a.issuerUrl)
    out.push([
      'dev-token-issuer',
      `access tokens come from the local development issuer ${where}: configure your identity provider (auth.issuerUrl, auth.jwksUrl or auth.jwksFile)`,
    ]);
  else if (issuerHost !== undefined && isLoopbackHost(issuerHost) && a.issuerUrl?.startsWith('http:'))
    out.push([
      'dev-token-issuer',
      `access tokens come from ${a.issuerUrl}, a development identity provider on loopback over plain HTTP ${where}: configure your identity provider`,
    ]);
  return out;
}

/** Logs each development default at warn. */
export function warnDevDefaults(config: KmsConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env): void {
  for (const [event, message] of devDefaults(config, env)) logger.warn({ event }, message);
}
