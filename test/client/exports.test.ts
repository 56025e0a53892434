// What the package's two entry modules export (src/index.ts and src/client/index.ts). That they
// resolve by name from the built, installed package is test/package/consumer.test.ts's part.
import { expect } from 'chai';

describe('package exports', function () {
  it('xmpp-kms/client: the client library', async function () {
    const m = await import('../../src/client/index.js');
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
    const m = await import('../../src/index.js');
    // Start one from a configuration, or compose one from its parts as startKms does (src/server.ts).
    for (const name of [
      'startKms',
      'loadConfig',
      'KmsEngine',
      'EngineDeps',
      'engineConfig',
      'Authenticator',
      'loadIdentity',
      'Sealer',
      'KmsState',
      'openLevelStore',
      'LevelKvStore',
      'KmsComponent',
      'LocalIssuer',
      'createLogger',
    ]) {
      expect(m, name).to.have.property(name).that.is.a('function');
    }
  });
});
