/**
 * The audit log's cost on GK gets (issue 14): `node --import tsx bench/audit.ts [--quick]`.
 *
 * GK gets through `engine.handle` (memory store; members with RSA-2048 entity keys, as in
 * bench/engine.ts), without the audit log and with it (src/audit/log.ts, fdatasync'ed in a temporary
 * folder on disk), one request at a time and 32 at a time. Every GK get is a first fetch of
 * that GK by that member. Prints a table, then one JSON object as the last line.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmsFixture, add, payloadOf, DOMAIN, AUDIENCE } from '../test/support/kms-fixture.js';
import { openRawChannel, type RawChannel } from '../test/support/raw-channel.js';
import { generateEntityKey, registrationProof } from '../test/support/node-client.js';
import { blockHash } from '../test/support/node-client.js';
import { AuditLog } from '../src/audit/log.js';
import { thumbprint } from '../src/crypto/keys.js';

const N = process.argv.includes('--quick') ? 400 : 2000;
const MEMBERS = 8;

interface Member {
  jid: string;
  ch: RawChannel;
}

async function setup(kms: KmsFixture): Promise<string[]> {
  const members: Member[] = [];
  for (let i = 0; i < MEMBERS; i++) {
    const jid = `m${i}@example.com`;
    const ch = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), await kms.issuer.mint({ subject: jid, audience: AUDIENCE }));
    const key = generateEntityKey();
    ch.open(await kms.engine.handle(ch.seal('post', '/entity-keys', { jwk: key.publicJwk, proof: registrationProof(key, jid, ch.uri) })));
    members.push({ jid, ch });
  }
  const owner = members[0]!;
  const { block: genesis } = owner.ch.open(
    await kms.engine.handle(owner.ch.seal('post', `kms://${DOMAIN}/blocks`, { blockPayload: { operations: members.map((m) => add(m.jid)) } })),
  ) as { block: string };
  const block = blockHash(genesis);
  const gets: string[] = [];
  while (gets.length < 2 * N) {
    const res = owner.ch.open(await kms.engine.handle(owner.ch.seal('post', `kms://${DOMAIN}/gks`, { block })));
    const uri = payloadOf(res.gk as string).uri as string;
    for (const m of members) gets.push(m.ch.seal('get', uri, { entity: m.jid }));
  }
  return gets;
}

/** GK gets per second, `parallel` in flight at a time. */
async function rate(kms: KmsFixture, gets: string[], parallel: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  let i = 0;
  const worker = async () => {
    while (i < gets.length) {
      const m = gets[i++]!;
      const out = await kms.engine.handle(m);
      if (out.split('.').length !== 5) throw new Error('not a channel response');
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return gets.length / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function measure(audit: AuditLog | undefined): Promise<{ seq: number; par32: number }> {
  const kms = await KmsFixture.create(audit ? { audit } : {});
  try {
    const gets = await setup(kms);
    const seq = await rate(kms, gets.slice(0, N), 1);
    const par32 = await rate(kms, gets.slice(N, 2 * N), 32);
    return { seq, par32 };
  } finally {
    await kms.close();
  }
}

const dir = await mkdtemp(join(tmpdir(), 'kms-audit-bench-'));
try {
  const probe = await KmsFixture.create();
  const log = await AuditLog.open({
    dir,
    actor: probe.identity.kid,
    kid: thumbprint(probe.identity.publicKey),
    sign: (p) => probe.deps.signAsKms(p),
    checkpointSec: 0,
  });
  await probe.close();
  // Best of two rounds each, alternating, so that warm-up and drift hit both alike.
  const plain = { seq: 0, par32: 0 };
  const audited = { seq: 0, par32: 0 };
  for (let round = 0; round < 2; round++) {
    for (const [into, sink] of [
      [plain, undefined],
      [audited, log],
    ] as const) {
      const r = await measure(sink);
      into.seq = Math.max(into.seq, r.seq);
      into.par32 = Math.max(into.par32, r.par32);
    }
  }
  await log.close();
  const row = (name: string, a: number, b: number) =>
    console.log(`${name.padEnd(28)} ${a.toFixed(0).padStart(8)} ${b.toFixed(0).padStart(8)} ${(b / a).toFixed(2).padStart(6)}`);
  console.log(`${'GK get/s'.padEnd(28)} ${'no audit'.padStart(8)} ${'audit'.padStart(8)} ${'ratio'.padStart(6)}`);
  row('1 in flight', plain.seq, audited.seq);
  row('32 in flight', plain.par32, audited.par32);
  console.log(JSON.stringify({ n: N, plain, audited, ratioSeq: audited.seq / plain.seq, ratioPar32: audited.par32 / plain.par32 }));
} finally {
  await rm(dir, { recursive: true, force: true });
}
