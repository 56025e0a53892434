// Get chain in pages (XEP "Reading a Chain"): the engine fills a get-chain response up to the budget the
// transport gives (KmsEngine.handle's maxResponseBytes), says "more" while blocks were left out,
// and answers any other response over its budget with 413 TOO_LARGE. The client library follows
// "more" until it holds the whole chain, verifying each page after the blocks before it.
import { expect } from 'chai';
import { KmsFixture, AUDIENCE, DOMAIN, add, type TestUser } from '../support/kms-fixture.js';
import { openRawChannel, type RawChannel } from '../support/raw-channel.js';
import { KmsClient } from '../../src/client/kms-client.js';
import { blockHash } from '../support/node-client.js';
import { defaultResponseBudget, largestBlockResponseBytes } from '../../src/engine/response-size.js';
import { DEFAULT_LIMITS } from '../../src/engine/config.js';
import { jwkOf } from '../support/node-client.js';

const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
/** A long member name: blocks of several KB with a handful of operations ("add" of a member changes nothing). */
const PAD = `${'p'.repeat(1000)}@example.com`;

/** Appends `count` blocks of about `opsPerBlock` KB each, in appends under the message limit; returns the chain's blocks. */
async function growChain(kms: KmsFixture, alice: TestUser, uri: string, genesis: string, count: number, opsPerBlock: number): Promise<string[]> {
  const all = [genesis];
  let batch: string[] = [];
  let batchBytes = 0;
  for (let i = 0; i < count; i++) {
    const b = alice.block(
      blockHash(all[all.length - 1]!),
      Array.from({ length: opsPerBlock }, () => add(PAD)),
    );
    if (batch.length > 0 && ((batchBytes + b.length) * 4) / 3 > kms.deps.config.limits.maxMessageBytes - 2048) {
      await alice.append(uri, batch);
      batch = [];
      batchBytes = 0;
    }
    batch.push(b);
    batchBytes += b.length;
    all.push(b);
  }
  if (batch.length > 0) await alice.append(uri, batch);
  return all;
}

