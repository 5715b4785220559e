// A single-consumer async queue between the step loop (which pushes a sequence's events
// synchronously) and that sequence's response stream (which awaits them). It holds at most one
// sequence's events (max_tokens + 1 of them), so it needs no bound of its own; close() wakes a
// waiting reader with `undefined`, which is how cancellation ends the stream. Pure: no timers.
export class EventChannel<T> {
  private readonly items: T[] = [];
  private waiter: ((item: T | undefined) => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) return;
    const waiter = this.waiter;
    if (waiter !== undefined) {
      this.waiter = undefined;
      waiter(item);
    } else {
      this.items.push(item);
    }
  }

  /** Later pushes are dropped; a pending or later next() resolves to undefined once drained. */
  close(): void {
    this.closed = true;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.(undefined);
  }

  /** The next item, or undefined once closed and drained. One reader at a time. */
  next(): Promise<T | undefined> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }
}
