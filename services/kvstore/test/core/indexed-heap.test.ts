// The indexed min-heap under random pushes, pops, removals and key changes, checked against a
// sorted array after every step.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { IndexedMinHeap } from '../../src/core/index.ts';

interface Item {
  id: number;
  key: number;
  index: number;
}

function makeHeap(): IndexedMinHeap<Item> {
  return new IndexedMinHeap<Item>((a, b) => a.key < b.key || (a.key === b.key && a.id < b.id), {
    getIndex: (item) => item.index,
    setIndex: (item, index) => {
      item.index = index;
    },
  });
}

test('indexed heap - matches a sorted reference under random push, pop, remove and update', () => {
  const heap = makeHeap();
  const items: Item[] = Array.from({ length: 64 }, (_, id) => ({ id, key: 0, index: -1 }));
  const inHeap = new Set<Item>();
  const expectedMin = (): Item | undefined => [...inHeap].sort((a, b) => a.key - b.key || a.id - b.id)[0];
  for (let step = 0; step < 5_000; step++) {
    const item = items[Math.floor(Math.random() * items.length)]!;
    const op = Math.random();
    if (op < 0.35) {
      if (!inHeap.has(item)) item.key = Math.floor(Math.random() * 100);
      heap.push(item);
      inHeap.add(item);
    } else if (op < 0.55) {
      const expected = expectedMin();
      assert.equal(heap.pop(), expected);
      if (expected) inHeap.delete(expected);
    } else if (op < 0.75) {
      assert.equal(heap.remove(item), inHeap.delete(item));
    } else {
      item.key = Math.floor(Math.random() * 100);
      heap.update(item);
    }
    assert.equal(heap.size, inHeap.size);
    assert.equal(heap.peek(), expectedMin());
    for (const each of items) assert.equal(heap.has(each), inHeap.has(each));
  }
});

test('indexed heap - a second push is ignored, removing or updating an absent item is a no-op', () => {
  const heap = makeHeap();
  const a: Item = { id: 1, key: 5, index: -1 };
  const b: Item = { id: 2, key: 3, index: -1 };
  heap.push(a);
  heap.push(a);
  assert.equal(heap.size, 1);
  assert.equal(heap.remove(b), false);
  heap.update(b);
  assert.equal(heap.size, 1);
  heap.push(b);
  heap.clear();
  assert.equal(heap.size, 0);
  assert.equal(a.index, -1);
  assert.equal(b.index, -1);
  assert.equal(heap.pop(), undefined);
});
