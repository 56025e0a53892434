/**
 * The published conformance vectors (test/vectors/keys.json, gmbc.json, gk.json, channel.json;
 * see README.md), checked in both directions: the project VERIFIES them (signatures, chains,
 * membership, refusals by the shared block rule and by the real engine in process, GK unwrapping,
 * channel decryption) and REPRODUCES everything deterministic in them (hashes, signing inputs,
 * membership, canonical spellings, the channel key and JWEs, the ECDH-ES wrap, the RSA-OAEP
 * content encryption) byte for byte. Running the generator again must write the committed files.
 */
import { expect } from 'chai';
import { createDecipheriv, createECDH, createHash, createPublicKey, constants, hkdfSync, privateDecrypt, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { verifyChain, type VerifiedChain, type VerifyOptions } from '../../src/client/chain.js';
import { blockHash, jwkOf, openGk, signBlock } from '../support/node-client.js';
import { applyOperations, parseAppendedBlock } from '../../src/protocol/blocks.js';
import { canonicalEntity, isCanonicalEntity } from '../../src/protocol/entity.js';
import { KmsError } from '../../src/protocol/errors.js';
import { parseRequestValue } from '../../src/protocol/messages.js';
import { signCompact, verifyCompact, type JwsAlg } from '../../src/crypto/jws.js';
import { decryptDir, dirEncrypter, encryptDir, encryptEcdhEs, encryptRsaOaep } from '../../src/crypto/jwe.js';
import { deriveChannelKey } from '../../src/crypto/channel.js';
import { importPrivateJwk, importPublicJwk, thumbprint } from '../../src/crypto/keys.js';
import { isMemberAt } from '../../src/store/kms-state.js';
import { DOMAIN, KmsFixture, TestUser } from '../support/kms-fixture.js';
import {
  FILES,
  HERE,
  build,
  concatKdf,
  gkPayload,
  loadKeys,
  sortMembers,
  type ChannelFile,
  type GkFile,
  type GmbcFile,
  type InvalidBlockVector,
  type KeysFile,
} from './generate.js';

const read = <T>(name: string): T => JSON.parse(readFileSync(join(HERE, name), 'utf8')) as T;
const keysFile = read<KeysFile>('keys.json');
const gmbc = read<GmbcFile>('gmbc.json');
const gk = read<GkFile>('gk.json');
const channel = read<ChannelFile>('channel.json');
const keys = loadKeys(keysFile);

const b64 = (s: string) => Buffer.from(s, 'base64url');
const part = (compact: string, i: number) => compact.split('.')[i]!;
const json = (s: string) => JSON.parse(b64(s).toString('utf8'));

/** The KMS's public key as a client holds it: from the public members only. */
const kmsPublic: KeyObject = importPublicJwk(keysFile.kms.jwk);
/** get /entity-keys/<entity> as the vectors answer it: public keys only. */
const keysOf = async (entity: string) => keysFile.entities.filter((e) => e.entity === entity).map((e) => ({ kid: e.kid, key: jwkOf(importPublicJwk(e.jwk)) }));
const verifyOpts: VerifyOptions = { kmsKey: jwkOf(kmsPublic), kmsId: gmbc.curator, keysOf };
const chainJws = gmbc.blocks.map((b) => b.jws);

/** Runs fn and returns the KmsError it throws (failing if it throws anything else or nothing). */
function kmsErrorOf(fn: () => unknown): KmsError {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(KmsError);
    return e as KmsError;
  }
  return expect.fail('expected a KmsError');
}

/** A block vector signed again with its signer's key over another antecedent (same header, same payload otherwise). */
function resign(v: { header: Record<string, unknown>; payload: object; signer: string }, antecedent: string): string {
  const key = keys.entity(v.signer);
  const { alg, ...rest } = v.header;
  return signCompact(key.privateKey, alg as JwsAlg, JSON.stringify({ ...v.payload, antecedent }), rest);
}

