// Events of the block store: one KvEvent per state-changing operation, numbered contiguously from 1,
// with exact contents (evicted blocks as `removed` in eviction order, then the stored block), and
// nothing for operations that change no block.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Codec, KvEvent, Tier } from '@kvmesh/protocol';

import { StoreFullError } from '../../src/core/index.ts';
import { BLOCK_BYTES, NODE_ID, NS, chain, makeStore, randomPayload } from './helpers.ts';

const bytes = (hash: string): Buffer => Buffer.from(hash, 'hex');

test('events - contents are exact and seq is contiguous from 1 across put, evicting put, delete, clear', () => {
  const { store, clock, events } = makeStore({
    bytesBudget: 3 * BLOCK_BYTES,
    highWatermark: 1,
    lowWatermark: 1,
  });
  const [a, b] = chain(2);
  const [c] = chain(1, { codec: 'kivi4' });
  const [d] = chain(1);
  store.put(a!);
  clock.advance(1);
  store.put(b!);
  clock.advance(1);
  store.put(c!);
  clock.advance(1);
  // Full: d evicts the least recent leaf, b (a is its parent; c is more recent).
  const { evicted } = store.put({ ...d! });
  clock.advance(1);
  store.delete(NS, d!.hash);
  clock.advance(1);
  store.clear();

  const stored = (input: typeof a, parent: string | null, codec: Codec) => ({
    hash: bytes(input!.hash),
    parentHash: parent === null ? Buffer.alloc(0) : bytes(parent),
    tier: Tier.TIER_DRAM,
    codec,
    bytes: BigInt(input!.payload.byteLength),
    namespace: input!.namespace,
  });
  assert.deepEqual(
    evicted.map((r) => r.hash),
    [b!.hash],
  );
  assert.deepEqual(events, [
    {
      nodeId: NODE_ID,
      seq: 1n,
      stored: [stored(a, null, Codec.CODEC_F32)],
      removed: [],
      removedNamespaces: [],
      cleared: false,
      timestampMs: 1000n,
    },
    {
      nodeId: NODE_ID,
      seq: 2n,
      stored: [stored(b, a!.hash, Codec.CODEC_F32)],
      removed: [],
      removedNamespaces: [],
      cleared: false,
      timestampMs: 1001n,
    },
    {
      nodeId: NODE_ID,
      seq: 3n,
      stored: [stored(c, null, Codec.CODEC_KIVI4)],
      removed: [],
      removedNamespaces: [],
      cleared: false,
      timestampMs: 1002n,
    },
    {
      nodeId: NODE_ID,
      seq: 4n,
      stored: [stored(d, null, Codec.CODEC_F32)],
      removed: [bytes(b!.hash)],
      removedNamespaces: [b!.namespace],
      cleared: false,
      timestampMs: 1003n,
    },
    {
      nodeId: NODE_ID,
      seq: 5n,
      stored: [],
      removed: [bytes(d!.hash)],
      removedNamespaces: [d!.namespace],
      cleared: false,
      timestampMs: 1004n,
    },
    {
      nodeId: NODE_ID,
      seq: 6n,
      stored: [],
      removed: [],
      removedNamespaces: [],
      cleared: true,
      timestampMs: 1005n,
    },
  ]);
  assert.equal(store.lastEventSeq, 6n);
  assert.deepEqual(store.stats().blocks, 0);
  assert.deepEqual(store.stats().bytesUsed, 0);
});

test('events - a put that evicts several blocks lists them in eviction order, leaves before parents', () => {
  const { store, events } = makeStore({
    bytesBudget: 4 * BLOCK_BYTES,
    highWatermark: 0.9,
    lowWatermark: 0.3,
  });
  const blocks = chain(3);
  for (const block of blocks.slice(0, 2)) store.put(block);
  const [other] = chain(1);
  store.put(other!);
  const [next] = chain(1);
  store.put(next!);
  // 4 blocks > 3.6: down to 1.2 blocks, so the chain leaf, its root, then `other` go.
  assert.deepEqual(
    events.at(-1)?.removed.map((h) => h.toString('hex')),
    [blocks[1]!.hash, blocks[0]!.hash, other!.hash],
  );
  assert.deepEqual(
    events.at(-1)?.stored.map((s) => s.hash.toString('hex')),
    [next!.hash],
  );
});

test('events - operations that change no block emit nothing', () => {
  const { store, clock, events } = makeStore({
    bytesBudget: 1 * BLOCK_BYTES,
    highWatermark: 1,
    lowWatermark: 1,
  });
  const [a] = chain(1);
  store.put(a!);
  store.put({ ...a!, payload: randomPayload() }); // dedup
  store.get(NS, a!.hash, 100);
  store.get(NS, chain(1)[0]!.hash);
  store.pin(NS, [a!.hash], 'h', 100);
  store.unpin(NS, [a!.hash], 'h');
  store.matchPrefix(NS, [a!.hash]);
  assert.deepEqual(store.delete(NS, a!.hash), { deleted: false, reason: 'leased' });
  assert.throws(() => store.put(chain(1)[0]!), StoreFullError);
  clock.advance(100);
  assert.equal(store.tick().released, 1);
  assert.equal(events.length, 1);
  assert.equal(store.lastEventSeq, 1n);
});

test('events - an empty clear still emits cleared, and numbering continues', () => {
  const { store, events } = makeStore();
  store.clear();
  store.put(chain(1)[0]!);
  assert.deepEqual(
    events.map((e) => [e.seq, e.cleared, e.stored.length]),
    [
      [1n, true, 0],
      [2n, false, 1],
    ],
  );
});

test('events - round-trip through the generated KvEvent codec unchanged', () => {
  const { store, events } = makeStore({ bytesBudget: 2 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  for (const block of chain(3)) {
    try {
      store.put(block);
    } catch (err) {
      assert.ok(err instanceof StoreFullError); // the third block's parents are all held
    }
  }
  store.clear();
  for (const event of events) {
    assert.deepEqual(KvEvent.decode(KvEvent.encode(event).finish()), event);
  }
});
