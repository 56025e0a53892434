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
import { coalesceThisTick, type Corkable } from '../src/xmpp/coalesce.js';
import { floorInputs, gkGetFloor, pingFloor } from './floor.js';

export const ECHO_NS = 'urn:example:echo';

/** Filler text of each reply size asked for, made once. */
const fillers = new Map<number, string>();
const MAX_REPLY_BYTES = 1024 * 1024;
/** Crypto-floor inputs per request size, made once. */
const floors = new Map<number, ReturnType<typeof floorInputs>>();

/**
 * Connects a component on `server.componentDomain` that answers every IQ get/set whose single
 * child is in the `urn:example:echo` namespace (any element name) with a copy of that child.
 *
 * A child with a `reply-bytes="N"` attribute is answered instead with an element of the same name
 * holding one `<message/>` of N characters: so a benchmark can make the echo's request and reply
 * the sizes of another protocol's (e.g. a `<kms/>` request and its larger response).
 *
 * A child with a `floor="ping"` or `floor="gk_get"` attribute is answered instead with the output
 * of that operation's crypto floor (bench/floor.ts) on a channel of the echo's own, its request the
 * size of the request text received: a component that does nothing but the least crypto a KMS must
 * do, so a benchmark can show how far the real KMS is from it and how far it is from the echo.
 *
 * The bare echo writes each reply as xmpp.js does, one socket write per stanza. With `coalesce`
 * it sends the replies of one tick in one write, as the KMS component does (src/xmpp/coalesce.ts):
 * a reference that gives the echo the KMS component's I/O, so that what is left between the two
 * is the KMS's own work.
 */
