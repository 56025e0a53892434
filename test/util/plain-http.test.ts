import { expect } from 'chai';
import { plainHttpAllowed } from '../../src/util/plain-http.js';

describe('plain HTTP to an identity provider: loopback only', () => {
  it('allows http on 127.0.0.0/8, localhost and [::1]', () => {
    for (const u of ['http://127.0.0.1:5580', 'http://127.1.2.3/', 'http://localhost:5580/x', 'http://[::1]:5580'])
      expect(plainHttpAllowed(new URL(u)), u).to.equal(true);
  });
  it('refuses http anywhere else, and says nothing of https (always allowed by the libraries)', () => {
    for (const u of ['http://192.0.2.1:5580', 'http://idp.example.com', 'http://127.0.0.1.example.com/', 'http://localhost.example.com/', 'https://127.0.0.1/'])
      expect(plainHttpAllowed(new URL(u)), u).to.equal(false);
  });
});
