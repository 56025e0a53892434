import { expect } from 'chai';
import { createPrivateKey, createSecretKey, randomBytes, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as jose from 'jose';
import { DECRYPTION_FAILED_MESSAGE, JoseError, type JoseErrorCode } from '../../src/crypto/errors.js';
import {
  decryptDir,
  dirEncrypter,
  decryptEcdhEs,
  decryptJwe,
  decryptRsaOaep,
  encryptDir,
  encryptEcdhEs,
  encryptJwe,
  encryptRsaOaep,
  readJweHeader,
  type EcdhEsAlg,
  type JweEnc,
} from '../../src/crypto/jwe.js';
import { generateEcKeyPair, importPrivateJwk, importPublicJwk } from '../../src/crypto/keys.js';
import { vector, VECTORS } from '../support/jose-assert.js';

function expectJoseError(fn: () => unknown, code: JoseErrorCode): JoseError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(JoseError);
    expect((err as JoseError).code).to.equal(code);
    if (code === 'JOSE_DECRYPTION_FAILED') expect((err as JoseError).message).to.equal(DECRYPTION_FAILED_MESSAGE);
    return err as JoseError;
  }
  return expect.fail(`expected ${code}`);
}

const unb64 = (s: string) => Buffer.from(s, 'base64url');
const b64 = (b: Uint8Array | string) => Buffer.from(b).toString('base64url');
const text = new TextEncoder();

/** Only the members jose needs, without kid/use/alg that could make it refuse the key. */
function bareJwk(jwk: JsonWebKey): jose.JWK {
  const { kid: _k, use: _u, alg: _a, ...rest } = jwk;
  return rest as jose.JWK;
}

/** Replaces part `i` of a compact token. */
function withPart(token: string, i: number, value: string): string {
  const parts = token.split('.');
  parts[i] = value;
  return parts.join('.');
}

/** Flips one bit of the bytes of part `i` (keeping the encoding canonical). */
function flipBit(token: string, i: number, byte = 0): string {
  const bytes = unb64(token.split('.')[i]!);
  bytes[byte % bytes.length]! ^= 0x01;
  return withPart(token, i, b64(bytes));
}

/** Rewrites the protected header with `edit`. */
function editHeader(token: string, edit: (h: Record<string, unknown>) => void): string {
  const header = JSON.parse(unb64(token.split('.')[0]!).toString('utf8'));
  edit(header);
  return withPart(token, 0, b64(JSON.stringify(header)));
}

