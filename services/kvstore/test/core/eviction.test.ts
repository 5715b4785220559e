// Eviction order of the block store under small budgets: leaf-first LRU between the watermarks,
// full-store rejection that changes nothing, the entry bound, and tick() after protections end.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { BlockHash } from '@kvmesh/protocol';

import { StoreFullError, type PutBlockInput } from '../../src/core/index.ts';
import { BLOCK_BYTES, chain, entryBytes, heldHashes, hex, makeStore, randomPayload } from './helpers.ts';

/** Numbers blocks 1..n in put order so expectations read like the scenario. */
function numbering(blocks: PutBlockInput[]): (hash: BlockHash) => number {
  const byHash = new Map(blocks.map((b, i) => [b.hash as string, i + 1]));
  return (hash) => byHash.get(hash) ?? 0;
}

test('eviction - evicts blocks 5, 4, 6 in that order', () => {
  // Chains: X = 1→2→3, Y = 4→5, Z = 6, W = 7; then X is read, then 8 arrives.
  const { store, clock, events } = makeStore({
    bytesBudget: 8 * BLOCK_BYTES,
    highWatermark: 0.95, // 7.6 blocks
    lowWatermark: 0.65, // 5.2 blocks
  });
  const [x, y, z, w, v] = [chain(3), chain(2), chain(1), chain(1), chain(1)];
  const blocks = [...x, ...y, ...z, ...w, ...v];
  const n = numbering(blocks);
  for (const block of blocks.slice(0, 7)) {
    store.put(block);
    clock.advance(1);
  }
  for (const block of x) assert.ok(store.get(block.namespace, block.hash));
  clock.advance(1);
  // Eligible leaves by recency: 5, 6, 7, 3. Evicting 5 makes 4 (older than 6) eligible.
  const result = store.put(blocks[7] as PutBlockInput);
  assert.deepEqual(
    result.evicted.map((r) => n(r.hash)),
    [5, 4, 6],
  );
  assert.deepEqual(heldHashes(store).map(n), [1, 2, 3, 7, 8]);
  assert.equal(store.stats().bytesUsed, 5 * BLOCK_BYTES);
  assert.equal(store.stats().evictions, 3);
  const last = events.at(-1);
  assert.deepEqual(
    last?.removed.map((h) => n(hex(h) as BlockHash)),
    [5, 4, 6],
  );
  assert.deepEqual(
    last?.stored.map((s) => n(hex(s.hash) as BlockHash)),
    [8],
  );
});

test('eviction - a parent is never evicted before its local children, even as the least recent block', () => {
  const { store, clock } = makeStore({ bytesBudget: 4 * BLOCK_BYTES, highWatermark: 0.9, lowWatermark: 0.5 });
  const blocks = [...chain(4), ...chain(1)];
  const n = numbering(blocks);
  for (const block of blocks.slice(0, 4)) {
    store.put(block);
    clock.advance(1);
  }
  // Read the leaf and its parent most recently: the leaf-first rule still takes them first.
  store.get(blocks[3]!.namespace, blocks[3]!.hash);
  store.get(blocks[2]!.namespace, blocks[2]!.hash);
  const result = store.put(blocks[4]!);
  assert.deepEqual(
    result.evicted.map((r) => n(r.hash)),
    [4, 3, 2],
  );
  assert.deepEqual(heldHashes(store).map(n), [1, 5]);
  assert.equal(store.entries().next().value?.localChildren, 0);
});

test('eviction - nothing goes until usage passes the high watermark, then down to the low one', () => {
  const { store, clock } = makeStore({
    bytesBudget: 10 * BLOCK_BYTES,
    highWatermark: 0.9,
    lowWatermark: 0.6,
  });
  const blocks = Array.from({ length: 10 }, () => chain(1)[0]!);
  const n = numbering(blocks);
  for (let i = 0; i < 9; i++) {
    // 9 blocks = exactly the high watermark: not above it.
    assert.deepEqual(store.put(blocks[i]!).evicted, []);
    clock.advance(1);
  }
  assert.equal(store.stats().blocks, 9);
  const result = store.put(blocks[9]!);
  assert.deepEqual(
    result.evicted.map((r) => n(r.hash)),
    [1, 2, 3, 4],
  );
  assert.equal(store.stats().bytesUsed, 6 * BLOCK_BYTES);
});

