// A loopback TCP proxy that records every byte in both directions: put it in front of a server's
// c2s or component port to see exactly what crossed the wire (tests of what the server can read).
import { createServer, connect, type Socket } from 'node:net';

export interface Wiretap {
  /** The port to connect to instead of the server's. */
  port: number;
  /** Everything recorded so far: each direction of each connection as one string. */
  text(): string;
  /** Bytes recorded so far. */
  bytes(): number;
  close(): Promise<void>;
}

/** Starts a recording proxy on 127.0.0.1 to `targetPort`. */
export async function startWiretap(targetPort: number): Promise<Wiretap> {
  const streams: Buffer[][] = [];
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = connect(targetPort, '127.0.0.1');
    const up: Buffer[] = [];
    const down: Buffer[] = [];
    streams.push(up, down);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.on('data', (d: Buffer) => up.push(Buffer.from(d)));
    outbound.on('data', (d: Buffer) => down.push(Buffer.from(d)));
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('wiretap: no port');
  return {
    port: address.port,
    text: () => streams.map((chunks) => Buffer.concat(chunks).toString('utf8')).join('\n'),
    bytes: () => streams.reduce((n, chunks) => n + chunks.reduce((m, c) => m + c.length, 0), 0),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
