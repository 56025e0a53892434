/**
 * Opens the store a configuration names: LevelDB in <dataDir>/db (one process), or the etcd
 * cluster of `store.url` that several KMS instances of one domain share, under kms/<domain>/.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { KmsConfig } from '../config.js';
import { openEtcdStore } from './etcd.js';
import { type KvStore, openLevelStore } from './kv.js';
import { parseStoreUrl } from './store-url.js';

/** The opened store, and whether other instances may write to it too. */
export interface OpenedStore {
  kv: KvStore;
  /** True on etcd: caches must not be trusted for what others may change (src/store/kms-state.ts). */
  shared: boolean;
  /** Where it is, for logs: a folder or the etcd endpoints (never a password). */
  where: string;
}

async function pem(file: string | undefined, setting: string): Promise<Buffer | undefined> {
  if (file === undefined) return undefined;
  try {
    return await readFile(file);
  } catch (e) {
    throw new Error(`${setting} ${file}: cannot read it (${(e as Error).message})`, { cause: e });
  }
}

/** The etcd key prefix of a KMS domain. */
const storePrefix = (domain: string) => `kms/${domain}/`;

export async function openConfiguredStore(config: KmsConfig, dataDir: string): Promise<OpenedStore> {
  const s = config.store;
  if (s.url === undefined) {
    const dir = join(dataDir, 'db');
    return { kv: await openLevelStore(dir), shared: false, where: dir };
  }
  const parsed = parseStoreUrl(s.url, s.tls.caFile !== undefined);
  if ('error' in parsed) throw new Error(`store.url: ${parsed.error}`);
  const ca = await pem(s.tls.caFile, 'store.tls.caFile');
  const cert = await pem(s.tls.certFile, 'store.tls.certFile');
  const key = await pem(s.tls.keyFile, 'store.tls.keyFile');
  const kv = openEtcdStore({
    endpoints: parsed.endpoints,
    prefix: storePrefix(config.domain),
    timeoutMs: s.timeoutMs,
    ...(ca ? { tls: { ca, ...(cert ? { cert } : {}), ...(key ? { key } : {}) } } : {}),
    ...(s.username !== undefined && s.password !== undefined ? { auth: { username: s.username, password: s.password } } : {}),
  });
  // The client connects lazily: an unreachable cluster or refused credentials stop the start here.
  try {
    await kv.get('c!');
  } catch (e) {
    await kv.close().catch(() => undefined);
    throw new Error(`cannot reach the store at ${parsed.endpoints.join(', ')}: ${(e as Error).message}`, { cause: e });
  }
  return { kv, shared: true, where: parsed.endpoints.join(',') };
}
