/**
 * The client's WebCrypto cryptography (src/client/webcrypto.ts) against the known-answer vectors
 * and against the server's node:crypto implementation (src/crypto), in both directions: what one
 * writes, the other reads.
 */
import { expect } from 'chai';
import { generateKeyPairSync, type JsonWebKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { decryptDir as nodeDecryptDir, decryptJwe, encryptDir as nodeEncryptDir, encryptJwe } from '../../src/crypto/jwe.js';
import { signCompact, verifyCompact, type JwsAlg } from '../../src/crypto/jws.js';
import { generateEcKeyPair, importPrivateJwk, importPublicJwk, publicJwk as nodePublicJwk, thumbprint as nodeThumbprint } from '../../src/crypto/keys.js';
import { blockHash } from '../../src/protocol/block-hash.js';
import {
  b64uDecode,
  b64uEncode,
  decryptDir,
  decryptWithKey,
  deriveChannelKey,
  encryptDir,
  encryptToKey,
  generateEphemeralKeyPair,
  generatePrivateJwk,
  importEphemeralPrivate,
  type JWK,
  publicJwk,
  randomInt,
  sha256Hex,
  signJws,
  thumbprint,
  utf8,
  verifyJws,
} from '../../src/client/webcrypto.js';

const json = (name: string) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url), 'utf8'));
const channel = json('channel.json') as {
  kid: string;
  client: JWK;
  kms: JWK;
  key: string;
  messages: { iv: string; plaintext: string; jwe: string }[];
};
const hkdf = json('ecdhe-hkdf.json') as { vectors: { source: string; private: JWK; public: JWK; length: number; key: string }[] };

/** An RSA-2048 private JWK made by node:crypto (through PKCS#8, see src/client/keys.ts). */
async function nodeRsaJwk(): Promise<JWK> {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const der = privateKey.export({ format: 'der', type: 'pkcs8' });
  const key = await globalThis.crypto.subtle.importKey('pkcs8', der as Uint8Array<ArrayBuffer>, { name: 'RSA-PSS', hash: 'SHA-256' }, true, ['sign']);
  const { alg: _a, key_ops: _k, ext: _e, ...jwk } = (await globalThis.crypto.subtle.exportKey('jwk', key)) as JWK;
  return jwk;
}

