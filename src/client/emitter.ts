/**
 * A small event emitter for the client library (the part of Node's EventEmitter that EncryptedRoom
 * uses: on, once, off, emit), so that the library needs no `node:events` in a browser.
 */
// biome-ignore lint/suspicious/noExplicitAny: as Node's EventEmitter, so that subclasses may type their events' listeners.
type Listener = (...args: any[]) => void;

export class Emitter {
  readonly #listeners = new Map<string | symbol, Listener[]>();

  /** Calls `listener` on every `event`. */
  on(event: string | symbol, listener: Listener): this {
    this.#listeners.set(event, [...(this.#listeners.get(event) ?? []), listener]);
    return this;
  }

  /** Calls `listener` on the next `event` only. */
  once(event: string | symbol, listener: Listener): this {
    const wrapper = (...args: unknown[]) => {
      this.off(event, wrapper);
      listener(...args);
    };
    return this.on(event, wrapper);
  }

  /** Stops calling `listener` on `event`. */
  off(event: string | symbol, listener: Listener): this {
    const list = this.#listeners.get(event);
    if (!list) return this;
    const i = list.lastIndexOf(listener);
    if (i >= 0) this.#listeners.set(event, [...list.slice(0, i), ...list.slice(i + 1)]);
    return this;
  }

  /** Calls the listeners of `event` in order with `args`; true if there were any. */
  emit(event: string | symbol, ...args: unknown[]): boolean {
    const list = this.#listeners.get(event);
    if (!list || list.length === 0) return false;
    for (const listener of list) listener(...args);
    return true;
  }

  /** How many listeners `event` has. */
  listenerCount(event: string | symbol): number {
    return this.#listeners.get(event)?.length ?? 0;
  }
}
