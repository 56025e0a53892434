/**
 * Conditional batches, the optional part of the KvStore contract that several writers need:
 * compare some keys' values, then write, all or nothing (`KvStore.batchIf`). An append commits
 * only if the chain's tail is still the one checked; a bind only if the GK is still unbound.
 *
 * On etcd the server does it (one transaction with compares). In one process (LevelDB, memory)
 * the store checks then writes under a WriteGate: conditional batches run one at a time, and
 * plain batches wait for the one in progress, so that nothing lands between the check and the write.
 */

/** A key's expected value: `equals: undefined` means the key must be absent. */
export interface Condition {
  key: string;
  equals: string | undefined;
}

/** Options of `batchIf`: always written at once (never deferred). */
export interface ConditionalOptions {
  /** Waits for the write to reach the disk (implied on etcd by the Raft commit). */
  durable?: boolean;
}

/** Throws a TypeError unless every condition names a string key and a string or undefined value. */
export function assertConditions(conditions: Condition[]): void {
  if (!Array.isArray(conditions)) throw new TypeError('batchIf: conditions must be an array');
  for (const c of conditions) {
    if (c === null || typeof c !== 'object' || typeof c.key !== 'string' || !('equals' in c) || (c.equals !== undefined && typeof c.equals !== 'string')) {
      throw new TypeError('batchIf: a condition is { key: string, equals: string | undefined }');
    }
  }
}

/** Whether `values` (read for the conditions' keys, in order) satisfy every condition. */
export function conditionsHold(conditions: Condition[], values: (string | undefined)[]): boolean {
  return conditions.every((c, i) => values[i] === c.equals);
}

/**
 * A readers-writer gate for one store in one process: `shared` sections (plain batches) run
 * together; an `exclusive` section (a conditional batch) waits for the shared ones in progress,
 * holds new ones back, and runs after the exclusive sections before it. A shared section starts
 * synchronously when no exclusive one is pending, so a deferred batch stays visible at once.
 */
export class WriteGate {
  /** Shared sections in progress. */
  #active = 0;
  /** Resolves when the last exclusive section queued so far has ended. */
  #exclusive: Promise<void> | undefined;
  /** Wakes the exclusive section waiting for the shared ones to drain. */
  #drained: (() => void) | undefined;

  shared<T>(fn: () => Promise<T>): Promise<T> {
    const pending = this.#exclusive;
    if (pending !== undefined) return pending.then(() => this.shared(fn));
    return this.#runShared(fn);
  }

  async #runShared<T>(fn: () => Promise<T>): Promise<T> {
    this.#active++;
    try {
      return await fn();
    } finally {
      this.#active--;
      if (this.#active === 0 && this.#drained !== undefined) {
        const wake = this.#drained;
        this.#drained = undefined;
        wake();
      }
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.#exclusive;
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = previous === undefined ? mine : previous.then(() => mine);
    this.#exclusive = tail;
    try {
      if (previous !== undefined) await previous;
      while (this.#active > 0) {
        await new Promise<void>((r) => {
          this.#drained = r;
        });
      }
      return await fn();
    } finally {
      if (this.#exclusive === tail) this.#exclusive = undefined;
      release();
    }
  }
}
