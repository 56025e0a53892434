// The store setting (store.url, KMS_STORE, kms run --store): etcd:// URLs, the TLS and auth options, clear refusals.
import { expect } from 'chai';
import { ConfigError, loadConfig, showConfig } from '../../src/config.js';
import { parseStoreUrl } from '../../src/store/store-url.js';

describe('store: the store.url setting', () => {
  it('reads etcd://host[:port],... as client endpoints (2379 by default; https with TLS)', () => {
    expect(parseStoreUrl('etcd://a.example:2380,b.example,[::1]:4000', false)).to.deep.equal({
      endpoints: ['http://a.example:2380', 'http://b.example:2379', 'http://[::1]:4000'],
    });
    expect(parseStoreUrl('etcd://127.0.0.1:2379', true)).to.deep.equal({ endpoints: ['https://127.0.0.1:2379'] });
  });

  it('refuses other schemes, empty hosts, bad ports, paths and a host named twice, saying why', () => {
    expect(parseStoreUrl('http://a:2379', false))
      .to.have.property('error')
      .that.matches(/must use etcd:\/\//);
    expect(parseStoreUrl('etcd://', false))
      .to.have.property('error')
      .that.matches(/names no host/);
    expect(parseStoreUrl('etcd://a:99999', false))
      .to.have.property('error')
      .that.matches(/port must be a number from 1 to 65535/);
    expect(parseStoreUrl('etcd://a:2379/kms', false))
      .to.have.property('error')
      .that.matches(/not host or host:port/);
    expect(parseStoreUrl('etcd://a,a:2379', false))
      .to.have.property('error')
      .that.matches(/names a host twice/);
    expect(parseStoreUrl('etcd:a', false))
      .to.have.property('error')
      .that.matches(/must look like etcd:\/\//);
  });

  it('is LevelDB in the data folder by default; KMS_STORE and the TLS and auth variables set it', () => {
    expect(loadConfig({ env: {} }).store.url).to.equal(undefined);
    const c = loadConfig({
      env: {
        KMS_STORE: 'etcd://e1:2379,e2:2379',
        KMS_STORE_TLS_CA_FILE: '/etc/kms/etcd-ca.pem',
        KMS_STORE_TLS_CERT_FILE: '/etc/kms/etcd.pem',
        KMS_STORE_TLS_KEY_FILE: '/etc/kms/etcd-key.pem',
        KMS_STORE_USERNAME: 'kms',
        KMS_STORE_PASSWORD: 'pw-not-shown',
      },
    });
    expect(c.store).to.deep.include({ url: 'etcd://e1:2379,e2:2379', username: 'kms', password: 'pw-not-shown', timeoutMs: 5000 });
    expect(c.store.tls).to.deep.equal({ caFile: '/etc/kms/etcd-ca.pem', certFile: '/etc/kms/etcd.pem', keyFile: '/etc/kms/etcd-key.pem' });
    const shown = showConfig(c, {});
    expect(shown).to.not.include('pw-not-shown');
    expect(shown).to.include('"password": "[hidden]"');
  });

  it('refuses a bad URL, a user without a password, a certificate without its key or CA, options without a URL, naming the setting', () => {
    const refusal = (env: Record<string, string>) => {
      try {
        loadConfig({ env });
      } catch (e) {
        expect(e).to.be.instanceOf(ConfigError);
        return (e as Error).message;
      }
      throw new Error('accepted');
    };
    expect(refusal({ KMS_STORE: 'redis://a' })).to.match(/setting store\.url \(from KMS_STORE\): must use etcd:\/\//);
    expect(refusal({ KMS_STORE: 'etcd://a', KMS_STORE_USERNAME: 'kms' })).to.match(
      /setting store\.password.*give store\.username and store\.password together/,
    );
    expect(refusal({ KMS_STORE: 'etcd://a', KMS_STORE_TLS_CA_FILE: '/ca', KMS_STORE_TLS_CERT_FILE: '/c' })).to.match(/setting store\.tls\.keyFile.*together/);
    expect(refusal({ KMS_STORE: 'etcd://a', KMS_STORE_TLS_CERT_FILE: '/c', KMS_STORE_TLS_KEY_FILE: '/k' })).to.match(/store\.tls\.caFile: missing/);
    expect(refusal({ KMS_STORE_USERNAME: 'kms', KMS_STORE_PASSWORD: 'pw' })).to.match(/setting store\.url: missing/);
  });
});
