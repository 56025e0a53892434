/**
 * The basic request and response payloads of -03 §4.5.1, validated with zod. Operation bodies
 * are validated by their handlers (src/engine/gmbc.ts, gk.ts, entity-keys.ts).
 */
import { z } from 'zod';
import { badRequest } from './errors.js';

/** Methods of both vocabularies (-03 operations use post/get; the content rule create/retrieve/update/delete). */
export const METHODS = ['post', 'get', 'create', 'retrieve', 'update', 'delete'] as const;
export type Method = (typeof METHODS)[number];

const credentialSchema = z.union([
  z.object({ bearer: z.string().min(1).max(16384), userId: z.string().optional() }).strict(),
  z
    .object({
      jwk: z.looseObject({ kty: z.string(), x5c: z.array(z.string().min(1).max(16384)).min(1).max(5) }),
      userId: z.string().optional(),
    })
    .strict(),
]);

const requestSchema = z.looseObject({
  client: z.looseObject({
    clientId: z.string().min(1).max(256),
    credential: credentialSchema,
  }),
  method: z.enum(METHODS),
  uri: z.string().min(1).max(2048),
  requestId: z.union([z.string().max(256), z.number()]).optional(),
});

/** A parsed KMS request. Body fields stay in `body` for the operation to validate. */
export interface KmsRequest {
  clientId: string;
  credential: { bearer: string } | { jwk: Record<string, unknown> & { x5c: string[] } };
  method: Method;
  uri: string;
  requestId?: string | number;
  body: Record<string, unknown>;
}

/** Reads the requestId of a payload that may be otherwise invalid, to echo it in the error. */
export function peekRequestId(payload: unknown): string | number | undefined {
  if (payload && typeof payload === 'object' && !Array.isArray(payload)) {
    const id = (payload as Record<string, unknown>).requestId;
    if ((typeof id === 'string' && id.length <= 256) || (typeof id === 'number' && Number.isFinite(id))) return id;
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
  const out: KmsRequest = {
    clientId: client.clientId,
    credential: client.credential as KmsRequest['credential'],
    method,
    uri,
    body,
  };
  if (requestId !== undefined) out.requestId = requestId;
  return out;
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

/** RFC 3339 date-time, as -03 uses for createDate, created, expirationDate. */
export const dateTime = z.string().max(64).refine((s) => !Number.isNaN(Date.parse(s)), 'must be an RFC 3339 date-time');
/** A lowercase-or-uppercase hex SHA-256. */
export const sha256Hex = z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be a hex SHA-256');

/** JSON bytes (a JWS payload) parsed, or a 400 naming `where`. */
export function parseJsonOr400(payload: Buffer, where: string): unknown {
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch {
    throw badRequest(`${where}: the payload is not JSON`);
  }
}