describe('conformance vectors (test/vectors)', function () {
  this.timeout(60_000);

  describe('keys.json', () => {
    it('holds the KMS static key (P-256, kid kms://kms.example.com) and RSA-2048 and P-256 entity keys whose private parts match and whose kid is the RFC 7638 thumbprint', () => {
      expect(keysFile.description).to.match(/TEST KEYS/);
      expect(keysFile.kms.jwk.kid).to.equal(`kms://${DOMAIN}`);
      expect(keysFile.kms.identity).to.equal(gmbc.curator);
      expect(createPublicKey(keys.kmsPrivate).export({ format: 'jwk' })).to.deep.include({ x: keysFile.kms.jwk.x, y: keysFile.kms.jwk.y });
      const types = keysFile.entities.map((e) => {
        const k = keys.entity(e.entity);
        expect(isCanonicalEntity(e.entity), e.entity).to.equal(true);
        expect(e.kid).to.equal(thumbprint(importPublicJwk(e.jwk)));
        expect(e.kid).to.equal(k.kid);
        expect(e.alg).to.equal(k.alg);
        return `${e.jwk.kty}:${e.jwk.kty === 'RSA' ? k.publicKey.asymmetricKeyDetails!.modulusLength : e.jwk.crv}`;
      });
      expect(types).to.deep.equal(['RSA:2048', 'EC:P-256']);
    });
  });

  describe('gmbc.json: the project verifies it', () => {
    it("block 0 is signed by the KMS static key; every later block by its creator's key that the header kid names", () => {
      expect(gmbc.blocks.map((b) => b.index)).to.deep.equal(gmbc.blocks.map((_, i) => i));
      const g = verifyCompact(gmbc.blocks[0]!.jws, kmsPublic, ['ES256']);
      expect(g.header.kid).to.equal(gmbc.curator);
      for (const b of gmbc.blocks.slice(1)) {
        expect(b.signer).to.equal(b.payload.creator);
        const entry = keysFile.entities.find((e) => e.entity === b.signer && e.kid === b.header.kid);
        expect(entry, `block ${b.index}'s kid`).to.not.equal(undefined);
        verifyCompact(b.jws, importPublicJwk(entry!.jwk), [entry!.alg]);
      }
      // Both entity key types sign a block of the chain.
      expect(new Set(gmbc.blocks.slice(1).map((b) => b.header.alg))).to.deep.equal(new Set(['PS256', 'ES256']));
    });

    it("the listed header and payload of every block are its JWS's decoded parts", () => {
      for (const b of [...gmbc.blocks, ...gmbc.invalidBlocks, ...gmbc.invalidGenesis]) {
        expect(json(part(b.jws, 0)), 'header').to.deep.equal(b.header);
        expect(json(part(b.jws, 1)), 'payload').to.deep.equal(b.payload);
      }
    });

    it('verifyChain over the chain gives exactly the listed members after each block', async () => {
      const v = await verifyChain(chainJws, verifyOpts);
      expect(v.hashes).to.deep.equal(gmbc.blocks.map((b) => b.hash));
      expect(v.members.map((m) => sortMembers(m))).to.deep.equal(gmbc.blocks.map((b) => b.members));
      expect(v.uri).to.equal(gmbc.blocks[0]!.payload.uri);
      // Block by block from a verified prefix, as a client following the chain does.
      let prefix: VerifiedChain = await verifyChain(chainJws.slice(0, 1), verifyOpts);
      for (const b of gmbc.blocks.slice(1)) {
        prefix = await verifyChain([b.jws], verifyOpts, prefix);
        expect(sortMembers(prefix.members[b.index]!)).to.deep.equal(b.members);
      }
    });

    it('covers awkward entity spellings: NFC non-ASCII, a dotted i with a combining mark, a final sigma, ß', () => {
      const all = new Set(gmbc.blocks.flatMap((b) => b.members));
      for (const e of ['zo\u00eb@example.com', 'i\u0307stanbul@example.com', '\u03c3\u03b1\u03c3@example.com', 'stra\u00dfe@example.com'])
        expect(all.has(e), e).to.equal(true);
      for (const e of all) expect(isCanonicalEntity(e), e).to.equal(true);
    });

    for (const v of gmbc.invalidBlocks) {
      it(`refuses invalid block "${v.name}" (${v.status} ${v.code}: ${v.why}) by the shared block rule and in verifyChain`, async () => {
        // Wrong in one way only: signed by a key of its signer, over the last valid block.
        verifyCompact(v.jws, keys.entity(v.signer).publicKey, [keys.entity(v.signer).alg]);
        const tail = gmbc.blocks[v.after]!;
        expect(v.after).to.equal(gmbc.blocks.length - 1);
        expect(v.payload.antecedent.toLowerCase()).to.equal(tail.hash);
        await verifyChain([...chainJws, v.jws], verifyOpts).then(
          () => expect.fail('verifyChain accepted it'),
          (e: Error) => expect(e.message).to.match(new RegExp(`^block ${gmbc.blocks.length}: `)),
        );
        const parse = () => parseAppendedBlock(v.header, v.payload, gmbc.curator, 'block');
        switch (v.stage) {
          case 'block-form': {
            const err = kmsErrorOf(parse);
            expect([err.status, err.code]).to.deep.equal([v.status, v.code]);
            break;
          }
          case 'operations': {
            const block = parse();
            const err = kmsErrorOf(() => applyOperations(new Set(tail.members), block.operations, gmbc.curator));
            expect([err.status, err.code]).to.deep.equal([v.status, v.code]);
            break;
          }
          case 'creator-membership': {
            const block = parse();
            expect(tail.members).to.not.include(block.creator);
            expect(
              gmbc.blocks.some((b) => b.members.includes(block.creator)),
              'a former member',
            ).to.equal(true);
            expect(v.status).to.equal(403);
            break;
          }
        }
      });
    }

    for (const v of gmbc.invalidGenesis) {
      it(`refuses the KMS-signed genesis "${v.name}" in verifyChain (${v.why})`, async () => {
        verifyCompact(v.jws, kmsPublic, ['ES256']);
        expect(v.payload.operations).to.deep.equal(v.request.blockPayload.operations);
        await verifyChain([v.jws], verifyOpts).then(
          () => expect.fail('verifyChain accepted it'),
          (e: Error) => expect(e.message).to.match(/^block 0: /),
        );
      });
    }
  });

  describe('gmbc.json: the KMS engine in process gives the listed answers', () => {
    let kms: KmsFixture;
    let zoe: TestUser;
    let chainUri: string;
    /** The fixture's chain: its own genesis, then the vector's appended blocks signed again over it. */
    const hashes: string[] = [];

    /** A user of the fixture holding the vector's key for `jid`. */
    async function vectorUser(jid: string): Promise<TestUser> {
      const u = await kms.user(jid, { keyType: 'EC' });
      const user = new TestUser(jid, u.session, keys.entity(jid), u.token, kms);
      await user.register();
      return user;
    }

    before(async () => {
      kms = await KmsFixture.create();
      for (const e of keysFile.entities) if (e.entity !== 'zo\u00eb@example.com') await vectorUser(e.entity);
      zoe = await vectorUser('zo\u00eb@example.com');
      const genesis = await zoe.genesis(gmbc.blocks[0]!.payload.operations);
      chainUri = genesis.uri;
      hashes.push(blockHash(genesis.block));
      for (const b of gmbc.blocks.slice(1)) {
        const jws = resign(b, hashes[hashes.length - 1]!);
        await zoe.append(chainUri, [jws]);
        hashes.push(blockHash(jws));
      }
    });
    after(() => kms.close());

    it('accepts the valid chain signed again over its own genesis, and holds the listed members after each block', async () => {
      const stored = await zoe.chain(chainUri);
      expect(stored.map(blockHash)).to.deep.equal(hashes);
      const v = await verifyChain(stored, { ...verifyOpts, kmsKey: jwkOf(kms.identity.publicKey) });
      expect(v.members.map((m) => sortMembers(m))).to.deep.equal(gmbc.blocks.map((b) => b.members));
      const chainId = chainUri.split('/').pop()!;
      const named = new Set(gmbc.blocks.flatMap((b) => b.payload.operations.map((o) => o.entity)).filter((e) => e !== gmbc.curator));
      for (const b of gmbc.blocks) {
        for (const e of named)
          expect(isMemberAt(await kms.deps.state.intervals(chainId, e), b.index), `${e} after block ${b.index}`).to.equal(b.members.includes(e));
      }
    });

    for (const v of gmbc.invalidBlocks) {
      it(`answers ${v.status} ${v.code} to invalid block "${v.name}" and stores nothing`, async () => {
        const tail = hashes[v.after]!;
        const antecedent = v.payload.antecedent === gmbc.blocks[v.after]!.hash ? tail : tail.toUpperCase();
        expect(v.payload.antecedent === gmbc.blocks[v.after]!.hash || v.payload.antecedent === gmbc.blocks[v.after]!.hash.toUpperCase()).to.equal(true);
        const before = await kms.digest();
        const [res] = await zoe.session.batch([{ method: 'post', uri: chainUri, body: { blocks: [resign(v, antecedent)] } }]);
        expect([res!.status, res!.code], String(res!.reason)).to.deep.equal([v.status, v.code]);
        // Refused for the listed fault, not another one (e.g. a signature that does not verify).
        const why = {
          'block-form': v.field.replace(/^header\./, '').replace(/\[(\d+)\]/g, '.$1'),
          operations: 'removes the curator',
          'creator-membership': 'is not a member before',
        }[v.stage];
        expect(String(res!.reason)).to.include(why);
        expect(await kms.digest()).to.equal(before);
      });
    }

    for (const v of gmbc.invalidGenesis) {
      it(`answers ${v.status} ${v.code} to the genesis request "${v.name}" and stores nothing`, async () => {
        const before = await kms.digest();
        const [res] = await zoe.session.batch([{ method: 'post', uri: `kms://${DOMAIN}/blocks`, body: v.request }]);
        expect([res!.status, res!.code], String(res!.reason)).to.deep.equal([v.status, v.code]);
        expect(await kms.digest()).to.equal(before);
      });
    }
  });

  describe('gmbc.json: the project reproduces it', () => {
    it('every hash is the lowercase hex SHA-256 of the ASCII compact JWS', () => {
      for (const b of gmbc.blocks) {
        expect(b.hash).to.match(/^[0-9a-f]{64}$/);
        expect(blockHash(b.jws)).to.equal(b.hash);
        expect(createHash('sha256').update(Buffer.from(b.jws, 'ascii')).digest('hex')).to.equal(b.hash);
      }
    });

    it("every antecedent is the previous block's hash", () => {
      for (const b of gmbc.blocks.slice(1)) expect(b.payload.antecedent).to.equal(gmbc.blocks[b.index - 1]!.hash);
    });

    it("signBlock and the KMS's genesis signer give each block's signing input (header.payload) byte for byte", () => {
      const g = gmbc.blocks[0]!;
      const kmsJws = signCompact(keys.kmsPrivate, 'ES256', JSON.stringify(g.payload), { kid: gmbc.curator });
      expect(kmsJws.split('.').slice(0, 2)).to.deep.equal(g.jws.split('.').slice(0, 2));
      for (const b of gmbc.blocks.slice(1)) {
        const p = b.payload as unknown as { antecedent: string; creator: string; created: string };
        const jws = signBlock(keys.entity(b.signer), p.creator, p.antecedent, b.payload.operations, new Date(p.created));
        expect(jws.split('.').slice(0, 2), `block ${b.index}`).to.deep.equal(b.jws.split('.').slice(0, 2));
      }
    });

    it('applyOperations, from the genesis on, reproduces the members after each block', () => {
      let members = new Set<string>();
      for (const b of gmbc.blocks) {
        members = applyOperations(members, b.payload.operations, gmbc.curator);
        expect(sortMembers(members), `block ${b.index}`).to.deep.equal(b.members);
      }
    });

    it("canonicalEntity gives each listed spelling's canonical form (null: not an entity)", () => {
      for (const s of gmbc.spellings) {
        expect(canonicalEntity(s.input) ?? null, JSON.stringify(s.input)).to.equal(s.canonical);
        expect(isCanonicalEntity(s.input), JSON.stringify(s.input)).to.equal(s.canonical === s.input);
      }
    });
  });

  describe('gk.json: the project verifies it', () => {
    it("each GK is signed by the KMS static key and names the GK's uri, the KMS as creator, its created time and block 2's hash", () => {
      expect(gk.block).to.equal(gmbc.blocks[gk.blockIndex]!.hash);
      for (const w of gk.wrapped) {
        const { header, payload } = verifyCompact(w.gkJws, kmsPublic, ['ES256']);
        expect(header).to.deep.equal(w.gkHeader);
        expect(JSON.parse(payload.toString('utf8'))).to.deep.equal(w.gkPayload);
        expect(w.gkPayload).to.deep.equal({ uri: gk.uri, creator: gmbc.curator, created: gk.created, block: gk.block, key: w.jwe });
        expect(json(part(w.jwe, 0))).to.deep.equal(w.jweHeader);
        expect(w.jweHeader).to.deep.include({ alg: w.alg, enc: w.enc, kid: w.kid });
        // The entity was a member at the block the GK is bound to.
        expect(gmbc.blocks[gk.blockIndex]!.members).to.include(w.entity);
      }
      expect(gk.wrapped.map((w) => w.alg)).to.deep.equal(['RSA-OAEP', 'ECDH-ES+A256KW']);
    });

    for (const w of gk.wrapped) {
      it(`openGk with ${w.entity}'s key unwraps the ${w.alg} + ${w.enc} key to the listed oct JWK`, () => {
        const opened = openGk(w.gkJws, kmsPublic, keys.entity(w.entity));
        expect(opened).to.deep.include({ uri: gk.uri, created: gk.created, block: gk.block });
        expect(opened.key.equals(b64(gk.key.k))).to.equal(true);
        expect(JSON.parse(gk.plaintext)).to.deep.equal(gk.key);
        expect(gk.key).to.deep.include({ kty: 'oct', alg: 'A256GCM', kid: gk.uri });
        expect(b64(gk.key.k)).to.have.length(32);
      });
    }

    it('RSA-OAEP: the encrypted key decrypts (OAEP, SHA-1, MGF1-SHA-1) to the listed CEK', () => {
      const w = gk.wrapped.find((x) => x.alg === 'RSA-OAEP')!;
      const cek = privateDecrypt({ key: keys.entity(w.entity).privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING }, b64(part(w.jwe, 1)));
      expect(cek.toString('base64url')).to.equal(w.cek);
    });
  });

  describe('gk.json: the project reproduces it', () => {
    const ec = gk.wrapped.find((x) => x.alg === 'ECDH-ES+A256KW')!;
    const rsa = gk.wrapped.find((x) => x.alg === 'RSA-OAEP')!;

    it('ECDH-ES+A256KW + A256GCM with the listed epk, CEK and IV reproduces the whole JWE byte for byte', () => {
      expect(ec.deterministic).to.equal(true);
      const zoe = keys.entity(ec.entity);
      const jwe = encryptEcdhEs(
        zoe.publicKey,
        gk.plaintext,
        { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: zoe.kid },
        { epk: ec.epk!, cek: b64(ec.cek), iv: b64(ec.iv) },
      );
      expect(jwe).to.equal(ec.jwe);
      const { d: _d, ...epkPublic } = ec.epk!;
      expect(ec.jweHeader.epk).to.deep.equal(epkPublic);
    });

    it('ECDH-ES: Z, the Concat KDF key-wrapping key, and the RFC 3394 unwrap of the encrypted key reproduce with node:crypto alone', () => {
      const zoe = keys.entity(ec.entity);
      const eph = createECDH('prime256v1');
      eph.setPrivateKey(b64(ec.epk!.d!));
      const z = eph.computeSecret(Buffer.concat([Buffer.of(4), b64(zoe.publicJwk.x!), b64(zoe.publicJwk.y!)]));
      expect(z.toString('base64url')).to.equal(ec.z);
      // The recipient's side: its private key and the epk of the header.
      const mine = createECDH('prime256v1');
      mine.setPrivateKey(b64(keysFile.entities.find((e) => e.entity === ec.entity)!.jwk.d!));
      expect(mine.computeSecret(Buffer.concat([Buffer.of(4), b64(ec.epk!.x!), b64(ec.epk!.y!)])).equals(z)).to.equal(true);
      const kek = concatKdf(z, 32, 'ECDH-ES+A256KW');
      expect(kek.toString('base64url')).to.equal(ec.kek);
      const unwrap = createDecipheriv('id-aes256-wrap', kek, Buffer.from('a6a6a6a6a6a6a6a6', 'hex'));
      const cek = Buffer.concat([unwrap.update(b64(part(ec.jwe, 1))), unwrap.final()]);
      expect(cek.toString('base64url')).to.equal(ec.cek);
      // A256GCM under the CEK, the protected header as AAD, gives the plaintext.
      const gcm = createDecipheriv('aes-256-gcm', cek, b64(part(ec.jwe, 2)));
      gcm.setAAD(Buffer.from(part(ec.jwe, 0), 'ascii'));
      gcm.setAuthTag(b64(part(ec.jwe, 4)));
      expect(Buffer.concat([gcm.update(b64(part(ec.jwe, 3))), gcm.final()]).toString('utf8')).to.equal(gk.plaintext);
    });

    it('RSA-OAEP + A256GCM with the listed CEK and IV reproduces the header, IV, ciphertext and tag (the encrypted key is randomized)', () => {
      expect(rsa.deterministic).to.equal(false);
      const alice = keys.entity(rsa.entity);
      const jwe = encryptRsaOaep(alice.publicKey, gk.plaintext, { alg: 'RSA-OAEP', enc: 'A256GCM', kid: alice.kid }, { cek: b64(rsa.cek), iv: b64(rsa.iv) });
      const [h, ek, iv, ct, tag] = jwe.split('.');
      expect([h, iv, ct, tag]).to.deep.equal([0, 2, 3, 4].map((i) => part(rsa.jwe, i)));
      expect(ek).to.not.equal(part(rsa.jwe, 1));
    });

    it("each GK's signing input (the KMS header and the payload with the wrapped key) reproduces byte for byte", () => {
      for (const w of gk.wrapped) {
        const jws = signCompact(keys.kmsPrivate, 'ES256', JSON.stringify(gkPayload(gk.uri, gk.created, gk.block, w.jwe)), { kid: gmbc.curator });
        expect(jws.split('.').slice(0, 2)).to.deep.equal(w.gkJws.split('.').slice(0, 2));
      }
      expect(JSON.stringify(gk.key)).to.equal(gk.plaintext);
    });
  });

  describe('channel.json: the project verifies it', () => {
    const key = b64(channel.key);

    it('each message decrypts under the channel key to its plaintext; the header is alg dir, enc A256GCM, kid the ephemeral key URI as the handshake gives it', () => {
      expect(channel.kid).to.match(/^\/ecdhe\/[0-9a-f-]{36}$/);
      for (const m of channel.messages) {
        const { header, plaintext } = decryptDir(m.jwe, key, ['A256GCM']);
        expect(header).to.deep.equal({ alg: 'dir', kid: channel.kid, enc: 'A256GCM' });
        expect(m.header).to.deep.equal(header);
        expect(plaintext.toString('utf8')).to.equal(m.plaintext);
        expect(part(m.jwe, 1)).to.equal('');
        expect(part(m.jwe, 2)).to.equal(m.iv);
      }
    });

    it('the request is a valid KMS request for the GK of gk.json, and the response answers it with that GK', () => {
      const [request, response] = channel.messages;
      expect([request!.direction, response!.direction]).to.deep.equal(['request', 'response']);
      const req = parseRequestValue(JSON.parse(request!.plaintext));
      expect(req).to.deep.include({ method: 'get', uri: gk.uri });
      const zoe = gk.wrapped.find((w) => w.alg === 'ECDH-ES+A256KW')!;
      expect(req.body).to.deep.equal({ entity: zoe.entity });
      const res = JSON.parse(response!.plaintext);
      expect(res).to.deep.equal({ status: 200, gk: zoe.gkJws, requestId: req.requestId });
    });
  });

  describe('channel.json: the project reproduces it', () => {
    it('deriveChannelKey gives the listed key from either side, and so do ECDH and HKDF-SHA256 (empty salt and info) with node:crypto', () => {
      const fromClient = deriveChannelKey(importPrivateJwk(channel.client), importPublicJwk(channel.kms));
      const fromKms = deriveChannelKey(importPrivateJwk(channel.kms), importPublicJwk(channel.client));
      expect(fromClient.toString('base64url')).to.equal(channel.key);
      expect(fromKms.toString('base64url')).to.equal(channel.key);
      const ecdh = createECDH('prime256v1');
      ecdh.setPrivateKey(b64(channel.kms.d!));
      const z = ecdh.computeSecret(Buffer.concat([Buffer.of(4), b64(channel.client.x!), b64(channel.client.y!)]));
      expect(z.toString('base64url')).to.equal(channel.z);
      expect(Buffer.from(hkdfSync('sha256', z, Buffer.alloc(0), Buffer.alloc(0), 32)).toString('base64url')).to.equal(channel.key);
    });

    it("encryptDir (the client's request) and dirEncrypter (the KMS's responses) with the listed IVs reproduce both JWEs byte for byte", () => {
      const key = b64(channel.key);
      const [request, response] = channel.messages;
      expect(encryptDir(key, request!.plaintext, { enc: 'A256GCM', kid: channel.kid }, { iv: b64(request!.iv) })).to.equal(request!.jwe);
      expect(dirEncrypter(key, { enc: 'A256GCM', kid: channel.kid })(response!.plaintext, { iv: b64(response!.iv) })).to.equal(response!.jwe);
    });
  });

  describe('the generator (test/vectors/generate.ts)', () => {
    it('run again into a temporary directory, writes every committed file byte for byte (the committed files are current)', () => {
      const out = mkdtempSync(join(tmpdir(), 'kms-vectors-'));
      try {
        const root = fileURLToPath(new URL('../../', import.meta.url));
        execFileSync(process.execPath, ['--import', 'tsx', 'test/vectors/generate.ts', '--out', out], { cwd: root, stdio: 'pipe' });
        for (const f of FILES) expect(readFileSync(join(out, f), 'utf8'), f).to.equal(readFileSync(join(HERE, f), 'utf8'));
      } finally {
        rmSync(out, { recursive: true, force: true });
      }
    });

    it('signing afresh (--resign) changes only signatures, the RSA-OAEP encrypted key and what depends on them (hashes, antecedents, GK bindings)', () => {
      const fresh = build({ resign: true });
      expect(fresh['keys.json']).to.equal(readFileSync(join(HERE, 'keys.json'), 'utf8'));
      const g = JSON.parse(fresh['gmbc.json']) as GmbcFile;
      const k = JSON.parse(fresh['gk.json']) as GkFile;
      const c = JSON.parse(fresh['channel.json']) as ChannelFile;
      const noAntecedent = (p: object) => ({ ...p, antecedent: undefined });
      expect(g.spellings).to.deep.equal(gmbc.spellings);
      expect(g.blocks.map((b) => b.members)).to.deep.equal(gmbc.blocks.map((b) => b.members));
      expect(g.blocks.map((b) => [b.header, noAntecedent(b.payload)])).to.deep.equal(gmbc.blocks.map((b) => [b.header, noAntecedent(b.payload)]));
      const strip = (v: InvalidBlockVector) => ({ ...v, jws: undefined, payload: noAntecedent(v.payload) });
      expect(g.invalidBlocks.map(strip)).to.deep.equal(gmbc.invalidBlocks.map(strip));
      expect(g.blocks[1]!.hash).to.not.equal(gmbc.blocks[1]!.hash);
      const ecFresh = k.wrapped.find((w) => w.deterministic)!;
      const ecOld = gk.wrapped.find((w) => w.deterministic)!;
      expect({ ...ecFresh, gkJws: undefined, gkPayload: undefined }).to.deep.equal({ ...ecOld, gkJws: undefined, gkPayload: undefined });
      const rsaParts = (w: { jwe: string }) => [0, 2, 3, 4].map((i) => part(w.jwe, i));
      expect(rsaParts(k.wrapped.find((w) => !w.deterministic)!)).to.deep.equal(rsaParts(gk.wrapped.find((w) => !w.deterministic)!));
      expect([c.key, c.z, c.kid, c.messages[0]]).to.deep.equal([channel.key, channel.z, channel.kid, channel.messages[0]]);
    });
  });
});
