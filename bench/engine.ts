/**
 * In-process engine benchmark: `npm run bench:engine`.
 *
 * Measures handshake, ping, GK create, GK get and append through `engine.handle` on a LevelDB
 * store on disk, one request at a time (one core), and the crypto floor for GK get and the
 * handshake (bench/floor.ts) on the same inputs in the same run. Members register the client
 * library's default entity key (RSA-2048), so GK gets are wrapped with RSA-OAEP. Every GK get is a first fetch of
 * that GK by that member. Every handshake uses its own token, so no credential cache helps.
 * Prints a table, then one JSON object as the last line.
 */
import { createECDH, createPublicKey, randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { KmsFixture, add, payloadOf, DOMAIN, AUDIENCE } from '../test/support/kms-fixture.js';
import { openRawChannel, handshakeRequest, type RawChannel } from '../test/support/raw-channel.js';
import { generateEntityKey, registrationProof, type EntityKey } from '../test/support/node-client.js';
import { blockHash, signBlock } from '../test/support/node-client.js';
import { ecRawPublic } from '../src/crypto/keys.js';
import { gkGetFloor, handshakeFloor, type GkGetFloorInput, type HandshakeFloorInput } from './floor.js';

const quick = process.argv.includes('--quick');
const N = quick ? 200 : 2000;

/** Runs fn over inputs sequentially; returns ops/s. */
async function rate<T>(inputs: T[], fn: (x: T) => unknown): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (const x of inputs) await fn(x);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return inputs.length / s;
}

/** Best of `rounds` runs, alternating measured and floor so drift hits both alike. */
async function paired(rounds: number, a: () => Promise<number>, b: () => Promise<number>): Promise<[number, number]> {
  let bestA = 0;
  let bestB = 0;
  for (let r = 0; r < rounds; r++) {
    bestA = Math.max(bestA, await a());
    bestB = Math.max(bestB, await b());
  }
  return [bestA, bestB];
}

interface Member {
  jid: string;
  key: EntityKey;
  ch: RawChannel;
}

async function member(kms: KmsFixture, jid: string): Promise<Member> {
  const token = await kms.issuer.mint({ subject: jid, audience: AUDIENCE });
  const ch = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), token);
  const key = generateEntityKey();
  const res = ch.open(await kms.engine.handle(ch.seal('post', '/entity-keys', { jwk: key.publicJwk, proof: registrationProof(key, jid, ch.uri) })));
  if (res.status !== 201 && res.status !== 200) throw new Error(`register ${jid}: ${res.status} ${res.reason}`);
  return { jid, key, ch };
}

async function call(kms: KmsFixture, ch: RawChannel, method: string, uri: string, body?: Record<string, unknown>) {
  const res = ch.open(await kms.engine.handle(ch.seal(method, uri, body)));
  if ((res.status as number) >= 400) throw new Error(`${method} ${uri}: ${res.status} ${res.reason}`);
  return res;
}

/** A chain of `length` blocks, members m[0..], built by m[0] in appends of 50 (RSA-signed blocks: under the 64 KiB message limit). */
async function chainOf(kms: KmsFixture, members: Member[], length: number) {
  const a = members[0]!;
  const res = await call(kms, a.ch, 'post', `kms://${DOMAIN}/blocks`, { blockPayload: { operations: members.map((m) => add(m.jid)) } });
  const genesis = res.block as string;
  const uri = payloadOf(genesis).uri as string;
  let tail = blockHash(genesis);
  const filler = (i: number) => [{ entity: `filler${i % 50}@example.com`, optype: i % 100 < 50 ? 'add' : 'remove' } as const];
  for (let n = 1; n < length; ) {
    const blocks: string[] = [];
    for (; blocks.length < 50 && n < length; n++) {
      const b = signBlock(a.key, a.jid, tail, filler(n));
      blocks.push(b);
      tail = blockHash(b);
    }
    await call(kms, a.ch, 'post', uri, { blocks });
  }
  return { uri, tail };
}

