// The package's two entries resolve by name, as a user's project imports them.
import { expect } from 'chai';

describe('package exports', function () {
  it('xmpp-kms/client: the client library', async function () {
    const m = await import('xmpp-kms/client');
    for (const name of ['KmsClient', 'EncryptedRoom', 'KmsSession', 'fetchKmsIdentity', 'encryptRoomMessage', 'verifyChain', 'KmsResponseError']) {
      expect(m, name).to.have.property(name).that.is.a('function');
    }
    // One error model: every error class the library throws is a KmsError, and all are exported.
    for (const name of ['KmsResponseError', 'KmsStanzaError', 'KmsTimeoutError', 'BadResponseError', 'ChainVerificationError', 'IdentityValidationError']) {
      expect(m, name).to.have.property(name).that.is.a('function');
      expect((m as Record<string, unknown>)[name] as object, name).to.satisfy((c: { prototype: unknown }) => c.prototype instanceof m.KmsError);
    }
  });

  it('xmpp-kms: the server side', async function () {
    const m = await import('xmpp-kms');
    for (const name of ['startKms', 'loadConfig', 'KmsEngine', 'KmsComponent', 'openLevelStore', 'LocalIssuer']) {
      expect(m, name).to.have.property(name).that.is.a('function');
    }
  });
});
