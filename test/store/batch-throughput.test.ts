/**
 * A measurement, not a test: durable batch writes per second, one at a time against 20
 * concurrent writers, on LevelDB and on etcd (a real 3-node cluster on loopback). Prints a table;
 * runs only with KMS_STORE_BENCH=1 (e.g. `KMS_STORE_BENCH=1 npx mocha test/store/batch-throughput.test.ts`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openEtcdStore } from '../../src/store/etcd.js';
import { type KvStore, openLevelStore } from '../../src/store/kv.js';
import { EtcdCluster } from './harness/etcd-cluster.js';

const BATCHES = Number(process.env.KMS_STORE_BENCH_BATCHES ?? 400);

/** Batches per second for `total` durable batches of two puts, `concurrency` writers at a time. */
async function rate(kv: KvStore, total: number, concurrency: number, tag: string): Promise<number> {
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        await kv.batch(
          [
            { type: 'put', key: `${tag}!${i}`, value: 'x'.repeat(200) },
            { type: 'put', key: `${tag}!index!${i}`, value: String(i) },
          ],
          { durable: true },
        );
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return total / seconds;
}

(process.env.KMS_STORE_BENCH === '1' ? describe : describe.skip)('store: durable batch throughput (measurement)', function () {
  this.timeout(300_000);

  it('prints batches/s one at a time and with 20 concurrent writers, on LevelDB and etcd', async () => {
    const rows: string[] = [];
    const dir = await mkdtemp(join(tmpdir(), 'kv-bench-'));
    const cluster = await EtcdCluster.start(3);
    try {
      const stores: [string, KvStore][] = [
        ['LevelDB (fsync)', await openLevelStore(join(dir, 'db'))],
        ['etcd 3 nodes', openEtcdStore({ endpoints: cluster.endpoints, prefix: 'bench/' })],
      ];
      for (const [name, kv] of stores) {
        await rate(kv, 50, 1, 'warm');
        const one = await rate(kv, BATCHES, 1, 'one');
        const twenty = await rate(kv, BATCHES, 20, 'twenty');
        rows.push(`${name.padEnd(16)} ${one.toFixed(0).padStart(9)} ${twenty.toFixed(0).padStart(9)} ${(twenty / one).toFixed(1).padStart(7)}x`);
        await kv.close();
      }
    } finally {
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    }
    console.log(
      `\n      durable batches/s (${BATCHES} each)\n      store              1 at a time  20 at once   ratio\n${rows.map((r) => `      ${r}`).join('\n')}\n`,
    );
  });
});