interface ChainBench {
  uri: string;
  tail: string;
  gks: string[];
}

/** A chain of `length` blocks with enough GKs bound to its tail for `count` first fetches. */
async function prepareChain(kms: KmsFixture, members: Member[], length: number, count: number): Promise<ChainBench> {
  const { uri, tail } = await chainOf(kms, members, length);
  const gks: string[] = [];
  for (let i = 0; i < Math.ceil(count / (members.length - 1)); i++) {
    const gk = (await call(kms, members[0]!.ch, 'post', `kms://${DOMAIN}/gks`, { block: tail })).gk as string;
    gks.push(payloadOf(gk).uri as string);
  }
  return { uri, tail, gks };
}

/** Per-op seconds of `count` GK first fetches and `count` single-block appends on a prepared chain. */
async function chainCosts(kms: KmsFixture, members: Member[], c: ChainBench, count: number, round: number) {
  const owner = members[0]!;
  const gets: string[] = [];
  for (const gk of c.gks) for (const m of members.slice(1)) gets.push(m.ch.seal('get', gk, { entity: m.jid }));
  const slice = gets.slice(round * count, (round + 1) * count);
  const getRate = await rate(slice, (m) => kms.engine.handle(m));
  const appends: string[] = [];
  for (let i = 0; i < count; i++) {
    const b = signBlock(owner.key, owner.jid, c.tail, [{ entity: `late${round}-${i}@example.com`, optype: 'add' }]);
    appends.push(owner.ch.seal('post', c.uri, { blocks: [b] }));
    c.tail = blockHash(b);
  }
  const appendRate = await rate(appends, async (m) => {
    const r = owner.ch.open(await kms.engine.handle(m));
    if (r.status !== 200) throw new Error(`append: ${r.status} ${r.reason}`);
  });
  return { get: 1 / getRate, append: 1 / appendRate };
}

