/**
 * Micro-benchmark of the JOSE hot paths: our node:crypto implementation (src/crypto) against
 * `jose` doing the same thing, and the raw node:crypto primitives the operation cannot avoid
 * (the floor). Each case runs ROUNDS times interleaved and the best round is reported, which
 * damps noise from other processes on the machine.
 * Run: node --import tsx bench/crypto-micro.ts [millisecondsPerCase] [rounds]
 */
import { createCipheriv, createDecipheriv, createECDH, createHash, randomBytes, sign, verify } from 'node:crypto';
import * as jose from 'jose';
import { decryptDir, decryptEcdhEs, encryptDir, encryptEcdhEs } from '../src/crypto/jwe.js';
import { signCompact, verifyCompact } from '../src/crypto/jws.js';
import { ecRawPublic, generateEcKeyPair } from '../src/crypto/keys.js';

const DURATION_MS = Number(process.argv[2] ?? 500);
const ROUNDS = Number(process.argv[3] ?? 3);
const KW_IV = Buffer.alloc(8, 0xa6);

async function opsPerSecond(fn: () => unknown): Promise<number> {
  const run = async (ms: number) => {
    let n = 0;
    const end = performance.now() + ms;
    while (performance.now() < end) {
      for (let i = 0; i < 16; i++) await fn();
      n += 16;
    }
    return n;
  };
  await run(Math.min(200, DURATION_MS / 5)); // warm-up
  const start = performance.now();
  const n = await run(DURATION_MS);
  return n / ((performance.now() - start) / 1000);
}

