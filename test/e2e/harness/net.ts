// Loopback port helpers for the server harness.
import { readFile } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** `count` distinct TCP ports that were free on 127.0.0.1 a moment ago (held together, then released). */
export async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => resolve());
      });
    }
    return servers.map((s) => {
      const address = s.address();
      if (address === null || typeof address === 'string') throw new Error('no TCP address');
      return address.port;
    });
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/** Resolves true once a TCP connection to 127.0.0.1:port succeeds. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/**
 * Polls until every port is listened on by a socket of `ownSockets()` (so that a stranger that
 * took one of our ports is not mistaken for our server) and accepts connections. Rejects when
 * another process listens on one of the ports, when `deadline` (epoch ms) passes, or when
 * `abort()` returns a reason (e.g. the server process exited).
 */
export async function waitForPorts(ports: number[], deadline: number, ownSockets: () => Promise<Set<string>>, abort: () => string | undefined): Promise<void> {
  const pending = new Set(ports);
  for (;;) {
    const reason = abort();
    if (reason !== undefined) throw new Error(reason);
    const listening = await listeningSockets();
    const own = await ownSockets();
    for (const port of [...pending]) {
      const inodes = [...(listening.get(port) ?? [])];
      if (inodes.length === 0) continue;
      if (!inodes.some((inode) => own.has(inode))) {
        throw new Error(`port ${port} is in use by another process`);
      }
      if (await accepts(port)) pending.delete(port);
    }
    if (pending.size === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`ports ${[...pending].join(', ')} did not accept connections in time`);
    }
    await sleep(20);
  }
}

/** Socket inodes of the TCP sockets listening on each local port (any address), from /proc/net. */
async function listeningSockets(): Promise<Map<number, Set<string>>> {
  const byPort = new Map<number, Set<string>>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = await readFile(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st ... uid timeout inode
      if (f.length < 10 || f[3] !== '0A') continue; // 0A = LISTEN
      const port = parseInt(f[1]!.split(':')[1]!, 16);
      const inode = f[9]!;
      if (!byPort.has(port)) byPort.set(port, new Set());
      byPort.get(port)!.add(inode);
    }
  }
  return byPort;
}