test('eviction - accesses in the same millisecond are ordered by when they happened', () => {
  const { store } = makeStore({ bytesBudget: 3 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const blocks = Array.from({ length: 5 }, () => chain(1)[0]!);
  const n = numbering(blocks);
  for (const block of blocks.slice(0, 3)) store.put(block);
  // Clock never moves: insertion order 1, 2, 3, then 1 is read.
  store.get(blocks[0]!.namespace, blocks[0]!.hash);
  assert.deepEqual(
    store.put(blocks[3]!).evicted.map((r) => n(r.hash)),
    [2],
  );
  assert.deepEqual(
    store.put(blocks[4]!).evicted.map((r) => n(r.hash)),
    [3],
  );
  assert.deepEqual(heldHashes(store).map(n), [1, 4, 5]);
});

test('eviction - a deduplicated put refreshes recency', () => {
  const { store, clock } = makeStore({ bytesBudget: 2 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const [a, b, c] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  clock.advance(1);
  store.put(b);
  clock.advance(1);
  assert.equal(store.put({ ...a, payload: randomPayload() }).status, 'deduplicated');
  assert.deepEqual(
    store.put(c).evicted.map((r) => r.hash),
    [b.hash],
  );
});

test('eviction - a full store with nothing evictable rejects the put and stays unchanged', () => {
  const { store, events } = makeStore({ bytesBudget: 3 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const held = chain(3);
  for (const block of held) store.put(block);
  // Only the leaf could go; pinning it protects the whole chain (parents wait for children).
  store.pin(held[2]!.namespace, [held[2]!.hash], 'session-1', 10_000);
  const before = { stats: store.stats(), hashes: heldHashes(store), seq: store.lastEventSeq };
  const incoming = chain(1)[0]!;
  assert.throws(
    () => store.put(incoming),
    (err: unknown) => {
      assert.ok(err instanceof StoreFullError);
      assert.equal(err.kind, 'resource-exhausted');
      assert.deepEqual(err.details, {
        bytesNeeded: entryBytes(incoming),
        bytesUsed: 3 * BLOCK_BYTES,
        bytesBudget: 3 * BLOCK_BYTES,
        blocks: 3,
        blocksMax: before.stats.blocksMax,
        bytesEvictable: 0,
      });
      return true;
    },
  );
  assert.deepEqual(heldHashes(store), before.hashes);
  assert.deepEqual({ ...store.stats(), rejectedFull: 0 }, before.stats);
  assert.equal(store.stats().rejectedFull, 1);
  assert.equal(store.lastEventSeq, before.seq);
  assert.equal(events.length, 3);
  assert.equal(store.has(incoming.namespace, incoming.hash), false);
  // Once unpinned, the chain goes leaf-first.
  assert.equal(store.unpin(held[2]!.namespace, [held[2]!.hash], 'session-1'), 1);
  assert.deepEqual(
    store.put(incoming).evicted.map((r) => r.hash),
    [held[2]!.hash],
  );
});

test('eviction - a rejected put rolls back the victims it had picked, chain links included', () => {
  const big = chain(2);
  const small = chain(2, { codec: 'kivi2' });
  const bigBytes = entryBytes(big[0]!);
  const smallBytes = entryBytes(small[0]!);
  assert.ok(bigBytes > 2 * smallBytes, 'the scenario needs small blocks well under half a big one');
  const slackBytes = Math.floor((bigBytes - 2 * smallBytes) / 2);
  const { store, events } = makeStore({
    bytesBudget: 2 * bigBytes + 2 * smallBytes + slackBytes,
    highWatermark: 1,
    lowWatermark: 1,
  });
  for (const block of big) store.put(block);
  store.pin(big[1]!.namespace, [big[1]!.hash], 'writer', 10_000);
  for (const block of small) store.put(block);
  const incoming = chain(1)[0]!;
  // Evicting the whole small chain (child, then parent) frees 2 small blocks: not enough.
  assert.throws(
    () => store.put(incoming),
    (err: unknown) => err instanceof StoreFullError && err.details.bytesEvictable === 2 * smallBytes,
  );
  assert.equal(events.length, 4);
  const smallRoot = [...store.entries()].find((r) => r.hash === small[0]!.hash);
  assert.equal(smallRoot?.localChildren, 1);
  assert.deepEqual(store.delete(small[0]!.namespace, small[0]!.hash), {
    deleted: false,
    reason: 'has-children',
  });
  assert.equal(store.delete(small[1]!.namespace, small[1]!.hash).deleted, true);
  assert.equal(store.delete(small[0]!.namespace, small[0]!.hash).deleted, true);
  assert.deepEqual(heldHashes(store), [big[0]!.hash, big[1]!.hash]);
});

test('eviction - a block larger than the whole budget is rejected', () => {
  const block = chain(1)[0]!;
  const { store } = makeStore({
    bytesBudget: block.payload.byteLength,
    blockBytesMax: block.payload.byteLength,
    highWatermark: 1,
    lowWatermark: 1,
  });
  assert.throws(() => store.put(block), StoreFullError);
  assert.equal(store.stats().blocks, 0);
});

test('eviction - blocksMax evicts like the byte budget and rejects when every block is protected', () => {
  const { store } = makeStore({ blocksMax: 4, highWatermark: 0.8, lowWatermark: 0.5 });
  const blocks = Array.from({ length: 7 }, () => chain(1)[0]!);
  const n = numbering(blocks);
  for (const block of blocks.slice(0, 4)) store.put(block);
  // 4 blocks > 0.8 × 4: down to 0.5 × 4 = 2 blocks.
  assert.deepEqual(heldHashes(store).map(n), [3, 4]);
  store.put(blocks[4]!);
  store.put(blocks[5]!);
  const ns = blocks[0]!.namespace;
  // 3, 4, 5 present after the second put; 6 triggered eviction down to 2 blocks again.
  assert.deepEqual(heldHashes(store).map(n), [5, 6]);
  store.put(blocks[2]!);
  store.put(blocks[3]!);
  assert.equal(store.stats().blocks, 2);
  const now = heldHashes(store);
  store.pin(ns, now, 'p', 1_000);
  store.put(blocks[0]!);
  store.pin(ns, [blocks[0]!.hash], 'p', 1_000);
  store.put(blocks[1]!);
  store.pin(ns, [blocks[1]!.hash], 'p', 1_000);
  assert.equal(store.stats().blocks, 4);
  assert.throws(
    () => store.put(blocks[6]!),
    (err: unknown) =>
      err instanceof StoreFullError && err.details.blocks === 4 && err.details.blocksMax === 4,
  );
  assert.equal(store.stats().blocks, 4);
});

test('eviction - tick evicts down to the low watermark once the protecting leases expire', () => {
  const { store, clock, events } = makeStore({
    bytesBudget: 4 * BLOCK_BYTES,
    highWatermark: 0.7,
    lowWatermark: 0.5,
  });
  const blocks = Array.from({ length: 3 }, () => chain(1)[0]!);
  const n = numbering(blocks);
  for (const block of blocks) {
    store.put(block);
    assert.ok(store.get(block.namespace, block.hash, 100));
  }
  // The third put went above the high watermark but every block was leased.
  assert.equal(store.stats().blocks, 3);
  clock.advance(99);
  assert.deepEqual(store.tick(), { released: 0, evicted: [] });
  clock.advance(1);
  const { released, evicted } = store.tick();
  assert.equal(released, 3);
  assert.deepEqual(
    evicted.map((r) => n(r.hash)),
    [1],
  );
  assert.deepEqual(heldHashes(store).map(n), [2, 3]);
  assert.deepEqual(events.at(-1)?.stored, []);
  assert.equal(events.at(-1)?.removed.length, 1);
  // Below the high watermark now: tick evicts nothing and emits nothing.
  const seq = store.lastEventSeq;
  assert.deepEqual(store.evictExpired(), { released: 0, evicted: [] });
  assert.equal(store.lastEventSeq, seq);
});
