/**
 * src/xmpp/coalesce.ts on a real loopback TCP socket: replies written in one tick leave in one
 * native write (counted on the socket's handle), arrive whole and in order, and nothing is held
 * past the turn of the event loop.
 */
import { expect } from 'chai';
import net from 'node:net';
import { once } from 'node:events';
import { coalesceThisTick } from '../../src/xmpp/coalesce.js';

type NativeWrite = 'writeUtf8String' | 'writeLatin1String' | 'writeAsciiString' | 'writeBuffer' | 'writev';
const NATIVE_WRITES: NativeWrite[] = ['writeUtf8String', 'writeLatin1String', 'writeAsciiString', 'writeBuffer', 'writev'];

describe('xmpp/coalesce', () => {
  let server: net.Server;
  let sender: net.Socket;
  let received = '';
  let nativeWrites = 0;

  before(async () => {
    server = net.createServer((s) => s.on('data', (d) => (received += d.toString('utf8'))));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    sender = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    sender.setNoDelay(true);
    await once(sender, 'connect');
    // Count the syscalls: every write of a net.Socket goes through one of its handle's methods.
    const handle = (sender as unknown as { _handle: Record<NativeWrite, (...a: unknown[]) => unknown> })._handle;
    for (const name of NATIVE_WRITES) {
      const native = handle[name].bind(handle);
      handle[name] = (...args: unknown[]) => {
        nativeWrites++;
        return native(...args);
      };
    }
  });

  after(() => {
    sender.destroy();
    server.close();
  });

  /** Five replies, each written from its own promise job in one tick, as the component answers a read of five requests. */
  async function burst(coalesce: boolean, tag: string): Promise<{ writes: number }> {
    nativeWrites = 0;
    received = '';
    const replies = Array.from({ length: 5 }, (_, i) => `<iq id="${tag}${i}">${'x'.repeat(300)}</iq>`);
    await Promise.all(
      replies.map(async (r) => {
        await Promise.resolve();
        if (coalesce) coalesceThisTick(sender);
        sender.write(r);
      }),
    );
    const want = replies.join('');
    for (let i = 0; i < 100 && received.length < want.length; i++) await new Promise((r) => setTimeout(r, 10));
    expect(received).to.equal(want);
    return { writes: nativeWrites };
  }

  it('sends the replies of one tick in one write; without it each reply is its own write', async () => {
    expect((await burst(false, 'a')).writes).to.be.greaterThan(1);
    expect((await burst(true, 'b')).writes).to.equal(1);
  });

  it('also when it is called synchronously, before the promise jobs that write (xmpp.js middleware runs in the read callback)', async () => {
    nativeWrites = 0;
    received = '';
    coalesceThisTick(sender);
    const replies = ['<iq id="s0"/>', '<iq id="s1"/>', '<iq id="s2"/>'];
    await Promise.all(replies.map(async (r) => sender.write(await Promise.resolve(r))));
    for (let i = 0; i < 100 && received.length < replies.join('').length; i++) await new Promise((r) => setTimeout(r, 10));
    expect(received).to.equal(replies.join(''));
    expect(nativeWrites).to.equal(1);
  });

  it('holds nothing past the tick: a later write goes out on its own, and so does the next burst', async () => {
    await burst(true, 'c');
    nativeWrites = 0;
    received = '';
    sender.write('<iq id="late"/>');
    for (let i = 0; i < 100 && received !== '<iq id="late"/>'; i++) await new Promise((r) => setTimeout(r, 10));
    expect(received).to.equal('<iq id="late"/>');
    expect(nativeWrites).to.equal(1);
    expect((await burst(true, 'd')).writes).to.equal(1);
  });

  it('corks a socket once per tick however many replies ask', () => {
    let corks = 0;
    let uncorks = 0;
    const fake = { cork: () => corks++, uncork: () => uncorks++ };
    coalesceThisTick(fake);
    coalesceThisTick(fake);
    coalesceThisTick(undefined);
    expect([corks, uncorks]).to.deep.equal([1, 0]);
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        expect([corks, uncorks]).to.deep.equal([1, 1]);
        resolve();
      }),
    );
  });
});
