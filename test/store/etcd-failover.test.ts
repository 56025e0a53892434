/**
 * The etcd store through the loss of a node: a kill -9 of a follower (2 of 3 are still a quorum)
 * and then of the leader (found through the members' status). A writer commits one durable batch
 * after another throughout; the test measures the longest gap between two acknowledged batches,
 * and checks that every acknowledged batch is there afterwards, also on the restarted node.
 */
import { expect } from 'chai';
import { openEtcdStore } from '../../src/store/etcd.js';
import type { KvStore } from '../../src/store/kv.js';
import { EtcdCluster } from './harness/etcd-cluster.js';
import { all } from './harness/factories.js';

/** Longest tolerated gap: etcd elects a new leader within a few election timeouts (500 ms here). */
const MAX_GAP_MS = 10_000;

interface Writer {
  /** Batches acknowledged so far. */
  acked: () => number;
  /** Resolves once `n` more batches than now are acknowledged. */
  progress: (n: number) => Promise<void>;
  /** Stops; resolves with the longest gap between two acknowledgements (ms) and the failures seen. */
  stop: () => Promise<{ maxGapMs: number; failures: number }>;
}

/** Writes batch w!<n> (and a counter) one after another; a failed batch is retried until acknowledged. */
function startWriter(kv: KvStore, from: number): Writer {
  let n = from;
  let stopped = false;
  let failures = 0;
  let last = Date.now();
  let maxGapMs = 0;
  const waiters: { at: number; resolve: () => void }[] = [];
  const loop = (async () => {
    while (!stopped) {
      try {
        await kv.batch(
          [
            { type: 'put', key: `w!${String(n).padStart(6, '0')}`, value: String(n) },
            { type: 'put', key: 'count', value: String(n + 1) },
          ],
          { durable: true },
        );
      } catch {
        failures++;
        if (Date.now() - last > MAX_GAP_MS * 2) throw new Error(`no batch acknowledged for ${Date.now() - last} ms`);
        continue;
      }
      const now = Date.now();
      maxGapMs = Math.max(maxGapMs, now - last);
      last = now;
      n++;
      for (const w of waiters.splice(0)) {
        if (n >= w.at) w.resolve();
        else waiters.push(w);
      }
    }
  })();
  return {
    acked: () => n,
    progress: (k) => new Promise((resolve) => waiters.push({ at: n + k, resolve })),
    stop: async () => {
      stopped = true;
      await loop;
      return { maxGapMs, failures };
    },
  };
}

describe('store: etcd through the kill -9 of a node, then of the leader', function () {
  this.timeout(120_000);
  let cluster: EtcdCluster;
  let kv: KvStore;
  before(async () => {
    cluster = await EtcdCluster.start(3);
    kv = openEtcdStore({ endpoints: cluster.endpoints, prefix: 'failover/', timeoutMs: 2_000 });
  });
  after(async () => {
    await kv?.close();
    await cluster?.stop();
  });

  async function survives(victim: number, from: number, what: string): Promise<number> {
    const writer = startWriter(kv, from);
    await writer.progress(20);
    await cluster.kill(victim);
    const killedAt = writer.acked();
    // Going on after the kill: 50 more batches acknowledged with one node gone.
    await Promise.race([
      writer.progress(50),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`no progress within ${MAX_GAP_MS} ms after the kill of ${what}`)), MAX_GAP_MS).unref()),
    ]);
    const { maxGapMs, failures } = await writer.stop();
    const end = writer.acked();
    console.log(
      `      kill -9 of ${what} (node ${victim}) after batch ${killedAt}: longest gap ${maxGapMs} ms, ${failures} failed attempts, ${end - from} batches`,
    );
    expect(maxGapMs).to.be.lessThan(MAX_GAP_MS);
    // Nothing acknowledged is lost.
    const written = await all(kv, { gte: 'w!', lt: 'w!~' });
    expect(written.map(([, v]) => Number(v))).to.deep.equal(Array.from({ length: end }, (_, i) => i));
    expect(await kv.get('count')).to.equal(String(end));
    return end;
  }

  it('goes on when a follower is killed, and the restarted follower has every batch', async () => {
    const leader = await cluster.leader();
    const follower = (leader + 1) % cluster.size;
    const end = await survives(follower, 0, 'a follower');
    await cluster.restart(follower);
    // Read through the restarted node alone (a linearizable read: it has caught up with the leader).
    const alone = openEtcdStore({ endpoints: [cluster.endpoints[follower]!], prefix: 'failover/' });
    try {
      expect(await alone.get('count')).to.equal(String(end));
      expect(await all(alone, { gte: 'w!', lt: 'w!~' })).to.have.length(end);
    } finally {
      await alone.close();
    }
  });

  it('goes on when the leader is killed, after a new leader is elected', async () => {
    const from = Number(await kv.get('count'));
    expect(from).to.be.greaterThan(0);
    const leader = await cluster.leader();
    await survives(leader, from, 'the leader');
    const newLeader = await cluster.leader();
    expect(newLeader).to.not.equal(leader);
    await cluster.restart(leader);
  });
});
