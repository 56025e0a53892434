/**
 * The waits between reconnection attempts (src/xmpp/reconnect-policy.ts) on a fake clock: a
 * server restart after long service is retried within about a second all along, where the
 * backoff used to double during the restart (issue 14: 0.5, 1, 2, 4 s: online again 7.6 s after
 * the restart); a link that drops right after coming online keeps backing off.
 */
import { expect } from 'chai';
import { ReconnectPolicy } from '../../src/xmpp/reconnect-policy.js';

/** A policy with the defaults of the configuration (500 ms doubling up to 30 s) on a clock the test moves. */
function policy(o: { initialMs?: number; maxMs?: number } = {}) {
  let now = 1_000_000;
  const p = new ReconnectPolicy({ initialMs: o.initialMs ?? 500, maxMs: o.maxMs ?? 30_000, now: () => now });
  return {
    p,
    advance: (ms: number) => (now += ms),
    /** The waits of `n` failed attempts in a row, the clock moving by each wait. */
    failures(n: number): number[] {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const d = p.disconnected();
        out.push(d);
        now += d;
      }
      return out;
    },
  };
}

describe('xmpp/reconnect-policy: waits between reconnection attempts', () => {
  it('after a link that was online for hours, attempts stay at most 1 s apart through a restart', () => {
    const c = policy();
    c.p.online();
    c.advance(3 * 3600_000);
    // The server restarts: ECONNREFUSED for a while.
    const waits = c.failures(12);
    expect(waits).to.deep.equal([500, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]);
    // Whenever the server is back during those 11.5 s, the next attempt is at most 1 s away.
    expect(Math.max(...waits)).to.be.at.most(1000);
  });

  it('the backoff grown during one outage starts over after the next healthy period', () => {
    const c = policy();
    c.p.online();
    c.advance(60_000);
    // A long outage: past the 30 s window the waits double up to the maximum.
    const long = c.failures(40);
    expect(long.slice(0, 3)).to.deep.equal([500, 1000, 1000]);
    expect(long).to.include.members([2000, 4000, 8000, 16_000]);
    expect(long.at(-1)).to.equal(30_000);
    c.p.online();
    c.advance(10_000);
    // Lost again after 10 s online: back to 0.5 s, then 1 s.
    expect(c.failures(3)).to.deep.equal([500, 1000, 1000]);
  });

  it('a long outage backs off again after the first 30 s, up to reconnectMaxMs', () => {
    const c = policy();
    c.p.online();
    c.advance(5_000);
    const waits = c.failures(40);
    let elapsed = 0;
    for (const [i, w] of waits.entries()) {
      // Waits decided in the first 30 s of the outage stay at or below 1 s.
      if (elapsed < 30_000) expect(w, `wait ${i} at ${elapsed} ms`).to.be.at.most(1000);
      elapsed += w;
    }
    expect(waits.at(-1)).to.equal(30_000);
    expect(waits.filter((w) => w === 1000).length, 'attempts 1 s apart').to.be.within(28, 31);
  });

  it('a link that drops soon after coming online does not reset the backoff (no hammering a server that closes the stream)', () => {
    const c = policy();
    c.p.online();
    c.advance(1_000);
    const waits: number[] = [];
    for (let i = 0; i < 8; i++) {
      const d = c.p.disconnected();
      waits.push(d);
      c.advance(d);
      // The attempt succeeds, and the server drops the stream 200 ms later.
      c.p.online();
      c.advance(200);
    }
    expect(waits).to.deep.equal([500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
  });

  it('never waits less than reconnectInitialMs nor more than reconnectMaxMs', () => {
    const slow = policy({ initialMs: 2_000, maxMs: 60_000 });
    slow.p.online();
    slow.advance(10_000);
    expect(slow.failures(3)).to.deep.equal([2_000, 2_000, 2_000]);
    const tight = policy({ initialMs: 100, maxMs: 400 });
    tight.p.online();
    tight.advance(10_000);
    expect(tight.failures(5)).to.deep.equal([100, 200, 400, 400, 400]);
  });
});
