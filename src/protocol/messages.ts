/**
 * The basic request and response payloads of -03 §4.5.1, validated with zod. Operation bodies
 * are validated by their handlers (src/engine/gmbc.ts, gk.ts, entity-keys.ts).
 */
import { z } from 'zod';
import { badRequest, unauthenticated } from './errors.js';
import { BLOCK_HASH } from './entity.js';
import { MAX_URI_LENGTH } from './uri.js';

/** Methods of both vocabularies (-03 operations use post/get; the content rule create/retrieve/update/delete). */
const METHODS = ['post', 'get', 'create', 'retrieve', 'update', 'delete'] as const;
export type Method = (typeof METHODS)[number];

const credentialSchema = z.union([
  z.object({ bearer: z.string().min(1).max(16384), userId: z.string().optional() }).strict(),
  z
    .object({
      jwk: z.looseObject({ kty: z.string(), x5c: z.array(z.string().min(1).max(16384)).min(1).max(5) }),
      // XEP "Federation": the proof of possession of the jwk's key, required on the handshake.
      proof: z.string().min(1).max(8192).optional(),
      userId: z.string().optional(),
    })
    .strict(),
]);

/** XEP "Failure Responses": requestId is required, a string of 1 to 256 characters or a finite number. */
const requestIdSchema = z.union([z.string().min(1).max(256), z.number().finite()]);

const requestSchema = z.looseObject({
  client: z.looseObject({
    clientId: z.string().min(1).max(256),
    // Checked apart (parseRequestValue): a missing credential is a 401, a malformed one a 400.
    credential: z.unknown().optional(),
  }),
  method: z.enum(METHODS),
  uri: z.string().min(1).max(MAX_URI_LENGTH),
  requestId: requestIdSchema,
});

/** A parsed KMS request. Body fields stay in `body` for the operation to validate. */
export interface KmsRequest {
  clientId: string;
  credential: { bearer: string } | { jwk: Record<string, unknown> & { x5c: string[] }; proof?: string };
  method: Method;
  uri: string;
  requestId: string | number;
  body: Record<string, unknown>;
}

/** Reads the requestId of a payload that may be otherwise invalid, to echo it in the error. */
export function peekRequestId(payload: unknown): string | number | undefined {
  if (payload && typeof payload === 'object' && !Array.isArray(payload)) {
    const id = (payload as Record<string, unknown>).requestId;
    if (requestIdSchema.safeParse(id).success) return id as string | number;
  }
  return undefined;
}

/** Validates a request payload already parsed from JSON into a KmsRequest, or throws a 400 that says what is wrong. */
export function parseRequestValue(payload: unknown): KmsRequest {
  const r = requestSchema.safeParse(payload);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw badRequest(`invalid request: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const { client, method, uri, requestId, ...body } = r.data;
  if (client.credential === undefined || client.credential === null) throw unauthenticated('client.credential is missing');
  const c = credentialSchema.safeParse(client.credential);
  if (!c.success) {
    const issue = c.error.issues[0]!;
    throw badRequest(`invalid request: client.credential${issue.path.length ? `.${issue.path.join('.')}` : ''}: ${issue.message}`);
  }
  return { clientId: client.clientId, credential: c.data as KmsRequest['credential'], method, uri, requestId, body };
}

/** Validates an operation body with a zod schema, turning failures into a 400. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const r = schema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw badRequest(`invalid request: ${issue.path.join('.') || '(body)'}: ${issue.message}`);
  }
  return r.data;
}

/** A block hash: SHA-256 in lowercase hex, its only spelling (XEP "Entities and Hashes"). */
export const sha256Hex = z.string().regex(BLOCK_HASH, 'must be a block hash (64 lowercase hex digits)');

const UTF8 = new TextDecoder();

/** JSON bytes (a JWS payload; a Buffer on the server) parsed, or a 400 naming `where`. */
export function parseJsonOr400(payload: Uint8Array, where: string): unknown {
  try {
    return JSON.parse(UTF8.decode(payload));
  } catch {
    throw badRequest(`${where}: the payload is not JSON`);
  }
}