describe('crypto/jwe', () => {
  describe('RFC 7520 vectors', () => {
    it('5.6 dir + A128GCM: exact reproduction with the given IV, and decryption', () => {
      const v = vector('5_6');
      const key = unb64(v.input.key.k);
      const out = encryptDir(key, v.input.plaintext, { kid: v.input.key.kid, enc: 'A128GCM' }, { iv: unb64(v.generated.iv) });
      expect(out).to.equal(v.output.compact);
      expect(decryptDir(v.output.compact, key, ['A128GCM']).plaintext.toString('utf8')).to.equal(v.input.plaintext);
    });

    it('5.6 with the key as a secret KeyObject, and through dirEncrypter (header encoded once, many messages)', () => {
      const v = vector('5_6');
      const key = createSecretKey(unb64(v.input.key.k));
      const iv = { iv: unb64(v.generated.iv) };
      expect(encryptDir(key, v.input.plaintext, { kid: v.input.key.kid, enc: 'A128GCM' }, iv)).to.equal(v.output.compact);
      const encrypt = dirEncrypter(key, { kid: v.input.key.kid, enc: 'A128GCM' });
      expect(encrypt(v.input.plaintext, iv)).to.equal(v.output.compact);
      expect(encrypt(v.input.plaintext, iv)).to.equal(v.output.compact);
      const fresh = [encrypt('one'), encrypt('two')];
      expect(fresh[0]!.split('.')[2]).to.not.equal(fresh[1]!.split('.')[2]); // a new IV each time
      expect(fresh.map((t) => decryptDir(t, key, ['A128GCM']).plaintext.toString())).to.deep.equal(['one', 'two']);
      expect(decryptDir(v.output.compact, key, ['A128GCM']).plaintext.toString('utf8')).to.equal(v.input.plaintext);
      // The key length is checked against enc once, up front, for KeyObjects as for bytes.
      expectJoseError(() => dirEncrypter(key, { enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
      expectJoseError(() => decryptDir(v.output.compact, createSecretKey(randomBytes(32)), ['A128GCM']), 'JOSE_DECRYPTION_FAILED');
    });

    it('5.4 ECDH-ES+A128KW + A128GCM on P-384: reproduces encrypted_key, ciphertext and tag exactly', () => {
      const v = vector('5_4');
      const out = encryptEcdhEs(
        importPublicJwk(v.input.key),
        v.input.plaintext,
        { alg: 'ECDH-ES+A128KW', enc: 'A128GCM', kid: v.input.key.kid },
        { epk: v.encrypting_key.epk, cek: unb64(v.generated.cek), iv: unb64(v.generated.iv) },
      );
      const [h, ek, iv, ct, tag] = out.split('.');
      expect(h).to.equal(v.encrypting_content.protected_b64u);
      expect(ek).to.equal(v.encrypting_key.encrypted_key);
      expect(iv).to.equal(v.generated.iv);
      expect(ct).to.equal(v.encrypting_content.ciphertext);
      expect(tag).to.equal(v.encrypting_content.tag);
      expect(out).to.equal(v.output.compact);
    });

    it('5.4: decrypts the given output', () => {
      const v = vector('5_4');
      const { header, plaintext } = decryptEcdhEs(v.output.compact, importPrivateJwk(v.input.key), {
        alg: ['ECDH-ES+A128KW'],
        enc: ['A128GCM'],
      });
      expect(plaintext.toString('utf8')).to.equal(v.input.plaintext);
      expect(header.kid).to.equal(v.input.key.kid);
    });

    it('5.2 RSA-OAEP + A256GCM: decrypts the given output', () => {
      const v = vector('5_2');
      const { plaintext } = decryptRsaOaep(v.output.compact, importPrivateJwk(v.input.key), { alg: ['RSA-OAEP'], enc: ['A256GCM'] });
      expect(plaintext.toString('utf8')).to.equal(v.input.plaintext);
    });

    it('5.2: with the given CEK and IV our header, ciphertext and tag match (OAEP itself is randomised)', () => {
      const v = vector('5_2');
      const out = encryptRsaOaep(
        importPublicJwk(v.input.key),
        v.input.plaintext,
        { alg: 'RSA-OAEP', enc: 'A256GCM', kid: v.input.key.kid },
        { cek: unb64(v.generated.cek), iv: unb64(v.generated.iv) },
      );
      const [h, , iv, ct, tag] = out.split('.');
      expect(h).to.equal(v.encrypting_content.protected_b64u);
      expect(iv).to.equal(v.generated.iv);
      expect(ct).to.equal(v.encrypting_content.ciphertext);
      expect(tag).to.equal(v.encrypting_content.tag);
      const back = decryptRsaOaep(out, importPrivateJwk(v.input.key), { alg: ['RSA-OAEP'], enc: ['A256GCM'] });
      expect(back.plaintext.toString('utf8')).to.equal(v.input.plaintext);
    });
  });

  describe('cross-checks with jose, both directions', () => {
    const payload = 'cross-check payload ✓';

    it('dir + A256GCM', async () => {
      const key = randomBytes(32);
      const ours = encryptDir(key, payload, { enc: 'A256GCM', kid: 'k1' });
      const theirs = await jose.compactDecrypt(ours, key);
      expect(new TextDecoder().decode(theirs.plaintext)).to.equal(payload);
      expect(theirs.protectedHeader).to.deep.equal({ alg: 'dir', kid: 'k1', enc: 'A256GCM' });

      const fromJose = await new jose.CompactEncrypt(text.encode(payload)).setProtectedHeader({ alg: 'dir', enc: 'A256GCM' }).encrypt(key);
      expect(decryptDir(fromJose, key, ['A256GCM']).plaintext.toString('utf8')).to.equal(payload);
    });

    for (const alg of ['ECDH-ES+A256KW', 'ECDH-ES'] as const) {
      it(`${alg} + A256GCM on P-256`, async () => {
        const pair = generateEcKeyPair('P-256');
        const privJwk = pair.privateKey.export({ format: 'jwk' });
        const ours = encryptEcdhEs(pair.publicKey, payload, { alg, enc: 'A256GCM', kid: 'ek' });
        const joseKey = await jose.importJWK(bareJwk(privJwk), alg);
        const theirs = await jose.compactDecrypt(ours, joseKey, { keyManagementAlgorithms: [alg] });
        expect(new TextDecoder().decode(theirs.plaintext)).to.equal(payload);

        const josePub = await jose.importJWK(bareJwk(pair.publicJwk), alg);
        const fromJose = await new jose.CompactEncrypt(text.encode(payload)).setProtectedHeader({ alg, enc: 'A256GCM' }).encrypt(josePub);
        const back = decryptEcdhEs(fromJose, pair.privateKey, { alg: [alg], enc: ['A256GCM'] });
        expect(back.plaintext.toString('utf8')).to.equal(payload);
      });
    }

    it('ECDH-ES+A256KW with apu/apv, both directions', async () => {
      const pair = generateEcKeyPair('P-256');
      const apu = Buffer.from('Alice');
      const apv = Buffer.from('Bob');
      const ours = encryptEcdhEs(pair.publicKey, payload, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', apu, apv });
      expect(readJweHeader(ours)).to.include({ apu: 'QWxpY2U', apv: 'Qm9i' });
      const joseKey = await jose.importJWK(bareJwk(pair.privateKey.export({ format: 'jwk' })), 'ECDH-ES+A256KW');
      expect(new TextDecoder().decode((await jose.compactDecrypt(ours, joseKey)).plaintext)).to.equal(payload);

      const josePub = await jose.importJWK(bareJwk(pair.publicJwk), 'ECDH-ES+A256KW');
      const fromJose = await new jose.CompactEncrypt(text.encode(payload))
        .setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' })
        .setKeyManagementParameters({ apu, apv })
        .encrypt(josePub);
      expect(decryptEcdhEs(fromJose, pair.privateKey, { alg: ['ECDH-ES+A256KW'], enc: ['A256GCM'] }).plaintext.toString()).to.equal(payload);
    });

    for (const alg of ['RSA-OAEP', 'RSA-OAEP-256'] as const) {
      it(`${alg} + A256GCM (RSA 4096 from RFC 7520 5.2)`, async () => {
        const jwk = vector('5_2').input.key as JsonWebKey;
        const ours = encryptRsaOaep(importPublicJwk(jwk), payload, { alg, enc: 'A256GCM' });
        const joseKey = await jose.importJWK(bareJwk(jwk), alg);
        const theirs = await jose.compactDecrypt(ours, joseKey, { keyManagementAlgorithms: [alg] });
        expect(new TextDecoder().decode(theirs.plaintext)).to.equal(payload);

        const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub } = jwk;
        const josePub = await jose.importJWK(bareJwk(pub), alg);
        const fromJose = await new jose.CompactEncrypt(text.encode(payload)).setProtectedHeader({ alg, enc: 'A256GCM' }).encrypt(josePub);
        expect(decryptRsaOaep(fromJose, importPrivateJwk(jwk), { alg: [alg], enc: ['A256GCM'] }).plaintext.toString()).to.equal(payload);
      });
    }
  });

  describe('round trips of every mode we implement', () => {
    const encs: JweEnc[] = ['A128GCM', 'A192GCM', 'A256GCM'];
    const ecdhAlgs: EcdhEsAlg[] = ['ECDH-ES', 'ECDH-ES+A128KW', 'ECDH-ES+A192KW', 'ECDH-ES+A256KW'];
    for (const curve of ['P-256', 'P-384', 'P-521'] as const) {
      it(`ECDH-ES (all algs x encs) on ${curve}`, () => {
        const pair = generateEcKeyPair(curve);
        for (const alg of ecdhAlgs) {
          for (const enc of encs) {
            const token = encryptEcdhEs(pair.publicKey, 'hi', { alg, enc });
            expect(decryptEcdhEs(token, pair.privateKey, { alg: [alg], enc: [enc] }).plaintext.toString()).to.equal('hi');
          }
        }
      });
    }

    it('dir with 16/24/32-byte keys and an empty plaintext', () => {
      for (const enc of encs) {
        const key = randomBytes({ A128GCM: 16, A192GCM: 24, A256GCM: 32 }[enc]);
        const token = encryptDir(key, new Uint8Array(0), { enc });
        expect(decryptDir(token, key, [enc]).plaintext.length).to.equal(0);
      }
    });

    it('extra header members are kept, protected, and may not override ours', () => {
      const key = randomBytes(32);
      const token = encryptDir(key, 'x', { enc: 'A256GCM', kid: 'a', cty: 'json' });
      expect(readJweHeader(token)).to.deep.equal({ alg: 'dir', kid: 'a', enc: 'A256GCM', cty: 'json' });
      expectJoseError(
        () =>
          decryptDir(
            editHeader(token, (h) => (h.cty = 'text')),
            key,
            ['A256GCM'],
          ),
        'JOSE_DECRYPTION_FAILED',
      );
      expectJoseError(() => encryptDir(key, 'x', { enc: 'A256GCM', alg: 'none' }), 'JOSE_MALFORMED');
      const pair = generateEcKeyPair();
      expectJoseError(() => encryptEcdhEs(pair.publicKey, 'x', { alg: 'ECDH-ES', enc: 'A256GCM', header: { epk: {} } }), 'JOSE_MALFORMED');
    });

    it('encryptJwe / decryptJwe dispatch on key type and alg', () => {
      const ec = generateEcKeyPair();
      const rsaJwk = vector('5_2').input.key as JsonWebKey;
      const secret = createSecretKey(randomBytes(32));
      const allowed = { alg: ['dir', 'ECDH-ES+A256KW', 'RSA-OAEP-256'], enc: ['A256GCM'] };
      const cases: Array<[KeyObject, KeyObject, Parameters<typeof encryptJwe>[2]]> = [
        [ec.publicKey, ec.privateKey, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: 'e' }],
        [importPublicJwk(rsaJwk), importPrivateJwk(rsaJwk), { alg: 'RSA-OAEP-256', enc: 'A256GCM' }],
        [secret, secret, { alg: 'dir', enc: 'A256GCM', kid: 's' }],
      ];
      for (const [to, from, opts] of cases) {
        const token = encryptJwe(to, 'dispatch', opts);
        const { header, plaintext } = decryptJwe(token, from, allowed);
        expect(header.alg).to.equal(opts.alg);
        expect(plaintext.toString()).to.equal('dispatch');
      }
      // An RSA token offered to an EC key: the alg does not fit the key.
      const rsaToken = encryptJwe(importPublicJwk(rsaJwk), 'x', { alg: 'RSA-OAEP-256', enc: 'A256GCM' });
      expectJoseError(() => decryptJwe(rsaToken, ec.privateKey, allowed), 'JOSE_ALG_NOT_ALLOWED');
      expectJoseError(() => encryptJwe(ec.publicKey, 'x', { alg: 'RSA-OAEP', enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
      expectJoseError(() => encryptJwe(ec.privateKey, 'x', { alg: 'ECDH-ES', enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
    });
  });

  describe('readJweHeader', () => {
    it('reads the header without decrypting', () => {
      const v = vector('5_4');
      expect(readJweHeader(v.output.compact)).to.deep.equal(v.encrypting_content.protected);
    });

    const good = encryptDir(randomBytes(32), 'x', { enc: 'A256GCM' });
    const malformedCases: Array<[string, string]> = [
      ['4 parts', good.split('.').slice(0, 4).join('.')],
      ['6 parts', `${good}.AA`],
      ['a "+" in the ciphertext', withPart(good, 3, 'ab+c')],
      ['padding in the tag', withPart(good, 4, `${good.split('.')[4]}==`)],
      ['a space in the header', withPart(good, 0, ` ${good.split('.')[0]}`)],
      ['a header that is not JSON', withPart(good, 0, b64('{"alg":"dir",'))],
      ['a header that is a JSON array', withPart(good, 0, b64('["dir","A256GCM"]'))],
      ['a header without "enc"', withPart(good, 0, b64('{"alg":"dir"}'))],
      ['a header with a numeric "alg"', withPart(good, 0, b64('{"alg":1,"enc":"A256GCM"}'))],
      ['a "crit" header', withPart(good, 0, b64('{"alg":"dir","enc":"A256GCM","crit":["exp"],"exp":1}'))],
      ['an empty token', ''],
    ];
    for (const [label, token] of malformedCases) {
      it(`rejects ${label} with JOSE_MALFORMED`, () => {
        expectJoseError(() => readJweHeader(token), 'JOSE_MALFORMED');
      });
    }

    it('rejects "zip" with JOSE_ALG_NOT_ALLOWED', () => {
      expectJoseError(() => readJweHeader(withPart(good, 0, b64('{"alg":"dir","enc":"A256GCM","zip":"DEF"}'))), 'JOSE_ALG_NOT_ALLOWED');
    });
  });

  describe('hostile input', () => {
    const ec = generateEcKeyPair('P-256');
    const rsaJwk = vector('5_2').input.key as JsonWebKey;
    const rsaPub = importPublicJwk(rsaJwk);
    const rsaPriv = importPrivateJwk(rsaJwk);
    const dirKey = randomBytes(32);
    const allowEc = { alg: ['ECDH-ES', 'ECDH-ES+A256KW'], enc: ['A256GCM'] };
    const allowRsa = { alg: ['RSA-OAEP', 'RSA-OAEP-256'], enc: ['A256GCM'] };
    const plaintext = 'attack at dawn, attack at dawn!';

    const modes: Array<{ name: string; token: () => string; open: (t: string) => unknown; hasKey: boolean }> = [
      { name: 'dir', token: () => encryptDir(dirKey, plaintext, { enc: 'A256GCM' }), open: (t) => decryptDir(t, dirKey, ['A256GCM']), hasKey: false },
      {
        name: 'ECDH-ES+A256KW',
        token: () => encryptEcdhEs(ec.publicKey, plaintext, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }),
        open: (t) => decryptEcdhEs(t, ec.privateKey, allowEc),
        hasKey: true,
      },
      {
        name: 'ECDH-ES direct',
        token: () => encryptEcdhEs(ec.publicKey, plaintext, { alg: 'ECDH-ES', enc: 'A256GCM' }),
        open: (t) => decryptEcdhEs(t, ec.privateKey, allowEc),
        hasKey: false,
      },
      {
        name: 'RSA-OAEP-256',
        token: () => encryptRsaOaep(rsaPub, plaintext, { alg: 'RSA-OAEP-256', enc: 'A256GCM' }),
        open: (t) => decryptRsaOaep(t, rsaPriv, allowRsa),
        hasKey: true,
      },
    ];

    for (const mode of modes) {
      describe(mode.name, () => {
        const token = mode.token();
        it('sanity: the untampered token decrypts', () => {
          expect((mode.open(token) as { plaintext: Buffer }).plaintext.toString()).to.equal(plaintext);
        });
        it('tampered ciphertext, tag and IV -> JOSE_DECRYPTION_FAILED', () => {
          for (const part of [2, 3, 4]) {
            for (const byte of [0, 5, 11]) expectJoseError(() => mode.open(flipBit(token, part, byte)), 'JOSE_DECRYPTION_FAILED');
          }
        });
        it('tampered header -> JOSE_DECRYPTION_FAILED (the header is the AAD)', () => {
          expectJoseError(() => mode.open(editHeader(token, (h) => (h.kid = 'x'))), 'JOSE_DECRYPTION_FAILED');
        });
        it('truncated tag, a 16-byte IV, an empty ciphertext -> JOSE_DECRYPTION_FAILED', () => {
          expectJoseError(() => mode.open(withPart(token, 4, b64(unb64(token.split('.')[4]!).subarray(0, 15)))), 'JOSE_DECRYPTION_FAILED');
          expectJoseError(() => mode.open(withPart(token, 2, b64(randomBytes(16)))), 'JOSE_DECRYPTION_FAILED');
          expectJoseError(() => mode.open(withPart(token, 3, '')), 'JOSE_DECRYPTION_FAILED');
        });
        if (mode.hasKey) {
          it('tampered, truncated or empty encrypted key -> JOSE_DECRYPTION_FAILED', () => {
            for (const byte of [0, 7, 20]) expectJoseError(() => mode.open(flipBit(token, 1, byte)), 'JOSE_DECRYPTION_FAILED');
            expectJoseError(() => mode.open(withPart(token, 1, b64(unb64(token.split('.')[1]!).subarray(1)))), 'JOSE_DECRYPTION_FAILED');
            expectJoseError(() => mode.open(withPart(token, 1, '')), 'JOSE_DECRYPTION_FAILED');
          });
        } else {
          it('a non-empty encrypted key -> JOSE_DECRYPTION_FAILED (RFC 7516 §5.2 step 10)', () => {
            expectJoseError(() => mode.open(withPart(token, 1, b64(randomBytes(40)))), 'JOSE_DECRYPTION_FAILED');
          });
        }
        it('non-base64url characters in any part -> JOSE_MALFORMED', () => {
          for (const part of [0, 1, 2, 3, 4]) expectJoseError(() => mode.open(withPart(token, part, 'a*b')), 'JOSE_MALFORMED');
        });
      });
    }

    it('the wrong key -> JOSE_DECRYPTION_FAILED, the same error everywhere', () => {
      const other = generateEcKeyPair('P-256');
      const t1 = encryptEcdhEs(ec.publicKey, plaintext, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
      const t2 = encryptEcdhEs(ec.publicKey, plaintext, { alg: 'ECDH-ES', enc: 'A256GCM' });
      const e1 = expectJoseError(() => decryptEcdhEs(t1, other.privateKey, allowEc), 'JOSE_DECRYPTION_FAILED');
      const e2 = expectJoseError(() => decryptEcdhEs(t2, other.privateKey, allowEc), 'JOSE_DECRYPTION_FAILED');
      const e3 = expectJoseError(() => decryptDir(encryptDir(dirKey, 'x', { enc: 'A256GCM' }), randomBytes(32), ['A256GCM']), 'JOSE_DECRYPTION_FAILED');
      const e4 = expectJoseError(() => decryptDir(encryptDir(dirKey, 'x', { enc: 'A256GCM' }), randomBytes(16), ['A256GCM']), 'JOSE_DECRYPTION_FAILED');
      const v = vector('5_2');
      const otherRsa = importPrivateJwk(JSON.parse(readFileSync(new URL('3_4.rsa_private_key.json', VECTORS), 'utf8')));
      const e5 = expectJoseError(() => decryptRsaOaep(v.output.compact, otherRsa, { alg: ['RSA-OAEP'], enc: ['A256GCM'] }), 'JOSE_DECRYPTION_FAILED');
      for (const e of [e1, e2, e3, e4, e5]) {
        expect(e.message).to.equal(DECRYPTION_FAILED_MESSAGE);
        expect(e.message).to.not.include(dirKey.toString('base64url'));
      }
    });

    it('algorithms outside the allow-lists -> JOSE_ALG_NOT_ALLOWED', () => {
      const kw = encryptEcdhEs(ec.publicKey, 'x', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
      expectJoseError(() => decryptEcdhEs(kw, ec.privateKey, { alg: ['ECDH-ES'], enc: ['A256GCM'] }), 'JOSE_ALG_NOT_ALLOWED');
      expectJoseError(() => decryptEcdhEs(kw, ec.privateKey, { alg: ['ECDH-ES+A256KW'], enc: ['A128GCM'] }), 'JOSE_ALG_NOT_ALLOWED');
      // An alg we do not implement, even if a caller lists it.
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(kw, (h) => (h.alg = 'A256KW')),
            ec.privateKey,
            { alg: ['A256KW'], enc: ['A256GCM'] },
          ),
        'JOSE_ALG_NOT_ALLOWED',
      );
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(kw, (h) => (h.enc = 'A256CBC-HS512')),
            ec.privateKey,
            { alg: ['ECDH-ES+A256KW'], enc: ['A256CBC-HS512'] },
          ),
        'JOSE_ALG_NOT_ALLOWED',
      );
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(kw, (h) => (h.enc = 'constructor')),
            ec.privateKey,
            { alg: ['ECDH-ES+A256KW'], enc: ['constructor'] },
          ),
        'JOSE_ALG_NOT_ALLOWED',
      );
      // alg "none" and an RSA alg at the dir and ECDH entry points.
      const dir = encryptDir(dirKey, 'x', { enc: 'A256GCM' });
      expectJoseError(
        () =>
          decryptDir(
            editHeader(dir, (h) => (h.alg = 'none')),
            dirKey,
            ['A256GCM'],
          ),
        'JOSE_ALG_NOT_ALLOWED',
      );
      const rsa = encryptRsaOaep(rsaPub, 'x', { alg: 'RSA-OAEP', enc: 'A256GCM' });
      expectJoseError(() => decryptEcdhEs(rsa, ec.privateKey, { alg: ['RSA-OAEP'], enc: ['A256GCM'] }), 'JOSE_ALG_NOT_ALLOWED');
      expectJoseError(() => decryptRsaOaep(rsa, rsaPriv, { alg: ['RSA-OAEP-256'], enc: ['A256GCM'] }), 'JOSE_ALG_NOT_ALLOWED');
    });

    it('an epk on a different curve -> JOSE_DECRYPTION_FAILED', () => {
      const p384 = generateEcKeyPair('P-384');
      const token = encryptEcdhEs(p384.publicKey, 'x', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
      expectJoseError(() => decryptEcdhEs(token, ec.privateKey, allowEc), 'JOSE_DECRYPTION_FAILED');
      // The same with the crv label forged to P-256 but P-384-sized coordinates.
      const forged = editHeader(token, (h) => ((h.epk as JsonWebKey).crv = 'P-256'));
      expectJoseError(() => decryptEcdhEs(forged, ec.privateKey, allowEc), 'JOSE_DECRYPTION_FAILED');
    });

    it('an epk that is not on the curve -> JOSE_DECRYPTION_FAILED, with our keys and with foreign KeyObjects', () => {
      const token = encryptEcdhEs(ec.publicKey, 'x', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
      const offCurve = editHeader(token, (h) => {
        const epk = h.epk as JsonWebKey;
        const y = unb64(epk.y as string);
        y[31]! ^= 1;
        epk.y = b64(y);
      });
      expectJoseError(() => decryptEcdhEs(offCurve, ec.privateKey, allowEc), 'JOSE_DECRYPTION_FAILED');
      // A private key not made by keys.ts takes the import-the-epk path.
      const foreign = createPrivateKey({ key: ec.privateKey.export({ format: 'jwk' }), format: 'jwk' });
      expect(decryptEcdhEs(token, foreign, allowEc).plaintext.toString()).to.equal('x');
      expectJoseError(() => decryptEcdhEs(offCurve, foreign, allowEc), 'JOSE_DECRYPTION_FAILED');
    });

    it('a missing, non-object or non-EC epk', () => {
      const token = encryptEcdhEs(ec.publicKey, 'x', { alg: 'ECDH-ES', enc: 'A256GCM' });
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(token, (h) => delete h.epk),
            ec.privateKey,
            allowEc,
          ),
        'JOSE_MALFORMED',
      );
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(token, (h) => (h.epk = 'x')),
            ec.privateKey,
            allowEc,
          ),
        'JOSE_MALFORMED',
      );
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(token, (h) => (h.epk = { kty: 'RSA', n: 'AQAB', e: 'AQAB' })),
            ec.privateKey,
            allowEc,
          ),
        'JOSE_DECRYPTION_FAILED',
      );
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(token, (h) => ((h.epk as Record<string, unknown>).x = 5)),
            ec.privateKey,
            allowEc,
          ),
        'JOSE_DECRYPTION_FAILED',
      );
      expectJoseError(
        () =>
          decryptEcdhEs(
            editHeader(token, (h) => (h.apu = 7)),
            ec.privateKey,
            allowEc,
          ),
        'JOSE_MALFORMED',
      );
    });

    it('the epk in the header has public members only', () => {
      const header = readJweHeader(encryptEcdhEs(ec.publicKey, 'x', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }));
      expect(Object.keys(header.epk as object).sort()).to.deep.equal(['crv', 'kty', 'x', 'y']);
    });

    it('wrong key types and sizes at the entry points -> JOSE_KEY_INVALID', () => {
      expectJoseError(() => encryptDir(randomBytes(31), 'x', { enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
      expectJoseError(() => encryptEcdhEs(ec.privateKey, 'x', { alg: 'ECDH-ES', enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
      expectJoseError(() => encryptEcdhEs(rsaPub, 'x', { alg: 'ECDH-ES', enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
      expectJoseError(() => encryptRsaOaep(ec.publicKey, 'x', { alg: 'RSA-OAEP', enc: 'A256GCM' }), 'JOSE_KEY_INVALID');
      const token = encryptEcdhEs(ec.publicKey, 'x', { alg: 'ECDH-ES', enc: 'A256GCM' });
      expectJoseError(() => decryptEcdhEs(token, ec.publicKey, allowEc), 'JOSE_KEY_INVALID');
    });
  });

  describe('soak: ephemeral EC keys never hang the process', () => {
    it('runs generateEcKeyPair + encryptEcdhEs for ~2 s', function () {
      this.timeout(15000);
      const deadline = Date.now() + 2000;
      let n = 0;
      while (Date.now() < deadline) {
        const pair = generateEcKeyPair('P-256');
        const token = encryptEcdhEs(pair.publicKey, 'soak', { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
        if (n % 50 === 0) {
          expect(decryptEcdhEs(token, pair.privateKey, { alg: ['ECDH-ES+A256KW'], enc: ['A256GCM'] }).plaintext.toString()).to.equal('soak');
        }
        n++;
      }
      expect(n).to.be.greaterThan(100);
    });
  });
});
