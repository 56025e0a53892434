// The benchmarks run as a user runs them (`npm run bench:engine -- --quick`, `npm run
// bench:xmpp -- --quick` through every installed server) and end with the one JSON line their
// docs promise. Nothing here asserts a speed: the numbers are only checked to be there.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import { serverKinds } from './harness/servers.js';

const run = promisify(execFile);

/** The last stdout line of `npm run <script> -- <args>`, parsed as JSON. */
async function lastJsonLine(script: string, args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await run('npm', ['run', '--silent', script, '--', ...args], { maxBuffer: 16 * 1024 * 1024, timeout: 240_000 });
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

const positive = (v: unknown) => typeof v === 'number' && Number.isFinite(v) && v > 0;

describe('benchmarks (smoke runs)', function () {
  this.timeout(300_000);

  it('bench:engine --quick ends with its JSON: ops/s and the floor and chain ratios', async () => {
    const r = await lastJsonLine('bench:engine', ['--quick']);
    for (const k of [
      'handshake_ops',
      'ping_ops',
      'gk_create_ops',
      'gk_get_ops',
      'gk_get_floor_ops',
      'append_ops',
      'gk_get_floor_ratio',
      'handshake_floor_ratio',
      'gk_get_chain_ratio',
      'append_chain_ratio',
    ]) {
      expect(positive(r[k]), `${k} = ${String(r[k])}`).to.equal(true);
    }
  });

  it('bench:xmpp --quick ends with its JSON: every phase and ratio of every installed server', async () => {
    const kinds = serverKinds();
    const r = await lastJsonLine('bench:xmpp', ['--quick', '--servers', kinds.join(',')]);
    for (const kind of kinds) {
      for (const phase of [
        'echo_ping_20',
        'echo_gk_get_20',
        'ping_20',
        'gk_get_20',
        'ping_1',
        'gk_get_1',
        'echo_coalescing_ping_20',
        'floor_ping_20',
        'floor_gk_get_20',
      ]) {
        expect(positive(r[`${kind}_${phase}_rps`]), `${kind}_${phase}_rps`).to.equal(true);
        expect(positive(r[`${kind}_${phase}_p99_ms`]), `${kind}_${phase}_p99_ms`).to.equal(true);
      }
      for (const ratio of [
        'ping_echo_ratio',
        'gk_get_echo_ratio',
        'gk_get_p256_echo_ratio',
        'ping_coalescing_echo_ratio',
        'gk_get_coalescing_echo_ratio',
        'ping_floor_echo_ratio',
        'gk_get_floor_echo_ratio',
        'ping_kms_floor_ratio',
        'gk_get_kms_floor_ratio',
      ]) {
        expect(positive(r[`${kind}_${ratio}`]), `${kind}_${ratio}`).to.equal(true);
      }
      expect(r.targets_met).to.have.keys(kinds.flatMap((k) => [`${k}_ping_echo_ratio`, `${k}_gk_get_echo_ratio`]));
    }
    expect(r.all_targets_met).to.be.a('boolean');
  });
});
