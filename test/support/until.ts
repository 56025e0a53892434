/** Polls `probe` until it returns a value, or fails after `timeoutMs` naming `what` it waited for. */
export async function until<T>(what: string, probe: () => T | undefined, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
