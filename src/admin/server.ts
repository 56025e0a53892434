/**
 * The admin HTTP listener (admin.listen, KMS_ADMIN_LISTEN; off unless set), for operators:
 *   GET /metrics  Prometheus text (src/admin/metrics.ts)
 *   GET /healthz  200 while the event loop turns (the heartbeat of src/admin/watchdog.ts), else 503
 *   GET /readyz   200 when the XMPP link is up and the store takes a write, else 503; the JSON body
 *                 says which check failed
 * and the operator's routes of `routes` (POST /rekey, GET /rekey, GET /backup, GET /inspect: the
 * `kms` command's way into a running KMS), answered to loopback clients only.
 * Plain HTTP with no authentication: keep it on loopback or a private network.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { KvStore } from '../store/kv.js';
import type { Logger } from '../util/logger.js';
import type { ListenAddress } from './listen.js';
import type { KmsMetrics } from './metrics.js';
import type { Heartbeat } from './watchdog.js';

/** One check of /readyz. */
export interface CheckResult {
  ok: boolean;
  /** Why it failed (no secrets: a state or an error message). */
  reason?: string;
}

export interface AdminOptions {
  address: ListenAddress;
  metrics: KmsMetrics;
  heartbeat: Heartbeat;
  /** The checks of /readyz, by name (e.g. xmpp, store); all must pass. */
  checks: Record<string, () => CheckResult | Promise<CheckResult>>;
  logger: Logger;
  /** More routes by `METHOD /path` (e.g. `POST /rekey`), answered to loopback clients only (403 to others). */
  routes?: Record<string, AdminRoute>;
}

/** An operator's route: writes the whole response. */
export type AdminRoute = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

const LOOPBACK = /^(127\.|::1$|::ffff:127\.)/;

/** The running listener. */
export interface AdminServer {
  /** http://host:port of the listener (the port taken, when it was 0). */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** A check that fails when `check` takes longer than `ms`. */
async function bounded(check: () => CheckResult | Promise<CheckResult>, ms: number): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(check),
      new Promise<CheckResult>((r) => {
        timer = setTimeout(() => r({ ok: false, reason: `no answer within ${ms} ms` }), ms);
      }),
    ]);
  } catch (e) {
    return { ok: false, reason: (e as Error)?.message ?? String(e) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Whether the store takes a write: one batch that puts and deletes a key no record uses, so
 * nothing is left behind. Answers from the last probe for `cacheMs`, one probe at a time.
 */
export function storeProbe(kv: KvStore, cacheMs = 1000): () => Promise<CheckResult> {
  let last: { at: number; result: CheckResult } | undefined;
  let running: Promise<CheckResult> | undefined;
  return () => {
    if (last && performance.now() - last.at < cacheMs) return Promise.resolve(last.result);
    running ??= kv
      .batch([
        { type: 'put', key: '~readyz', value: '' },
        { type: 'del', key: '~readyz' },
      ])
      .then(
        (): CheckResult => ({ ok: true }),
        (e: unknown): CheckResult => ({ ok: false, reason: `the store refused a write: ${(e as Error)?.message ?? String(e)}` }),
      )
      .then((result) => {
        last = { at: performance.now(), result };
        running = undefined;
        return result;
      });
    return running;
  };
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

/** Sends `body` as JSON. */
export const json = (res: ServerResponse, status: number, body: unknown) => send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(body)}\n`);

/** Starts the listener; rejects, naming the address, when it cannot listen. */
export async function startAdminServer(o: AdminOptions): Promise<AdminServer> {
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    const route = o.routes?.[`${req.method} ${path}`];
    if (route) {
      if (!LOOPBACK.test(req.socket.remoteAddress ?? '')) return json(res, 403, { error: `${path} answers loopback clients only` });
      return route(req, res);
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return json(res, 405, { error: 'method not allowed' });
    }
    switch (path) {
      case '/metrics':
        return send(res, 200, o.metrics.registry.contentType, await o.metrics.text());
      case '/healthz': {
        const age = Math.round(o.heartbeat.lastTickAgeMs());
        const ok = age < o.heartbeat.stallMs;
        return json(res, ok ? 200 : 503, { status: ok ? 'ok' : 'stalled', eventLoopTickAgeMs: age });
      }
      case '/readyz': {
        const names = Object.keys(o.checks);
        const results = await Promise.all(names.map((n) => bounded(o.checks[n]!, 2000)));
        const checks = Object.fromEntries(names.map((n, i) => [n, results[i]!]));
        const failed = names.filter((_, i) => !results[i]!.ok);
        return json(res, failed.length === 0 ? 200 : 503, { status: failed.length === 0 ? 'ready' : 'not ready', failed, checks });
      }
      default:
        return json(res, 404, { error: 'not found: GET /metrics, /healthz or /readyz' });
    }
  };
  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      o.logger.error({ event: 'admin-error', reason: (e as Error)?.message }, 'admin request failed');
      if (!res.headersSent) json(res, 500, { error: 'internal error' });
      else res.destroy();
    });
  });
  // A scrape or a probe is a small GET: nothing may hold a connection long.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  const { host, port } = o.address;
  const label = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'the address is in use' : e.code === 'EADDRNOTAVAIL' ? 'no such local address' : e.message;
      reject(new Error(`admin.listen: cannot listen on ${label} (${why})`, { cause: e }));
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.unref();
  const taken = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${taken}`;
  o.logger.info({ event: 'admin-listening', url }, `admin listener (/metrics, /healthz, /readyz) at ${url}`);
  let closed: Promise<void> | undefined;
  return {
    url,
    port: taken,
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}
