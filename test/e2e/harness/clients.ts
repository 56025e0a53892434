// XMPP clients and components connected to a harness server.
import { randomUUID } from 'node:crypto';

import { client, xml, type Client } from '@xmpp/client';
import { component, type Component } from '@xmpp/component';

import type { XmppServer } from './servers.js';

export interface ClientOptions {
  username: string;
  password: string;
  resource?: string;
  /** Let @xmpp/client reconnect by itself after a disconnect (default false: tests decide). */
  reconnect?: boolean;
}

/** Errors an entity emitted, kept so that an 'error' event never crashes the test process. */
const emittedErrors = new WeakMap<object, Error[]>();

function collectErrors(entity: { on(event: 'error', listener: (err: Error) => void): unknown }): void {
  const errors: Error[] = [];
  emittedErrors.set(entity, errors);
  entity.on('error', (err: Error) => {
    errors.push(err);
    if (process.env.KMS_TEST_DEBUG) console.error('[xmpp entity error]', err);
  });
}

/**
 * Connects and authenticates a client on the server's c2s port, with SASL PLAIN: on plain TCP
 * @xmpp/client would pick SCRAM-SHA-1, which it computes in JavaScript (about 1.25 s per login).
 * Loopback tests only: PLAIN without TLS sends the password in clear.
 */
export async function connectClient(server: XmppServer, opts: ClientOptions): Promise<Client> {
  const xmpp = client({
    service: `xmpp://127.0.0.1:${server.c2sPort}`,
    domain: server.domain,
    resource: opts.resource ?? `test-${randomUUID().slice(0, 8)}`,
    credentials: async (authenticate, mechanisms) => {
      if (!mechanisms.includes('PLAIN')) {
        throw new Error(`${server.kind} does not offer SASL PLAIN (offered: ${mechanisms.join(', ')})`);
      }
      const userAgent = xml('user-agent', { id: randomUUID() });
      await authenticate({ username: opts.username, password: opts.password }, 'PLAIN', userAgent);
    },
  });
  if (!opts.reconnect) xmpp.reconnect.stop();
  await startOrExplain(xmpp, `${opts.username}@${server.domain} could not log in to ${server.kind}`);
  return xmpp;
}

/** Starts an entity (collecting its errors); on failure stops it for good and throws `what`: reason. */
async function startOrExplain(xmpp: Client | Component, what: string): Promise<void> {
  collectErrors(xmpp);
  try {
    await xmpp.start();
  } catch (err) {
    xmpp.reconnect.stop();
    await xmpp.stop().catch(() => {});
    throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
  }
}

export interface ComponentOptions {
  /** Default: the server's component domain, kms.localhost. */
  domain?: string;
  /** Default: the server's component secret. */
  secret?: string;
  /** Milliseconds between a disconnect and the reconnection attempt (@xmpp/reconnect; default 1000). */
  reconnectDelayMs?: number;
}

/**
 * Connects an XEP-0114 external component and waits until it is authenticated. @xmpp/component's
 * built-in reconnect stays on: after a disconnect it retries every `reconnectDelayMs`.
 * Call `xmpp.reconnect.stop()` before `xmpp.stop()` to end it for good.
 */
export async function connectComponent(server: XmppServer, opts: ComponentOptions = {}): Promise<Component> {
  const xmpp = component({
    service: `xmpp://127.0.0.1:${server.componentPort}`,
    domain: opts.domain ?? server.componentDomain,
    password: opts.secret ?? server.componentSecret,
  });
  if (opts.reconnectDelayMs !== undefined) xmpp.reconnect.delay = opts.reconnectDelayMs;
  await startOrExplain(xmpp, `component ${opts.domain ?? server.componentDomain} could not connect to ${server.kind}`);
  return xmpp;
}

/** Stops reconnection, then closes the stream; never throws (for after() hooks). */
export async function disconnect(entity: Client | Component): Promise<void> {
  entity.reconnect.stop();
  await entity.stop().catch(() => {});
}
