#!/usr/bin/env node
// The `kms` command: the built CLI (dist/, made by `npm run build`, shipped in the package). In a
// checkout of the repository, where src/ is, it runs the TypeScript sources through tsx (a
// development dependency) instead, so that it never runs a stale build.
import { existsSync } from 'node:fs';

const source = new URL('../src/cli/main.ts', import.meta.url);
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
} else {
  await import('../dist/cli/main.js');
}
