// The admin HTTP listener (src/admin): off unless KMS_ADMIN_LISTEN is set; /metrics, /healthz and
// /readyz on a KMS started by startKms (no XMPP: test/e2e/admin-readyz.test.ts has the link), with
// real requests through its engine; the address's validation.
import { expect } from 'chai';
import { mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../../src/config.js';
import { startKms, tokenAudience, type RunningKms } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';
import { parseListen } from '../../src/admin/listen.js';
import { storeProbe } from '../../src/admin/server.js';
import { KmsSession } from '../../src/client/session.js';
import type { KvStore } from '../../src/store/kv.js';
import { generateEntityKey, jwkOf, registrationProof } from '../support/node-client.js';

/** The TCP ports this process listens on (Linux: its socket fds matched against /proc/net/tcp and tcp6 in state LISTEN). */
async function listeningPorts(): Promise<number[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir('/proc/self/fd')) {
    const link = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m) inodes.add(m[1]!);
  }
  const ports: number[] = [];
  for (const table of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    const rows = (await readFile(table, 'utf8').catch(() => '')).split('\n').slice(1);
    for (const row of rows) {
      const f = row.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9]!)) ports.push(Number.parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return ports.sort((a, b) => a - b);
}

/** Every sample line of a Prometheus text exposition: name, labels, value (throws on a line that is not one). */
function parseExposition(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  const typed = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        expect(meta[3]).to.be.oneOf(['counter', 'gauge', 'histogram', 'summary', 'untyped']);
        typed.add(meta[2]!);
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?(?:[0-9.]+(?:e[+-]?[0-9]+)?|[Nn]a[Nn]|\+Inf|-Inf))(?: -?[0-9]+)?$/.exec(line);
    expect(m, `not a Prometheus sample line: ${line}`).to.not.equal(null);
    const labels: Record<string, string> = {};
    const body = m![2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gy;
    let consumed = 0;
    for (const l of body.matchAll(re)) {
      labels[l[1]!] = l[2]!;
      consumed += l[0].length;
    }
    expect(consumed, `bad labels in: ${line}`).to.equal(body.length);
    const name = m![1]!;
    expect(typed.has(name) || typed.has(name.replace(/_(bucket|sum|count|total)$/, '')), `sample ${name} has no # TYPE`).to.equal(true);
    samples.push({ name, labels, value: Number(m![3]) });
  }
  return samples;
}

const sum = (samples: ReturnType<typeof parseExposition>, name: string, where: Record<string, string> = {}) =>
  samples.filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);

