/**
 * `kms audit`: verify, tail and search the audit log (src/audit/log.ts, README "Audit log").
 * Read-only: it works while the KMS runs, and needs neither the master key nor, for the file log,
 * the store; the log several instances share is read from their store (--store, store.url).
 */
import { Command } from 'commander';
import type { KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { configFrom, ConfigError, type KmsConfig } from '../config.js';
import { AUDIT_FILE, type AuditRecord } from '../audit/log.js';
import { type AuditLine, auditLines, matches, verifyAuditLog, type AuditQuery } from '../audit/read.js';
import { storeAuditLines } from '../audit/store-log.js';
import { openConfiguredStore } from '../store/open.js';
import { parseCertificate, pemCertificates } from '../crypto/x509.js';

interface Common {
  config?: string;
  dir?: string;
  store?: string;
}

/** Where the records are: a file, or the shared store (its lines, and a close). */
interface Source {
  name: string;
  lines: () => AsyncIterable<AuditLine>;
  close: () => Promise<void>;
}

/** The log the options name: the shared store with --store (or store.url, KMS_STORE) unless --dir is given, else the file. */
async function auditSource(opts: Common, config: KmsConfig): Promise<Source> {
  const url = opts.dir === undefined ? (opts.store ?? config.store.url) : undefined;
  if (url === undefined) {
    const file = auditFile(opts, config);
    return { name: file, lines: () => auditLines(file), close: async () => undefined };
  }
  const opened = await openConfiguredStore({ ...config, store: { ...config.store, url } }, resolve(config.dataDir));
  return { name: `the store ${opened.where}`, lines: () => storeAuditLines(opened.kv), close: () => opened.kv.close() };
}

/** The log file: --dir, else audit.dir, else <dataDir>/audit. */
function auditFile(opts: Common, config: KmsConfig): string {
  const dir = resolve(opts.dir ?? config.audit.dir ?? join(config.dataDir, 'audit'));
  const file = join(dir, AUDIT_FILE);
  if (!existsSync(file)) throw new ConfigError(`no audit log at ${file} (audit.dir, or --dir)`);
  return file;
}

/** The public keys checkpoints may be signed with: the KMS's certificate (identity.certFile, else the development identity in the data folder) and --cert files. */
async function staticKeys(config: KmsConfig, certs: string[]): Promise<KeyObject[]> {
  const pems: string[] = [];
  for (const f of certs) pems.push(...pemCertificates(await readFile(f, 'utf8')).slice(0, 1));
  if (config.identity.certFile) pems.push(...pemCertificates(await readFile(config.identity.certFile, 'utf8')).slice(0, 1));
  else {
    for (const type of ['ec', 'rsa']) {
      const f = join(resolve(config.dataDir), `identity-${type}.json`);
      if (existsSync(f)) {
        const chain = (JSON.parse(await readFile(f, 'utf8')) as { chain?: string[] }).chain;
        if (chain?.[0]) pems.push(chain[0]);
      }
    }
  }
  return pems.map((p) => parseCertificate(p).publicKey);
}

function date(name: string, v: string | undefined): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new ConfigError(`${name}: not a date and time (ISO 8601, e.g. 2026-11-25T16:00:00Z)`);
  return d;
}

const withCommon = (c: Command) =>
  c
    .option('-c, --config <file>', "the KMS's JSON configuration file (or KMS_CONFIG)")
    .option('--dir <dir>', 'the audit log folder (default: audit.dir, else <dataDir>/audit)')
    .option('--store <url>', 'read the log of several instances from their shared store, etcd://host1,host2,... (default: store.url, KMS_STORE)');

