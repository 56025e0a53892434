// The XMPP load generator of the benchmarks, and the echo component that measures the transport's
// ceiling: a KMS request that costs more than the transport shows up as a ratio below 1 against
// the echo component measured in the same run.
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';

import { xml, type Client } from '@xmpp/client';
import type { Component, IncomingContext } from '@xmpp/component';
import type { Element } from '@xmpp/xml';

import { connectClient, connectComponent, disconnect } from '../test/e2e/harness/clients.js';
import type { XmppServer } from '../test/e2e/harness/servers.js';

export const ECHO_NS = 'urn:example:echo';

/**
 * Connects a component on `server.componentDomain` that answers every IQ get/set whose single
 * child is in the `urn:example:echo` namespace (any element name) with a copy of that child.
 */
export async function startEchoComponent(server: XmppServer): Promise<Component> {
  const echo = await connectComponent(server);
  // iqCallee routes by namespace *and* element name; a plain middleware after it matches the
  // namespace alone (the iqCallee middleware has set ctx.element to the IQ's single child).
  echo.middleware.use((ctx: IncomingContext, next) => {
    const child = ctx.element;
    if (ctx.stanza.name !== 'iq' || child?.getNS() !== ECHO_NS) return next();
    // The request is discarded after this: its child's nodes can move into the reply.
    return xml(child.name, { ...child.attrs }, ...child.children);
  });
  return echo;
}

export interface IqLoadOptions {
  server: XmppServer;
  /** Number of client connections (each its own account). */
  clients: number;
  requestsPerClient: number;
  /** IQs each client keeps outstanding at once (1 = sequential). */
  inFlightPerClient: number;
  /** The IQ payload (sent in an `<iq type="set">`), or a whole `<iq/>` (its `to` defaults to `to`). */
  makeRequest: (clientIndex: number, i: number) => Element;
  /** Address of the IQs, e.g. server.componentDomain. */
  to: string;
  /** Milliseconds before an IQ counts as lost (default 30000). */
  timeoutMs?: number;
}

export interface IqLoadResult {
  requests: number;
  seconds: number;
  rps: number;
  p50ms: number;
  p99ms: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[index] as number;
}

function toIq(request: Element, to: string): Element {
  if (request.name === 'iq') {
    request.attrs.to ??= to;
    return request;
  }
  return xml('iq', { type: 'set', to }, request);
}

/**
 * Registers `clients` fresh accounts, logs them in, then sends `requestsPerClient` IQs from each
 * with `inFlightPerClient` outstanding per client, and measures throughput and round-trip latency.
 * Only the request phase is timed (after one untimed warm-up IQ per client). Rejects on the
 * first IQ that fails (error reply or timeout).
 * @example
 *   const echo = await startEchoComponent(server);
 *   const r = await runIqLoad({ server, clients: 20, requestsPerClient: 500, inFlightPerClient: 1,
 *     to: server.componentDomain, makeRequest: (c, i) => xml('ping', { xmlns: ECHO_NS, n: `${c}.${i}` }) });
 */
export async function runIqLoad(opts: IqLoadOptions): Promise<IqLoadResult> {
  const { server, requestsPerClient, inFlightPerClient, makeRequest, to } = opts;
  const timeout = opts.timeoutMs ?? 30_000;
  const run = randomBytes(3).toString('hex');
  const accounts = Array.from({ length: opts.clients }, (_, c) => ({
    username: `bench-${run}-${c}`,
    password: randomBytes(8).toString('hex'),
  }));
  await server.registerUsers(accounts);

  const connected: Client[] = [];
  try {
    // Log in a few at a time: a burst of 100 logins at once only measures the server's accept queue.
    for (let c = 0; c < accounts.length; c += 10) {
      connected.push(
        ...(await Promise.all(accounts.slice(c, c + 10).map((account) => connectClient(server, account)))),
      );
    }
    await Promise.all(connected.map((client, c) => client.iqCaller.request(toIq(makeRequest(c, -1), to), timeout)));

    const latencies = new Float64Array(opts.clients * requestsPerClient);
    let recorded = 0;
    const started = performance.now();
    await Promise.all(
      connected.map(async (client, c) => {
        let next = 0;
        const lane = async (): Promise<void> => {
          while (next < requestsPerClient) {
            const i = next++;
            const sent = performance.now();
            await client.iqCaller.request(toIq(makeRequest(c, i), to), timeout);
            latencies[recorded++] = performance.now() - sent;
          }
        };
        await Promise.all(Array.from({ length: Math.max(1, inFlightPerClient) }, lane));
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    latencies.sort();
    return {
      requests: recorded,
      seconds,
      rps: recorded / seconds,
      p50ms: percentile(latencies, 0.5),
      p99ms: percentile(latencies, 0.99),
    };
  } finally {
    await Promise.all(connected.map((client) => disconnect(client)));
  }
}
