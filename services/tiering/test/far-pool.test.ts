// Unit tests of the far pool's bookkeeping: first-fit allocation, coalescing frees (fragmentation
// costs evictions, never capacity), LRU order, leases that keep extents in place after removal, and
// the capacity and index bounds. Exact expected states on a manual clock.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { parseBlockHash, type BlockHash } from '@kvmesh/protocol';

import { FarPool } from '../src/core/index.ts';

const h = (i: number): BlockHash => parseBlockHash(i.toString(16).padStart(32, '0'));

function pool(
  bytesCapacity = 1024,
  blocksMax = 100,
  alignBytes = 64,
): { pool: FarPool; clock: { ms: number } } {
  const clock = { ms: 1000 };
  return { pool: new FarPool({ bytesCapacity, blocksMax, alignBytes }, () => clock.ms), clock };
}

function coldestOrder(p: FarPool): number[] {
  return [...p.hashes()].map((hash) => parseInt(hash, 16));
}

describe('far pool - allocation', () => {
  it('far pool - allocates first-fit at aligned offsets and rounds sizes up to the alignment', () => {
    const { pool: p } = pool();
    assert.equal(p.allocate(h(1), 100)?.offset, 0);
    const second = p.allocate(h(2), 64);
    assert.equal(second?.offset, 128);
    assert.equal(second?.extentBytes, 64);
    assert.equal(p.allocate(h(3), 1)?.offset, 192);
    assert.deepEqual(
      { used: p.stats().bytesUsed, free: p.stats().bytesFree, blocks: p.stats().blocks },
      { used: 256, free: 768, blocks: 3 },
    );
  });

  it('far pool - a record larger than the free extent is refused with null, larger than the pool with a limit', () => {
    const { pool: p } = pool(1024);
    assert.ok(p.allocate(h(1), 512) !== null);
    assert.equal(p.allocate(h(2), 513), null);
    assert.throws(() => p.allocate(h(3), 1025), LimitExceededError);
    assert.throws(() => p.allocate(h(1), 10), InvalidArgumentError);
    assert.throws(() => p.allocate(h(4), 0), InvalidArgumentError);
  });

  it('far pool - frees coalesce with both neighbours, so the whole pool is one extent again', () => {
    const { pool: p } = pool(1024);
    for (let i = 0; i < 8; i++) assert.equal(p.allocate(h(i), 128)?.offset, i * 128);
    assert.equal(p.stats().bytesFree, 0);
    // Free every other extent: 4 holes of 128 bytes; a 256-byte record does not fit.
    for (const i of [1, 3, 5, 7]) p.remove(h(i));
    assert.deepEqual(
      { free: p.stats().bytesFree, extents: p.stats().freeExtents },
      { free: 512, extents: 4 },
    );
    assert.equal(p.allocate(h(100), 256), null);
    // Freeing 2 joins holes 1, 2 and 3 into one 384-byte extent at 128.
    p.remove(h(2));
    assert.equal(p.stats().freeExtentBytesMax, 384);
    assert.equal(p.allocate(h(100), 256)?.offset, 128);
    for (const i of [0, 4, 6, 100]) p.remove(h(i));
    assert.deepEqual(
      { free: p.stats().bytesFree, extents: p.stats().freeExtents, max: p.stats().freeExtentBytesMax },
      { free: 1024, extents: 1, max: 1024 },
    );
  });

  it('far pool - random churn keeps extents tiling the pool (no leak, no overlap)', () => {
    const { pool: p } = pool(64 * 1024, 1000, 64);
    const live = new Map<number, { offset: number; extentBytes: number }>();
    let next = 0;
    for (let step = 0; step < 5000; step++) {
      if (live.size > 0 && Math.random() < 0.45) {
        const keys = [...live.keys()];
        const victim = keys[Math.floor(Math.random() * keys.length)] as number;
        p.remove(h(victim));
        live.delete(victim);
      } else {
        const entry = p.allocate(h(next), 1 + Math.floor(Math.random() * 4000));
        if (entry !== null) live.set(next, { offset: entry.offset, extentBytes: entry.extentBytes });
        next++;
      }
      const sorted = [...live.values()].sort((a, b) => a.offset - b.offset);
      for (let i = 1; i < sorted.length; i++) {
        const prev = sorted[i - 1] as { offset: number; extentBytes: number };
        assert.ok(
          prev.offset + prev.extentBytes <= (sorted[i] as { offset: number }).offset,
          'extents overlap',
        );
      }
      const used = sorted.reduce((sum, e) => sum + e.extentBytes, 0);
      assert.equal(p.stats().bytesUsed, used);
      assert.equal(p.stats().bytesFree + used, 64 * 1024);
    }
  });
});

describe('far pool - LRU and leases', () => {
  it('far pool - coldest first; touch makes a block the most recently used', () => {
    const { pool: p } = pool();
    for (const i of [5, 4, 6, 7]) p.allocate(h(i), 64);
    p.touch(h(5));
    assert.deepEqual(coldestOrder(p), [4, 6, 7, 5]);
    assert.equal(p.coldestEvictable()?.hash, h(4));
    p.touch(h(4));
    assert.deepEqual(coldestOrder(p), [6, 7, 5, 4]);
  });

  it('far pool - pinned and leased blocks are skipped for eviction until the lease ends', () => {
    const { pool: p, clock } = pool();
    for (const i of [1, 2, 3]) p.allocate(h(i), 64);
    p.pin(h(1), true);
    p.lease(h(2), 500);
    assert.equal(p.coldestEvictable()?.hash, h(3));
    p.pin(h(3), true);
    assert.equal(p.coldestEvictable(), undefined);
    clock.ms += 500;
    assert.equal(p.coldestEvictable()?.hash, h(2));
  });

  it('far pool - a removed leased extent is not reused before the lease ends', () => {
    const { pool: p, clock } = pool(256);
    p.allocate(h(1), 128);
    p.allocate(h(2), 128);
    p.lease(h(1), 100);
    p.remove(h(1));
    assert.equal(p.has(h(1)), false);
    assert.deepEqual(
      { used: p.stats().bytesUsed, retired: p.stats().retiredExtents },
      { used: 256, retired: 1 },
    );
    assert.equal(p.allocate(h(3), 128), null, 'the leased extent stays out of use');
    clock.ms += 100;
    assert.equal(p.allocate(h(3), 128)?.offset, 0);
    assert.equal(p.stats().retiredExtents, 0);
  });

  it('far pool - the index bound (blocksMax) asks for an eviction even with bytes free', () => {
    const { pool: p } = pool(1024, 2);
    p.allocate(h(1), 64);
    p.allocate(h(2), 64);
    assert.equal(p.full, true);
    assert.equal(p.allocate(h(3), 64), null);
    p.remove(h(1));
    assert.ok(p.allocate(h(3), 64) !== null);
  });

  it('far pool - bad configuration is refused', () => {
    assert.throws(
      () => new FarPool({ bytesCapacity: 0, blocksMax: 1, alignBytes: 64 }, () => 0),
      InvalidArgumentError,
    );
    assert.throws(
      () => new FarPool({ bytesCapacity: 64, blocksMax: 1, alignBytes: 48 }, () => 0),
      InvalidArgumentError,
    );
    assert.throws(
      () => new FarPool({ bytesCapacity: 64, blocksMax: 0, alignBytes: 64 }, () => 0),
      InvalidArgumentError,
    );
  });
});
