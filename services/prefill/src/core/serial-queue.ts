// Runs tasks one at a time in arrival order, with a bounded number waiting: the engine computes
// one prompt at a time, and a burst beyond the bound is refused at once (QueueFullError, i.e.
// RESOURCE_EXHAUSTED) instead of piling up memory and latency. Pure promise plumbing: no timers.
import { InvalidArgumentError } from '@kvmesh/errors';

import { QueueFullError } from './errors.ts';

export class SerialQueue {
  readonly waitingMax: number;
  private readonly waiters: (() => void)[] = [];
  private running = false;

  constructor(waitingMax: number) {
    if (!Number.isInteger(waitingMax) || waitingMax < 0)
      throw new InvalidArgumentError(`waitingMax must be an integer >= 0, got ${waitingMax}`, { waitingMax });
    this.waitingMax = waitingMax;
  }

  /** 1 while a task runs, else 0. */
  get active(): number {
    return this.running ? 1 : 0;
  }

  /** Tasks admitted but not started. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** Runs `task` after every task admitted before it; rejects with QueueFullError when full. */
  async run<T>(task: () => Promise<T> | T): Promise<T> {
    if (this.running) {
      if (this.waiters.length >= this.waitingMax) throw new QueueFullError(this.waitingMax);
      // NOTE: the finishing task hands `running` over directly (it stays true), so no newcomer can
      // slip in between a task's end and the next waiter's start.
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.running = true;
    try {
      return await task();
    } finally {
      const next = this.waiters.shift();
      if (next === undefined) this.running = false;
      else next();
    }
  }
}
