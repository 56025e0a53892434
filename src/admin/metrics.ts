/**
 * The KMS's Prometheus metrics (prom-client), in a registry of their own per KMS (no global
 * registry: two KMSs in one process, as in the tests, do not mix). The engine, the component and
 * the store report through the narrow hooks they declare (EngineMetrics, LinkMetrics, and the
 * KvStore wrapper below); what they report is bounded: an operation is a method and a resource
 * kind, a status a number. Never a URI with an id, a user, a token or key material.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineMetrics } from '../engine/engine.js';
import type { BatchOp, BatchOptions, KvStore, RangeOptions } from '../store/kv.js';
import type { LinkMetrics } from '../xmpp/component.js';

/** Read at each scrape: what costs nothing to count. */
export interface MetricSources {
  /** Entries of each read cache of the store (KmsState.cacheSizes). */
  cacheSizes?: () => Record<string, number>;
  /** Requests being answered by the XMPP component. */
  inFlight?: () => number;
}

/** Seconds: a request or a store write takes from under a millisecond to seconds (a slow disk's fsync). */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** The metrics of one KMS. */
export class KmsMetrics implements EngineMetrics, LinkMetrics {
  readonly registry = new Registry();
  /** Filled in by the composition root once the parts exist. */
  readonly sources: MetricSources = {};
  readonly #requests: Counter<'operation' | 'status'>;
  readonly #duration: Histogram<'operation'>;
  readonly #writes: Histogram<'kind'>;
  readonly #writeErrors: Counter<'kind'>;
  readonly #link: Gauge;
  readonly #reconnects: Counter;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.#requests = new Counter({
      name: 'kms_requests_total',
      help: 'KMS request messages answered, by operation (handshake, or method and resource kind, e.g. "get gks") and response status',
      labelNames: ['operation', 'status'],
      registers,
    });
    this.#duration = new Histogram({
      name: 'kms_request_duration_seconds',
      help: 'Time the engine took to answer a KMS request message, by operation',
      labelNames: ['operation'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#writes = new Histogram({
      name: 'kms_store_write_duration_seconds',
      help: 'Time of a write batch to the store, by kind (durable: fsynced; plain: not); write-behind batches are not timed',
      labelNames: ['kind'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#writeErrors = new Counter({
      name: 'kms_store_write_errors_total',
      help: 'Write batches the store refused, by kind',
      labelNames: ['kind'],
      registers,
    });
    this.#link = new Gauge({ name: 'kms_xmpp_link_up', help: '1 while the component stream to the XMPP server is online, else 0', registers });
    this.#reconnects = new Counter({ name: 'kms_xmpp_reconnects_total', help: 'Times the component came back online after losing the XMPP server', registers });
    const sources = this.sources;
    new Gauge({
      name: 'kms_xmpp_requests_in_flight',
      help: 'IQ requests the component is answering now',
      registers,
      collect() {
        if (sources.inFlight) this.set(sources.inFlight());
      },
    });
    new Gauge({
      name: 'kms_cache_entries',
      help: 'Entries in each read cache of the store (bounded LRU caches)',
      labelNames: ['cache'],
      registers,
      collect() {
        for (const [cache, n] of Object.entries(sources.cacheSizes?.() ?? {})) this.set({ cache }, n);
      },
    });
    new Gauge({
      name: 'kms_ephemeral_keys_cached',
      help: 'Ephemeral keys (secure channels) held in memory: those made or used since the start, less the deleted, swept and evicted ones',
      registers,
      collect() {
        const n = sources.cacheSizes?.().ephemeral;
        if (n !== undefined) this.set(n);
      },
    });
    this.#link.set(0);
  }

  request(operation: string, status: number, seconds: number): void {
    this.#requests.inc({ operation, status: String(status) });
    this.#duration.observe({ operation }, seconds);
  }

  linkUp(up: boolean): void {
    this.#link.set(up ? 1 : 0);
  }

  reconnected(): void {
    this.#reconnects.inc();
  }

  storeWrite(kind: 'durable' | 'plain', seconds: number, ok: boolean): void {
    if (ok) this.#writes.observe({ kind }, seconds);
    else this.#writeErrors.inc({ kind });
  }

  /** The Prometheus text exposition of every metric. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** A KvStore that times its write batches into `metrics`; everything else passes through. */
export class MeasuredStore implements KvStore {
  readonly #inner: KvStore;
  readonly #metrics: KmsMetrics;

  /** Present when the inner store has it (a conditional batch, timed as a durable write). */
  readonly batchIf?: NonNullable<KvStore['batchIf']>;

  constructor(inner: KvStore, metrics: KmsMetrics) {
    this.#inner = inner;
    this.#metrics = metrics;
    const batchIf = inner.batchIf?.bind(inner);
    if (batchIf !== undefined) {
      this.batchIf = async (conditions, ops, options) => {
        const started = performance.now();
        try {
          const applied = await batchIf(conditions, ops, options);
          this.#metrics.storeWrite('durable', (performance.now() - started) / 1000, true);
          return applied;
        } catch (e) {
          this.#metrics.storeWrite('durable', 0, false);
          throw e;
        }
      };
    }
  }

  get(key: string): Promise<string | undefined> {
    return this.#inner.get(key);
  }

  getMany(keys: string[]): Promise<(string | undefined)[]> {
    return this.#inner.getMany(keys);
  }

  async batch(ops: BatchOp[], options?: BatchOptions): Promise<void> {
    if (options?.deferred || ops.length === 0) return this.#inner.batch(ops, options);
    const kind = options?.durable ? 'durable' : 'plain';
    const started = performance.now();
    try {
      await this.#inner.batch(ops, options);
    } catch (e) {
      this.#metrics.storeWrite(kind, 0, false);
      throw e;
    }
    this.#metrics.storeWrite(kind, (performance.now() - started) / 1000, true);
  }

  entries(range: RangeOptions): AsyncIterable<[string, string]> {
    return this.#inner.entries(range);
  }

  flush(): Promise<void> {
    return this.#inner.flush();
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
