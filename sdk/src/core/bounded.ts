// Concurrency bounds of the client: a semaphore with a bounded wait queue (every RPC the client
// sends holds one permit, so in-flight calls never exceed the configured bound) and a bounded
// parallel map. Invariants: permits in use ≤ permitsMax, waiters ≤ waitersMax (one more is a
// LimitExceededError, never unbounded growth), and a released permit goes to the oldest waiter.
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

function checkCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1)
    throw new InvalidArgumentError(`${name} must be an integer >= 1, got ${value}`, { [name]: value });
}

export class Semaphore {
  private inUseCount = 0;
  private readonly waiters: (() => void)[] = [];

  constructor(
    readonly permitsMax: number,
    readonly waitersMax: number,
  ) {
    checkCount('permitsMax', permitsMax);
    checkCount('waitersMax', waitersMax);
  }

  get inUse(): number {
    return this.inUseCount;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Resolves with a release function once a permit is free; rejects when the wait queue is full. */
  acquire(): Promise<() => void> {
    if (this.inUseCount < this.permitsMax) {
      this.inUseCount++;
      return Promise.resolve(this.releaser());
    }
    if (this.waiters.length >= this.waitersMax)
      return Promise.reject(
        new LimitExceededError(
          `${this.waiters.length} calls already wait for one of ${this.permitsMax} in-flight slots`,
          { waiting: this.waiters.length, waitersMax: this.waitersMax, inFlightMax: this.permitsMax },
        ),
      );
    return new Promise((resolve) => {
      // NOTE: the permit is handed over, not returned and re-taken, so inUseCount stays put.
      this.waiters.push(() => resolve(this.releaser()));
    });
  }

  /** Runs `fn` holding a permit. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiters.shift();
      if (next !== undefined) next();
      else this.inUseCount--;
    };
  }
}

/**
 * `fn` over every item with at most `concurrency` running at once; results in item order. The first
 * rejection stops new items from starting and is rethrown once the running ones have settled.
 */
export async function mapBounded<T, R>(
  items: readonly T[],
  concurrency: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  checkCount('concurrency', concurrency);
  // One item (a put or get of one block, the common call) needs no workers.
  if (items.length === 1) return [await fn(items[0] as T, 0)];
  const results = new Array<R>(items.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      const index = next++;
      try {
        results[index] = await fn(items[index] as T, index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  if (failure !== undefined) throw failure.error;
  return results;
}
