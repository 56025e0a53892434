// A server child process in its own process group, so that everything it forks (ejabberdctl runs
// bash -> erl -> beam.smp -> helpers) is signalled and awaited together, and killed when the test
// process exits, however it exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** Process groups started by this test process and not yet known to be gone. */
const liveGroups = new Set<number>();
let reaper: ChildProcess | undefined;

// Normal exit (mocha --exit, process.exit, end of the event loop): kill synchronously.
process.on('exit', () => {
  for (const pgid of liveGroups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * A watchdog for the exits 'exit' handlers never see (SIGKILL, an unhandled signal, a crash in
 * native code): a detached bash that is told every group we start and stop, and that kills the
 * groups still listed when its stdin (a pipe from this process) reaches end-of-file.
 */
function tellReaper(line: string): void {
  if (!reaper) {
    reaper = spawn(
      'bash',
      [
        '-c',
        `groups=" "
while read -r line; do
  case "$line" in
    +*) groups="$groups\${line#+} " ;;
    -*) groups="\${groups/ \${line#-} / }" ;;
  esac
done
for g in $groups; do kill -KILL -- "-$g" 2>/dev/null; done`,
      ],
      { detached: true, stdio: ['pipe', 'ignore', 'ignore'] },
    );
    reaper.unref();
    reaper.stdin?.on('error', () => {});
    (reaper.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
  reaper.stdin?.write(`${line}\n`);
}

/** Pids of the group's processes that are not zombies (Linux /proc). */
async function groupMembers(pgid: number): Promise<number[]> {
  try {
    process.kill(-pgid, 0);
  } catch {
    return [];
  }
  // kill(0) also succeeds for zombies that init has not reaped yet: look at their state.
  const members: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = await readFile(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) !== pgid) continue;
    // A killed multi-threaded process (beam.smp) shows its leader as a zombie while its other
    // threads are still exiting, and its sockets (a listening port!) stay open until the last one
    // has gone: only a zombie with a single task left is really gone.
    if (fields[0] !== 'Z' || (await readdir(`/proc/${entry}/task`).catch(() => [])).length > 1) {
      members.push(Number(entry));
    }
  }
  return members;
}

export interface ProcessGroupOptions {
  command: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** stdout and stderr are appended here (a file, so nothing is lost if the test process dies). */
  outputFile: string;
}

/** One run of a server: spawn, signal the whole group, wait until every member has exited. */
export class ProcessGroup {
  readonly pgid: number;
  /** Resolves when the direct child exits (its descendants may outlive it: see `waitGone`). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exitedNow = false;

  constructor(opts: ProcessGroupOptions) {
    const out = openSync(opts.outputFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(opts.command, opts.args, {
        cwd: opts.cwd,
        env: opts.env,
        detached: true, // a new process group whose id is the child's pid
        stdio: ['ignore', out, out],
      });
    } finally {
      closeSync(out);
    }
    if (child.pid === undefined) {
      throw new Error(`could not spawn ${opts.command}`);
    }
    this.pgid = child.pid;
    liveGroups.add(this.pgid);
    tellReaper(`+${this.pgid}`);
    this.exited = new Promise((resolve) => {
      child.once('error', () => resolve({ code: null, signal: null }));
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    void this.exited.then(() => {
      this.#exitedNow = true;
    });
    child.unref();
  }

  /** Whether the direct child has exited. */
  get hasExited(): boolean {
    return this.#exitedNow;
  }

  signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pgid, signal);
    } catch {
      // the group is already gone
    }
  }

  /** Inodes of the sockets the group's processes hold open (to tell our listeners from strangers'). */
  async socketInodes(): Promise<Set<string>> {
    const inodes = new Set<string>();
    for (const pid of await groupMembers(this.pgid)) {
      let fds: string[];
      try {
        fds = await readdir(`/proc/${pid}/fd`);
      } catch {
        continue;
      }
      for (const fd of fds) {
        const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
        const m = /^socket:\[(\d+)\]$/.exec(target);
        if (m) inodes.add(m[1]!);
      }
    }
    return inodes;
  }

  /** Waits until no process of the group is left; false on timeout. */
  async waitGone(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if ((await groupMembers(this.pgid)).length === 0) {
        liveGroups.delete(this.pgid);
        tellReaper(`-${this.pgid}`);
        return true;
      }
      if (Date.now() > deadline) return false;
      await sleep(25);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the whole group is gone. */
  async terminate(graceMs: number): Promise<void> {
    this.signal('SIGTERM');
    if (await this.waitGone(graceMs)) return;
    await this.kill();
  }

  /** SIGKILL to the whole group; resolves when it is gone. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    if (!(await this.waitGone(10_000))) {
      throw new Error(`process group ${this.pgid} survived SIGKILL for 10 s`);
    }
  }
}
