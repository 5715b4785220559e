import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import type { BlockDims } from '@kvmesh/block';

import { PayloadPool } from '../src/adapters/payload-pool.ts';
import { ownedPayload } from '../src/adapters/wire.ts';
import { kvStoreConfig, startKvStoreNode } from '../src/index.ts';
import { chain, dataClient, dataGet, dataPut } from './support.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Collects until the pool reports `free` slots (finalizers run as separate tasks after a GC). */
async function collectUntil(pool: PayloadPool, free: number): Promise<void> {
  for (let i = 0; i < 50 && pool.stats().slotsFree < free; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('kvstore - payload pool', () => {
  it('payload pool - live views never share memory; a full pool falls back; slots return only after GC', async () => {
    const slot = 64 * 1024;
    const pool = new PayloadPool({ bytesMax: 2 * slot, slabBytes: 2 * slot });
    let a: Uint8Array | undefined = pool.allocate(slot);
    const b = pool.allocate(slot);
    assert.ok(a !== undefined && b !== undefined);
    a.fill(0xaa);
    b.fill(0xbb);
    assert.ok(pool.owns(a) && pool.owns(b));
    assert.equal(pool.allocate(slot), undefined, 'no free slot and no room for a slab: fresh memory');
    assert.equal(pool.stats().fallbacks, 1);
    await collectUntil(pool, 1);
    assert.equal(pool.stats().slotsFree, 0, 'views still referenced keep their slots');
    a = undefined;
    await collectUntil(pool, 1);
    assert.equal(pool.stats().slotsFree, 1);
    const c = pool.allocate(slot) as Uint8Array;
    c.fill(0xcc);
    assert.ok(
      b.every((v) => v === 0xbb),
      'the live view was not overwritten',
    );
    assert.equal(pool.stats().slabs, 1);
  });

  it('payload pool - release hands a slot back at once and only once; memory it did not issue is refused', () => {
    const slot = 64 * 1024;
    const pool = new PayloadPool({ bytesMax: 2 * slot, slabBytes: 2 * slot });
    const a = pool.allocate(slot) as Uint8Array;
    const b = pool.allocate(slot) as Uint8Array;
    b.fill(0xbb);
    assert.equal(pool.allocate(slot), undefined);
    assert.equal(pool.release(a), true);
    assert.equal(pool.owns(a), false);
    assert.equal(pool.release(a), false, 'a second release changes nothing');
    assert.equal(pool.release(new Uint8Array(slot)), false);
    assert.equal(pool.release(b.subarray(0, 10)), false, 'only the issued view itself');
    const c = pool.allocate(slot) as Uint8Array;
    assert.equal(c.buffer, a.buffer);
    assert.equal(c.byteOffset, a.byteOffset, 'the released slot, without a collection');
    c.fill(0xcc);
    assert.ok(
      b.every((v) => v === 0xbb),
      'the live view was not overwritten',
    );
    assert.deepEqual(
      { ...pool.stats(), bytes: 0 },
      { slabs: 1, bytes: 0, slotsFree: 0, pooled: 3, released: 1, fallbacks: 1 },
    );
  });

  it('payload pool - slots of blocks evicted unread are reused without a collection; held blocks read back intact', async () => {
    // Unrelated 128 KiB blocks through a store that holds ~6 of them and a pool of 8 slots: without
    // releases the pool would run dry after 8 puts (no collection runs in between).
    const dims: BlockDims = { layers: 2, kvHeads: 4, blockTokens: 32, headDim: 64, groupSize: 32 };
    const blocks = Array.from({ length: 30 }, () => chain(1, { dims })[0]!);
    const payloadBytes = blocks[0]!.payload.byteLength;
    const node = await startKvStoreNode(
      kvStoreConfig({
        nodeId: 'kv-pool-release',
        bytesBudget: 6 * (payloadBytes + 4096),
        payloadPoolBytes: 8 * payloadBytes,
        logLevel: 'error',
      }),
    );
    const data = await dataClient(node.dataAddress);
    try {
      for (const block of blocks) assert.equal((await dataPut(data, block)).stored, 1);
      const stats = node.payloadPoolStats();
      assert.equal(stats?.fallbacks, 0);
      assert.ok((stats?.released ?? 0) >= blocks.length - 8, `released ${stats?.released}`);
      assert.ok(node.store.stats().evictions >= blocks.length - 6);
      let held = 0;
      for (const [i, block] of blocks.entries()) {
        const { response, body } = await dataGet(data, block.hash);
        if (response.result?.$case !== 'block') continue;
        held++;
        assert.ok(Buffer.from(body).equals(block.payload), `block ${i} came back with other bytes`);
      }
      assert.ok(held >= 4, `${held} blocks held`);
    } finally {
      await data.close();
      await node.close();
    }
  });

  it('payload pool - a stored payload keeps its slot: later puts never overwrite it', async () => {
    // 128 KiB payloads (pooled), a pool of 4 slots, 12 puts with collections in between: a slot
    // must stay taken for as long as the store holds the block that landed in it.
    const dims: BlockDims = { layers: 2, kvHeads: 4, blockTokens: 32, headDim: 64, groupSize: 32 };
    const blocks = chain(12, { dims });
    const payloadBytes = blocks[0]!.payload.byteLength;
    const node = await startKvStoreNode(
      kvStoreConfig({
        nodeId: 'kv-pool',
        bytesBudget: 64 * 1024 * 1024,
        payloadPoolBytes: 4 * payloadBytes,
        logLevel: 'error',
      }),
    );
    const data = await dataClient(node.dataAddress);
    try {
      for (const block of blocks) {
        assert.equal((await dataPut(data, block)).stored, 1);
        for (let i = 0; i < 3; i++) {
          gc();
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      for (const [i, block] of blocks.entries()) {
        const { response, body } = await dataGet(data, block.hash);
        assert.equal(response.result?.$case, 'block', `block ${i}`);
        assert.ok(Buffer.from(body).equals(block.payload), `block ${i} came back with other bytes`);
      }
    } finally {
      await data.close();
      await node.close();
    }
  });

  it('payload pool - ownedPayload copies a view of a larger allocation, Buffer or not', () => {
    const backing = Buffer.alloc(4096, 7);
    for (const view of [backing.subarray(100, 200), new Uint8Array(backing.buffer, 100, 100)]) {
      const owned = ownedPayload(view);
      assert.notEqual(owned.buffer, view.buffer, 'a copy, not a view of the shared memory');
      assert.deepEqual([...owned], [...view]);
    }
    const whole = new Uint8Array(64);
    assert.equal(ownedPayload(whole), whole, 'a payload that owns its memory is kept as is');
  });

  it('payload pool - small payloads and too many sizes are not pooled', () => {
    const pool = new PayloadPool({ bytesMax: 1 << 24, sizeClassesMax: 1 });
    assert.equal(pool.allocate(1000), undefined);
    assert.ok(pool.allocate(100_000) !== undefined);
    assert.equal(pool.allocate(100_001), undefined);
    const view = pool.allocate(100_000) as Uint8Array;
    assert.equal(view.byteLength, 100_000);
    assert.equal(pool.owns(new Uint8Array(100_000)), false);
  });
});
