/**
 * Conditional batches (`batchIf`, src/store/conditional.ts) on every store: the check and the
 * write are one step. Concurrent writers on one key: exactly one wins. On etcd the writers are two
 * stores (two clients, as two KMS instances would be) on the same data.
 */
import { expect } from 'chai';
import type { Condition } from '../../src/store/conditional.js';
import type { BatchOp, KvStore } from '../../src/store/kv.js';
import { all, etcdFactory, type Factory, levelFactory, memoryFactory } from './harness/factories.js';

type Conditional = Required<Pick<KvStore, 'batchIf'>> & KvStore;

function conditional(kv: KvStore): Conditional {
  if (typeof kv.batchIf !== 'function') throw new Error('this store has no batchIf');
  return kv as Conditional;
}

for (const factory of [memoryFactory(), levelFactory(), etcdFactory()] as Factory[]) {
  describe(`store: conditional batches on ${factory.name}`, function () {
    this.timeout(60_000);
    let kv: Conditional;
    const extra: KvStore[] = [];
    before(async () => {
      await factory.setup?.();
    });
    beforeEach(async () => {
      kv = conditional(await factory.open());
    });
    afterEach(async () => {
      for (const s of extra.splice(0)) await s.close();
      await kv.close();
    });
    after(() => factory.cleanup());

    it('writes only when every condition holds: a value, or absence', async () => {
      await kv.batch([
        { type: 'put', key: 'tail', value: 'b1' },
        { type: 'put', key: 'empty', value: '' },
      ]);
      const append: BatchOp[] = [
        { type: 'put', key: 'b2', value: 'block 2' },
        { type: 'put', key: 'tail', value: 'b2' },
      ];
      // The tail is not b0: nothing is written.
      expect(await kv.batchIf([{ key: 'tail', equals: 'b0' }], append)).to.equal(false);
      expect(await kv.getMany(['b2', 'tail'])).to.deep.equal([undefined, 'b1']);
      // One failing condition among holding ones fails the whole batch.
      expect(
        await kv.batchIf(
          [
            { key: 'tail', equals: 'b1' },
            { key: 'gk', equals: undefined },
            { key: 'empty', equals: undefined }, // '' is a value, not absence
          ],
          append,
        ),
      ).to.equal(false);
      expect(await kv.batchIf([{ key: 'missing', equals: '' }], append)).to.equal(false);
      expect(await kv.get('b2')).to.equal(undefined);
      expect(
        await kv.batchIf(
          [
            { key: 'tail', equals: 'b1' },
            { key: 'gk', equals: undefined },
            { key: 'empty', equals: '' },
          ],
          [...append, { type: 'del', key: 'empty' }],
          { durable: true },
        ),
      ).to.equal(true);
      expect(await all(kv)).to.deep.equal([
        ['b2', 'block 2'],
        ['tail', 'b2'],
      ]);
      // No conditions: always applies. No ops: a pure check.
      expect(await kv.batchIf([], [{ type: 'put', key: 'x', value: '1' }])).to.equal(true);
      expect(await kv.batchIf([{ key: 'x', equals: '1' }], [])).to.equal(true);
      expect(await kv.batchIf([{ key: 'x', equals: '2' }], [])).to.equal(false);
    });

    it('refuses invalid conditions and ops, writing nothing', async () => {
      const bad: unknown[] = [[{ key: 5, equals: 'x' }], [{ key: 'k', equals: 5 }], [{ key: 'k' }], [null], 'k'];
      for (const conditions of bad) {
        let error: unknown;
        try {
          await kv.batchIf(conditions as Condition[], [{ type: 'put', key: 'w', value: 'x' }]);
        } catch (e) {
          error = e;
        }
        expect(error, JSON.stringify(conditions)).to.be.instanceOf(TypeError);
      }
      let error: unknown;
      try {
        await kv.batchIf([], [{ type: 'put', key: 'w', value: 'x' }, { type: 'put', key: 'v', value: 5 } as unknown as BatchOp]);
      } catch (e) {
        error = e;
      }
      expect(error).to.be.instanceOf(TypeError);
      expect(await all(kv)).to.deep.equal([]);
    });

    it('compares against a deferred batch not yet written', async () => {
      await kv.batch([{ type: 'put', key: 'eph', value: 'e1' }], { deferred: true });
      expect(await kv.batchIf([{ key: 'eph', equals: undefined }], [{ type: 'put', key: 'eph', value: 'other' }])).to.equal(false);
      expect(await kv.batchIf([{ key: 'eph', equals: 'e1' }], [{ type: 'put', key: 'eph', value: 'e2' }])).to.equal(true);
      await kv.flush();
      expect(await kv.get('eph')).to.equal('e2');
    });

    it('lets exactly one of 20 concurrent binds of one key win', async () => {
      const writers = [kv, ...(await twins(kv, 1))];
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          writers[i % writers.length]!.batchIf!([{ key: 'gk!1!bound', equals: undefined }], [{ type: 'put', key: 'gk!1!bound', value: `room${i}` }]),
        ),
      );
      expect(results.filter((r) => r)).to.have.length(1);
      expect(await kv.get('gk!1!bound')).to.equal(`room${results.indexOf(true)}`);
    });

    it('keeps a chain from forking under 20 concurrent appenders', async () => {
      const writers = [kv, ...(await twins(kv, 1))];
      await kv.batch([
        { type: 'put', key: 'chain!tail', value: '0' },
        { type: 'put', key: 'chain!0', value: 'genesis' },
      ]);
      let losses = 0;
      const appender = async (id: number) => {
        const store = writers[id % writers.length]!;
        for (;;) {
          const tail = (await store.get('chain!tail'))!;
          const next = String(Number(tail) + 1);
          const won = await store.batchIf!(
            [{ key: 'chain!tail', equals: tail }],
            [
              { type: 'put', key: `chain!${next}`, value: `writer${id} after ${tail}` },
              { type: 'put', key: 'chain!tail', value: next },
            ],
            { durable: true },
          );
          if (won) return;
          losses++;
        }
      };
      await Promise.all(Array.from({ length: 20 }, (_, i) => appender(i)));
      expect(await kv.get('chain!tail')).to.equal('20');
      const blocks = await all(kv, { gte: 'chain!', lt: 'chain!tail' });
      expect(blocks).to.have.length(21);
      // Every writer appended exactly once, each block after the one before it.
      const writersSeen = new Set<string>();
      for (let n = 1; n <= 20; n++) {
        const m = /^writer(\d+) after (\d+)$/.exec((await kv.get(`chain!${n}`)) ?? '');
        expect(m, `block ${n}`).to.not.equal(null);
        expect(Number(m![2])).to.equal(n - 1);
        writersSeen.add(m![1]!);
      }
      expect(writersSeen.size).to.equal(20);
      // Concurrent appenders did collide (otherwise the test proves nothing).
      expect(losses).to.be.greaterThan(0);
    });

    it('lets no plain batch land between the check and the write', async () => {
      // batchIf(a = 1 → a = 2) and a plain put a = 3 issued together: whichever is ordered first,
      // the store ends with a = 3 (a plain put that landed between the check and the write would
      // be overwritten by the stale conditional write: a = 2).
      for (let i = 0; i < 20; i++) {
        const key = `a${i}`;
        await kv.batch([{ type: 'put', key, value: '1' }]);
        const [applied] = await Promise.all([
          kv.batchIf([{ key, equals: '1' }], [{ type: 'put', key, value: '2' }]),
          kv.batch([{ type: 'put', key, value: '3' }]),
        ]);
        expect(await kv.get(key), `round ${i} (batchIf ${applied ? 'applied' : 'refused'})`).to.equal('3');
      }
    });

    async function twins(store: KvStore, n: number): Promise<Conditional[]> {
      if (factory.twin === undefined) return [];
      const out: Conditional[] = [];
      for (let i = 0; i < n; i++) {
        const t = await factory.twin(store);
        extra.push(t);
        out.push(conditional(t));
      }
      return out;
    }
  });
}
