// Names for the federation test domains: a marked block in /etc/hosts, written by root for the
// duration of a test run and removed after (a stale block of a killed run is replaced at start).
import { readFileSync, writeFileSync } from 'node:fs';

const HOSTS_FILE = '/etc/hosts';
const BEGIN = '# BEGIN xmpp-kms federation test (test/e2e/harness/federation-hosts.ts; safe to delete)';
const END = '# END xmpp-kms federation test';

function withoutBlock(text: string): string {
  const lines = text.split('\n');
  const out: string[] = [];
  let inside = false;
  for (const line of lines) {
    if (line === BEGIN) inside = true;
    else if (line === END && inside) inside = false;
    else if (!inside) out.push(line);
  }
  return out.join('\n');
}

function write(text: string): void {
  try {
    // In place (not rename): /etc/hosts may be a bind mount.
    writeFileSync(HOSTS_FILE, text);
  } catch (err) {
    throw new Error(`the federation tests need to write ${HOSTS_FILE} (as root) to name a.test and b.test on loopback: ${(err as Error).message}`);
  }
}

/** Replaces the marked block (if any) with `address name...` lines for `entries`. */
export function writeHostsBlock(entries: { address: string; names: string[] }[]): void {
  const rest = withoutBlock(readFileSync(HOSTS_FILE, 'utf8')).replace(/\n*$/, '\n');
  const block = [BEGIN, ...entries.map((e) => `${e.address} ${e.names.join(' ')}`), END, ''].join('\n');
  write(rest + block);
}

/** Removes the marked block; leaves the file alone if it has none. */
export function removeHostsBlock(): void {
  const text = readFileSync(HOSTS_FILE, 'utf8');
  const rest = withoutBlock(text);
  if (rest !== text) write(rest.replace(/\n*$/, '\n'));
}
