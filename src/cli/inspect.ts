/**
 * `kms inspect`: an operator's read-only view of the store: chains with their blocks and members,
 * and group keys with their owner and binding. Key material is never read, unsealed or printed:
 * the sealed fields are dropped before anything is shown.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { KvStore } from '../store/kv.js';
import { parseBackup, snapshotStore } from '../store/backup.js';
import { askRunningKms, openStoppedStore } from './operator.js';
import { KmsState, type ChainRecord, type GkRecord } from '../store/kms-state.js';
import type { KmsConfig } from '../config.js';
import { blockHash } from '../protocol/block-hash.js';
import { applyOperations, type Operation } from '../protocol/blocks.js';

/** A failure the operator can act on (printed as one line, exit code 1). */
class InspectError extends Error {}

export interface Inspector {
  state: KmsState;
  kv: KvStore;
  close(): Promise<void>;
}

/**
 * Opens the component's store read-only: a stopped KMS's store directly; a running KMS's (LevelDB
 * allows one process) as a snapshot from its admin listener (GET /backup); or a backup file.
 * Never makes a store where there is none.
 */
export async function openInspector(config: KmsConfig, o: { backup?: string } = {}): Promise<Inspector> {
  if (o.backup) return snapshotInspector(parseBackup(await readFile(resolve(o.backup), 'utf8'), resolve(o.backup)).entries);
  let store: KvStore | 'running';
  try {
    store = await openStoppedStore(config);
  } catch (e) {
    throw new InspectError((e as Error).message);
  }
  if (store === 'running') {
    const text = await askRunningKms(config, 'GET', '/backup', 'kms inspect').then(
      (r) => r.text(),
      (e: unknown) => {
        throw new InspectError((e as Error).message);
      },
    );
    return snapshotInspector(parseBackup(text, 'the snapshot from the running KMS').entries);
  }
  const kv = store;
  return { kv, state: new KmsState(kv), close: () => kv.close() };
}

function snapshotInspector(entries: [string, string][]): Inspector {
  const kv = snapshotStore(entries);
  return { kv, state: new KmsState(kv), close: () => kv.close() };
}

interface BlockView {
  seq: number;
  hash: string;
  creator: string;
  created: string;
  operations: { entity: string; optype: string }[];
  /** Members after this block (the curator aside). */
  members: string[];
}

export interface ChainView {
  id: string;
  uri: string;
  created: string;
  length: number;
  tail: string;
  members: string[];
  blocks?: BlockView[];
}

function payload(jws: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
}

const idOf = (idOrUri: string) => idOrUri.replace(/\/+$/, '').split('/').pop() ?? idOrUri;

async function chainView(state: KmsState, c: ChainRecord, withBlocks: boolean): Promise<ChainView> {
  let members = new Set<string>();
  const blocks: BlockView[] = [];
  let curator = '';
  for (const [seq, jws] of (await state.blocks(c.id)).entries()) {
    const p = payload(jws);
    const ops = (p.operations as Operation[]) ?? [];
    if (seq === 0) curator = String(p.curator);
    // The same rule as the engine and every client (src/protocol/blocks.ts); the curator is not listed.
    members = applyOperations(members, ops, curator);
    blocks.push({ seq, hash: blockHash(jws), creator: String(p.creator), created: String(p.created), operations: ops, members: [...members].sort() });
  }
  const view: ChainView = { id: c.id, uri: c.uri, created: c.created, length: c.length, tail: c.tail, members: [...members].sort() };
  if (withBlocks) view.blocks = blocks;
  return view;
}

export async function listChains(i: Inspector): Promise<ChainView[]> {
  const out: ChainView[] = [];
  for await (const [, v] of i.kv.entries({ gte: 'c!', lt: 'c!~' })) out.push(await chainView(i.state, JSON.parse(v) as ChainRecord, false));
  return out.sort((a, b) => a.created.localeCompare(b.created));
}

export async function describeChain(i: Inspector, idOrUri: string): Promise<ChainView> {
  const c = await i.state.chain(idOf(idOrUri));
  if (!c) throw new InspectError(`no chain ${idOrUri} in this store (kms inspect chains lists them)`);
  return chainView(i.state, c, true);
}

export interface GkView {
  id: string;
  uri: string;
  owner: string;
  clientId: string;
  created: string;
  /** The block it is bound to, its chain and position; absent while unbound. */
  binding?: { block: string; chain: string; seq: number };
}

async function gkView(i: Inspector, g: GkRecord): Promise<GkView> {
  // The sealed key is left out on purpose: inspection never handles key material.
  const view: GkView = { id: g.id, uri: g.uri, owner: g.owner, clientId: g.clientId, created: g.created };
  if (g.block) {
    const ref = await i.state.blockRef(g.block);
    const chain = ref ? await i.state.chain(ref.chain) : undefined;
    view.binding = { block: g.block, chain: chain?.uri ?? '(missing)', seq: ref?.seq ?? -1 };
  }
  return view;
}

export async function listGks(i: Inspector): Promise<GkView[]> {
  const out: GkView[] = [];
  for await (const [, v] of i.kv.entries({ gte: 'g!', lt: 'g!~' })) out.push(await gkView(i, JSON.parse(v) as GkRecord));
  return out.sort((a, b) => a.created.localeCompare(b.created));
}

export async function describeGk(i: Inspector, idOrUri: string): Promise<GkView> {
  const g = await i.state.gk(idOf(idOrUri));
  if (!g) throw new InspectError(`no group key ${idOrUri} in this store (kms inspect gks lists them)`);
  return gkView(i, g);
}

/** Human-readable renderings (the CLI prints JSON instead with --json). */
export const render = {
  chains(rows: ChainView[]): string {
    if (rows.length === 0) return 'no chains';
    return rows.map((c) => `${c.uri}  ${c.length} block(s)  created ${c.created}\n  members: ${c.members.join(', ') || '(none)'}`).join('\n');
  },
  chain(c: ChainView): string {
    const lines = [`${c.uri}  created ${c.created}  ${c.length} block(s)  tail ${c.tail}`];
    for (const b of c.blocks ?? []) {
      const ops = b.operations.map((o) => `${o.optype === 'add' ? '+' : '-'}${o.entity}`).join(' ');
      lines.push(`  #${b.seq} ${b.hash.slice(0, 16)}…  by ${b.creator} at ${b.created}  ${ops}`);
      lines.push(`      members: ${b.members.join(', ') || '(none)'}`);
    }
    return lines.join('\n');
  },
  gks(rows: GkView[]): string {
    if (rows.length === 0) return 'no group keys';
    return rows.map((g) => render.gk(g)).join('\n');
  },
  gk(g: GkView): string {
    const bound = g.binding
      ? `bound to block #${g.binding.seq} (${g.binding.block.slice(0, 16)}…) of ${g.binding.chain}`
      : 'unbound (visible to its owner only)';
    return `${g.uri}  owner ${g.owner}  created ${g.created}\n  ${bound}`;
  },
};
