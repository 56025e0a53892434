/**
 * The size of responses on a channel (xep/kms.xml "Transport of KMS Messages"): a
 * transport gives each request a budget, the most bytes its response message may have; get chain
 * fills its page up to it and any other response over it becomes 413. A response on a channel is
 * a compact JWE dir+A256GCM, `header..iv.ciphertext.tag`, whose size follows from its plaintext's:
 * the header, the IV and the tag have a fixed size under one ephemeral key, and the ciphertext is
 * as long as the plaintext, in base64url.
 */
import type { EngineLimits } from './config.js';

/** Length of the unpadded base64url of `n` bytes. */
export function b64uLength(n: number): number {
  return Math.ceil((n * 4) / 3);
}

/** How a handler learns the room its response has, and how to measure a response against it. */
export interface ResponseSizer {
  /** The most bytes the response message (the compact JWE) may have. */
  readonly budget: number;
  /** Bytes of the response's JSON plaintext for this status and body, written as the engine writes it (requestId included). */
  plaintextBytes(status: number, body: Record<string, unknown>): number;
  /** Bytes of the response message whose plaintext has `plaintextBytes` bytes (exact). */
  encryptedBytes(plaintextBytes: number): number;
}

/**
 * The page size of get chain when the transport sets no budget (the engine in process: tests,
 * tools): 8 max-size messages, 512 KiB with the default limits, the XMPP component's default
 * max-reply-size. Never below the largest response that carries a single block, so a page always
 * holds at least one block.
 */
export function defaultResponseBudget(limits: EngineLimits): number {
  return Math.max(8 * limits.maxMessageBytes, largestBlockResponseBytes(limits.maxMessageBytes));
}

/**
 * An upper bound on the size of a get-chain response message that carries one block, when every
 * request message is at most `maxMessageBytes` (M). An appended block comes to the KMS as a JSON
 * string inside a request of at most M bytes, whose plaintext is at most 3/4 M. A genesis block is
 * the KMS's JWS over a request's operations (at most 3/4 M of JSON: the operations the KMS writes
 * are never longer than those it read) and fixed members under 1.5 KiB (a domain is at most 253
 * characters): its payload is at most M + 2 KiB in base64url, its header under 0.5 KiB, its
 * signature under 1.5 KiB (RSA up to 8192 bits), so a block is under M + 4 KiB. The response's
 * plaintext adds the status, "more" and a requestId (at most 256 characters, under 1.6 KiB
 * JSON-escaped): under M + 6 KiB. In base64url with the JWE header, IV and tag: under
 * 4/3 (M + 8 KiB), 96 KiB for the default M of 64 KiB.
 */
export function largestBlockResponseBytes(maxMessageBytes: number): number {
  return Math.ceil(((maxMessageBytes + 8192) * 4) / 3);
}
