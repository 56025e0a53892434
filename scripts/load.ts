// Load test (issue 14, item 5): `npm run load [-- --clients 50 --requests 1000 --rounds 2 --settle-ms 10000]`.
// A real Prosody (started by the test harness) and the KMS as a `kms run` child process on a disk
// data folder; `clients` users, each on its own XMPP connection, each sending `requests` KMS
// requests one after another, a mix of: GK get of a shared key (30 %), GK creation bound to a
// shared chain (20 %), chain get (24 %), ping (24 %), an append to the client's own chain (2 %).
// Counts replies lost (no answer), duplicated (an IQ id answered twice) and misrouted (an answer
// to an id the client never sent); the KMS's RSS (/proc/<pid>/status VmRSS) before, at peak, and at
// the end of each round and after its settle period (`rounds` rounds of the same load: a leak grows
// from round to round, a heap V8 keeps for reuse does not); p50/p99 latency and throughput. Exits 1 when a reply was lost, duplicated
// or misrouted, or a request failed.
import { X509Certificate } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Client } from '@xmpp/client';
import { connectClient, disconnect } from '../test/e2e/harness/clients.js';
import { IqLedger } from '../test/e2e/harness/iq-ledger.js';
import { kmsRunSetup } from '../test/e2e/harness/kms-process.js';
import { freePorts } from '../test/e2e/harness/net.js';
import { startServer } from '../test/e2e/harness/servers.js';
import { until } from '../test/support/until.js';
import { loadConfig } from '../src/config.js';
import { localTokens } from '../src/server.js';
import { KmsClient } from '../src/client/kms-client.js';
import { blockHash, signBlock } from '../src/client/chain.js';

const KMS = 'kms.localhost';