describe('engine: get chain in pages', function () {
  this.timeout(60_000);
  let kms: KmsFixture;
  let alice: TestUser;
  let ch: RawChannel;
  let uri: string;
  let blocks: string[];

  /** One get-chain request under `budget` (undefined: the engine's default), its response message and payload. */
  async function page(antecedent: string | undefined, budget: number | undefined) {
    const msg = ch.seal('get', uri, antecedent === undefined ? {} : { antecedent });
    const raw = await kms.engine.handle(msg, budget === undefined ? undefined : { maxResponseBytes: budget });
    return { raw, res: ch.open(raw) as { status: number; blocks: string[]; more: boolean; code?: string; reason?: string } };
  }

  before(async () => {
    kms = await KmsFixture.create();
    alice = await kms.user(ALICE, { keyType: 'EC' });
    await alice.register();
    const g = await alice.genesis([add(ALICE), add(BOB)]);
    uri = g.uri;
    // 50 blocks of 4 to 12 operations: 5.6 to 17 KB each, about 610 KB in all.
    blocks = [g.block];
    for (const [count, ops] of [
      [10, 4],
      [20, 12],
      [20, 8],
    ] as const) {
      blocks = [...blocks.slice(0, -1), ...(await growChain(kms, alice, uri, blocks[blocks.length - 1]!, count, ops))];
    }
    expect(blocks).to.have.length(51);
    expect(blocks.reduce((n, b) => n + b.length, 0)).to.be.greaterThan(600_000);
    ch = await openRawChannel(kms.identity, (m) => kms.engine.handle(m), alice.token);
  });

  after(async () => kms?.close());

  for (const budget of [25_000, 50_000, 123_457]) {
    it(`fills each page up to a budget of ${budget} bytes, and the pages make the whole chain`, async () => {
      const got: string[] = [];
      let antecedent: string | undefined;
      let pages = 0;
      for (;;) {
        const { raw, res } = await page(antecedent, budget);
        pages++;
        expect(res.status).to.equal(200);
        expect(raw.length, 'the response message is within its budget').to.be.at.most(budget);
        expect(res.blocks.length, 'every page of this chain holds a block').to.be.greaterThan(0);
        got.push(...res.blocks);
        const rest = blocks.length - got.length;
        expect(res.more, `more after ${got.length} blocks`).to.equal(rest > 0);
        if (!res.more) break;
        // Full: the next block would not have fitted (a block adds its length, two quotes and a comma, in base64url).
        const next = blocks[got.length]!;
        expect(raw.length + Math.ceil(((next.length + 3) * 4) / 3) + 1, 'the page is full').to.be.greaterThan(budget);
        antecedent = blockHash(got[got.length - 1]!);
      }
      expect(got).to.deep.equal(blocks);
      expect(pages).to.be.greaterThan(1);
    });
  }

  it('answers the whole chain in one page with "more": false when it fits, and an empty page after the tail', async () => {
    const whole = await page(undefined, 10_000_000);
    expect(whole.res.blocks).to.deep.equal(blocks);
    expect(whole.res.more).to.equal(false);
    const after = await page(blockHash(blocks[blocks.length - 1]!), 1000);
    expect(after.res).to.include({ status: 200, more: false });
    expect(after.res.blocks).to.deep.equal([]);
  });

  it('returns no block and "more": true when not even one block fits', async () => {
    const { raw, res } = await page(undefined, 1000);
    expect(raw.length).to.be.at.most(1000);
    expect(res.status).to.equal(200);
    expect(res.blocks).to.deep.equal([]);
    expect(res.more).to.equal(true);
  });

  it('pages at the default budget when the transport gives none', async () => {
    const budget = defaultResponseBudget(kms.deps.config.limits);
    expect(budget).to.equal(8 * DEFAULT_LIMITS.maxMessageBytes);
    expect(largestBlockResponseBytes(DEFAULT_LIMITS.maxMessageBytes)).to.equal(96 * 1024);
    const { raw, res } = await page(undefined, undefined);
    expect(raw.length).to.be.at.most(budget);
    expect(res.more).to.equal(true);
    expect(res.blocks.length).to.be.within(1, blocks.length - 1);
  });

  it('answers any other response over its budget with 413 TOO_LARGE, and one within it as usual', async () => {
    const before = await kms.digest();
    // A listing of entity keys, and a 404 whose reason quotes a URI of 1765 characters: each is
    // answered when the budget is its exact size, and 413 when the budget is one byte less.
    for (const [method, target, status] of [
      ['get', `/entity-keys/${ALICE}`, 200],
      ['get', `/nowhere/${Array(7).fill('x'.repeat(250)).join('/')}`, 404],
    ] as const) {
      const requestId = 'r-1';
      const size = (await kms.engine.handle(ch.seal(method, target, {}, requestId), { maxResponseBytes: 1_000_000 })).length;
      const fits = await kms.engine.handle(ch.seal(method, target, {}, requestId), { maxResponseBytes: size });
      expect(fits.length).to.equal(size);
      expect(ch.open(fits)).to.include({ status, requestId });
      const over = ch.open(await kms.engine.handle(ch.seal(method, target, {}, requestId), { maxResponseBytes: size - 1 }));
      expect(over, target.slice(0, 20)).to.include({ status: 413, code: 'TOO_LARGE', requestId });
      expect(String(over.reason)).to.match(/in an IQ of its own/);
    }
    expect(await kms.digest(), 'a read refused for size changes nothing').to.equal(before);
    // A small response under a small budget: as usual.
    const ping = await kms.engine.handle(ch.seal('update', '/ping'), { maxResponseBytes: 400 });
    expect(ping.length).to.be.at.most(400);
    expect(ch.open(ping)).to.include({ status: 200 });
  });

  it('refuses a genesis block that does not fit its budget with 413 before storing the chain', async () => {
    const operations = Array.from({ length: 300 }, (_, i) => add(`member-${i}@example.com`));
    const before = await kms.digest();
    const refused = ch.open(await kms.engine.handle(ch.seal('post', '/blocks', { blockPayload: { operations } }, 'g-1'), { maxResponseBytes: 8_000 }));
    expect(refused).to.include({ status: 413, code: 'TOO_LARGE', requestId: 'g-1' });
    expect(String(refused.reason)).to.match(/in an IQ of its own/);
    expect(await kms.digest(), 'no chain was stored').to.equal(before);
    const made = ch.open(await kms.engine.handle(ch.seal('post', '/blocks', { blockPayload: { operations } }, 'g-2'), { maxResponseBytes: 100_000 }));
    expect(made).to.include({ status: 201, requestId: 'g-2' });
  });

  it('lets the client library read the whole chain page by page, verifying as it goes', async () => {
    const token = await kms.issuer.mint({ subject: BOB, audience: AUDIENCE });
    let gets = 0;
    let largest = 0;
    // The engine in process, each message under a budget of 60 KB (and counted).
    const bob = await KmsClient.connect({
      kms: DOMAIN,
      anchors: [],
      bearer: () => token,
      transport: async (messages) => {
        const out = await Promise.all(messages.map((m) => kms.engine.handle(m, { maxResponseBytes: 60_000 })));
        gets++;
        largest = Math.max(largest, ...out.map((o) => o.length));
        return out;
      },
      identity: { kid: kms.identity.kid, key: jwkOf(kms.identity.publicKey), sigAlg: 'ES256', encAlg: 'ECDH-ES' },
      entityKeyType: { type: 'EC' },
    });
    gets = 0;
    const view = await bob.chain(uri);
    expect(view.blocks).to.deep.equal(blocks);
    expect(view.hashes).to.deep.equal(blocks.map(blockHash));
    expect(view.tail).to.equal(blockHash(blocks[blocks.length - 1]!));
    expect(largest).to.be.at.most(60_000);
    // Several pages (and one request for Alice's entity keys).
    expect(gets).to.be.greaterThan(5);
    // Up to date: one get, no block.
    gets = 0;
    expect((await bob.chain(uri)).tail).to.equal(view.tail);
    expect(gets).to.equal(1);
  });
});