describe('admin listener (src/admin)', function () {
  this.timeout(30_000);
  const dirs: string[] = [];
  const running: RunningKms[] = [];

  async function start(env: Record<string, string> = {}): Promise<{ kms: RunningKms; dataDir: string }> {
    const dataDir = await mkdtemp(join(tmpdir(), 'kms-admin-'));
    dirs.push(dataDir);
    const config = loadConfig({ env: { KMS_DATA_DIR: dataDir, KMS_LOG_LEVEL: 'silent', ...env } });
    const kms = await startKms(config, silentLogger(), { xmpp: false });
    running.push(kms);
    return { kms, dataDir };
  }

  afterEach(async () => {
    for (const k of running.splice(0)) await k.stop();
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  describe('KMS_ADMIN_LISTEN (config)', () => {
    it('takes a port alone (on loopback), host:port and [IPv6]:port', () => {
      expect(parseListen('9464')).to.deep.equal({ host: '127.0.0.1', port: 9464 });
      expect(parseListen('0.0.0.0:9464')).to.deep.equal({ host: '0.0.0.0', port: 9464 });
      expect(parseListen('localhost:0')).to.deep.equal({ host: 'localhost', port: 0 });
      expect(parseListen('[::1]:9464')).to.deep.equal({ host: '::1', port: 9464 });
      expect(loadConfig({ env: { KMS_ADMIN_LISTEN: '9464' } }).admin).to.deep.equal({ listen: '9464', stallExitSec: 10 });
    });

    it('is unset by default: no admin listener', () => {
      expect(loadConfig({ env: {} }).admin.listen).to.equal(undefined);
    });

    for (const bad of ['http://127.0.0.1:9464', ':9464', '127.0.0.1', '127.0.0.1:65536', '127.0.0.1:port', '[nonsense]:9464', '::1:9464']) {
      it(`refuses KMS_ADMIN_LISTEN=${bad}, naming the setting and the variable`, () => {
        let err: unknown;
        try {
          loadConfig({ env: { KMS_ADMIN_LISTEN: bad } });
        } catch (e) {
          err = e;
        }
        expect(err).to.be.instanceOf(ConfigError);
        expect((err as Error).message).to.match(/^setting admin\.listen \(from KMS_ADMIN_LISTEN\): (must be a port|the port must be)/);
      });
    }

    it('refuses a negative KMS_STALL_EXIT_SEC', () => {
      expect(() => loadConfig({ env: { KMS_STALL_EXIT_SEC: '-1' } })).to.throw(ConfigError, /admin\.stallExitSec \(from KMS_STALL_EXIT_SEC\)/);
    });
  });

  it('is off by default: startKms opens no listening socket', async () => {
    const before = await listeningPorts();
    const { kms } = await start();
    expect(kms.admin).to.equal(undefined);
    expect(await listeningPorts()).to.deep.equal(before);
    // The check sees a listener when there is one.
    const on = await start({ KMS_ADMIN_LISTEN: '127.0.0.1:0' });
    expect(await listeningPorts()).to.deep.equal([...before, on.kms.admin!.port].sort((a, b) => a - b));
  });

  it('serves /metrics in Prometheus text: request counters by operation and status move with real requests, and name no user, token, id or key', async () => {
    const { kms, dataDir } = await start({ KMS_ADMIN_LISTEN: '127.0.0.1:0' });
    const url = kms.admin!.url;
    expect(url).to.match(/^http:\/\/127\.0\.0\.1:\d+$/);
    const first = await fetch(`${url}/metrics`);
    expect(first.status).to.equal(200);
    expect(first.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
    const before = parseExposition(await first.text());
    expect(sum(before, 'kms_requests_total')).to.equal(0);
    // prom-client's default process metrics.
    for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes'])
      expect(
        before.some((s) => s.name === name),
        name,
      ).to.equal(true);
    expect(sum(before, 'kms_xmpp_link_up')).to.equal(0);

    // A user through the real client session, the engine as its transport.
    const jid = 'alice@example.org';
    const token = await kms.issuer!.mint({ subject: jid, audience: tokenAudience(kms.config) });
    const session = new KmsSession({
      kmsKid: kms.identity.kid,
      kmsKey: jwkOf(kms.identity.publicKey),
      transport: (messages) => Promise.all(messages.map((m) => kms.engine.handle(m))),
      bearer: () => token,
    });
    const key = generateEntityKey({ type: 'EC' });
    const eph = await session.handshake();
    await session.request('post', '/entity-keys', { jwk: key.publicJwk, proof: registrationProof(key, jid, eph.uri) });
    const genesis = await session.request('post', `kms://${kms.config.domain}/blocks`, { blockPayload: { operations: [{ entity: jid, optype: 'add' }] } });
    const chainUri = JSON.parse(Buffer.from((genesis.block as string).split('.')[1]!, 'base64url').toString()).uri as string;
    const gk = (await session.request('post', `kms://${kms.config.domain}/gks`, {})).gk as string;
    const gkUri = JSON.parse(Buffer.from(gk.split('.')[1]!, 'base64url').toString()).uri as string;
    await session.request('get', chainUri, {});
    const missing = await session.request('get', `kms://${kms.config.domain}/gks/00000000-0000-4000-8000-000000000000`, { entity: jid }).catch((e: Error) => e);
    expect(missing).to.be.instanceOf(Error);
    // A message that is not JOSE at all.
    await kms.engine.handle('not a message');

    const text = await (await fetch(`${url}/metrics`)).text();
    const after = parseExposition(text);
    expect(sum(after, 'kms_requests_total', { operation: 'handshake', status: '201' })).to.equal(1);
    expect(sum(after, 'kms_requests_total', { operation: 'post entity-keys' })).to.equal(1);
    expect(sum(after, 'kms_requests_total', { operation: 'post blocks', status: '201' })).to.equal(1);
    expect(sum(after, 'kms_requests_total', { operation: 'post gks' })).to.equal(1);
    expect(sum(after, 'kms_requests_total', { operation: 'get blocks', status: '200' })).to.equal(1);
    expect(sum(after, 'kms_requests_total', { operation: 'get gks', status: '404' })).to.equal(1);
    expect(sum(after, 'kms_requests_total', { operation: 'unknown', status: '400' })).to.equal(1);
    expect(sum(after, 'kms_requests_total')).to.equal(7);
    expect(sum(after, 'kms_request_duration_seconds_count')).to.equal(7);
    expect(sum(after, 'kms_request_duration_seconds_count', { operation: 'handshake' })).to.equal(1);
    // Durable writes (entity key, genesis, GK) were timed; the channel is in the cache.
    expect(sum(after, 'kms_store_write_duration_seconds_count', { kind: 'durable' })).to.be.at.least(3);
    expect(sum(after, 'kms_ephemeral_keys_cached')).to.equal(1);
    expect(sum(after, 'kms_cache_entries', { cache: 'ephemeral' })).to.equal(1);
    expect(sum(after, 'kms_cache_entries', { cache: 'chains' })).to.equal(1);

    // Bounded labels only: operations are a method and a resource kind.
    const operations = new Set(after.filter((s) => s.labels.operation !== undefined).map((s) => s.labels.operation));
    for (const op of operations)
      expect(op).to.match(/^(handshake|unknown|(post|get|create|retrieve|update|delete) (blocks|gks|entity-keys|ping|ecdhe|unknown))$/);
    // Nothing of the user, the token, the keys or the ids.
    const masterKey = (await readFile(join(dataDir, 'master.key'), 'utf8')).trim();
    for (const secret of [jid, 'alice', token, token.split('.')[2]!, masterKey, eph.uri, chainUri, gkUri, chainUri.split('/').pop()!, gkUri.split('/').pop()!])
      expect(text, `metrics text holds ${secret.slice(0, 20)}`).to.not.include(secret);
    expect(text).to.not.match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/);
  });

  it('/healthz answers 200 while the event loop turns; /readyz 200 with a writable store (no XMPP link to check); other paths 404, other methods 405', async () => {
    const { kms } = await start({ KMS_ADMIN_LISTEN: '127.0.0.1:0' });
    const url = kms.admin!.url;
    const health = await fetch(`${url}/healthz`);
    expect(health.status).to.equal(200);
    const h = (await health.json()) as { status: string; eventLoopTickAgeMs: number };
    expect(h.status).to.equal('ok');
    expect(h.eventLoopTickAgeMs).to.be.below(10_000);
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).to.equal(200);
    expect(await ready.json()).to.deep.equal({ status: 'ready', failed: [], checks: { store: { ok: true } } });
    expect((await fetch(`${url}/`)).status).to.equal(404);
    expect((await fetch(`${url}/metrics`, { method: 'POST' })).status).to.equal(405);
  });

  it("the store check fails with the store's reason when a write is refused", async () => {
    const failing = {
      batch: () => Promise.reject(new Error('IO error: No space left on device')),
    } as unknown as KvStore;
    expect(await storeProbe(failing)()).to.deep.equal({ ok: false, reason: 'the store refused a write: IO error: No space left on device' });
    let writes = 0;
    const ok = { batch: async () => void writes++ } as unknown as KvStore;
    const probe = storeProbe(ok, 60_000);
    expect(await probe()).to.deep.equal({ ok: true });
    expect(await probe()).to.deep.equal({ ok: true });
    expect(writes, 'a probe within cacheMs reuses the last answer').to.equal(1);
  });

  it('a taken admin address stops the start with a clear error, and leaves the store closed', async () => {
    const { kms } = await start({ KMS_ADMIN_LISTEN: '127.0.0.1:0' });
    const port = kms.admin!.port;
    const dataDir = await mkdtemp(join(tmpdir(), 'kms-admin-'));
    dirs.push(dataDir);
    const config = loadConfig({ env: { KMS_DATA_DIR: dataDir, KMS_LOG_LEVEL: 'silent', KMS_ADMIN_LISTEN: `127.0.0.1:${port}` } });
    let err: unknown;
    try {
      running.push(await startKms(config, silentLogger(), { xmpp: false }));
    } catch (e) {
      err = e;
    }
    expect((err as Error)?.message).to.equal(`admin.listen: cannot listen on 127.0.0.1:${port} (the address is in use)`);
    // The store was closed: the same data folder opens again.
    const again = loadConfig({ env: { KMS_DATA_DIR: dataDir, KMS_LOG_LEVEL: 'silent' } });
    running.push(await startKms(again, silentLogger(), { xmpp: false }));
  });
});
