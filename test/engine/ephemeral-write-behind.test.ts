/**
 * Ephemeral keys are written behind (src/store/kms-state.ts putEphemeral, KvStore `deferred`):
 * a channel works at once, close() writes the keys not yet flushed so they survive a restart, a
 * key deleted with delete /ecdhe never comes back (not after a restart, not through the cache),
 * and a failed handshake still writes nothing.
 */
import { expect } from 'chai';
import { rm } from 'node:fs/promises';
import { KmsFixture, AUDIENCE } from '../support/kms-fixture.js';
import { openRawChannel, handshakeRequest, type RawChannel } from '../support/raw-channel.js';
import { verifyCompact } from '../../src/crypto/jws.js';

const ALICE = 'alice@example.com';

async function channel(kms: KmsFixture, token: string): Promise<RawChannel> {
  return openRawChannel(kms.identity, (m) => kms.engine.handle(m), token);
}

/** The status of a request on `ch`, whether answered on the channel or signed by the static key. */
async function statusOn(kms: KmsFixture, ch: RawChannel, method: string, uri: string): Promise<number> {
  const raw = await kms.engine.handle(ch.seal(method, uri));
  if (raw.split('.').length === 3) return JSON.parse(verifyCompact(raw, kms.identity.publicKey, ['ES256']).payload.toString('utf8')).status;
  return ch.open(raw).status as number;
}

const idOf = (ch: RawChannel) => ch.uri.split('/').pop()!;

describe('engine: ephemeral keys written behind', function () {
  this.timeout(60_000);

  it('keeps the keys not yet flushed across close and reopen, and never brings back a deleted one', async () => {
    const kms = await KmsFixture.create({ storage: 'disk' });
    const dir = kms.dir!;
    const token = await kms.issuer.mint({ subject: ALICE, audience: AUDIENCE });
    const kept = await channel(kms, token);
    const deleted = await channel(kms, token);
    const deletedLater = await channel(kms, token);
    // Deleted while its put is still queued (no flush yet: this all runs within the flush delay).
    expect(await statusOn(kms, deleted, 'delete', deleted.uri)).to.equal(204);
    expect(await statusOn(kms, deleted, 'update', '/ping')).to.equal(401);
    // Deleted after its put has been written.
    await kms.deps.state.flush();
    expect(await statusOn(kms, deletedLater, 'delete', deletedLater.uri)).to.equal(204);
    // Made just before close: close must write it.
    const last = await channel(kms, token);
    await kms.close();

    const kms2 = await KmsFixture.create({ storage: { dir }, masterKey: kms.masterKey, issuer: kms.issuer });
    try {
      expect(await statusOn(kms2, kept, 'update', '/ping')).to.equal(200);
      expect(await statusOn(kms2, last, 'update', '/ping')).to.equal(200);
      for (const ch of [deleted, deletedLater]) {
        expect(await kms2.deps.state.ephemeral(idOf(ch))).to.equal(undefined);
        expect(await statusOn(kms2, ch, 'update', '/ping')).to.equal(401);
      }
      const onDisk: string[] = [];
      for await (const [k] of kms2.kv.entries({ gte: 'e!', lt: 'e!~' })) onDisk.push(k);
      expect(onDisk.sort()).to.deep.equal([`e!${idOf(kept)}`, `e!${idOf(last)}`].sort());
    } finally {
      await kms2.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('does not re-cache a key that a read found while it was being deleted', async () => {
    const kms = await KmsFixture.create({ storage: 'disk' });
    try {
      const token = await kms.issuer.mint({ subject: ALICE, audience: AUDIENCE });
      const ch = await channel(kms, token);
      await kms.deps.state.flush();
      // A fresh state on the same store: the key is on disk, not in this state's cache.
      const { KmsState } = await import('../../src/store/kms-state.js');
      const state = new KmsState(kms.kv);
      const reading = state.ephemeral(idOf(ch));
      const deleting = state.deleteEphemeral(idOf(ch));
      await Promise.all([reading, deleting]);
      expect(await state.ephemeral(idOf(ch))).to.equal(undefined);
    } finally {
      await kms.close();
      await rm(kms.dir!, { recursive: true, force: true });
    }
  });

  it('writes nothing for a failed handshake, with keys of earlier handshakes still queued', async () => {
    const kms = await KmsFixture.create({ storage: 'disk' });
    try {
      const token = await kms.issuer.mint({ subject: ALICE, audience: AUDIENCE });
      await channel(kms, token);
      const before = await kms.digest();
      await channel(kms, token);
      const afterGood = await kms.digest();
      expect(afterGood).to.not.equal(before);
      // A token for another audience: refused with a signed 401, and the store is unchanged.
      const bad = await kms.issuer.mint({ subject: ALICE, audience: 'kms://elsewhere.example.com' });
      const raw = await kms.engine.handle(handshakeRequest(kms.identity, bad, 'c').message);
      expect(JSON.parse(verifyCompact(raw, kms.identity.publicKey, ['ES256']).payload.toString('utf8')).status).to.equal(401);
      await kms.deps.state.flush();
      expect(await kms.digest()).to.equal(afterGood);
    } finally {
      await kms.close();
      await rm(kms.dir!, { recursive: true, force: true });
    }
  });
});
