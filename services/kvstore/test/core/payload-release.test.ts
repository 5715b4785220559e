// Payload memory and the block store: a block dropped before anything outside the put path read its
// payload hands that payload to BlockStoreDeps.releasePayload (the data channel pool reuses it at
// once); a payload that was handed out (read, iterated, claimed for demotion, shared with peers) is
// never released, only collected. A released record refuses to hand its payload out, and a read
// never serves bytes that changed under a stored block, also when the payload is a Buffer view.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { parseBlockHeader } from '@kvmesh/block';

import { BlockStore, type BlockStoreConfig, type PutBlockInput } from '../../src/core/index.ts';
import { BLOCK_BYTES, FakeClock, NODE_ID, NS, chain, kernels, makeStore } from './helpers.ts';

/** A store whose releasePayload records what it is given and answers `accept`. */
function releasingStore(config: Partial<BlockStoreConfig>, accept = true) {
  const released: Uint8Array[] = [];
  const clock = new FakeClock();
  const store = new BlockStore(
    { nodeId: NODE_ID, ...config },
    {
      now: clock.now,
      kernels,
      releasePayload: (payload) => {
        released.push(payload);
        return accept;
      },
    },
  );
  return { store, clock, released };
}

/** `count` unrelated blocks (each its own chain, so each is a leaf the store may evict). */
function loose(count: number): PutBlockInput[] {
  return Array.from({ length: count }, () => chain(1)[0] as PutBlockInput);
}

const THREE_BLOCKS = { bytesBudget: 3 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 };

test('payload release - blocks evicted unread hand their payloads back; a block that was read does not', () => {
  const { store, clock, released } = releasingStore(THREE_BLOCKS);
  const [a, b, c, d, e, f] = loose(6) as [PutBlockInput, ...PutBlockInput[]];
  const putA = store.put(a);
  for (const block of [b, c]) {
    clock.advance(1);
    store.put(block as PutBlockInput);
  }
  clock.advance(1);
  const readB = store.get(NS, (b as PutBlockInput).hash)?.payload;
  assert.ok(readB !== undefined);
  for (const block of [d, e, f]) {
    clock.advance(1);
    store.put(block as PutBlockInput);
  }
  // LRU order a, c, b: a and c were never read, b was.
  assert.equal(store.stats().evictions, 3);
  assert.equal(released.length, 2);
  assert.equal(released[0], a.payload);
  assert.equal(released[1], (c as PutBlockInput).payload);
  assert.throws(() => putA.record.payload, { code: 'PAYLOAD_RELEASED', kind: 'internal' });
  assert.equal(putA.record.payloadBytes, a.payload.byteLength, 'the metadata stays readable');
});

test('payload release - payloads shared with peers, iterated or claimed for demotion are never released', () => {
  const shared = releasingStore(THREE_BLOCKS);
  for (const block of loose(4)) shared.store.put(block, { payloadShared: true });
  assert.equal(shared.store.stats().evictions, 1);
  assert.equal(shared.released.length, 0);

  const iterated = releasingStore(THREE_BLOCKS);
  const blocks = loose(4);
  for (const block of blocks.slice(0, 3)) iterated.store.put(block);
  assert.equal([...iterated.store.entries()].length, 3);
  iterated.store.put(blocks[3] as PutBlockInput);
  assert.equal(iterated.store.stats().evictions, 1);
  assert.equal(iterated.released.length, 0);

  const tiered = releasingStore({ ...THREE_BLOCKS, tiering: true, demotingBytesMax: 4 * BLOCK_BYTES });
  const [x, y, ...rest] = loose(5) as [PutBlockInput, PutBlockInput, ...PutBlockInput[]];
  for (const block of [x, y, ...rest]) {
    tiered.clock.advance(1);
    tiered.store.put(block);
  }
  // x and y left DRAM for the demoting buffer; the adapter claims x and the tier takes it.
  const [claimed] = tiered.store.claimDemotions(1);
  assert.equal(claimed?.hash, x.hash);
  assert.equal(tiered.store.demotionAcknowledged(NS, x.hash, 'far'), 'demoted');
  assert.equal(tiered.released.length, 0, 'a claimed payload went to the tier: the adapter may hold it');
  // y was never claimed: dropping everything hands its payload back, with the unread DRAM blocks.
  tiered.store.clear();
  assert.ok(tiered.released.includes(y.payload));
  assert.ok(!tiered.released.includes(x.payload));
  assert.equal(tiered.released.length, 1 + rest.length);
});

test('payload release - delete releases an unread payload; a refused release leaves the record readable', () => {
  const accepting = releasingStore({});
  const [block] = loose(1) as [PutBlockInput];
  accepting.store.put(block);
  const deleted = accepting.store.delete(NS, block.hash);
  assert.ok(deleted.deleted);
  assert.deepEqual(accepting.released, [block.payload]);

  const refusing = releasingStore(THREE_BLOCKS, false);
  const blocks = loose(4);
  const first = refusing.store.put(blocks[0] as PutBlockInput);
  for (const next of blocks.slice(1)) refusing.store.put(next);
  assert.equal(refusing.released.length, 1, 'offered once');
  assert.equal(first.record.payload, (blocks[0] as PutBlockInput).payload);
});

test('payload check - bytes changed under a stored payload are not served, also when it is a Buffer view', () => {
  // NOTE: the store keeps the payload's header checksum at put. A copy taken with slice() would be a
  // view of the same memory for a Buffer (a pool slot is one) and could never see a change.
  const { store } = makeStore();
  const [block] = chain(1) as [PutBlockInput];
  const memory = Buffer.from(new ArrayBuffer(block.payload.byteLength + 64), 32, block.payload.byteLength);
  memory.set(block.payload);
  store.put({ ...block, payload: memory });
  assert.ok(store.get(NS, block.hash) !== undefined);
  const { headerBytes } = parseBlockHeader(kernels, block.payload);
  memory[headerBytes - 1] = (memory[headerBytes - 1] as number) ^ 0xff;
  assert.equal(store.get(NS, block.hash), undefined);
  assert.equal(store.stats().payloadMismatches, 1);
});
