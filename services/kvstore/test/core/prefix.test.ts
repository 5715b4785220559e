// The prefix view of the block store: matchPrefix over a node that holds fragments of chains
// (placement is per block), and the local-children links that keep a parent until its children go,
// including children that arrive before their parent.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LimitExceededError } from '@kvmesh/errors';

import { BLOCK_BYTES, NS, NS_A, NS_B, chain, heldHashes, makeStore } from './helpers.ts';

test('prefix - matchPrefix counts the leading held blocks and lists every held block in order', () => {
  const { store } = makeStore();
  const blocks = chain(5, { namespace: NS_A });
  const [kivi] = chain(1, { namespace: NS_A, codec: 'kivi2' });
  // This node holds blocks 0, 1 and 3 of the chain (2 and 4 live on other nodes).
  for (const i of [0, 1, 3]) store.put(blocks[i]!);
  store.put(kivi!);
  const hashes = [...blocks.map((b) => b.hash), kivi!.hash];
  assert.deepEqual(store.matchPrefix(NS_A, hashes), {
    matchedBlocks: 2,
    held: [
      { index: 0, hash: blocks[0]!.hash, codec: 'f32', tier: 'dram' },
      { index: 1, hash: blocks[1]!.hash, codec: 'f32', tier: 'dram' },
      { index: 3, hash: blocks[3]!.hash, codec: 'f32', tier: 'dram' },
      { index: 5, hash: kivi!.hash, codec: 'kivi2', tier: 'dram' },
    ],
  });
  assert.deepEqual(store.matchPrefix(NS_A, hashes.slice(2)), {
    matchedBlocks: 0,
    held: [
      { index: 1, hash: blocks[3]!.hash, codec: 'f32', tier: 'dram' },
      { index: 3, hash: kivi!.hash, codec: 'kivi2', tier: 'dram' },
    ],
  });
  assert.deepEqual(store.matchPrefix(NS_A, []), { matchedBlocks: 0, held: [] });
});

test('prefix - another namespace matches nothing', () => {
  const { store } = makeStore();
  const blocks = chain(2, { namespace: NS_A });
  for (const block of blocks) store.put(block);
  assert.deepEqual(
    store.matchPrefix(
      NS_B,
      blocks.map((b) => b.hash),
    ),
    { matchedBlocks: 0, held: [] },
  );
});

test('prefix - a request longer than hashesPerRequestMax is rejected', () => {
  const { store } = makeStore({ hashesPerRequestMax: 3 });
  const hashes = chain(4).map((b) => b.hash);
  assert.equal(store.matchPrefix(NS, hashes.slice(0, 3)).matchedBlocks, 0);
  assert.throws(
    () => store.matchPrefix(NS, hashes),
    (err: unknown) => err instanceof LimitExceededError && err.details.hashesPerRequestMax === 3,
  );
});

test('prefix - matchPrefix is a probe: no hit counted, no recency refreshed', () => {
  const { store } = makeStore({ bytesBudget: 2 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const [a, b, c] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  assert.equal(store.matchPrefix(NS, [a.hash]).matchedBlocks, 1);
  assert.deepEqual(store.stats().hits, 0);
  assert.deepEqual(
    store.put(c).evicted.map((r) => r.hash),
    [a.hash],
  );
});

test('prefix - a block whose parent lives elsewhere is a local root and evictable on its own', () => {
  const { store } = makeStore({ bytesBudget: 2 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const blocks = chain(3);
  store.put(blocks[1]!); // parent 0 is on another node
  store.put(blocks[2]!);
  assert.equal(store.get(NS, blocks[1]!.hash)?.localChildren, 1);
  const [other] = chain(1);
  // 1 is older but has a local child: 2 goes, then 1 would be next.
  assert.deepEqual(
    store.put(other!).evicted.map((r) => r.hash),
    [blocks[2]!.hash],
  );
  assert.equal(store.get(NS, blocks[1]!.hash)?.localChildren, 0);
});

test('prefix - children stored before their parent are counted when the parent arrives', () => {
  const { store } = makeStore({ bytesBudget: 4 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const blocks = chain(3);
  const [sibling] = chain(1, { tokens: blocks[1]!.tokenIds }); // not a child: a different seed chain
  store.put(blocks[2]!);
  store.put(blocks[1]!);
  store.put(blocks[0]!);
  store.put(sibling!);
  assert.deepEqual(
    [...store.entries()].map((r) => r.localChildren),
    [0, 1, 1, 0],
  );
  // Reading the leaf leaves block 0 the least recently used block, but it has children: the sibling
  // goes first, then the chain drains leaf first, 0 last.
  store.get(NS, blocks[2]!.hash);
  const [x, y, z] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  assert.deepEqual(
    store.put(x).evicted.map((r) => r.hash),
    [sibling!.hash],
  );
  assert.deepEqual(
    store.put(y).evicted.map((r) => r.hash),
    [blocks[2]!.hash],
  );
  assert.deepEqual(
    store.put(z).evicted.map((r) => r.hash),
    [blocks[1]!.hash],
  );
  assert.deepEqual(heldHashes(store), [blocks[0]!.hash, x.hash, y.hash, z.hash]);
  assert.equal(store.get(NS, blocks[0]!.hash)?.localChildren, 0);
});

test('prefix - a parent stored after its child was evicted starts with no children', () => {
  const { store } = makeStore();
  const blocks = chain(2);
  store.put(blocks[1]!);
  assert.equal(store.delete(NS, blocks[1]!.hash).deleted, true);
  store.put(blocks[0]!);
  assert.equal(store.get(NS, blocks[0]!.hash)?.localChildren, 0);
  assert.equal(store.delete(NS, blocks[0]!.hash).deleted, true);
});
