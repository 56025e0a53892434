/** Shared assertions and vector loading for the crypto tests. */
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { JoseError, type JoseErrorCode } from '../../src/crypto/errors.js';

/** Runs fn and returns the JoseError it throws, failing unless it has `code`. */
export function expectJoseError(fn: () => unknown, code: JoseErrorCode): JoseError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(JoseError);
    expect((err as JoseError).code).to.equal(code);
    return err as JoseError;
  }
  return expect.fail(`expected ${code}`);
}

export const VECTORS = new URL('../vectors/rfc7520/', import.meta.url);

/** The RFC 7520 vector of a section, e.g. vector('5_4'). */
// biome-ignore lint/suspicious/noExplicitAny: RFC 7520's vectors are JSON of many shapes, read field by field by each test.
export function vector(section: string): any {
  const file = readdirSync(VECTORS).find((f) => f.startsWith(`${section}.`));
  if (!file) throw new Error(`no RFC 7520 vector ${section}`);
  return JSON.parse(readFileSync(new URL(file, VECTORS), 'utf8'));
}