const { values: args } = parseArgs({
  options: {
    clients: { type: 'string', default: '50' },
    requests: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '2' },
    'settle-ms': { type: 'string', default: '10000' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});
const CLIENTS = Number(args.clients);
const REQUESTS = Number(args.requests);
const ROUNDS = Number(args.rounds);
const SETTLE_MS = Number(args['settle-ms']);
const TIMEOUT_MS = Number(args['timeout-ms']);
for (const [name, v] of Object.entries({ CLIENTS, REQUESTS, ROUNDS, SETTLE_MS, TIMEOUT_MS }))
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name.toLowerCase()}: a positive whole number`);

async function mapLimit<T, R>(items: T[], limit: number, f: (x: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await f(items[i]!, i);
      }
    }),
  );
  return out;
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;

async function main(): Promise<number> {
  const t0 = Date.now();
  const server = await startServer('prosody');
  const dir = await mkdtemp(join(tmpdir(), 'kms-load-'));
  const [adminPort] = (await freePorts(1)) as [number];
  // A heap snapshot (SIGUSR2) runs a full garbage collection first: how the settled heap is measured.
  const diagDir = join(dir, 'diag');
  await mkdir(diagDir);
  const setup = await kmsRunSetup(server, dir, join(dir, 'data'), { adminPort, nodeOptions: `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${diagDir}` });
  /** The KMS's V8 heap in use (nodejs_heap_size_used_bytes on its admin listener), in KiB: what RSS holds that is live. */
  const heapKiB = async () => {
    const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const m = /^nodejs_heap_size_used_bytes (\d+(?:\.\d+)?)/m.exec(text);
    if (!m) throw new Error('no nodejs_heap_size_used_bytes in /metrics');
    return Number(m[1]) / 1024;
  };
  /** Full GC in the KMS (through a heap snapshot, then deleted); then its live heap. */
  const collected = async () => {
    kms.child.kill('SIGUSR2');
    const file = await until('the heap snapshot', () => readdirSync(diagDir).find((f) => f.endsWith('.heapsnapshot')), 60_000);
    // The snapshot is written on the KMS's main thread: /metrics answers once it is done.
    const heap = await heapKiB();
    await rm(join(diagDir, file));
    return heap;
  };
  const kms = setup.spawn();
  const xmpps: Client[] = [];
  try {
    const users = Array.from({ length: CLIENTS }, (_, i) => ({ username: `load${i}`, password: `load${i}-pw` }));
    await server.registerUsers(users);
    await kms.waitFor((r) => r.event === 'online', 60_000, 'the component online');
    const anchors = [new X509Certificate(await readFile(join(setup.dataDir, 'trust-anchor.pem')))];
    const mint = await localTokens(loadConfig({ file: setup.configFile, env: {} }));

    // Setup: every client logs in, registers a key, makes a chain of its own; client 0 makes the shared chain and key.
    const clients = await mapLimit(users, 8, async (u) => {
      const xmpp = await connectClient(server, u);
      xmpps.push(xmpp);
      const ledger = new IqLedger(xmpp, KMS);
      const client = await KmsClient.connect({
        xmpp,
        kms: KMS,
        anchors,
        bearer: () => mint(`${u.username}@localhost`),
        entityKeyType: { type: 'EC' },
        timeoutMs: TIMEOUT_MS,
        retries: 0,
      });
      const own = await client.createChain([]);
      return { client, ledger, own: own.uri, tail: own.tail };
    });
    const owner = clients[0]!.client;
    const shared = await owner.createChain(users.slice(1).map((u) => `${u.username}@localhost`));
    const sharedGk = await owner.createGk(shared.tail);
    const setupSeconds = (Date.now() - t0) / 1000;

    const rssBefore = kms.rssKiB();
    const heapBefore = await heapKiB();
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      if (kms.running) rssPeak = Math.max(rssPeak, kms.rssKiB());
    }, 100);
    const sentBefore = clients.reduce((s, c) => s + c.ledger.sent.size, 0);

    const latencies: number[] = [];
    const byKind = new Map<string, { ok: number; failed: number }>();
    const failures = new Map<string, number>();
    /** RSS at the end of each round's load, and after its settle period. */
    const rssRounds: { end: number; settled: number; heap: number }[] = [];
    let seconds = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const start = Date.now();
      await Promise.all(
        clients.map(async (c, i) => {
          const s = c.client.session;
          for (let n = 0; n < REQUESTS; n++) {
            const slot = (n * 7 + i) % 100;
            const kind = slot < 2 ? 'append' : slot < 32 ? 'gk get' : slot < 52 ? 'gk create' : slot < 76 ? 'chain get' : 'ping';
            const stat = byKind.get(kind) ?? { ok: 0, failed: 0 };
            byKind.set(kind, stat);
            const t = performance.now();
            try {
              if (kind === 'append') {
                // Only this client appends to its own chain: no conflict; it adds someone new each time.
                const block = await signBlock(c.client.entityKey, c.client.entity, c.tail, [{ entity: `x${i}-${round}-${n}@localhost`, optype: 'add' }]);
                await s.request('post', c.own, { blocks: [block] });
                c.tail = await blockHash(block);
              } else if (kind === 'gk get') {
                // Not KmsClient.gk: it would answer from its cache.
                await s.request('get', sharedGk.uri, { entity: c.client.entity, kid: c.client.entityKey.kid });
              } else if (kind === 'gk create') {
                await s.request('post', `${c.client.kmsId}/gks`, { block: shared.tail, kid: c.client.entityKey.kid });
              } else if (kind === 'chain get') {
                await s.request('get', shared.uri);
              } else {
                await s.request('update', '/ping');
              }
              latencies.push(performance.now() - t);
              stat.ok++;
            } catch (e) {
              stat.failed++;
              const err = e as { constructor?: { name: string }; code?: unknown };
              const key = `${err.constructor?.name}:${String(err.code)}`;
              failures.set(key, (failures.get(key) ?? 0) + 1);
            }
          }
        }),
      );
      seconds += (Date.now() - start) / 1000;
      const end = kms.rssKiB();
      // Settle: the clients idle; the KMS may collect and trim.
      await new Promise((r) => setTimeout(r, SETTLE_MS));
      rssRounds.push({ end, settled: kms.rssKiB(), heap: await heapKiB() });
    }
    clearInterval(sampler);

    const total = CLIENTS * REQUESTS * ROUNDS;
    const sent = clients.reduce((s, c) => s + c.ledger.sent.size, 0) - sentBefore;
    const lost = clients.reduce((s, c) => s + c.ledger.lost, 0);
    const duplicated = clients.reduce((s, c) => s + c.ledger.duplicated, 0);
    const misrouted = clients.reduce((s, c) => s + c.ledger.misrouted, 0);

    // Last: the live heap after a full GC (a heap snapshot makes the RSS jump, so no RSS is read after it).
    const live = await collected();
    for (const c of clients) await c.client.close();
    for (const x of xmpps.splice(0)) await disconnect(x);

    latencies.sort((a, b) => a - b);
    const failed = [...byKind.values()].reduce((s, k) => s + k.failed, 0);
    const rows: [string, string][] = [
      ['clients × requests × rounds', `${CLIENTS} × ${REQUESTS} × ${ROUNDS} = ${total}`],
      ...[...byKind.entries()].map(([k, v]): [string, string] => [`  ${k}`, `${v.ok} ok, ${v.failed} failed`]),
      ['IQs sent to the KMS', String(sent)],
      ['replies lost', String(lost)],
      ['replies duplicated', String(duplicated)],
      ['replies misrouted', String(misrouted)],
      ['failures by kind', failures.size === 0 ? 'none' : JSON.stringify(Object.fromEntries(failures))],
      ['wall time', `${seconds.toFixed(1)} s (setup ${setupSeconds.toFixed(1)} s)`],
      ['throughput', `${(total / seconds).toFixed(0)} req/s`],
      ['latency p50', `${percentile(latencies, 50).toFixed(1)} ms`],
      ['latency p99', `${percentile(latencies, 99).toFixed(1)} ms`],
      ['latency max', `${(latencies.at(-1) ?? Number.NaN).toFixed(1)} ms`],
      ['KMS RSS before (V8 heap used)', `${mib(rssBefore)} (${mib(heapBefore)})`],
      ['KMS RSS peak', mib(rssPeak)],
      ...rssRounds.flatMap((r, i): [string, string][] => [
        [`KMS RSS end of round ${i + 1}`, mib(r.end)],
        [
          `KMS RSS ${SETTLE_MS / 1000} s later (V8 heap used)`,
          `${mib(r.settled)} (${mib(r.heap)}); RSS ${(((r.settled - rssBefore) / rssBefore) * 100).toFixed(0)} % over before`,
        ],
      ]),
      ['KMS V8 heap live after a full GC', `${mib(live)} (${mib(heapBefore)} in use, uncollected, before the load)`],
    ];
    const width = Math.max(...rows.map(([k]) => k.length));
    console.log(`\nKMS load through Prosody (kms run, pid ${kms.child.pid})`);
    for (const [k, v] of rows) console.log(`${k.padEnd(width)}  ${v}`);
    return lost + duplicated + misrouted + failed === 0 ? 0 : 1;
  } finally {
    for (const x of xmpps) await disconnect(x);
    await kms.stop();
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
