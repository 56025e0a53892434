/**
 * How long the component waits before each attempt to get its stream back after it was online
 * (KmsComponent; `start()` paces the very first connection itself).
 *
 * - The wait doubles at each failed attempt, from `initialMs` up to `maxMs`.
 * - A link that was online for `healthyMs` or more was healthy: when it drops, the backoff starts
 *   over from `initialMs`, and for the first `restartWindowMs` of that outage the attempts stay at
 *   most `restartRetryMs` apart. A server restart (seconds of ECONNREFUSED) is then followed by a
 *   connection within about `restartRetryMs` of the server being back, however long the KMS had
 *   been online, instead of after a wait that doubled during the restart (4 s, 8 s, ...).
 * - A link that drops sooner than `healthyMs` after coming online (a server that accepts the
 *   component and then closes the stream) does not reset the backoff: it keeps growing, so such a
 *   server is not hammered twice a second forever.
 */

export interface ReconnectPolicyOptions {
  initialMs: number;
  maxMs: number;
  /** Online this long (ms) counts as healthy (default 5 s). */
  healthyMs?: number;
  /** After a healthy link is lost: how long attempts stay close together (default 30 s). */
  restartWindowMs?: number;
  /** ... and at most how far apart they are then (default 1 s; never below initialMs nor above maxMs). */
  restartRetryMs?: number;
  /** The clock (ms), for tests. */
  now?: () => number;
}

export class ReconnectPolicy {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #healthyMs: number;
  readonly #windowMs: number;
  readonly #windowCapMs: number;
  readonly #now: () => number;
  /** The wait before the previous attempt; undefined once the backoff starts over. */
  #delay: number | undefined;
  /** When the link came online, while it is. */
  #onlineAt: number | undefined;
  /** When the last healthy link was lost. */
  #outageAt: number | undefined;

  constructor(o: ReconnectPolicyOptions) {
    this.#initialMs = o.initialMs;
    this.#maxMs = o.maxMs;
    this.#healthyMs = o.healthyMs ?? 5_000;
    this.#windowMs = o.restartWindowMs ?? 30_000;
    this.#windowCapMs = Math.min(o.maxMs, Math.max(o.initialMs, o.restartRetryMs ?? 1_000));
    this.#now = o.now ?? Date.now;
  }

  /** The stream is online. */
  online(): void {
    this.#onlineAt = this.#now();
  }

  /** The stream is gone (an online link dropped, or an attempt failed): the wait before the next attempt (ms). */
  disconnected(): number {
    const now = this.#now();
    if (this.#onlineAt !== undefined) {
      if (now - this.#onlineAt >= this.#healthyMs) {
        this.#delay = undefined;
        this.#outageAt = now;
      }
      this.#onlineAt = undefined;
    }
    const inWindow = this.#outageAt !== undefined && now - this.#outageAt < this.#windowMs;
    const cap = inWindow ? this.#windowCapMs : this.#maxMs;
    this.#delay = this.#delay === undefined ? Math.min(this.#initialMs, cap) : Math.min(this.#delay * 2, cap);
    return this.#delay;
  }
}
