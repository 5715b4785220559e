// A binary min-heap whose items remember their own position, so any item can be removed or re-keyed
// in O(log n) without a search. The block store keeps two: eligible leaves ordered by recency (the
// eviction order) and protected blocks ordered by when their protection ends (the expiry order).
// Invariant: an item is in the heap iff getIndex(item) is a valid slot holding that same item.

/** Reads and writes the slot an item occupies; -1 means "not in this heap". */
export interface HeapSlots<T> {
  getIndex(item: T): number;
  setIndex(item: T, index: number): void;
}

export class IndexedMinHeap<T> {
  private readonly items: T[] = [];

  constructor(
    private readonly less: (a: T, b: T) => boolean,
    private readonly slots: HeapSlots<T>,
  ) {}

  get size(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  has(item: T): boolean {
    const index = this.slots.getIndex(item);
    return index >= 0 && index < this.items.length && this.items[index] === item;
  }

  /** Adds an item that is not in the heap (a second push of the same item is ignored). */
  push(item: T): void {
    if (this.has(item)) return;
    this.items.push(item);
    this.slots.setIndex(item, this.items.length - 1);
    this.siftUp(this.items.length - 1);
  }

  pop(): T | undefined {
    const top = this.items[0];
    if (top !== undefined) this.removeAt(0);
    return top;
  }

  /** Removes the item if present; returns whether it was. */
  remove(item: T): boolean {
    if (!this.has(item)) return false;
    this.removeAt(this.slots.getIndex(item));
    return true;
  }

  /** Restores heap order after the item's key changed (either direction). No-op if absent. */
  update(item: T): void {
    if (!this.has(item)) return;
    const index = this.siftUp(this.slots.getIndex(item));
    this.siftDown(index);
  }

  clear(): void {
    for (const item of this.items) this.slots.setIndex(item, -1);
    this.items.length = 0;
  }

  private removeAt(index: number): void {
    const removed = this.items[index] as T;
    const last = this.items.pop() as T;
    this.slots.setIndex(removed, -1);
    if (index === this.items.length) return; // removed the last slot
    this.items[index] = last;
    this.slots.setIndex(last, index);
    this.siftDown(this.siftUp(index));
  }

  private siftUp(start: number): number {
    let index = start;
    const item = this.items[index] as T;
    while (index > 0) {
      const parentIndex = (index - 1) >> 1;
      const parent = this.items[parentIndex] as T;
      if (!this.less(item, parent)) break;
      this.items[index] = parent;
      this.slots.setIndex(parent, index);
      index = parentIndex;
    }
    this.items[index] = item;
    this.slots.setIndex(item, index);
    return index;
  }

  private siftDown(start: number): number {
    let index = start;
    const count = this.items.length;
    const item = this.items[index] as T;
    while (true) {
      const left = 2 * index + 1;
      if (left >= count) break;
      const right = left + 1;
      let child = left;
      if (right < count && this.less(this.items[right] as T, this.items[left] as T)) child = right;
      const childItem = this.items[child] as T;
      if (!this.less(childItem, item)) break;
      this.items[index] = childItem;
      this.slots.setIndex(childItem, index);
      index = child;
    }
    this.items[index] = item;
    this.slots.setIndex(item, index);
    return index;
  }
}
