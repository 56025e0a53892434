/**
 * The KvStore contract, run against every implementation: memory-level (unit tests), LevelDB on
 * disk (the embedded default) and etcd (a real 3-node cluster on loopback, started once for the
 * suite). Same suite, same expectations.
 */
import { expect } from 'chai';
import type { BatchOp, KvStore } from '../../src/store/kv.js';
import { all, etcdFactory, levelFactory, memoryFactory } from './harness/factories.js';

for (const factory of [memoryFactory(), levelFactory(), etcdFactory()]) {
  describe(`store: the KvStore contract on ${factory.name}`, function () {
    this.timeout(30_000);
    let kv: KvStore;
    before(async () => {
      await factory.setup?.();
    });
    beforeEach(async () => {
      kv = await factory.open();
    });
    afterEach(async () => {
      await kv.close();
    });
    after(() => factory.cleanup());

    it('returns undefined for a missing key', async () => {
      expect(await kv.get('nope')).to.equal(undefined);
      expect(await kv.get('')).to.equal(undefined);
    });

    it('puts and deletes through batch, and reads back exactly what was written', async () => {
      const values = ['plain', '', 'ü ✓ 𝄞', JSON.stringify({ a: [1, 2] }), 'x'.repeat(100_000), 'line\nbreak\u0000nul'];
      await kv.batch(
        values.map((value, i) => ({ type: 'put', key: `k${i}`, value })),
        { durable: true },
      );
      for (const [i, v] of values.entries()) expect(await kv.get(`k${i}`)).to.equal(v);
      await kv.batch([
        { type: 'put', key: 'k0', value: 'replaced' },
        { type: 'del', key: 'k1' },
        { type: 'del', key: 'never-there' },
      ]);
      expect(await kv.get('k0')).to.equal('replaced');
      expect(await kv.get('k1')).to.equal(undefined);
      // Later ops in one batch win over earlier ones on the same key.
      await kv.batch([
        { type: 'put', key: 'twice', value: '1' },
        { type: 'put', key: 'twice', value: '2' },
        { type: 'put', key: 'gone', value: 'x' },
        { type: 'del', key: 'gone' },
      ]);
      expect(await kv.get('twice')).to.equal('2');
      expect(await kv.get('gone')).to.equal(undefined);
      // An empty batch is a no-op.
      await kv.batch([]);
      expect((await all(kv, {})).map(([k]) => k)).to.deep.equal(['k0', 'k2', 'k3', 'k4', 'k5', 'twice']);
    });

    it('getMany answers in the order asked, with undefined for the missing', async () => {
      await kv.batch([
        { type: 'put', key: 'a', value: '1' },
        { type: 'put', key: 'c', value: '3' },
      ]);
      expect(await kv.getMany(['c', 'b', 'a', 'c', 'zz'])).to.deep.equal(['3', undefined, '1', '3', undefined]);
      expect(await kv.getMany([])).to.deep.equal([]);
    });

    it('applies a batch with an invalid op not at all', async () => {
      await kv.batch([{ type: 'put', key: 'keep', value: 'old' }]);
      const invalid: unknown[] = [
        { type: 'put', key: null, value: 'x' },
        { type: 'put', key: 5, value: 'x' },
        { type: 'put', key: { toString: () => 'v' }, value: 'x' },
        { type: 'put', key: Buffer.from('v'), value: 'x' },
        { type: 'put', key: 'v', value: 5 },
        { type: 'put', key: 'v', value: { a: 1 } },
        { type: 'del', key: 7 },
        { type: 'put', key: undefined, value: 'x' },
        { type: 'put', key: 'v', value: undefined },
        { type: 'put', key: 'v', value: null },
        { type: 'del', key: null },
        { type: 'upsert', key: 'v', value: 'x' },
      ];
      for (const [i, bad] of invalid.entries()) {
        const ops = [
          { type: 'put', key: `first${i}`, value: 'x' },
          { type: 'put', key: 'keep', value: 'new' },
          { type: 'del', key: 'keep-too' },
          bad,
          { type: 'put', key: `last${i}`, value: 'x' },
        ] as BatchOp[];
        let failed = false;
        try {
          await kv.batch(ops, { durable: true });
        } catch {
          failed = true;
        }
        expect(failed, `batch with ${JSON.stringify(bad)} was accepted`).to.equal(true);
        expect(await kv.get(`first${i}`)).to.equal(undefined);
        expect(await kv.get(`last${i}`)).to.equal(undefined);
        expect(await kv.get('keep')).to.equal('old');
      }
      expect(await all(kv, {})).to.deep.equal([['keep', 'old']]);
    });

    it('iterates ranges in key order: gte, lt, reverse, limit', async () => {
      // Inserted out of order; includes prefixes and the byte order of '!' < '0' < 'A' < 'a' < '~'.
      const keys = ['b!2', 'a', 'b!10', 'b!1', 'b', 'b!~', 'c', 'b!A', 'b!a', 'a!x', 'b!!'];
      await kv.batch(keys.map((key) => ({ type: 'put', key, value: `v:${key}` })));
      const sorted = [...keys].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1));
      const keysOf = (es: [string, string][]) => es.map(([k]) => k);
      const all_ = await all(kv, {});
      expect(keysOf(all_)).to.deep.equal(sorted);
      expect(all_.every(([k, v]) => v === `v:${k}`)).to.equal(true);
      expect(keysOf(await all(kv, { gte: 'b!', lt: 'b!~' }))).to.deep.equal(['b!!', 'b!1', 'b!10', 'b!2', 'b!A', 'b!a']);
      expect(keysOf(await all(kv, { gte: 'b!1' }))).to.deep.equal(['b!1', 'b!10', 'b!2', 'b!A', 'b!a', 'b!~', 'c']);
      expect(keysOf(await all(kv, { lt: 'b' }))).to.deep.equal(['a', 'a!x']);
      expect(keysOf(await all(kv, { gte: 'b!', lt: 'b!~', reverse: true }))).to.deep.equal(['b!a', 'b!A', 'b!2', 'b!10', 'b!1', 'b!!']);
      expect(keysOf(await all(kv, { gte: 'b!', lt: 'b!~', limit: 2 }))).to.deep.equal(['b!!', 'b!1']);
      expect(keysOf(await all(kv, { gte: 'b!', lt: 'b!~', reverse: true, limit: 2 }))).to.deep.equal(['b!a', 'b!A']);
      expect(keysOf(await all(kv, { gte: 'b!', lt: 'b!~', limit: 0 }))).to.deep.equal([]);
      expect(keysOf(await all(kv, { gte: 'z' }))).to.deep.equal([]);
      expect(keysOf(await all(kv, { gte: 'c', lt: 'a' }))).to.deep.equal([]);
      // gte is inclusive, lt exclusive.
      expect(keysOf(await all(kv, { gte: 'a', lt: 'b' }))).to.deep.equal(['a', 'a!x']);
    });

    it('iterates over a snapshot while the store is written', async () => {
      await kv.batch(['1', '2', '3'].map((key) => ({ type: 'put', key: `s${key}`, value: key })));
      const seen: string[] = [];
      for await (const [k] of kv.entries({ gte: 's', lt: 's~' })) {
        seen.push(k);
        if (k === 's1')
          await kv.batch([
            { type: 'put', key: 's15', value: 'late' },
            { type: 'del', key: 's3' },
          ]);
      }
      expect(seen).to.deep.equal(['s1', 's2', 's3']);
      expect(await kv.get('s15')).to.equal('late');
    });

    it('pages through long ranges in order, forwards and backwards, over one snapshot', async () => {
      const keys = Array.from({ length: 700 }, (_, i) => `p!${String(i).padStart(4, '0')}`);
      for (let i = 0; i < keys.length; i += 100) await kv.batch(keys.slice(i, i + 100).map((key) => ({ type: 'put', key, value: key })));
      await kv.batch([{ type: 'put', key: 'q', value: 'outside' }]);
      const keysOf = (es: [string, string][]) => es.map(([k]) => k);
      expect(keysOf(await all(kv, { gte: 'p!', lt: 'p!~' }))).to.deep.equal(keys);
      expect(keysOf(await all(kv, { gte: 'p!', lt: 'p!~', reverse: true }))).to.deep.equal([...keys].reverse());
      expect(keysOf(await all(kv, { gte: 'p!0100', limit: 300 }))).to.deep.equal(keys.slice(100, 400));
      expect(keysOf(await all(kv, { lt: 'p!0650', reverse: true, limit: 300 }))).to.deep.equal(keys.slice(350, 650).reverse());
      // Written during the scan, past the first page: not seen; deleted: still seen.
      const seen: string[] = [];
      for await (const [k] of kv.entries({ gte: 'p!', lt: 'p!~' })) {
        if (k === 'p!0000')
          await kv.batch([
            { type: 'put', key: 'p!0600x', value: 'late' },
            { type: 'del', key: 'p!0650' },
          ]);
        seen.push(k);
      }
      expect(seen).to.deep.equal(keys);
    });

    it('orders keys by their UTF-8 bytes, as LevelDB does', async () => {
      // In UTF-16 (JS <) '𝄞' (D834 DD1E) sorts before '\uFFFF' and 'ｚ'; in UTF-8 (F0 ..) after them.
      const keys = ['u!𝄞', 'u!\uFFFF', 'u!ｚ', 'u!z', 'u!é'];
      await kv.batch(keys.map((key) => ({ type: 'put', key, value: key })));
      const bytes = [...keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      expect(bytes).to.deep.equal(['u!z', 'u!é', 'u!ｚ', 'u!\uFFFF', 'u!𝄞']);
      expect((await all(kv, { gte: 'u!', lt: 'u!\u{10FFFF}' })).map(([k]) => k)).to.deep.equal(bytes);
      expect((await all(kv, { gte: 'u!\uFFFF', lt: 'u!\u{10FFFF}' })).map(([k]) => k)).to.deep.equal(['u!\uFFFF', 'u!𝄞']);
    });

    const reopen = factory.reopen;
    if (reopen) {
      it('keeps what was written across close and reopen', async () => {
        await kv.batch([{ type: 'put', key: 'durable', value: 'd' }], { durable: true });
        await kv.batch([
          { type: 'put', key: 'lazy', value: 'l' },
          { type: 'put', key: 'del-me', value: 'x' },
        ]);
        await kv.batch([{ type: 'del', key: 'del-me' }]);
        kv = await reopen(kv);
        expect(await kv.get('durable')).to.equal('d');
        expect(await kv.get('lazy')).to.equal('l');
        expect(await kv.get('del-me')).to.equal(undefined);
        expect(await all(kv, {})).to.deep.equal([
          ['durable', 'd'],
          ['lazy', 'l'],
        ]);
        // And the reopened store is writable.
        await kv.batch([{ type: 'put', key: 'after', value: 'a' }]);
        kv = await reopen(kv);
        expect(await kv.getMany(['after', 'durable'])).to.deep.equal(['a', 'd']);
      });
    }
  });
}
