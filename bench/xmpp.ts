/**
 * XMPP benchmark: `npm run bench:xmpp` (`--quick` for a smoke run; `--depth N` IQs in flight per
 * client, default 1; `--rounds N`; `--r20 N` / `--r1 N` requests per client in the 20-client and
 * 1-client phases; `--servers prosody,ejabberd`). BENCH_CPU_PROF_DIR=dir writes a CPU profile of
 * the component host (from its start to its exit) there.
 *
 * Through a real Prosody and a real ejabberd (test/e2e/harness/servers.ts), measures the KMS
 * component answering KMS ping and GK get (first fetches) with 1 and 20 clients, and a bare echo
 * component (bench/xmpp-echo.ts) through the same server, with the same clients, in the same run:
 * `<server>_<op>_echo_ratio` = KMS requests/s ÷ echo requests/s at 20 clients, where the echo
 * requests and replies have the sizes of that KMS operation's request and response. For
 * reference, with no targets: an echo that coalesces its writes as the KMS component does, and
 * the same echo computing each operation's crypto floor (bench/floor.ts) in place of the KMS
 * (`<server>_<op>_floor_echo_ratio` against the bare echo, `<server>_<op>_kms_floor_ratio` the KMS
 * against it).
 *
 * Processes: the server; one "component host" child process (this file with --component-host)
 * that holds the KMS engine (LevelDB in a temp dir, local issuer, log level info to a file) and
 * connects either the KMS component or the echo component on kms.localhost, never both; and this
 * process, the load generator (xmpp.js clients). CPU use of each is measured over every timed
 * phase and printed, so it shows where the time goes.
 *
 * Load generator: test/support/raw-channel.ts, not KmsSession. Every request is sealed under its
 * client's channel before the timed phase starts (as bench/engine.ts does), so in the timed phase
 * the load generator only wraps a ready string in an IQ, exactly as it does for the echo; the
 * replies are decrypted and checked (status 200, GK signatures and unwrapping on a sample) after
 * the phase. KmsSession would add a JSON + AES-GCM seal and open per request to the load
 * generator's share of the two cores.
 *
 * Set up untimed, per server: 20 load accounts and a curator; a channel (handshake) and two
 * registered entity keys (post /entity-keys with a proof) per client: the client library's
 * default, RSA-2048 (PCG-01's MTI), which the GK gets use, and a P-256 key, for the reference
 * phase gk_get_p256_20 (the same GK gets wrapped by ECDH-ES, with no target); a chain by the curator whose
 * genesis adds everyone; enough GKs bound to it that every timed GK get is that member's first
 * fetch of that GK. Phases alternate echo and KMS (the order flips each round). The ratio is the
 * median over rounds of KMS ÷ echo within the round: each pair ran back to back, so drift in the
 * machine's load cancels, where the best round of each side alone would compare the echo's
 * luckiest moment (the echo, faster, varies more) with the KMS's. The table shows the best round
 * of each phase (highest requests/s, with that run's latencies), and the JSON also has the ratio
 * of those best rounds. Same clients, in-flight depth, payload sizes and socket settings (TCP_NODELAY,
 * as the KMS component sets it) for echo and KMS. Prints a table, then one JSON line.
 *
 * The machine is shared and noisy: compare ratios from one run, not absolute numbers across runs.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { importPublicJwk } from '../src/crypto/keys.js';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { xml } from '@xmpp/client';
import type { Element } from '@xmpp/xml';

import { ECHO_NS, connectLoadClients, runIqLoadOn, startEchoComponent, type IqLoadResult, type LoadClient } from './xmpp-echo.js';
import { disconnect } from '../test/e2e/harness/clients.js';
import { serverKinds, startServer, type ServerKind, type XmppServer } from '../test/e2e/harness/servers.js';
import { openRawChannel, type RawChannel } from '../test/support/raw-channel.js';
import { createEntityKey, generateEntityKey, openGk, registrationProof, type EntityKey } from '../test/support/node-client.js';
import { blockHash } from '../test/support/node-client.js';
import { fetchKmsIdentity, xmppTransport, type KmsIdentityInfo } from '../src/client/xmpp.js';
import { NS } from '../src/protocol/namespace.js';

const DOMAIN = 'kms.localhost';
const AUDIENCE = `kms://${DOMAIN}`;
const TARGETS = { ping: 0.9, gk_get: 0.5 };

// ---------------------------------------------------------------------------------------------
// The component host (child process)
// ---------------------------------------------------------------------------------------------

/** What the component host connects: the KMS, the bare echo, or the echo with the KMS component's write coalescing. */
type Which = 'kms' | 'echo' | 'echo-coalescing';