export function auditCommand(): Command {
  const audit = new Command('audit').description(
    'the audit log: key releases, refusals, chain and entity-key changes and channels (read-only; works while the KMS runs)',
  );

  withCommon(audit.command('verify'))
    .description("check the hash chain and every checkpoint's signature; exit 0 with a summary, or 1 naming the first broken record")
    .option('--cert <pem...>', "more certificates whose keys may have signed checkpoints (the KMS's earlier identities)")
    .action(async (opts: Common & { cert?: string[] }) => {
      const config = configFrom(opts);
      const keys = await staticKeys(config, opts.cert ?? []);
      if (keys.length === 0) throw new ConfigError('no KMS certificate to check checkpoints with: give identity.certFile in the configuration, or --cert');
      const src = await auditSource(opts, config);
      let r: Awaited<ReturnType<typeof verifyAuditLog>>;
      try {
        r = await verifyAuditLog(src.lines(), keys);
      } finally {
        await src.close();
      }
      if (!r.ok) {
        const b = r.broken!;
        console.log(
          `${src.name}: broken at ${opts.dir === undefined && (opts.store ?? config.store.url) !== undefined ? 'record' : 'line'} ${b.line}${b.seq !== undefined ? ` (seq ${b.seq})` : ''}: ${b.problem}`,
        );
        process.exitCode = 1;
        return;
      }
      const signed =
        r.lastCheckpoint === undefined ? 'no signed checkpoint yet' : `last signed checkpoint at seq ${r.lastCheckpoint}, ${r.unsigned} record(s) after it`;
      console.log(`${src.name}: intact: ${r.records} records (seq 1 to ${r.lastSeq ?? 0}), ${r.checkpoints} checkpoint(s); ${signed}`);
    });

  withCommon(audit.command('tail'))
    .description('print the last records (JSON lines)')
    .option('-n, --lines <n>', 'how many', '20')
    .option('-f, --follow', 'keep printing records as they are written')
    .action(async (opts: Common & { lines: string; follow?: boolean }) => {
      const n = Number(opts.lines);
      if (!Number.isInteger(n) || n < 0) throw new ConfigError('--lines: a whole number');
      const src = await auditSource(opts, configFrom(opts));
      try {
        let last: string[] = [];
        let count = 0;
        for await (const { text } of src.lines()) {
          count += 1;
          last.push(text);
          if (last.length > n) last.shift();
        }
        for (const t of last) console.log(t);
        if (!opts.follow) return;
        for (;;) {
          await new Promise((r) => setTimeout(r, 500));
          // Re-read from the start: records are only appended, so the new ones are those past `count`.
          last = [];
          let i = 0;
          for await (const { text } of src.lines()) if (++i > count) last.push(text);
          for (const t of last) console.log(t);
          count += last.length;
        }
      } finally {
        await src.close();
      }
    });

  withCommon(audit.command('search'))
    .description('print the records that match every criterion given (JSON lines)')
    .option('--user <jid>', 'the actor, or the user a federating KMS asked for')
    .option('--gk <uri>', 'a group key URI')
    .option('--chain <uri>', 'a chain URI (its creation, appends and refusals)')
    .option('--since <iso>', 'at or after this time')
    .option('--until <iso>', 'at or before this time')
    .action(async (opts: Common & { user?: string; gk?: string; chain?: string; since?: string; until?: string }) => {
      const src = await auditSource(opts, configFrom(opts));
      const since = date('--since', opts.since);
      const until = date('--until', opts.until);
      const q: AuditQuery = {
        ...(opts.user !== undefined ? { user: opts.user.toLowerCase() } : {}),
        ...(opts.gk !== undefined ? { gk: opts.gk } : {}),
        ...(opts.chain !== undefined ? { chain: opts.chain } : {}),
        ...(since ? { since } : {}),
        ...(until ? { until } : {}),
      };
      try {
        for await (const { text } of src.lines()) {
          let r: AuditRecord;
          try {
            r = JSON.parse(text) as AuditRecord;
          } catch {
            continue;
          }
          if (matches(r, q)) console.log(text);
        }
      } finally {
        await src.close();
      }
    });
  return audit;
}
