// A loopback WebSocket proxy that records every message in both directions, as the endpoints see it
// (unmasked: a browser masks what it sends, RFC 6455 section 5.3, so a byte-level tap would never
// find the text in it). Put it in front of a server's XMPP-over-WebSocket endpoint (RFC 7395) to
// check what the server is given to read.
import type { IncomingMessage } from 'node:http';
import { WebSocket, WebSocketServer, type RawData } from 'ws';

export interface WsTap {
  /** The ws:// URL to give the client instead of the server's (same path). */
  url: string;
  /** Every message recorded so far, in order, with its direction ('up': client to server). */
  messages(): { direction: 'up' | 'down'; text: string }[];
  /** All messages' text, one per line. */
  text(): string;
  /** How many connections have been relayed. */
  connections(): number;
  close(): Promise<void>;
}

const text = (data: RawData): string => (Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)).toString('utf8');

/** Close codes an endpoint may send (1005, 1006 and 1015 are reserved for reporting only). */
const sendable = (code: number) => (code >= 1000 && code <= 1014 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);

/**
 * Starts a recording proxy on 127.0.0.1 to `target` (e.g. ws://127.0.0.1:5280): a client's
 * `ws://127.0.0.1:<port>/path` is relayed to `<target>/path`, with its subprotocols and Origin.
 */
export async function startWsTap(target: string): Promise<WsTap> {
  const recorded: { direction: 'up' | 'down'; text: string }[] = [];
  const sockets = new Set<WebSocket>();
  let count = 0;
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    // Answer with the subprotocol the client asked for first ('xmpp'); the server is asked for the same list.
    handleProtocols: (protocols) => [...protocols][0] ?? false,
  });
  wss.on('connection', (inbound: WebSocket, req: IncomingMessage) => {
    count += 1;
    const protocols = (req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== '');
    const outbound = new WebSocket(new URL(req.url ?? '/', target).href, protocols, {
      ...(req.headers.origin ? { origin: req.headers.origin } : {}),
    });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        inbound.terminate();
        outbound.terminate();
      });
    }
    // What the client sends before the server's side is open waits, in order.
    const pending: { data: RawData; binary: boolean }[] = [];
    inbound.on('message', (data, binary) => {
      recorded.push({ direction: 'up', text: text(data) });
      if (outbound.readyState === WebSocket.OPEN) outbound.send(data, { binary });
      else pending.push({ data, binary });
    });
    outbound.on('open', () => {
      for (const m of pending.splice(0)) outbound.send(m.data, { binary: m.binary });
    });
    outbound.on('message', (data, binary) => {
      recorded.push({ direction: 'down', text: text(data) });
      if (inbound.readyState === WebSocket.OPEN) inbound.send(data, { binary });
    });
    const closeOther = (other: WebSocket) => (code: number, reason: Buffer) => {
      if (other.readyState === WebSocket.OPEN) other.close(sendable(code) ? code : 1000, reason);
      else if (other.readyState === WebSocket.CONNECTING) other.terminate();
    };
    inbound.on('close', closeOther(outbound));
    outbound.on('close', closeOther(inbound));
  });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  const address = wss.address();
  if (address === null || typeof address === 'string') throw new Error('ws-tap: no port');
  return {
    url: `ws://127.0.0.1:${address.port}`,
    messages: () => [...recorded],
    text: () => recorded.map((m) => m.text).join('\n'),
    connections: () => count,
    close: async () => {
      for (const s of sockets) s.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
}
