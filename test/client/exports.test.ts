// The package's two entries resolve by name, as a user's project imports them.
import { expect } from 'chai';

describe('package exports', function () {
  it('xmpp-kms/client: the client library', async function () {
    const m = await import('xmpp-kms/client');
    for (const name of ['KmsClient', 'EncryptedRoom', 'KmsSession', 'fetchKmsIdentity', 'encryptRoomMessage', 'verifyChain', 'KmsResponseError']) {
      expect(m, name).to.have.property(name).that.is.a('function');
    }
  });

  it('xmpp-kms: the server side', async function () {
    const m = await import('xmpp-kms');
    for (const name of ['startKms', 'loadConfig', 'KmsEngine', 'KmsComponent', 'openLevelStore', 'LocalIssuer']) {
      expect(m, name).to.have.property(name).that.is.a('function');
    }
  });
});
