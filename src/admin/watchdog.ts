/**
 * The event-loop heartbeat and watchdog. The main thread counts up a number in a
 * SharedArrayBuffer on a timer; /healthz reads how long ago it last did. With `exitOnStall`, a
 * worker thread watches that number: a stalled loop runs no JavaScript timer (a busy loop, a
 * blocking call, a deadlock in Atomics.wait), but the worker's own loop keeps turning. When the
 * number has not moved for `stallMs`, the worker writes a fatal JSON log line (as pino writes them)
 * to stderr and ends the process with SIGKILL: the only way out of a stalled main thread (a worker's
 * process.exit ends the worker only, and SIGTERM or SIGINT would wait for the stalled loop to run
 * their handlers). The supervisor (systemd Restart=on-failure, Docker's restart policy) restarts it.
 */
import { Worker } from 'node:worker_threads';

/** The worker: plain JavaScript (CommonJS, evaluated), so that it runs from dist/ and under tsx alike. */
const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { writeSync } = require('node:fs');
const { hostname } = require('node:os');
const { buffer, stallMs, checkMs, pid, name } = workerData;
const beat = new Int32Array(buffer);
let seen = Atomics.load(beat, 0);
let movedAt = performance.now();
let checkedAt = movedAt;
setInterval(() => {
  const now = performance.now();
  // This thread was held up too (the process stopped, the machine suspended): not a stall of the loop.
  if (now - checkedAt > Math.max(stallMs / 2, 5 * checkMs)) movedAt = now;
  checkedAt = now;
  const v = Atomics.load(beat, 0);
  if (v !== seen) {
    seen = v;
    movedAt = now;
    return;
  }
  const stalledMs = Math.round(now - movedAt);
  if (stalledMs < stallMs) return;
  const line = {
    level: 60,
    time: Date.now(),
    pid,
    hostname: hostname(),
    name,
    event: 'event-loop-stalled',
    stalledMs,
    stallExitMs: stallMs,
    msg: 'the event loop has not turned for ' + stalledMs + ' ms (limit ' + stallMs + ' ms): exiting (SIGKILL) so that the supervisor restarts the KMS',
  };
  writeSync(2, JSON.stringify(line) + '\\n');
  process.kill(pid, 'SIGKILL');
}, checkMs);
`;

export interface HeartbeatOptions {
  /** A loop that has not turned for this long is stalled: /healthz fails, and the watchdog (with exitOnStall) ends the process. */
  stallMs: number;
  /** Starts the watchdog thread that ends a stalled process. */
  exitOnStall: boolean;
  /** The `name` of the fatal log line (the logger's name). */
  name?: string;
}

/** A running heartbeat. */
export interface Heartbeat {
  readonly stallMs: number;
  /** Milliseconds since the main loop last ran the heartbeat's timer. */
  lastTickAgeMs(): number;
  /** Stops the timer and the watchdog thread. */
  stop(): Promise<void>;
}

/** Starts the heartbeat timer and, with `exitOnStall`, the watchdog thread. Neither keeps the process alive. */
export function startHeartbeat(o: HeartbeatOptions): Heartbeat {
  const buffer = new SharedArrayBuffer(4);
  const beat = new Int32Array(buffer);
  const tickMs = Math.max(10, Math.min(1000, Math.floor(o.stallMs / 4)));
  let lastTick = performance.now();
  const timer = setInterval(() => {
    Atomics.add(beat, 0, 1);
    lastTick = performance.now();
  }, tickMs);
  timer.unref();
  let worker: Worker | undefined;
  if (o.exitOnStall) {
    worker = new Worker(WORKER_SOURCE, {
      eval: true,
      // Not the parent's --import tsx and the like: the worker is plain JavaScript.
      execArgv: [],
      workerData: { buffer, stallMs: o.stallMs, checkMs: Math.max(10, Math.min(500, Math.floor(o.stallMs / 10))), pid: process.pid, name: o.name ?? 'kms' },
      // Its only output is the fatal line, written straight to fd 2.
      stdout: false,
      stderr: false,
    });
    worker.unref();
  }
  let stopped: Promise<void> | undefined;
  return {
    stallMs: o.stallMs,
    lastTickAgeMs: () => performance.now() - lastTick,
    stop() {
      stopped ??= (async () => {
        clearInterval(timer);
        await worker?.terminate();
      })();
      return stopped;
    },
  };
}