interface HostInit {
  kind: ServerKind;
  componentPort: number;
  componentSecret: string;
  dataDir: string;
}

type HostCommand = { cmd: 'init'; init: HostInit } | { cmd: 'use'; which: Which } | { cmd: 'mint'; subjects: string[] } | { cmd: 'exit' };

async function componentHost(): Promise<void> {
  const { loadConfig } = await import('../src/config.js');
  const { startKms, componentSettings } = await import('../src/server.js');
  const { createLogger } = await import('../src/util/logger.js');
  const { KmsComponent } = await import('../src/xmpp/component.js');
  type Running = Awaited<ReturnType<typeof startKms>>;

  let init: HostInit | undefined;
  let kms: Running | undefined;
  let logger: ReturnType<typeof createLogger> | undefined;
  let current: { stop(): Promise<void> } | undefined;
  let profiler: import('node:inspector/promises').Session | undefined;

  const connectKms = async () => {
    const component = new KmsComponent({ handle: (m, o) => kms!.engine.handle(m, o), identity: kms!.identity }, componentSettings(kms!.config), logger!);
    await component.start();
    return component;
  };
  const connectEcho = async (coalesce: boolean) => {
    const echo = await startEchoComponent(
      { kind: init!.kind, componentPort: init!.componentPort, componentDomain: DOMAIN, componentSecret: init!.componentSecret },
      { coalesce },
    );
    return { stop: () => disconnect(echo) };
  };

  const handle = async (m: HostCommand): Promise<unknown> => {
    switch (m.cmd) {
      case 'init': {
        init = m.init;
        const config = loadConfig({
          env: {
            KMS_DOMAIN: DOMAIN,
            KMS_XMPP_SERVICE: `xmpp://127.0.0.1:${init.componentPort}`,
            KMS_XMPP_SECRET: init.componentSecret,
            KMS_DATA_DIR: init.dataDir,
            // The per-sender rate limit is a policy, not a cost: the limiter still runs on every IQ.
            KMS_RATE_PER_SEC: '1000000',
            KMS_LOG_LEVEL: 'info',
          },
        });
        config.xmpp.rateBurst = 1_000_000;
        config.xmpp.reconnectInitialMs = 100;
        config.xmpp.reconnectMaxMs = 1000;
        // As deployed: info level, JSON lines (to a file here rather than stderr).
        logger = createLogger({ level: config.logLevel, destination: createWriteStream(join(init.dataDir, 'kms.log')) });
        kms = await startKms(config, logger, { xmpp: false });
        if (process.env.BENCH_CPU_PROF_DIR) {
          // BENCH_CPU_PROF_DIR=dir: a CPU profile of the component host from here to its exit.
          const { Session } = await import('node:inspector/promises');
          profiler = new Session();
          profiler.connect();
          await profiler.post('Profiler.enable');
          await profiler.post('Profiler.start');
        }
        return { pid: process.pid };
      }
      case 'use': {
        if (current) await current.stop();
        current = undefined;
        // Prosody may still hold the previous session for a moment (stream error `conflict`).
        for (let attempt = 0; ; attempt++) {
          try {
            current = m.which === 'kms' ? await connectKms() : await connectEcho(m.which === 'echo-coalescing');
            return null;
          } catch (e) {
            if (attempt >= 40) throw e;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
      case 'mint':
        return Promise.all(m.subjects.map((subject) => kms!.issuer!.mint({ subject, audience: AUDIENCE, ttlSec: 6 * 3600 })));
      case 'exit':
        if (profiler) {
          const { profile } = await profiler.post('Profiler.stop');
          const file = join(process.env.BENCH_CPU_PROF_DIR!, `component-${init?.kind}-${process.pid}.cpuprofile`);
          await writeFile(file, JSON.stringify(profile));
          console.error(`component host profile: ${file}`);
        }
        if (current) await current.stop();
        current = undefined;
        await kms?.stop();
        return null;
    }
  };

  process.on('disconnect', () => process.exit(1)); // the parent died
  process.on('message', (raw) => {
    const { id, ...m } = raw as HostCommand & { id: number };
    handle(m as HostCommand).then(
      (result) =>
        process.send!({ id, ok: true, result }, () => {
          if (m.cmd === 'exit') process.exit(0);
        }),
      (e: Error) => process.send!({ id, ok: false, error: e?.stack ?? String(e) }),
    );
  });
  process.send!({ id: 0, ok: true, result: 'ready' });
}

/** The parent's handle on the component host. */
class ComponentHost {
  readonly child: ChildProcess;
  #next = 1;
  #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly ready: Promise<unknown>;

  constructor() {
    this.child = fork(fileURLToPath(import.meta.url), ['--component-host'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.ready = new Promise((resolve, reject) => {
      this.#pending.set(0, { resolve, reject });
    });
    this.child.on('message', (raw) => {
      const msg = raw as { id: number; ok: boolean; result?: unknown; error?: string };
      const p = this.#pending.get(msg.id);
      if (!p) return;
      this.#pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`component host: ${msg.error}`));
    });
    this.child.on('exit', (code, signal) => {
      for (const p of this.#pending.values()) p.reject(new Error(`component host exited (${code ?? signal})`));
      this.#pending.clear();
    });
  }

  call<T>(m: HostCommand): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ id, ...m });
    });
  }

  async exit(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((r) => this.child.once('exit', r));
    await Promise.race([this.call({ cmd: 'exit' }).catch(() => undefined), new Promise((r) => setTimeout(r, 15_000))]);
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await gone;
  }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc)
// ---------------------------------------------------------------------------------------------

const CLK_TCK = 100; // USER_HZ on Linux

async function ticksOf(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime + stime
  } catch {
    return 0;
  }
}

