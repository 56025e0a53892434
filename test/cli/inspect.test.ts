// `kms inspect` as an operator runs it: the real CLI process on a store written by the real
// engine, showing chains, members and group keys, and never key material.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { KmsFixture, add, remove, payloadOf, DOMAIN } from '../support/kms-fixture.js';
import { blockHash } from '../support/node-client.js';
import { openGk } from '../support/node-client.js';

const BIN = resolve(import.meta.dirname, '../../bin/kms.js');

function kms(dir: string, ...args: string[]) {
  const run = spawnSync(process.execPath, [BIN, 'inspect', ...args], {
    encoding: 'utf8',
    env: { ...process.env, KMS_DATA_DIR: dir, KMS_DOMAIN: DOMAIN, KMS_LOG_LEVEL: 'silent' },
    timeout: 60_000,
  });
  return { code: run.status, out: run.stdout, err: run.stderr };
}

describe('cli: kms inspect', function () {
  this.timeout(120_000);
  let kmsFixture: KmsFixture;
  let dir: string;
  let chainUri: string;
  let gkUri: string;
  let unboundUri: string;
  let rawKey: Buffer;
  let tail: string;

  before(async () => {
    kmsFixture = await KmsFixture.create({ storage: 'disk' });
    dir = kmsFixture.dir!;
    const alice = await kmsFixture.user('alice@example.com');
    await alice.register();
    const genesis = await alice.genesis([add('alice@example.com'), add('bob@example.com'), add('carol@example.com')]);
    chainUri = genesis.uri;
    const b1 = alice.block(blockHash(genesis.block), [remove('carol@example.com')]);
    await alice.append(chainUri, [b1]);
    tail = blockHash(b1);
    const gk = await alice.createGk(tail);
    gkUri = payloadOf(gk).uri as string;
    rawKey = openGk(gk, kmsFixture.identity.publicKey, alice.key).key;
    unboundUri = payloadOf(await alice.createGk()).uri as string;
  });

  after(async () => {
    await kmsFixture.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses, with a reason, while a KMS holds the store', function () {
    const r = kms(dir, 'chains');
    expect(r.code).to.equal(1);
    expect(r.err).to.match(/in use by a running KMS.*stop the component first/);
  });

  describe('on a stopped KMS', function () {
    before(async () => kmsFixture.close());

    it('chains: every chain with its current members', function () {
      const r = kms(dir, 'chains');
      expect(r.code, r.err).to.equal(0);
      expect(r.out).to.contain(chainUri).and.contain('2 block(s)').and.contain('members: alice@example.com, bob@example.com');
      const json = JSON.parse(kms(dir, 'chains', '--json').out);
      expect(json).to.have.length(1);
      expect(json[0]).to.deep.include({ uri: chainUri, length: 2, tail, members: ['alice@example.com', 'bob@example.com'] });
    });

    it('chain <uri>: each block with its signer, its change and the members after it', function () {
      const r = kms(dir, 'chain', chainUri);
      expect(r.code, r.err).to.equal(0);
      expect(r.out).to.contain('#0').and.contain('by kms://kms.example.com').and.contain('+carol@example.com');
      expect(r.out).to.contain('#1').and.contain('by alice@example.com').and.contain('-carol@example.com');
      const json = JSON.parse(kms(dir, 'chain', chainUri.split('/').pop()!, '--json').out);
      expect(json.blocks.map((b: { members: string[] }) => b.members.length)).to.deep.equal([3, 2]);
    });

    it('gks and gk <uri>: owner and binding, and never the key', function () {
      const all = kms(dir, 'gks');
      expect(all.code, all.err).to.equal(0);
      expect(all.out).to.contain(gkUri).and.contain(unboundUri).and.contain('unbound (visible to its owner only)');
      const one = kms(dir, 'gk', gkUri, '--json');
      const json = JSON.parse(one.out);
      expect(json).to.deep.include({ uri: gkUri, owner: 'alice@example.com' });
      expect(json.binding).to.deep.equal({ block: tail, chain: chainUri, seq: 1 });
      expect(json).to.not.have.property('key');
      for (const out of [all.out, one.out, kms(dir, 'gks', '--json').out]) {
        for (const enc of [rawKey.toString('base64url'), rawKey.toString('base64'), rawKey.toString('hex')]) expect(out).to.not.contain(enc);
      }
    });

    it('an unknown chain or key: exit 1 and a hint', function () {
      const r = kms(dir, 'chain', 'kms://kms.example.com/blocks/nope');
      expect(r.code).to.equal(1);
      expect(r.err).to.match(/no chain .*kms inspect chains lists them/);
      expect(kms(dir, 'gk', 'nope').err).to.match(/no group key nope/);
    });

    it('--help lists the subcommands', function () {
      const r = kms(dir, '--help');
      expect(r.code).to.equal(0);
      for (const c of [/chains/, /chain .*<uri-or-id>/, /gks/, /gk .*<uri-or-id>/]) expect(r.out).to.match(c);
    });
  });
});
