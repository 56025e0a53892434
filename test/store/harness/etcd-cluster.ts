/**
 * A real 3-node etcd cluster on 127.0.0.1 for the store tests (Debian's etcd-server, installed by
 * scripts/install-system-deps.sh): free ports, data under a temporary folder, every node in its own
 * process group (test/e2e/harness/process-group.ts), so that a node is killed with the test process
 * however it ends. `kill(i)` is a kill -9 of one node, `restart(i)` starts it again on its data and
 * ports, `stop()` ends them all and removes the folder (also done at process exit).
 */
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { freePorts, waitForPorts } from '../../e2e/harness/net.js';
import { ProcessGroup } from '../../e2e/harness/process-group.js';

const START_TIMEOUT_MS = 30_000;
const liveDirs = new Set<string>();
process.on('exit', () => {
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
});

interface Node {
  name: string;
  clientPort: number;
  peerPort: number;
  group: ProcessGroup | undefined;
}

export class EtcdCluster {
  readonly dir: string;
  readonly #nodes: Node[];

  private constructor(dir: string, nodes: Node[]) {
    this.dir = dir;
    this.#nodes = nodes;
  }

  /** Starts `size` nodes and waits until every one answers /health. */
  static async start(size = 3): Promise<EtcdCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'kms-etcd-'));
    liveDirs.add(dir);
    const ports = await freePorts(2 * size);
    const nodes = Array.from({ length: size }, (_, i) => ({ name: `n${i}`, clientPort: ports[2 * i]!, peerPort: ports[2 * i + 1]!, group: undefined }));
    const cluster = new EtcdCluster(dir, nodes);
    try {
      await Promise.all(nodes.map((_, i) => cluster.#spawn(i)));
      await Promise.all(nodes.map((_, i) => cluster.#waitHealthy(i, Date.now() + START_TIMEOUT_MS)));
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  /** The client URL of every node (also of those killed). */
  get endpoints(): string[] {
    return this.#nodes.map((n) => `http://127.0.0.1:${n.clientPort}`);
  }

  get size(): number {
    return this.#nodes.length;
  }

  #node(i: number): Node {
    const node = this.#nodes[i];
    if (node === undefined) throw new Error(`no etcd node ${i}`);
    return node;
  }

  #logFile(i: number): string {
    return join(this.dir, `${this.#node(i).name}.log`);
  }

  async #spawn(i: number): Promise<void> {
    const node = this.#node(i);
    const initialCluster = this.#nodes.map((n) => `${n.name}=http://127.0.0.1:${n.peerPort}`).join(',');
    const group = new ProcessGroup({
      command: 'etcd',
      args: [
        `--name=${node.name}`,
        `--data-dir=${join(this.dir, node.name)}`,
        `--listen-client-urls=http://127.0.0.1:${node.clientPort}`,
        `--advertise-client-urls=http://127.0.0.1:${node.clientPort}`,
        `--listen-peer-urls=http://127.0.0.1:${node.peerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${node.peerPort}`,
        `--initial-cluster=${initialCluster}`,
        '--initial-cluster-state=new', // ignored on a restart: the data folder says it all
        `--initial-cluster-token=${this.dir}`,
        // Loopback: a faster failure detection than the defaults (100 ms / 1000 ms).
        '--heartbeat-interval=50',
        '--election-timeout=500',
        '--logger=zap',
        '--log-outputs=stderr',
      ],
      cwd: this.dir,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      outputFile: this.#logFile(i),
    });
    node.group = group;
    await waitForPorts(
      [node.clientPort, node.peerPort],
      Date.now() + START_TIMEOUT_MS,
      () => group.socketInodes(),
      () => (group.hasExited ? `etcd ${node.name} exited during start-up` : undefined),
    ).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${await this.#tail(i)}`);
    });
  }

  async #tail(i: number): Promise<string> {
    const text = await readFile(this.#logFile(i), 'utf8').catch(() => '');
    return text.split('\n').slice(-20).join('\n');
  }

  /** Waits until node `i` answers {"health":"true"} (it has a leader and serves a quorum read). */
  async #waitHealthy(i: number, deadline: number): Promise<void> {
    const url = `${this.endpoints[i]}/health`;
    let last = '';
    while (Date.now() < deadline) {
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
        last = await res.text();
        if (res.ok && (JSON.parse(last) as { health?: string }).health === 'true') return;
      } catch (e) {
        last = (e as Error).message;
      }
      await sleep(50);
    }
    throw new Error(`etcd ${this.#node(i).name} not healthy in time (${last})\n${await this.#tail(i)}`);
  }

  /** kill -9 of node `i`; resolves when its processes are gone. */
  async kill(i: number): Promise<void> {
    const node = this.#node(i);
    await node.group?.kill();
    node.group = undefined;
  }

  /** Starts node `i` again on its data and ports, and waits until it is healthy. */
  async restart(i: number): Promise<void> {
    if (this.#node(i).group !== undefined) throw new Error(`etcd ${this.#node(i).name} is running`);
    await this.#spawn(i);
    await this.#waitHealthy(i, Date.now() + START_TIMEOUT_MS);
  }

  /** The index of the node that is the Raft leader now, as the running nodes report it. */
  async leader(): Promise<number> {
    for (let i = 0; i < this.#nodes.length; i++) {
      if (this.#node(i).group === undefined) continue;
      const client = new Etcd3({ hosts: this.endpoints[i]!, dialTimeout: 2_000, defaultCallOptions: { deadline: Date.now() + 2_000 } });
      try {
        const status = await client.maintenance.status();
        if (status.leader !== '0' && status.leader === status.header.member_id) return i;
      } catch {
        // this node does not answer: ask the next one
      } finally {
        client.close();
      }
    }
    throw new Error('no etcd node reports itself the leader');
  }

  /** Ends every node and removes the data folder. */
  async stop(): Promise<void> {
    await Promise.all(
      this.#nodes.map(async (n) => {
        await n.group?.terminate(5_000);
        n.group = undefined;
      }),
    );
    await rm(this.dir, { recursive: true, force: true });
    liveDirs.delete(this.dir);
  }
}
