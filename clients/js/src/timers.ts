// Timers a component owns, so that closing it clears every one of them and
// nothing keeps a Node process alive or fires after close().

/** A timer handle from {@link Timers.after}. */
export type TimerHandle = ReturnType<typeof setTimeout>;

/** The longest delay setTimeout takes (about 24.8 days). */
const MAX_DELAY = 2 ** 31 - 1;

/** A set of pending timeouts, cleared together. */
export class Timers {
  private readonly pending = new Set<TimerHandle>();
  private closed = false;

  /** Runs `fn` once after `ms` (clamped to setTimeout's range); nothing once cleared. */
  after(ms: number, fn: () => void): TimerHandle {
    const handle = setTimeout(() => {
      this.pending.delete(handle);
      fn();
    }, Math.max(0, Math.min(ms, MAX_DELAY)));
    if (this.closed) clearTimeout(handle);
    else this.pending.add(handle);
    return handle;
  }

  /** Cancels one timer (null and unknown handles are ignored). */
  cancel(handle: TimerHandle | null | undefined): void {
    if (handle === null || handle === undefined) return;
    clearTimeout(handle);
    this.pending.delete(handle);
  }

  /** Resolves after `ms`; never resolves once the timers are cleared. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.after(ms, resolve));
  }

  /** Cancels every pending timer; later ones never start. */
  clear(): void {
    this.closed = true;
    for (const handle of this.pending) clearTimeout(handle);
    this.pending.clear();
  }
}
