/** Per-sender token buckets: `rate` requests per second on average, up to `burst` at once. */
export class RateLimiter {
  readonly #rate: number;
  readonly #burst: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #now: () => number;

  constructor(rate: number, burst: number, now: () => number = () => performance.now()) {
    this.#rate = rate;
    this.#burst = burst;
    this.#now = now;
  }

  /** Takes `cost` tokens from `sender`'s bucket; false when there are not enough. */
  take(sender: string, cost = 1): boolean {
    const now = this.#now();
    let b = this.#buckets.get(sender);
    if (!b) {
      if (this.#buckets.size > 100_000) this.#prune(now);
      b = { tokens: this.#burst, at: now };
      this.#buckets.set(sender, b);
    }
    b.tokens = Math.min(this.#burst, b.tokens + ((now - b.at) / 1000) * this.#rate);
    b.at = now;
    if (b.tokens < cost) return false;
    b.tokens -= cost;
    return true;
  }

  /** Forgets senders whose buckets have refilled: they are as if new. */
  #prune(now: number): void {
    for (const [k, b] of this.#buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.#rate >= this.#burst) this.#buckets.delete(k);
    }
  }
}