/** Pids whose command line mentions `dir` (the server's temp dir) or that run in it. */
async function pidsOfServer(dir: string): Promise<number[]> {
  const out: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    const cwd = await readlink(`/proc/${e}/cwd`).catch(() => '');
    if (cmd.includes(dir) || cwd === dir || cwd.startsWith(`${dir}/`)) out.push(Number(e));
  }
  return out;
}

interface CpuSample {
  t: number;
  server: number;
  host: number;
  load: number;
}

async function cpuSample(serverPids: number[], hostPid: number): Promise<CpuSample> {
  const server = (await Promise.all(serverPids.map(ticksOf))).reduce((a, b) => a + b, 0) / CLK_TCK;
  const host = (await ticksOf(hostPid)) / CLK_TCK;
  const u = process.cpuUsage();
  return { t: performance.now() / 1000, server, host, load: (u.user + u.system) / 1e6 };
}

/** Share of one core used by each process between two samples (1 = one full core). */
function cpuShare(a: CpuSample, b: CpuSample) {
  const dt = b.t - a.t;
  return { server: (b.server - a.server) / dt, component: (b.host - a.host) / dt, loadgen: (b.load - a.load) / dt };
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const quick = process.argv.includes('--quick');
const CLIENTS = 20;
const DEPTH = Number(arg('--depth') ?? 1);
const ROUNDS = Number(arg('--rounds') ?? (quick ? 1 : 5));
/** Requests per client in a 20-client phase, and in a 1-client phase. */
const R20 = Number(arg('--r20') ?? (quick ? 30 : 400));
const R1 = Number(arg('--r1') ?? (quick ? 100 : 500));
const WARMUP = quick ? 2 : 5;

interface Member {
  jid: string;
  client: LoadClient;
  ch: RawChannel;
  /** The client library's default entity key (RSA, PCG-01's MTI) and a P-256 one, both registered. */
  key: EntityKey;
  ecKey: EntityKey;
}

interface PhaseResult extends IqLoadResult {
  cpu: ReturnType<typeof cpuShare>;
}

interface Phase {
  name: string;
  component: Which;
  clients: number;
  requests: number;
  /** Untimed: builds the requests of one run (per client, per index). */
  prepare(): Element[][];
  /** Untimed: the warm-up requests, when not pings (KMS) or ping-sized echoes. */
  warm?(requests: number): Element[][];
  /** Untimed: checks the collected reply texts of one run. */
  check(replies: string[][]): void;
}

const payloadOf = (jws: string) => JSON.parse(Buffer.from(jws.split('.')[1]!, 'base64url').toString('utf8'));
const kmsIq = (message: string) => xml('kms', { xmlns: NS }, xml('message', {}, message));
const echoIq = (message: string, replyBytes: number) => xml('kms', { xmlns: ECHO_NS, 'reply-bytes': String(replyBytes) }, xml('message', {}, message));
const floorIq = (message: string, like: 'ping' | 'gk_get') => xml('kms', { xmlns: ECHO_NS, floor: like }, xml('message', {}, message));

function replyText(reply: Element): string {
  return reply.getChild('kms')?.getChild('message')?.getText() ?? '';
}

async function benchServer(kind: ServerKind) {
  const log = (s: string) => console.error(`[${kind}] ${s}`);
  const server: XmppServer = await startServer(kind);
  const dataDir = await mkdtemp(join(tmpdir(), `kms-bench-${kind}-`));
  const host = new ComponentHost();
  let load: LoadClient[] = [];
  try {
    await host.ready;
    await host.call({ cmd: 'init', init: { kind, componentPort: server.componentPort, componentSecret: server.componentSecret, dataDir } });
    const serverPids = await pidsOfServer(server.dir);
    if (serverPids.length === 0) throw new Error(`no ${kind} process found for ${server.dir}`);
    log(`server processes: ${serverPids.join(' ')}`);
    load = await connectLoadClients(server, CLIENTS + 1);
    const clients = load.slice(0, CLIENTS);
    const curatorClient = load[CLIENTS]!;

    // ---- untimed set-up through the KMS component ----
    await host.call({ cmd: 'use', which: 'kms' });
    const anchors = [new X509Certificate(await readFile(join(dataDir, 'trust-anchor.pem')))];
    const identity: KmsIdentityInfo = await fetchKmsIdentity(curatorClient.xmpp, DOMAIN, anchors);
    const tokens = await host.call<string[]>({ cmd: 'mint', subjects: load.map((c) => c.jid) });
    const members: Member[] = await Promise.all(
      load.map(async (client, i) => {
        const send = xmppTransport(client.xmpp, DOMAIN);
        const ch = await openRawChannel({ kid: identity.kid, publicKey: importPublicJwk(identity.key) }, async (m) => (await send([m]))[0]!, tokens[i]!);
        const key = await createEntityKey();
        const ecKey = generateEntityKey({ type: 'EC' });
        for (const k of [key, ecKey]) {
          const [res] = await send([ch.seal('post', '/entity-keys', { jwk: k.publicJwk, proof: registrationProof(k, client.jid, ch.uri) })]);
          const r = ch.open(res!);
          if (r.status !== 201 && r.status !== 200) throw new Error(`register ${client.jid}: ${r.status} ${r.reason}`);
        }
        return { jid: client.jid, client, ch, key, ecKey };
      }),
    );
    const curator = members[CLIENTS]!;
    const curatorSend = xmppTransport(curator.client.xmpp, DOMAIN);
    const call = async (m: Member, messages: string[]) => {
      const replies = await xmppTransport(m.client.xmpp, DOMAIN)(messages);
      return replies.map((r) => {
        const res = m.ch.open(r);
        if ((res.status as number) >= 400) throw new Error(`${m.jid}: ${res.status} ${res.reason}`);
        return res;
      });
    };
    const [gen] = await call(curator, [
      curator.ch.seal('post', `kms://${DOMAIN}/blocks`, { blockPayload: { operations: members.map((m) => ({ entity: m.jid, optype: 'add' })) } }),
    ]);
    const tail = blockHash(gen!.block as string);

    // GKs bound to the chain's tail: client 0 runs the 1-client phases too, so it needs the most.
    const poolSize = ROUNDS * (2 * R20 + R1) + 4;
    const pool: string[] = [];
    const t0 = performance.now();
    const batches = Array.from({ length: Math.ceil(poolSize / 16) }, (_, b) => Math.min(16, poolSize - b * 16));
    let nextBatch = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (nextBatch < batches.length) {
          const n = batches[nextBatch++]!;
          const replies = await curatorSend(Array.from({ length: n }, () => curator.ch.seal('post', `kms://${DOMAIN}/gks`, { block: tail })));
          for (const r of replies) {
            const res = curator.ch.open(r);
            if (res.status !== 201 && res.status !== 200) throw new Error(`GK create: ${res.status} ${res.reason}`);
            pool.push(payloadOf(res.gk as string).uri as string);
          }
        }
      }),
    );
    log(
      `set-up: ${members.length} channels and entity keys, a chain, ${pool.length} GKs (GK creation ${(pool.length / ((performance.now() - t0) / 1000)).toFixed(0)}/s)`,
    );

    // Sizes of the KMS messages, for the echo: from a sample ping and a sample GK get (by client 0,
    // of the last GKs of the pool, which no timed phase uses).
    const sample = members[0]!;
    const pingReq = sample.ch.seal('update', '/ping');
    const [pingRes] = await xmppTransport(sample.client.xmpp, DOMAIN)([pingReq]);
    const gkReqs = pool.slice(-4).map((uri) => sample.ch.seal('get', uri, { entity: sample.jid, kid: sample.key.kid }));
    const gkRes = await xmppTransport(sample.client.xmpp, DOMAIN)(gkReqs);
    for (const r of gkRes) openGk(sample.ch.open(r).gk as string, identity.key, sample.key);
    const avg = (xs: string[]) => Math.round(xs.reduce((a, x) => a + x.length, 0) / xs.length);
    const sizes = { ping: { req: pingReq.length, res: pingRes!.length }, gk_get: { req: avg(gkReqs), res: avg(gkRes) } };
    log(`message sizes (characters of the compact JOSE): ping ${sizes.ping.req} -> ${sizes.ping.res}, GK get ${sizes.gk_get.req} -> ${sizes.gk_get.res}`);

    // ---- the phases ----
    const gkCursor = new Array<number>(CLIENTS).fill(0);
    const pingPhase = (n: number, requests: number): Phase => ({
      name: `ping_${n}`,
      component: 'kms',
      clients: n,
      requests,
      prepare: () => members.slice(0, n).map((m) => Array.from({ length: requests }, () => kmsIq(m.ch.seal('update', '/ping')))),
      check: (replies) => {
        for (const [c, rs] of replies.entries()) {
          for (const r of rs) {
            const res = members[c]!.ch.open(r);
            if (res.status !== 200) throw new Error(`ping: ${res.status} ${res.reason}`);
          }
        }
      },
    });
    /** GK first fetches, wrapped to each member's default (RSA) key, or to its P-256 key. */
    const gkPhase = (n: number, requests: number, p256 = false): Phase => {
      let uris: string[][] = [];
      const keyOf = (m: Member) => (p256 ? m.ecKey : m.key);
      return {
        name: p256 ? `gk_get_p256_${n}` : `gk_get_${n}`,
        component: 'kms',
        clients: n,
        requests,
        prepare: () => {
          uris = members.slice(0, n).map((_, c) => pool.slice(gkCursor[c]!, (gkCursor[c]! += requests)));
          if (uris.some((u) => u.length !== requests)) throw new Error('the GK pool is too small');
          return members.slice(0, n).map((m, c) => uris[c]!.map((uri) => kmsIq(m.ch.seal('get', uri, { entity: m.jid, kid: keyOf(m).kid }))));
        },
        check: (replies) =>
          replies.forEach((rs, c) => {
            const m = members[c]!;
            rs.forEach((r, i) => {
              const res = m.ch.open(r);
              if (res.status !== 200 || typeof res.gk !== 'string') throw new Error(`GK get: ${res.status} ${res.reason}`);
              // Signature and unwrapping on a sample (each costs the load generator ~0.4 ms).
              if (i % 50 === 0) {
                const gk = openGk(res.gk, identity.key, keyOf(m));
                if (gk.uri !== uris[c]![i]) throw new Error(`GK get answered ${gk.uri}, not ${uris[c]![i]}`);
              }
            });
          }),
      };
    };
    const echoPhase = (n: number, requests: number, like: 'ping' | 'gk_get', coalescing = false): Phase => ({
      name: coalescing ? `echo_coalescing_${like}_${n}` : `echo_${like}_${n}`,
      component: coalescing ? 'echo-coalescing' : 'echo',
      clients: n,
      requests,
      // Same request text length as the KMS request (a real sealed request), reply of the KMS response's length.
      prepare: () => {
        const text = like === 'ping' ? pingReq : gkReqs[0]!;
        return members.slice(0, n).map(() => Array.from({ length: requests }, () => echoIq(text, sizes[like].res)));
      },
      check: (replies) => {
        for (const rs of replies) for (const r of rs) if (r.length !== sizes[like].res) throw new Error(`echo reply of ${r.length} characters`);
      },
    });
    /** The coalescing echo computing the operation's crypto floor (bench/floor.ts) on a request of the KMS request's size. */
    const floorPhase = (n: number, requests: number, like: 'ping' | 'gk_get'): Phase => {
      const make = (k: number) => members.slice(0, n).map(() => Array.from({ length: k }, () => floorIq(like === 'ping' ? pingReq : gkReqs[0]!, like)));
      return {
        name: `floor_${like}_${n}`,
        component: 'echo-coalescing',
        clients: n,
        requests,
        prepare: () => make(requests),
        warm: make,
        check: (replies) => {
          for (const rs of replies)
            for (const r of rs) if (!/^[\w-]+\.\.[\w-]+\.[\w-]+\.[\w-]+$/.test(r)) throw new Error(`floor reply is not a dir JWE: ${r.slice(0, 80)}`);
        },
      };
    };
    const phases: Phase[] = [
      echoPhase(CLIENTS, R20, 'ping'),
      echoPhase(CLIENTS, R20, 'gk_get'),
      echoPhase(1, R1, 'ping'),
      echoPhase(CLIENTS, R20, 'ping', true),
      echoPhase(CLIENTS, R20, 'gk_get', true),
      floorPhase(CLIENTS, R20, 'ping'),
      floorPhase(CLIENTS, R20, 'gk_get'),
      pingPhase(CLIENTS, R20),
      gkPhase(CLIENTS, R20),
      gkPhase(CLIENTS, R20, true),
      pingPhase(1, R1),
      gkPhase(1, R1),
    ];
    const hostPid = host.child.pid!;
    const best = new Map<string, PhaseResult>();
    /** Requests/s of each phase, per round. */
    const perRound = new Map<string, number[]>();

    const run = async (p: Phase) => {
      const xs = clients.slice(0, p.clients).map((c) => c.xmpp);
      // Warm-up, untimed: pings (KMS) or echoes of the same size.
      const warm =
        p.warm?.(WARMUP) ??
        (p.component === 'kms' ? pingPhase(p.clients, WARMUP).prepare() : echoPhase(p.clients, WARMUP, 'ping', p.component === 'echo-coalescing').prepare());
      await runIqLoadOn({ clients: xs, requestsPerClient: WARMUP, inFlightPerClient: DEPTH, to: DOMAIN, warmup: 0, makeRequest: (c, i) => warm[c]![i]! });
      const requests = p.prepare();
      const replies = requests.map((r) => new Array<string>(r.length));
      const before = await cpuSample(serverPids, hostPid);
      const r = await runIqLoadOn({
        clients: xs,
        requestsPerClient: p.requests,
        inFlightPerClient: DEPTH,
        to: DOMAIN,
        warmup: 0,
        makeRequest: (c, i) => requests[c]![i]!,
        onReply: (c, i, reply) => (replies[c]![i] = replyText(reply)),
      });
      const after = await cpuSample(serverPids, hostPid);
      p.check(replies);
      const result = { ...r, cpu: cpuShare(before, after) };
      log(
        `${p.name.padEnd(26)} ${r.rps.toFixed(0).padStart(6)}/s  p50 ${r.p50ms.toFixed(2)} ms  p99 ${r.p99ms.toFixed(2)} ms  cpu server ${result.cpu.server.toFixed(2)} component ${result.cpu.component.toFixed(2)} loadgen ${result.cpu.loadgen.toFixed(2)}`,
      );
      perRound.set(p.name, [...(perRound.get(p.name) ?? []), r.rps]);
      const prev = best.get(p.name);
      if (!prev || r.rps > prev.rps) best.set(p.name, result);
    };

    for (let round = 0; round < ROUNDS; round++) {
      // The KMS runs between the two echoes, whose order flips each round.
      const order: Which[] = round % 2 === 0 ? ['echo', 'kms', 'echo-coalescing'] : ['echo-coalescing', 'kms', 'echo'];
      for (const which of order) {
        await host.call({ cmd: 'use', which });
        for (const p of phases.filter((x) => x.component === which)) await run(p);
      }
    }
    return { kind, sizes, results: best, perRound };
  } finally {
    await Promise.all(load.map((c) => disconnect(c.xmpp)));
    await host.exit().catch(() => undefined);
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

async function main() {
  const wanted = arg('--servers')?.split(',') ?? ['prosody', 'ejabberd'];
  const installed = serverKinds();
  const kinds = wanted.filter((k): k is ServerKind => installed.includes(k as ServerKind));
  if (kinds.length !== wanted.length) throw new Error(`not installed: ${wanted.filter((k) => !installed.includes(k as ServerKind)).join(', ')}`);
  const started = performance.now();
  const all = [];
  for (const kind of kinds) all.push(await benchServer(kind));

  const json: Record<string, unknown> = {
    quick,
    clients: CLIENTS,
    in_flight_per_client: DEPTH,
    rounds: ROUNDS,
    requests_per_client_20: R20,
    requests_per_client_1: R1,
  };
  console.log(
    `\nXMPP benchmark: ${CLIENTS} clients, ${DEPTH} in flight per client, best of ${ROUNDS} round(s); cpu = share of one core (server / component process / load generator)`,
  );
  console.log(
    'ratio = KMS req/s / echo req/s at 20 clients, the echo sized like that KMS operation (1 = the KMS costs no more than the transport); median over rounds of the ratio within each round',
  );
  console.log(`${'server'.padEnd(9)}${'phase'.padEnd(27)}${'req/s'.padStart(8)}${'p50 ms'.padStart(9)}${'p99 ms'.padStart(9)}   cpu srv/comp/load`);
  for (const { kind, sizes, results } of all) {
    json[`${kind}_sizes`] = sizes;
    for (const [name, r] of results) {
      console.log(
        `${kind.padEnd(9)}${name.padEnd(27)}${r.rps.toFixed(0).padStart(8)}${r.p50ms.toFixed(2).padStart(9)}${r.p99ms.toFixed(2).padStart(9)}   ${r.cpu.server.toFixed(2)}/${r.cpu.component.toFixed(2)}/${r.cpu.loadgen.toFixed(2)}`,
      );
      json[`${kind}_${name}_rps`] = Math.round(r.rps);
      json[`${kind}_${name}_p50_ms`] = +r.p50ms.toFixed(3);
      json[`${kind}_${name}_p99_ms`] = +r.p99ms.toFixed(3);
      json[`${kind}_${name}_cpu`] = { server: +r.cpu.server.toFixed(2), component: +r.cpu.component.toFixed(2), loadgen: +r.cpu.loadgen.toFixed(2) };
    }
  }
  const met: Record<string, boolean> = {};
  console.log('');
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  /** KMS ÷ echo of each round (the two phases ran back to back in it), their median (the headline), and best KMS round ÷ best echo round. */
  const ratiosOf = (results: Map<string, PhaseResult>, perRound: Map<string, number[]>, kms: string, echo: string) => {
    const rounds = perRound.get(kms)!.map((k, i) => k / perRound.get(echo)![i]!);
    return { ratio: median(rounds), best: results.get(kms)!.rps / results.get(echo)!.rps, rounds };
  };
  for (const { kind, results, perRound } of all) {
    for (const op of ['ping', 'gk_get'] as const) {
      const { ratio, best: bestRatio, rounds } = ratiosOf(results, perRound, `${op}_${CLIENTS}`, `echo_${op}_${CLIENTS}`);
      const key = `${kind}_${op}_echo_ratio`;
      json[key] = +ratio.toFixed(3);
      json[`${key}_best_rounds`] = +bestRatio.toFixed(3);
      json[`${key}_rounds`] = rounds.map((r) => +r.toFixed(3));
      met[key] = ratio >= TARGETS[op];
      console.log(
        `${key.padEnd(32)} ${ratio.toFixed(3)}  (target >= ${TARGETS[op]}: ${met[key] ? 'met' : 'MISSED'}; best round ÷ best round ${bestRatio.toFixed(3)})`,
      );
    }
    // For reference, no target: the same GK gets wrapped to P-256 entity keys (a fresh ECDH each).
    const { ratio: p256, best: p256Best } = ratiosOf(results, perRound, `gk_get_p256_${CLIENTS}`, `echo_gk_get_${CLIENTS}`);
    json[`${kind}_gk_get_p256_echo_ratio`] = +p256.toFixed(3);
    json[`${kind}_gk_get_p256_echo_ratio_best_rounds`] = +p256Best.toFixed(3);
    console.log(
      `${`${kind}_gk_get_p256_echo_ratio`.padEnd(32)} ${p256.toFixed(3)}  (for reference, GK gets wrapped to P-256 entity keys; best ÷ best ${p256Best.toFixed(3)})`,
    );
    // For reference, no target: against an echo that coalesces its writes as the KMS component
    // does, so that the ratio shows the KMS's own work alone.
    for (const op of ['ping', 'gk_get'] as const) {
      const { ratio: same, best: sameBest, rounds } = ratiosOf(results, perRound, `${op}_${CLIENTS}`, `echo_coalescing_${op}_${CLIENTS}`);
      const key = `${kind}_${op}_coalescing_echo_ratio`;
      json[key] = +same.toFixed(3);
      json[`${key}_best_rounds`] = +sameBest.toFixed(3);
      json[`${key}_rounds`] = rounds.map((r) => +r.toFixed(3));
      console.log(
        `${key.padEnd(32)} ${same.toFixed(3)}  (for reference, against an echo with the KMS component's write coalescing; best ÷ best ${sameBest.toFixed(3)})`,
      );
    }
    // For reference, no target: a component that computes only the operation's crypto floor (with
    // the coalescing echo's I/O) against the bare echo: roughly the most any KMS could reach here with this
    // protocol's crypto; and the KMS against that component: how near the KMS is to its floor.
    for (const op of ['ping', 'gk_get'] as const) {
      const ceiling = ratiosOf(results, perRound, `floor_${op}_${CLIENTS}`, `echo_${op}_${CLIENTS}`);
      const near = ratiosOf(results, perRound, `${op}_${CLIENTS}`, `floor_${op}_${CLIENTS}`);
      json[`${kind}_${op}_floor_echo_ratio`] = +ceiling.ratio.toFixed(3);
      json[`${kind}_${op}_floor_echo_ratio_rounds`] = ceiling.rounds.map((r) => +r.toFixed(3));
      json[`${kind}_${op}_kms_floor_ratio`] = +near.ratio.toFixed(3);
      json[`${kind}_${op}_kms_floor_ratio_rounds`] = near.rounds.map((r) => +r.toFixed(3));
      console.log(
        `${`${kind}_${op}_floor_echo_ratio`.padEnd(32)} ${ceiling.ratio.toFixed(3)}  (for reference, a component computing only the ${op} crypto floor, against the bare echo)`,
      );
      console.log(`${`${kind}_${op}_kms_floor_ratio`.padEnd(32)} ${near.ratio.toFixed(3)}  (for reference, the KMS against that floor component)`);
    }
  }
  json.targets = { ping_echo_ratio: TARGETS.ping, gk_get_echo_ratio: TARGETS.gk_get };
  json.targets_met = met;
  json.all_targets_met = Object.values(met).every(Boolean);
  json.seconds = +((performance.now() - started) / 1000).toFixed(1);
  console.log(JSON.stringify(json));
}

if (process.argv.includes('--component-host')) {
  await componentHost();
} else {
  await main();
  // xmpp.js and the harness may leave timers behind; everything was stopped above.
  process.exit(0);
}
