/**
 * KmsComponent.start() against a listener that accepts TCP connections and never answers (a
 * server still starting up, or wedged): the component keeps trying, closes each connection it
 * gives up, and stop() ends the attempts. A plain TCP listener stands in for the server here; the
 * same situation after the component was online is tested on real servers in test/e2e.
 */
import { expect } from 'chai';
import net from 'node:net';
import { once } from 'node:events';
import { KmsComponent } from '../../src/xmpp/component.js';
import { loadConfig } from '../../src/config.js';
import { componentSettings } from '../../src/server.js';
import { silentLogger } from '../../src/util/logger.js';

describe('xmpp/component: a server that never opens the stream', function () {
  this.timeout(30_000);
  let silent: net.Server;
  const accepted: net.Socket[] = [];
  let closedByComponent = 0;

  before(async () => {
    silent = net.createServer((s) => {
      accepted.push(s);
      s.on('close', () => closedByComponent++);
      s.resume();
    });
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
  });

  after(async () => {
    for (const s of accepted) s.destroy();
    silent.close();
  });

  it('start() keeps trying, closing each connection it gives up, until stop()', async () => {
    const component = new KmsComponent(
      {
        handle: () => Promise.reject(new Error('no request can arrive')),
        identity: { kid: 'kms://kms.localhost', sigAlg: 'ES256', handshakeAlgs: ['ECDH-ES'], jwk: { x5c: [] } },
      },
      {
        // The defaults of a config with no settings, on the silent listener, retrying quickly.
        ...componentSettings(loadConfig({ env: {} })),
        service: `xmpp://127.0.0.1:${(silent.address() as net.AddressInfo).port}`,
        keepaliveSec: 0,
        reconnect: { initialMs: 50, maxMs: 200 },
        drainMs: 100,
      },
      silentLogger(),
    );
    const started = component.start();
    started.catch(() => undefined);
    const t0 = Date.now();
    while ((accepted.length < 2 || closedByComponent < 1) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 50));
    expect(accepted.length, 'connections made in 20 s').to.be.at.least(2);
    expect(closedByComponent, 'connections the component closed').to.be.at.least(1);
    await component.stop();
    let err: Error | undefined;
    await started.catch((e: Error) => (err = e));
    expect(err?.message).to.match(/stopped before the component came online/);
    // Nothing is left open, and nothing more is tried.
    const made = accepted.length;
    await new Promise((r) => setTimeout(r, 500));
    expect(accepted.length).to.equal(made);
    expect(
      accepted.every((s) => s.destroyed),
      'every connection closed',
    ).to.equal(true);
  });
});
