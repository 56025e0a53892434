/**
 * Structured logging with pino. Log records carry events, users and URIs, never messages, tokens
 * or key material; the redact list is a second line of defence for fields that must not appear.
 */
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

/** Field paths that are always censored if anything ever logs them. */
const REDACT_PATHS = [
  'key',
  '*.key',
  'jwk.d',
  '*.jwk.d',
  'token',
  '*.token',
  'bearer',
  '*.bearer',
  'credential',
  '*.credential',
  'message',
  '*.message.payload',
  'masterKey',
  '*.masterKey',
  'secret',
  '*.secret',
  'password',
  '*.password',
];

/** A logger writing JSON lines to stderr (or a given destination) at `level`. */
export function createLogger(opts: { level?: string; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    { name: opts.name ?? 'kms', level: opts.level ?? 'info', redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    (opts.destination ?? process.stderr) as pino.DestinationStream,
  );
}

/** A logger that drops everything (tests, benchmarks). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
