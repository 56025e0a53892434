/**
 * The component's reply budget (xep/kms.xml "Transport of KMS Messages"): no reply
 * stanza exceeds max-reply-size. The messages of an IQ are answered in order, and each gets, when
 * its turn comes, what is left of max-reply-size after the IQ's envelope and the responses before
 * it, less 8 KiB reserved for each message still to come. A get-chain response fills its budget
 * with blocks; any other response over it is answered 413 by the engine.
 */
import { largestBlockResponseBytes } from '../engine/response-size.js';

/** Reserved for each message still to come in an IQ: room for any response but a get-chain page. */
export const RESERVED_PER_MESSAGE = 8 * 1024;
/** `<message>` and `</message>` around each response. */
export const MESSAGE_WRAPPING = '<message></message>'.length;
/**
 * The reply's IQ and `<kms/>` elements (with the requester's full JID, of at most 3071 bytes, and the
 * IQ's id) as assumed when checking the configuration. At run time the real envelope is measured.
 */
const ENVELOPE_ALLOWANCE = 4 * 1024;

/**
 * The least max-reply-size for these limits: (maxMessagesPerIq − 1) × 8 KiB for the other messages
 * of a full IQ, plus the largest reply stanza that carries a single block, so that a get-chain
 * request always receives at least one block, wherever it stands in its IQ.
 */
export function minReplyBytes(maxMessagesPerIq: number, maxMessageBytes: number): number {
  return (maxMessagesPerIq - 1) * RESERVED_PER_MESSAGE + largestBlockReplyBytes(maxMessageBytes);
}

/** An upper bound on a reply stanza that holds one get-chain response carrying one block (and nothing else). */
export function largestBlockReplyBytes(maxMessageBytes: number): number {
  return largestBlockResponseBytes(maxMessageBytes) + MESSAGE_WRAPPING + ENVELOPE_ALLOWANCE;
}

/**
 * The response budget of message `index` (from 0) of the `count` in an IQ, when `used` bytes of the
 * reply are taken (its envelope, and the responses before this one with their wrapping). Never
 * negative: a reply whose envelope alone is too large gives budgets of 0, and the guard in the
 * component refuses it.
 */
export function messageBudget(maxReplyBytes: number, used: number, index: number, count: number): number {
  return Math.max(0, maxReplyBytes - used - MESSAGE_WRAPPING - RESERVED_PER_MESSAGE * (count - 1 - index));
}
