/**
 * The package's version for `kms --version`, read at run time from the nearest package.json named
 * xmpp-kms above this module: the checkout's when run from src/ through tsx, the installed
 * package's when run from a built dist/ or from node_modules/xmpp-kms.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'xmpp-kms';

/** The version of the package that holds `from` (a module URL; this module's by default). */
export function packageVersion(from: string = import.meta.url): string {
  const start = dirname(fileURLToPath(from));
  for (let dir = start; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      let pkg: { name?: unknown; version?: unknown } | undefined;
      try {
        pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown; version?: unknown };
      } catch {
        // Not ours (or not readable): keep looking above it.
      }
      if (pkg?.name === PACKAGE_NAME && typeof pkg.version === 'string') return pkg.version;
    }
    if (dirname(dir) === dir) throw new Error(`no package.json of ${PACKAGE_NAME} in ${start} or above it`);
  }
}