async function main() {
  const kms = await KmsFixture.create({ keyType: 'EC', storage: 'disk' });
  const members: Member[] = [];
  for (let i = 0; i < 21; i++) members.push(await member(kms, `m${i}@example.com`));
  const [owner, ...others] = members as [Member, ...Member[]];

  // ---- handshake: engine vs floor, each with its own fresh token ----
  const tokens = await Promise.all(Array.from({ length: N }, (_, i) => kms.issuer.mint({ subject: `h${i}@example.com`, audience: AUDIENCE })));
  const hsEngine = tokens.map((t, i) => handshakeRequest(kms.identity, t, `c${i}`).message);
  const hsFloor = tokens.map((t, i) => handshakeRequest(kms.identity, t, `c${i}`).message);
  const kmsEcdh = createECDH('prime256v1');
  const d = kms.identity.privateKey.export({ format: 'jwk' }).d!;
  kmsEcdh.setPrivateKey(Buffer.from(d, 'base64url'));
  const issuerKey = createPublicKey({ key: kms.issuer.jwks.keys[0]! as never, format: 'jwk' });
  const floorHs: HandshakeFloorInput[] = hsFloor.map((request) => ({ request, kmsEcdh, kmsKey: kms.identity.privateKey, issuerKey }));
  const half = Math.floor(N / 2);
  let hsIdx = 0;
  let hsFIdx = 0;
  const [handshake, handshakeFloorRate] = await paired(
    2,
    () => rate(hsEngine.slice(hsIdx, (hsIdx += half)), (m) => kms.engine.handle(m)),
    () => rate(floorHs.slice(hsFIdx, (hsFIdx += half)), (x) => handshakeFloor(x)),
  );

  // ---- ping ----
  const pings = Array.from({ length: N }, () => owner.ch.seal('update', '/ping'));
  const ping = await rate(pings, (m) => kms.engine.handle(m));

  // ---- GK create and GK get (first fetches) vs floor ----
  const { block: genesis } = (await call(kms, owner.ch, 'post', `kms://${DOMAIN}/blocks`, {
    blockPayload: { operations: members.map((m) => add(m.jid)) },
  })) as { block: string };
  const block = blockHash(genesis);
  const gkCount = Math.ceil((2 * N) / others.length);
  const creates = Array.from({ length: gkCount }, () => owner.ch.seal('post', `kms://${DOMAIN}/gks`, { block }));
  const gkUris: string[] = [];
  const gkCreate = await rate(creates, async (m) => {
    const r = owner.ch.open(await kms.engine.handle(m));
    gkUris.push(payloadOf(r.gk as string).uri as string);
  });
  const gets: string[] = [];
  for (const uri of gkUris) for (const m of others) gets.push(m.ch.seal('get', uri, { entity: m.jid }));
  const floorGets: GkGetFloorInput[] = gets.map((_, i) => {
    const m = others[i % others.length]!;
    return {
      request: m.ch.seal('get', gkUris[Math.floor(i / others.length)]!, { entity: m.jid }),
      channelKey: m.ch.key,
      channelKid: m.ch.uri,
      member: m.key.publicJwk.kty === 'RSA' ? { rsa: m.key.publicKey } : { point: ecRawPublic(m.key.publicKey) },
      gkKey: randomBytes(32),
      kmsKey: kms.identity.privateKey,
    };
  });
  const gHalf = Math.floor(gets.length / 2);
  let gIdx = 0;
  let gfIdx = 0;
  const [gkGet, gkGetFloorRate] = await paired(
    2,
    () => rate(gets.slice(gIdx, (gIdx += gHalf)), (m) => kms.engine.handle(m)),
    () => rate(floorGets.slice(gfIdx, (gfIdx += gHalf)), (x) => gkGetFloor(x)),
  );

  // ---- append (one block per request) ----
  let tail = block;
  const chainUri = payloadOf(genesis).uri as string;
  const appends: string[] = [];
  for (let i = 0; i < N; i++) {
    const b = signBlock(owner.key, owner.jid, tail, [{ entity: `x${i}@example.com`, optype: 'add' }]);
    appends.push(owner.ch.seal('post', chainUri, { blocks: [b] }));
    tail = blockHash(b);
  }
  const append = await rate(appends, (m) => kms.engine.handle(m));

  // ---- cost on a 10-block chain vs a 10,000-block chain ----
  const count = quick ? 100 : 500;
  const rounds = 3;
  const smallChain = await prepareChain(kms, members, 10, count * rounds);
  const largeChain = await prepareChain(kms, members, quick ? 2000 : 10_000, count * rounds);
  // Alternate small and large, best of three each, so machine noise hits both alike.
  const small = { get: Infinity, append: Infinity };
  const large = { get: Infinity, append: Infinity };
  for (let r = 0; r < rounds; r++) {
    for (const [c, best] of [
      [smallChain, small],
      [largeChain, large],
    ] as const) {
      const x = await chainCosts(kms, members, c, count, r);
      best.get = Math.min(best.get, x.get);
      best.append = Math.min(best.append, x.append);
    }
  }

  const result = {
    handshake_ops: Math.round(handshake),
    handshake_floor_ops: Math.round(handshakeFloorRate),
    ping_ops: Math.round(ping),
    gk_create_ops: Math.round(gkCreate),
    gk_get_ops: Math.round(gkGet),
    gk_get_floor_ops: Math.round(gkGetFloorRate),
    append_ops: Math.round(append),
    gk_get_floor_ratio: +(gkGet / gkGetFloorRate).toFixed(3),
    handshake_floor_ratio: +(handshake / handshakeFloorRate).toFixed(3),
    gk_get_chain_ratio: +(large.get / small.get).toFixed(3),
    append_chain_ratio: +(large.append / small.append).toFixed(3),
  };
  console.log('engine benchmark (one request at a time, LevelDB on disk, EC P-256 static key)');
  for (const [k, v] of Object.entries(result)) console.log(`  ${k.padEnd(24)} ${v}`);
  await kms.close();
  if (kms.dir) await rm(kms.dir, { recursive: true, force: true });
  console.log(JSON.stringify(result));
}

await main();
