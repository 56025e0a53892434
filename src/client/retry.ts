/**
 * Retrying a KMS exchange after a transient failure. A retry is a new exchange: the session seals
 * the requests again, each with a fresh requestId (XEP "Transport of KMS Messages": a client uses a
 * new requestId for every request, a retry included), so a retry is never the same messages sent
 * twice and a late answer to the first attempt cannot be taken for the second's.
 */
import { KmsError } from '../protocol/errors.js';
import { isConnectionLost } from './xmpp.js';

export interface RetryOptions {
  /** Attempts after the first one (default 2). */
  retries?: number;
  /** Delay before the first retry; doubled each time, with jitter (default 250 ms). */
  backoffMs?: number;
  /** Longest delay between two attempts (default 5 s). */
  maxBackoffMs?: number;
}

/**
 * Is this failure worth another attempt? Decided by class and code, never by message text: a
 * KmsError by its code and stanza error type (isRetryable in src/protocol/errors.ts: TIMEOUT, and
 * stanza errors of type wait or from the XMPP server in place of an absent component); from a
 * transport of another kind, a TimeoutError or Node's error of a failed or closed socket. A KMS
 * response (KmsResponseError) never is.
 */
export function isTransient(e: unknown): boolean {
  if (e instanceof KmsError) return e.retryable;
  return (e as Error | undefined)?.name === 'TimeoutError' || isConnectionLost(e);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Runs `attempt` until it succeeds, fails for good, or `retries` retries have failed, with exponential backoff and jitter. */
export async function retrying<T>(attempt: () => Promise<T>, o: RetryOptions = {}): Promise<T> {
  const retries = o.retries ?? 2;
  const base = o.backoffMs ?? 250;
  const max = o.maxBackoffMs ?? 5000;
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (n >= retries || !isTransient(e)) throw e;
      const delay = Math.min(max, base * 2 ** n);
      await sleep(delay / 2 + Math.random() * (delay / 2));
    }
  }
}
