/**
 * Write coalescing for a component's socket. When the server is busy it forwards several stanzas
 * in one read; the component answers them in the same tick, and without this each reply would be
 * its own write syscall. On loopback a small TCP write costs about as much CPU as a ping's whole
 * engine work (measured in bench:xmpp's profiles), so one write per tick instead of one per reply
 * is a large share of the component's cost under load. No reply waits for a timer or for more
 * input: the socket is uncorked by setImmediate, once the I/O callbacks of this turn of the event
 * loop, and the promise jobs and nextTicks they started, have run. (A nextTick would not do: called
 * from a stanza handler that runs synchronously in the read callback, as xmpp.js middleware does,
 * it would uncork before the promise jobs that send the replies.)
 */

/** The part of a net.Socket this uses. */
export interface Corkable {
  cork(): void;
  uncork(): void;
}

const corked = new WeakSet<Corkable>();

/** Holds `socket`'s writes until the end of this turn's I/O callbacks, then sends them in one write. */
export function coalesceThisTick(socket: Corkable | undefined): void {
  if (!socket || corked.has(socket)) return;
  socket.cork();
  corked.add(socket);
  setImmediate(() => {
    corked.delete(socket);
    socket.uncork();
  });
}