export async function startEchoComponent(
  server: Pick<XmppServer, 'kind' | 'componentPort' | 'componentDomain' | 'componentSecret'>,
  opts: { coalesce?: boolean } = {},
): Promise<Component> {
  const echo = await connectComponent(server as XmppServer);
  // As the KMS component does (src/xmpp/component.ts), on this socket and after a reconnection.
  noDelay(echo);
  echo.on('connect', () => noDelay(echo));
  // iqCallee routes by namespace *and* element name; a plain middleware after it matches the
  // namespace alone (the iqCallee middleware has set ctx.element to the IQ's single child).
  echo.middleware.use((ctx: IncomingContext, next) => {
    const child = ctx.element;
    if (ctx.stanza.name !== 'iq' || child?.getNS() !== ECHO_NS) return next();
    // iqCallee sends the returned element later in this tick.
    if (opts.coalesce) coalesceThisTick((echo as unknown as { socket?: Corkable }).socket);
    const floor = child.attrs.floor;
    if (floor === 'ping' || floor === 'gk_get') {
      const text = child.getChild('message')?.getText() ?? '';
      let inputs = floors.get(text.length);
      if (inputs === undefined) floors.set(text.length, (inputs = floorInputs(text.length)));
      return xml(child.name, { xmlns: ECHO_NS }, xml('message', {}, floor === 'ping' ? pingFloor(inputs.ping) : gkGetFloor(inputs.gkGet)));
    }
    const size = child.attrs['reply-bytes'];
    if (size !== undefined) {
      const n = Math.min(MAX_REPLY_BYTES, Math.max(0, Number.parseInt(String(size), 10) || 0));
      let text = fillers.get(n);
      if (text === undefined) fillers.set(n, (text = 'e'.repeat(n)));
      return xml(child.name, { xmlns: ECHO_NS }, xml('message', {}, text));
    }
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

/** The part of IqLoadOptions that runs on clients already connected (see runIqLoadOn). */
export interface IqLoadOnOptions extends Omit<IqLoadOptions, 'server' | 'clients'> {
  clients: Client[];
  /** Untimed IQs per client before the timed phase, built with makeRequest(c, -1 - k) (default 1). */
  warmup?: number;
  /** Called with each timed reply (the whole `<iq/>`), e.g. to check it after the run. Keep it cheap. */
  onReply?: (clientIndex: number, i: number, reply: Element) => void;
}

export interface IqLoadResult {
  requests: number;
  seconds: number;
  rps: number;
  p50ms: number;
  p99ms: number;
}

/** A logged-in load client and its account. */
export interface LoadClient {
  xmpp: Client;
  /** Bare JID, e.g. bench-1a2b3c-0@localhost. */
  jid: string;
}

/** Turns Nagle's algorithm off on an xmpp.js entity's TCP socket (each stanza goes out at once). */
export function noDelay(entity: Client | Component): void {
  (entity as unknown as { socket?: { setNoDelay?(on: boolean): void } }).socket?.setNoDelay?.(true);
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
 * Registers `count` fresh accounts (`bench-<random>-<n>`) and logs them in, ten at a time (a burst
 * of 100 logins at once only measures the server's accept queue). Disconnect them with
 * `disconnect` from the harness when done.
 */
export async function connectLoadClients(server: XmppServer, count: number): Promise<LoadClient[]> {
  const run = randomBytes(3).toString('hex');
  const accounts = Array.from({ length: count }, (_, c) => ({
    username: `bench-${run}-${c}`,
    password: randomBytes(8).toString('hex'),
  }));
  await server.registerUsers(accounts);
  const connected: LoadClient[] = [];
  try {
    for (let c = 0; c < accounts.length; c += 10) {
      const batch = accounts.slice(c, c + 10);
      const clients = await Promise.all(batch.map((account) => connectClient(server, account)));
      // No Nagle: with more than one IQ in flight a request would otherwise wait for a delayed ACK.
      clients.forEach(noDelay);
      connected.push(...clients.map((xmpp, k) => ({ xmpp, jid: `${batch[k]!.username}@${server.domain}` })));
    }
  } catch (err) {
    await Promise.all(connected.map((c) => disconnect(c.xmpp)));
    throw err;
  }
  return connected;
}

/**
 * Sends `requestsPerClient` IQs from each of the connected `clients` with `inFlightPerClient`
 * outstanding per client, and measures throughput and round-trip latency. Only the request phase
 * is timed (after `warmup` untimed IQs per client). Rejects on the first IQ that fails (error
 * reply or timeout). The clients stay connected.
 */
export async function runIqLoadOn(opts: IqLoadOnOptions): Promise<IqLoadResult> {
  const { clients, requestsPerClient, inFlightPerClient, makeRequest, to, onReply } = opts;
  const timeout = opts.timeoutMs ?? 30_000;
  const warmup = opts.warmup ?? 1;
  for (let k = 0; k < warmup; k++) {
    await Promise.all(clients.map((client, c) => client.iqCaller.request(toIq(makeRequest(c, -1 - k), to), timeout)));
  }

  const latencies = new Float64Array(clients.length * requestsPerClient);
  let recorded = 0;
  const started = performance.now();
  await Promise.all(
    clients.map(async (client, c) => {
      let next = 0;
      const lane = async (): Promise<void> => {
        while (next < requestsPerClient) {
          const i = next++;
          const sent = performance.now();
          const reply = await client.iqCaller.request(toIq(makeRequest(c, i), to), timeout);
          latencies[recorded++] = performance.now() - sent;
          onReply?.(c, i, reply);
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
}

/**
 * Registers `clients` fresh accounts, logs them in, runs `runIqLoadOn` on them (one untimed
 * warm-up IQ per client, built with makeRequest(c, -1)), and disconnects them.
 * @example
 *   const echo = await startEchoComponent(server);
 *   const r = await runIqLoad({ server, clients: 20, requestsPerClient: 500, inFlightPerClient: 1,
 *     to: server.componentDomain, makeRequest: (c, i) => xml('ping', { xmlns: ECHO_NS, n: `${c}.${i}` }) });
 */
export async function runIqLoad(opts: IqLoadOptions): Promise<IqLoadResult> {
  const { server, clients, ...rest } = opts;
  const connected = await connectLoadClients(server, clients);
  try {
    return await runIqLoadOn({ ...rest, clients: connected.map((c) => c.xmpp), warmup: 1 });
  } finally {
    await Promise.all(connected.map((c) => disconnect(c.xmpp)));
  }
}
