import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { decode, decodeJsonObject, encode } from '../../src/crypto/base64url.js';
import { expectJoseError } from '../support/jose-assert.js';

describe('crypto/base64url', () => {
  it('encodes bytes and strings (UTF-8) without padding', () => {
    expect(encode(Buffer.from([0xfb, 0xff]))).to.equal('-_8');
    expect(encode('’')).to.equal('4oCZ');
    expect(encode(new Uint8Array(0))).to.equal('');
  });

  it('encodes a Uint8Array view at an offset correctly', () => {
    const backing = new Uint8Array([1, 2, 3, 4, 5, 6]);
    expect(encode(backing.subarray(2, 4))).to.equal(Buffer.from([3, 4]).toString('base64url'));
  });

  it('round-trips every length from 0 to 64', () => {
    for (let n = 0; n <= 64; n++) {
      const bytes = randomBytes(n);
      const s = encode(bytes);
      expect(s).to.equal(bytes.toString('base64url'));
      expect(decode(s).equals(bytes)).to.equal(true);
    }
  });

  it('decodes the empty string to no bytes', () => {
    expect(decode('').length).to.equal(0);
  });

  for (const [label, bad] of [
    ['padding', 'QQ=='],
    ['standard-alphabet +', 'a+bc'],
    ['standard-alphabet /', 'a/bc'],
    ['a space', 'QU JD'],
    ['a newline', 'QUJD\nRA'],
    ['a dot', 'QU.D'],
    ['an impossible length (4n+1)', 'QUJDR'],
    ['non-zero trailing bits (2 chars)', 'QR'],
    ['non-zero trailing bits (3 chars)', 'QUF'],
    ['non-ASCII', 'QUJ€'],
  ] as const) {
    it(`rejects ${label} with JOSE_MALFORMED`, () => {
      expectJoseError(() => decode(bad), 'JOSE_MALFORMED');
    });
  }

  it('agrees with a reference strict checker on random strings (fuzz)', () => {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const junk = `${alphabet}+/= .\n\u00e9`;
    const sextet = (c: string) => alphabet.indexOf(c);
    const reference = (s: string): boolean => {
      if (s.length % 4 === 1 || ![...s].every((c) => sextet(c) >= 0)) return false;
      const last = s.length ? sextet(s[s.length - 1]!) : 0;
      if (s.length % 4 === 2) return (last & 0x0f) === 0;
      if (s.length % 4 === 3) return (last & 0x03) === 0;
      return true;
    };
    const seed = randomBytes(4000);
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const len = seed[i]! % 13;
      const pool = i % 2 === 0 ? alphabet : junk;
      let s = '';
      for (let j = 0; j < len; j++) s += pool[randomBytes(1)[0]! % pool.length];
      let ok = true;
      try {
        decode(s);
      } catch {
        ok = false;
      }
      expect(ok, JSON.stringify(s)).to.equal(reference(s));
      if (ok) accepted++;
    }
    expect(accepted).to.be.greaterThan(100);
  });

  it('rejects a non-string', () => {
    expectJoseError(() => decode(42 as unknown as string), 'JOSE_MALFORMED');
  });

  describe('decodeJsonObject', () => {
    it('decodes a JSON object', () => {
      expect(decodeJsonObject(encode('{"alg":"dir"}'))).to.deep.equal({ alg: 'dir' });
    });
    for (const [label, text] of [
      ['an array', '[1,2]'],
      ['null', 'null'],
      ['a string', '"x"'],
      ['not JSON', '{alg:dir}'],
    ] as const) {
      it(`rejects ${label}`, () => {
        expectJoseError(() => decodeJsonObject(encode(text)), 'JOSE_MALFORMED');
      });
    }
    it('rejects invalid UTF-8', () => {
      expectJoseError(() => decodeJsonObject(encode(Buffer.from([0x7b, 0xff, 0x7d]))), 'JOSE_MALFORMED');
    });
  });
});
