/**
 * Start-up warnings for development defaults outside loopback (issue 14, item 4): the default
 * component secret, the master key file inside the data folder, the local token issuer or a
 * development identity provider; one warn line each with its event name, none on loopback or
 * with production settings, and startKms logs them.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config.js';
import { devDefaults, isLoopbackHost } from '../../src/admin/dev-defaults.js';
import { startKms } from '../../src/server.js';
import { createLogger } from '../../src/util/logger.js';

const events = (env: Record<string, string>) => devDefaults(loadConfig({ env }), {}).map(([e]) => e);

describe('admin: warnings for development defaults outside loopback', () => {
  it('knows loopback names and addresses', () => {
    for (const h of ['localhost', 'kms.localhost', '127.0.0.1', '127.1.2.3', '::1', '[::1]']) expect(isLoopbackHost(h), h).to.equal(true);
    for (const h of ['xmpp.example.com', '10.0.0.5', '0.0.0.0', '::']) expect(isLoopbackHost(h), h).to.equal(false);
  });

  it('none on loopback, even with every development default', () => {
    expect(events({ KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:5347' })).to.deep.equal([]);
    expect(events({ KMS_XMPP_SERVICE: 'xmpp://localhost:5347', KMS_ADMIN_LISTEN: '9464' })).to.deep.equal([]);
  });

  it('each development default outside loopback: the secret, the key in the data folder, the local issuer', () => {
    expect(events({ KMS_XMPP_SERVICE: 'xmpp://xmpp.example.com:5347' })).to.deep.equal(['dev-component-secret', 'master-key-in-data-dir', 'dev-token-issuer']);
    expect(events({ KMS_XMPP_SERVICE: 'xmpp://127.0.0.1:5347', KMS_ADMIN_LISTEN: '0.0.0.0:9464' })).to.have.length(3);
    expect(
      events({ KMS_XMPP_SERVICE: 'xmpp://xmpp.example.com:5347', KMS_DATA_DIR: '/var/lib/kms', KMS_MASTER_KEY_FILE: '/var/lib/kms/sub/m.key' }),
    ).to.include('master-key-in-data-dir');
    expect(events({ KMS_XMPP_SERVICE: 'xmpp://xmpp.example.com:5347', KMS_AUTH_ISSUER_URL: 'http://127.0.0.1:5580' })).to.include('dev-token-issuer');
  });

  it('none with production settings', () => {
    expect(
      events({
        KMS_XMPP_SERVICE: 'xmpp://xmpp.example.com:5347',
        KMS_XMPP_SECRET: 'a-real-secret',
        KMS_DATA_DIR: '/var/lib/kms',
        KMS_MASTER_KEY_FILE: '/etc/kms/master.key',
        KMS_AUTH_ISSUER_URL: 'https://idp.example.com',
      }),
    ).to.deep.equal([]);
  });

  it('startKms logs one warn line each, naming the event and never the secret', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kms-devdefaults-'));
    const lines: { level: number; event?: string; msg: string }[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l));
        cb();
      },
    });
    try {
      const config = loadConfig({ env: { KMS_DATA_DIR: dir, KMS_XMPP_SERVICE: 'xmpp://xmpp.example.com:5347' } });
      const k = await startKms(config, createLogger({ destination }), { xmpp: false });
      await k.stop();
      const warns = lines.filter((l) => l.level === 40);
      expect(warns.map((l) => l.event)).to.deep.equal(['dev-component-secret', 'master-key-in-data-dir', 'dev-token-issuer']);
      expect(JSON.stringify(lines)).to.not.contain('kms-dev-secret');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
