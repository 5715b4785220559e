// Small helpers for tests: a free loopback port (from @kvmesh/runtime) and a polling `waitFor` that
// fails with the last observed error instead of hanging. Tests assert on events and states through
// these, never on sleeps of guessed length.

export { freePort } from '@kvmesh/runtime';

export interface WaitForOptions {
  /** Default 5000 ms. */
  readonly timeoutMs?: number;
  /** Default 20 ms. */
  readonly intervalMs?: number;
  /** Says what was awaited, for the timeout message. */
  readonly message?: string;
}

/**
 * Polls `predicate` until it returns a truthy value (which is returned). Exceptions count as "not yet";
 * on timeout the error names `message` and the last exception.
 */
export async function waitFor<T>(
  predicate: () => T | Promise<T>,
  options: WaitForOptions = {},
): Promise<NonNullable<T>> {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const intervalMs = options.intervalMs ?? 20;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const what = options.message ?? 'condition';
      const last =
        lastError === undefined ? '' : `; last error: ${(lastError as Error).message ?? String(lastError)}`;
      throw new Error(`waitFor: ${what} not met within ${timeoutMs} ms${last}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Keeps the last `linesMax` lines (each cut to `lineCharsMax`) of a byte stream. */
export class LineRing {
  private lines: string[] = [];
  private partial = '';
  constructor(
    private readonly linesMax = 200,
    private readonly lineCharsMax = 2_000,
    private readonly onLine?: (line: string) => void,
  ) {}

  push(chunk: Buffer | string): void {
    const text = this.partial + chunk.toString();
    const parts = text.split('\n');
    this.partial = (parts.pop() ?? '').slice(-this.lineCharsMax);
    for (const part of parts) this.add(part);
  }

  /** Flushes an unterminated last line (call on stream end). */
  end(): void {
    if (this.partial !== '') this.add(this.partial);
    this.partial = '';
  }

  text(): string {
    return [...this.lines, ...(this.partial === '' ? [] : [this.partial])].join('\n');
  }

  private add(raw: string): void {
    const line = raw.replace(/\r$/, '').slice(0, this.lineCharsMax);
    this.lines.push(line);
    if (this.lines.length > this.linesMax) this.lines.splice(0, this.lines.length - this.linesMax);
    this.onLine?.(line);
  }
}
