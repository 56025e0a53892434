/**
 * The stores the contract tests run on: memory-level, LevelDB on disk, and etcd (a real 3-node
 * cluster on loopback, started by `setup` and stopped by `cleanup`; every store a fresh key prefix).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openEtcdStore } from '../../../src/store/etcd.js';
import { type KvStore, openLevelStore, type RangeOptions } from '../../../src/store/kv.js';
import { openMemoryStore } from '../../support/memory-store.js';
import { EtcdCluster } from './etcd-cluster.js';

export interface Factory {
  name: string;
  /** Starts what the stores need (once per suite). */
  setup?(): Promise<void>;
  /** A fresh, empty store. */
  open(): Promise<KvStore>;
  /** Another store on the same data as `store`, open at the same time (a second instance), if the kind allows it. */
  twin?(store: KvStore): Promise<KvStore>;
  /** Closes `store` and opens the same data again (persistent stores only). */
  reopen?(store: KvStore): Promise<KvStore>;
  cleanup(): Promise<void>;
}

export function memoryFactory(): Factory {
  return { name: 'memory (memory-level)', open: () => openMemoryStore(), cleanup: async () => {} };
}

export function levelFactory(): Factory {
  const dirs: string[] = [];
  const dirOf = new Map<KvStore, string>();
  return {
    name: 'disk (LevelDB)',
    async open() {
      const dir = await mkdtemp(join(tmpdir(), 'kv-test-'));
      dirs.push(dir);
      const kv = await openLevelStore(join(dir, 'db'));
      dirOf.set(kv, dir);
      return kv;
    },
    async reopen(store) {
      const dir = dirOf.get(store)!;
      await store.close();
      const kv = await openLevelStore(join(dir, 'db'));
      dirOf.set(kv, dir);
      return kv;
    },
    async cleanup() {
      for (const d of dirs) await rm(d, { recursive: true, force: true });
    },
  };
}

let prefixes = 0;

export function etcdFactory(): Factory {
  let cluster: EtcdCluster | undefined;
  const prefixOf = new Map<KvStore, string>();
  const open = (prefix: string) => {
    if (cluster === undefined) throw new Error('etcd cluster not started: call setup() first');
    const kv = openEtcdStore({ endpoints: cluster.endpoints, prefix });
    prefixOf.set(kv, prefix);
    return kv;
  };
  return {
    name: 'etcd (3 nodes)',
    async setup() {
      cluster ??= await EtcdCluster.start(3);
    },
    async open() {
      return open(`test${process.pid}-${++prefixes}/`);
    },
    async twin(store) {
      return open(prefixOf.get(store)!);
    },
    async reopen(store) {
      await store.close();
      return open(prefixOf.get(store)!);
    },
    async cleanup() {
      await cluster?.stop();
      cluster = undefined;
    },
  };
}

export async function all(kv: KvStore, range: RangeOptions = {}): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for await (const e of kv.entries(range)) out.push(e);
  return out;
}
