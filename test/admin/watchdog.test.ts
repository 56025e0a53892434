// The event-loop watchdog (src/admin/watchdog.ts) on real processes: a child whose loop stalls
// (blocked in Atomics.wait, or spinning) is ended with a fatal log line, in bounded time; a child
// whose loop turns is left alone and exits by itself.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const WATCHDOG = fileURLToPath(new URL('../../src/admin/watchdog.ts', import.meta.url));

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `body` in a child node (with tsx) after starting the watchdog with a 1 s stall limit. */
function child(body: string, limitMs = 20_000): Promise<Outcome> {
  const code = `import { startHeartbeat } from ${JSON.stringify(WATCHDOG)};
startHeartbeat({ stallMs: 1000, exitOnStall: true, name: 'kms' });
${body}`;
  const started = Date.now();
  const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const guard = setTimeout(() => p.kill('SIGKILL'), limitMs);
  return new Promise((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** The watchdog's fatal line in `stderr`, parsed. */
function fatalLine(stderr: string): Record<string, unknown> | undefined {
  const line = stderr.split('\n').find((l) => l.includes('"event-loop-stalled"'));
  return line === undefined ? undefined : (JSON.parse(line) as Record<string, unknown>);
}

describe('event-loop watchdog (src/admin/watchdog.ts)', function () {
  this.timeout(60_000);

  for (const [what, stall] of [
    ['blocked in Atomics.wait', 'Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30_000);'],
    ['spinning in a busy loop', 'const end = Date.now() + 30_000; while (Date.now() < end) {}'],
  ] as const) {
    it(`ends a process whose event loop is ${what} past the limit, with a fatal log line, within seconds`, async () => {
      const out = await child(`setTimeout(() => { console.log('stalling'); ${stall} console.log('woke up'); }, 300);`);
      expect(out.stdout).to.include('stalling');
      expect(out.stdout, 'the stall was cut short').to.not.include('woke up');
      // Not a clean exit: killed by SIGKILL (exit status 137 to a shell, a failure to systemd and Docker).
      expect(out.code).to.equal(null);
      expect(out.signal).to.equal('SIGKILL');
      expect(out.ms).to.be.below(15_000);
      const line = fatalLine(out.stderr);
      expect(line, `no event-loop-stalled line in stderr: ${out.stderr}`).to.not.equal(undefined);
      expect(line).to.include({ level: 60, name: 'kms', event: 'event-loop-stalled', stallExitMs: 1000 });
      expect(line!.stalledMs).to.be.at.least(1000).and.below(10_000);
      expect(line!.msg).to.match(/^the event loop has not turned for \d+ ms \(limit 1000 ms\)/);
    });
  }

  it('leaves a process whose loop keeps turning alone, and does not keep it alive', async () => {
    // 2.5 s of short tasks (none near the limit), then nothing left to do: the process exits by itself.
    const out = await child(
      `let n = 0; const t = setInterval(() => { const end = Date.now() + 50; while (Date.now() < end) {} if (++n === 25) { clearInterval(t); console.log('done'); } }, 50);`,
    );
    expect(out.stdout).to.include('done');
    expect(out.code).to.equal(0);
    expect(out.signal).to.equal(null);
    expect(fatalLine(out.stderr)).to.equal(undefined);
  });
});