describe('client/webcrypto', () => {
  let rsa: JWK;
  let ec: JWK;
  before(async () => {
    rsa = await generatePrivateJwk();
    ec = await generatePrivateJwk({ type: 'EC' });
  });

  describe('known answers', () => {
    for (const v of hkdf.vectors) {
      it(`reproduces the channel key of ${v.source}`, async () => {
        const key = await deriveChannelKey(await importEphemeralPrivate(v.private), v.public, v.length);
        expect(b64uEncode(key)).to.equal(v.key);
      });
    }

    it('derives the channel vector key from either side', async () => {
      expect(b64uEncode(await deriveChannelKey(await importEphemeralPrivate(channel.client), publicJwk(channel.kms)))).to.equal(channel.key);
      expect(b64uEncode(await deriveChannelKey(await importEphemeralPrivate(channel.kms), publicJwk(channel.client)))).to.equal(channel.key);
    });

    it('reproduces and opens the channel vector messages', async () => {
      const key = b64uDecode(channel.key);
      for (const m of channel.messages) {
        expect(await encryptDir(key, m.plaintext, channel.kid, { iv: b64uDecode(m.iv) })).to.equal(m.jwe);
        expect(utf8((await decryptDir(m.jwe, key)).plaintext)).to.equal(m.plaintext);
      }
    });

    it('hashes blocks as the server does', async () => {
      for (const s of ['', 'eyJhbGciOiJQUzI1NiJ9.e30.c2ln', 'x'.repeat(1000)]) expect(await sha256Hex(s)).to.equal(blockHash(s));
    });

    it('computes RFC 7638 thumbprints as the server does', async () => {
      for (const jwk of [rsa, ec]) expect(await thumbprint(jwk)).to.equal(nodeThumbprint(publicJwk(jwk) as JsonWebKey));
    });
  });

  describe('with the server implementation (node:crypto)', () => {
    it('reads and writes dir + A256GCM both ways', async () => {
      const key = globalThis.crypto.getRandomValues(new Uint8Array(32));
      const fromNode = nodeEncryptDir(Buffer.from(key), 'from node', { enc: 'A256GCM', kid: '/ecdhe/1' });
      const opened = await decryptDir(fromNode, key);
      expect(utf8(opened.plaintext)).to.equal('from node');
      expect(opened.header).to.deep.equal({ alg: 'dir', kid: '/ecdhe/1', enc: 'A256GCM' });
      const fromWeb = await encryptDir(key, 'from the web', '/ecdhe/1');
      expect(nodeDecryptDir(fromWeb, Buffer.from(key), ['A256GCM']).plaintext.toString()).to.equal('from the web');
      expect(JSON.parse(Buffer.from(fromWeb.split('.')[0]!, 'base64url').toString())).to.deep.equal({ alg: 'dir', kid: '/ecdhe/1', enc: 'A256GCM' });
    });

    it('refuses a tampered dir JWE', async () => {
      const key = globalThis.crypto.getRandomValues(new Uint8Array(32));
      const jwe = (await encryptDir(key, 'x', 'k')).split('.');
      jwe[3] = jwe[3]!.startsWith('A') ? `B${jwe[3]!.slice(1)}` : `A${jwe[3]!.slice(1)}`;
      let failed = false;
      await decryptDir(jwe.join('.'), key).catch(() => (failed = true));
      expect(failed).to.equal(true);
    });

    for (const type of ['RSA', 'EC'] as const) {
      it(`encrypts to a ${type} KMS key that the server decrypts`, async () => {
        const priv = type === 'RSA' ? rsa : ec;
        const jwe = await encryptToKey(publicJwk(priv), '{"hello":1}', 'kms://kms.example');
        const { header, plaintext } = decryptJwe(jwe, importPrivateJwk(priv), { alg: ['RSA-OAEP', 'ECDH-ES'], enc: ['A256GCM'] });
        expect(header.alg).to.equal(type === 'RSA' ? 'RSA-OAEP' : 'ECDH-ES');
        expect(header.kid).to.equal('kms://kms.example');
        expect(plaintext.toString()).to.equal('{"hello":1}');
      });

      it(`unwraps what the server wraps to a ${type} entity key`, async () => {
        const priv = type === 'RSA' ? rsa : ec;
        const algs = type === 'RSA' ? (['RSA-OAEP', 'RSA-OAEP-256'] as const) : (['ECDH-ES+A256KW'] as const);
        for (const alg of algs) {
          const jwe = encryptJwe(importPublicJwk(priv), '{"kty":"oct"}', { alg, enc: 'A256GCM' });
          expect(utf8((await decryptWithKey(jwe, priv)).plaintext)).to.equal('{"kty":"oct"}');
        }
      });
    }

    const sigCases: [string, () => JWK, JwsAlg][] = [
      ['PS256', () => rsa, 'PS256'],
      ['RS256', () => rsa, 'RS256'],
      ['ES256', () => ec, 'ES256'],
    ];
    for (const [name, priv, alg] of sigCases) {
      it(`verifies ${name} signatures by the server and makes ones it verifies`, async () => {
        const fromNode = signCompact(importPrivateJwk(priv()), alg, '{"a":1}', { kid: 'k1' });
        const v = await verifyJws(fromNode, publicJwk(priv()));
        expect(utf8(v.payload)).to.equal('{"a":1}');
        expect(v.header).to.deep.equal({ alg, kid: 'k1' });
        if (alg === 'RS256') return;
        const fromWeb = await signJws(priv(), alg as 'PS256' | 'ES256', '{"b":2}', { kid: 'k2' });
        const n = verifyCompact(fromWeb, importPublicJwk(priv()), [alg]);
        expect(n.payload.toString()).to.equal('{"b":2}');
        expect(n.header).to.deep.equal({ alg, kid: 'k2' });
      });
    }

    it('refuses a signature by another key or with an alg the key does not allow', async () => {
      const other = await generatePrivateJwk({ type: 'EC' });
      const jws = signCompact(importPrivateJwk(ec), 'ES256', 'x');
      let failed = 0;
      await verifyJws(jws, publicJwk(other)).catch(() => failed++);
      await verifyJws(signCompact(importPrivateJwk(rsa), 'PS256', 'x'), publicJwk(rsa), ['RS256']).catch(() => failed++);
      expect(failed).to.equal(2);
    });

    it('uses a private JWK made by node:crypto, and node:crypto uses one made here', async () => {
      const nodeMade = await nodeRsaJwk();
      const jws = await signJws(nodeMade, 'PS256', 'y');
      expect(verifyCompact(jws, importPublicJwk(nodeMade), ['PS256']).payload.toString()).to.equal('y');
      const ecNode = generateEcKeyPair('P-256');
      expect(b64uEncode(JSON.stringify(nodePublicJwk(ecNode.publicKey)))).to.be.a('string');
      expect(importPrivateJwk(rsa).asymmetricKeyDetails?.modulusLength).to.equal(2048);
    });
  });

  it('makes fresh ephemeral keys that agree with the server', async () => {
    const a = await generateEphemeralKeyPair();
    const b = await generateEphemeralKeyPair();
    expect(await deriveChannelKey(a.privateKey, b.publicJwk)).to.deep.equal(await deriveChannelKey(b.privateKey, a.publicJwk));
    expect(Object.keys(a.publicJwk).sort()).to.deep.equal(['crv', 'kty', 'x', 'y']);
  });

  it('draws random integers in range', () => {
    for (let i = 0; i < 200; i++) {
      const n = randomInt(1, 201);
      expect(n).to.be.within(1, 200);
    }
  });
});