async function main(): Promise<void> {
  const ec = generateEcKeyPair('P-256');
  const privJwk = ec.privateKey.export({ format: 'jwk' }) as jose.JWK;
  const pubJwk = ec.publicJwk as jose.JWK;
  const joseKwPub = await jose.importJWK(pubJwk, 'ECDH-ES+A256KW');
  const joseKwPriv = await jose.importJWK(privJwk, 'ECDH-ES+A256KW');
  const joseEsPriv = await jose.importJWK(privJwk, 'ES256');
  const joseEsPub = await jose.importJWK(pubJwk, 'ES256');

  const cek = randomBytes(32); // the member key being wrapped
  const dirKey = randomBytes(32);
  const kib = randomBytes(1024);
  const claims = Buffer.from(JSON.stringify({ creator: 'alice@example.com', uri: '/keys/0123456789abcdef', requestId: 'r-1' }));
  const allowKw = { alg: ['ECDH-ES+A256KW'], enc: ['A256GCM'] };

  const oursKw = encryptEcdhEs(ec.publicKey, cek, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
  const joseKw = await new jose.CompactEncrypt(cek).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }).encrypt(joseKwPub);
  const oursDir = encryptDir(dirKey, kib, { enc: 'A256GCM' });
  const oursJws = signCompact(ec.privateKey, 'ES256', claims);

  const recipientPoint = ecRawPublic(ec.publicKey);
  const gcmSeal = (key: Buffer, data: Buffer) => {
    const c = createCipheriv('aes-256-gcm', key, randomBytes(12));
    const ct = c.update(data);
    c.final();
    return [ct, c.getAuthTag()] as const;
  };
  const gcmOpen = (key: Buffer, iv: Buffer, ct: Buffer, tag: Buffer) => {
    const d = createDecipheriv('aes-256-gcm', key, iv);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  };
  const ownEcdh = createECDH('prime256v1');
  ownEcdh.generateKeys();
  const peerEcdh = createECDH('prime256v1');
  const peerPoint = peerEcdh.generateKeys();
  const rawKek = createHash('sha256').update(ownEcdh.computeSecret(peerPoint)).digest();
  const kwC = createCipheriv('id-aes256-wrap', rawKek, KW_IV);
  const rawWrapped = Buffer.concat([kwC.update(cek), kwC.final()]);
  const rawIv = randomBytes(12);
  const rawEnc = createCipheriv('aes-256-gcm', cek, rawIv);
  const rawCt = Buffer.concat([rawEnc.update(cek), rawEnc.final()]);
  const rawTag = rawEnc.getAuthTag();
  const [dirCt, dirTag] = (() => {
    const c = createCipheriv('aes-256-gcm', dirKey, rawIv);
    const ct = Buffer.concat([c.update(kib), c.final()]);
    return [ct, c.getAuthTag()] as const;
  })();
  const rawSig = sign('sha256', claims, { key: ec.privateKey, dsaEncoding: 'ieee-p1363' });

  const rows: Array<[string, () => unknown, () => unknown, () => unknown]> = [
    [
      'ECDH-ES+A256KW wrap (P-256, 32 B)',
      () => encryptEcdhEs(ec.publicKey, cek, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }),
      () => new jose.CompactEncrypt(cek).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }).encrypt(joseKwPub),
      // keygen + ECDH + one SHA-256 + AES-KW + AES-GCM of the 32-byte payload
      () => {
        const eph = createECDH('prime256v1');
        eph.generateKeys();
        const kek = createHash('sha256').update(eph.computeSecret(recipientPoint)).digest();
        const w = createCipheriv('id-aes256-wrap', kek, KW_IV);
        w.update(cek);
        w.final();
        return gcmSeal(randomBytes(32), cek);
      },
    ],
    [
      'ECDH-ES+A256KW unwrap',
      () => decryptEcdhEs(oursKw, ec.privateKey, allowKw),
      () => jose.compactDecrypt(joseKw, joseKwPriv),
      // ECDH + one SHA-256 + AES-KW unwrap + AES-GCM open
      () => {
        const kek = createHash('sha256').update(ownEcdh.computeSecret(peerPoint)).digest();
        const u = createDecipheriv('id-aes256-wrap', kek, KW_IV);
        const k = Buffer.concat([u.update(rawWrapped), u.final()]);
        return gcmOpen(k, rawIv, rawCt, rawTag);
      },
    ],
    [
      'dir A256GCM encrypt 1 KiB',
      () => encryptDir(dirKey, kib, { enc: 'A256GCM' }),
      () => new jose.CompactEncrypt(kib).setProtectedHeader({ alg: 'dir', enc: 'A256GCM' }).encrypt(dirKey),
      () => gcmSeal(dirKey, kib),
    ],
    [
      'dir A256GCM decrypt 1 KiB',
      () => decryptDir(oursDir, dirKey, ['A256GCM']),
      () => jose.compactDecrypt(oursDir, dirKey),
      () => gcmOpen(dirKey, rawIv, dirCt, dirTag),
    ],
    [
      'ES256 sign',
      () => signCompact(ec.privateKey, 'ES256', claims),
      () => new jose.CompactSign(claims).setProtectedHeader({ alg: 'ES256' }).sign(joseEsPriv),
      () => sign('sha256', claims, { key: ec.privateKey, dsaEncoding: 'ieee-p1363' }),
    ],
    [
      'ES256 verify',
      () => verifyCompact(oursJws, ec.publicKey, ['ES256']),
      () => jose.compactVerify(oursJws, joseEsPub),
      () => verify('sha256', claims, { key: ec.publicKey, dsaEncoding: 'ieee-p1363' }, rawSig),
    ],
  ];

  const table: Array<Record<string, string>> = [];
  const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
  for (const [name, ours, theirs, raw] of rows) {
    let o = 0;
    let j = 0;
    let r = 0;
    for (let round = 0; round < ROUNDS; round++) {
      o = Math.max(o, await opsPerSecond(ours));
      j = Math.max(j, await opsPerSecond(theirs));
      r = Math.max(r, await opsPerSecond(raw));
    }
    table.push({
      operation: name,
      'ours ops/s': fmt(o),
      'jose ops/s': fmt(j),
      'ours / jose': `${(o / j).toFixed(2)}x`,
      'floor ops/s': fmt(r),
      'ours / floor': `${((o / r) * 100).toFixed(0)}%`,
    });
  }
  console.log(`node ${process.version}, jose 6, best of ${ROUNDS} x ${DURATION_MS} ms per case`);
  console.table(table);
}

await main();
