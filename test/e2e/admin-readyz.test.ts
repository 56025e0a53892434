// The admin listener's /readyz and link metrics on a real Prosody: 503 naming the XMPP link while
// the component is not online (at the start, and after the server dies), 200 once it is.
import { expect } from 'chai';
import { serverKinds, startServer, type XmppServer } from './harness/servers.js';
import { startTestKms, type TestKms } from './harness/kms.js';
import { freePorts } from './harness/net.js';

interface Readiness {
  status: string;
  failed: string[];
  checks: Record<string, { ok: boolean; reason?: string }>;
}

/** The value of an unlabelled sample in the Prometheus text. */
function sample(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Polls `url` until `accept` takes its answer (connection errors retried), or fails after `ms`. */
async function until<T>(what: string, ms: number, probe: () => Promise<T>, accept: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      last = await probe();
      if (accept(last as T)) return last as T;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const readyz = async (base: string) => {
  const res = await fetch(`${base}/readyz`);
  return { status: res.status, body: (await res.json()) as Readiness };
};

describe('admin /readyz and the XMPP link (on Prosody)', function () {
  this.timeout(120_000);
  if (!serverKinds().includes('prosody')) {
    it.skip('needs Prosody (scripts/install-system-deps.sh)');
    return;
  }
  let server: XmppServer;
  let test: TestKms | undefined;

  before(async () => {
    server = await startServer('prosody');
  });

  after(async () => {
    await test?.kms.stop();
    await server?.stop();
  });

  it('answers 503 (xmpp) while the component is not online, 200 once it is, and 503 again while the server is away', async () => {
    const [port] = (await freePorts(1)) as [number];
    const base = `http://127.0.0.1:${port}`;
    await server.kill();
    // The KMS starts with its server down: the listener is up before the component is online.
    const starting = startTestKms(server, {
      tune: (c) => {
        c.admin = { ...c.admin, listen: `127.0.0.1:${port}` };
      },
    });
    starting.catch(() => undefined);
    const down = await until(
      'a first answer of /readyz',
      20_000,
      () => readyz(base),
      () => true,
    );
    expect(down.status).to.equal(503);
    expect(down.body.status).to.equal('not ready');
    expect(down.body.failed).to.deep.equal(['xmpp']);
    expect(down.body.checks.store).to.deep.equal({ ok: true });
    expect(down.body.checks.xmpp!.reason).to.match(/^the component is not online at xmpp:\/\/127\.0\.0\.1:\d+/);
    expect((await fetch(`${base}/healthz`)).status).to.equal(200);
    expect(sample(await (await fetch(`${base}/metrics`)).text(), 'kms_xmpp_link_up')).to.equal(0);

    await server.start();
    test = await starting;
    expect(test.kms.admin!.url).to.equal(base);
    const up = await readyz(base);
    expect(up).to.deep.equal({ status: 200, body: { status: 'ready', failed: [], checks: { xmpp: { ok: true }, store: { ok: true } } } });
    let metrics = await (await fetch(`${base}/metrics`)).text();
    expect(sample(metrics, 'kms_xmpp_link_up')).to.equal(1);
    expect(sample(metrics, 'kms_xmpp_reconnects_total')).to.equal(0);

    // The server dies: not ready until the component is back.
    await server.kill();
    const lost = await until(
      '/readyz 503 after the server died',
      20_000,
      () => readyz(base),
      (r) => r.status === 503,
    );
    expect(lost.body.failed).to.deep.equal(['xmpp']);
    expect(sample(await (await fetch(`${base}/metrics`)).text(), 'kms_xmpp_link_up')).to.equal(0);
    await server.start();
    await until(
      '/readyz 200 after the server came back',
      60_000,
      () => readyz(base),
      (r) => r.status === 200,
    );
    metrics = await (await fetch(`${base}/metrics`)).text();
    expect(sample(metrics, 'kms_xmpp_link_up')).to.equal(1);
    expect(sample(metrics, 'kms_xmpp_reconnects_total')).to.equal(1);
  });
});
