/**
 * Micro-benchmark of the JOSE hot paths: our node:crypto implementation (src/crypto) against
 * `jose` doing the same thing, plus a raw node:crypto floor for two of them.
 * Run: node --import tsx bench/crypto-micro.ts [millisecondsPerCase]
 */
import { createCipheriv, randomBytes, sign } from 'node:crypto';
import * as jose from 'jose';
import { decryptDir, decryptEcdhEs, encryptDir, encryptEcdhEs } from '../src/crypto/jwe.js';
import { signCompact, verifyCompact } from '../src/crypto/jws.js';
import { generateEcKeyPair } from '../src/crypto/keys.js';

const DURATION_MS = Number(process.argv[2] ?? 1000);

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

  const rows: Array<[string, () => unknown, () => unknown, (() => unknown)?]> = [
    [
      'ECDH-ES+A256KW wrap (P-256, 32 B)',
      () => encryptEcdhEs(ec.publicKey, cek, { alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }),
      () => new jose.CompactEncrypt(cek).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }).encrypt(joseKwPub),
    ],
    [
      'ECDH-ES+A256KW unwrap',
      () => decryptEcdhEs(oursKw, ec.privateKey, allowKw),
      () => jose.compactDecrypt(joseKw, joseKwPriv),
    ],
    [
      'dir A256GCM encrypt 1 KiB',
      () => encryptDir(dirKey, kib, { enc: 'A256GCM' }),
      () => new jose.CompactEncrypt(kib).setProtectedHeader({ alg: 'dir', enc: 'A256GCM' }).encrypt(dirKey),
      () => {
        const c = createCipheriv('aes-256-gcm', dirKey, randomBytes(12));
        c.update(kib);
        c.final();
        return c.getAuthTag();
      },
    ],
    [
      'dir A256GCM decrypt 1 KiB',
      () => decryptDir(oursDir, dirKey, ['A256GCM']),
      () => jose.compactDecrypt(oursDir, dirKey),
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
    ],
  ];

  const table: Array<Record<string, string>> = [];
  for (const [name, ours, theirs, raw] of rows) {
    const o = await opsPerSecond(ours);
    const j = await opsPerSecond(theirs);
    const r = raw ? await opsPerSecond(raw) : undefined;
    table.push({
      operation: name,
      'ours ops/s': Math.round(o).toLocaleString('en-US'),
      'jose ops/s': Math.round(j).toLocaleString('en-US'),
      'ours / jose': `${(o / j).toFixed(2)}x`,
      'raw node:crypto ops/s': r === undefined ? '-' : Math.round(r).toLocaleString('en-US'),
    });
  }
  console.log(`node ${process.version}, jose 6, ${DURATION_MS} ms per case`);
  console.table(table);
}

await main();
