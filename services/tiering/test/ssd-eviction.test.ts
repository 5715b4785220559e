// The SSD tier as a cache, end to end below the transport: a real SegmentLog with a tiny capacity,
// the capacity-driven compaction wrapper and the tier policy. Demoting more blocks than fit evicts
// the coldest (a block read keeps its place), evicted blocks read as missing and never as other
// bytes, and the space they held comes back through compaction, so demotes keep succeeding.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { createLogger } from '@kvmesh/runtime';

import { SegmentLog } from '../src/adapters/segment-log.ts';
import { ssdTierOf, startSsdCompaction } from '../src/adapters/ssd-compaction.ts';
import { segmentRecordBytes } from '../src/core/segment-records.ts';
import { TierPolicy, encodeRecord } from '../src/core/index.ts';
import { kernels, makeBlock, tempDirs } from './support.ts';

const newDir = tempDirs('kvmesh-ssd-evict-');
const BLOCKS_HELD = 4;

describe('ssd eviction', () => {
  it('ssd eviction - a full SSD tier evicts cold blocks and reclaims their space; hot blocks survive', async () => {
    const blocks = Array.from({ length: 10 }, (_, i) => makeBlock(i));
    const onDisk = segmentRecordBytes(encodeRecord(kernels, blocks[0]!).length);
    const log = await SegmentLog.open({ dir: newDir(), capacityBytes: BLOCKS_HELD * onDisk, kernels });
    const compaction = startSsdCompaction(
      log,
      { intervalMs: 0, garbageRatio: 0.5 },
      createLogger({ service: 'test', sink: () => undefined }),
    );
    const ssd = ssdTierOf(log, compaction);
    const policy = new TierPolicy({ kernels, far: null, ssd, blockBytesMax: 1 << 20, leaseMsMax: 1000 });
    try {
      const hot = blocks[0]!;
      for (const block of blocks) {
        assert.equal(await policy.demote(block, 'ssd'), 'stored', `demote of block ${block.hash}`);
        // A hot block: read after every demote, so it is never the coldest.
        const hit = await policy.read(hot.hash);
        assert.deepEqual(hit?.block, hot);
        hit?.releasePayload();
      }
      const evicted = blocks.slice(1, blocks.length - (BLOCKS_HELD - 1));
      const kept = [hot, ...blocks.slice(blocks.length - (BLOCKS_HELD - 1))];
      assert.equal(policy.ssdEvictions, evicted.length);
      assert.equal(policy.stats().find((t) => t.tier === 'ssd')?.evictions, evicted.length);
      assert.deepEqual(new Set(log.hashes()), new Set(kept.map((b) => b.hash)));
      for (const block of evicted) {
        assert.equal(await policy.read(block.hash), undefined, `evicted block ${block.hash} is missing`);
        assert.equal(await policy.promote(block.hash), undefined);
      }
      for (const block of kept) {
        const hit = await policy.read(block.hash);
        assert.deepEqual(hit?.block, block, `block ${block.hash} reads back its own bytes`);
        hit?.releasePayload();
      }
      const stats = log.stats();
      assert.ok(stats.bytesUsed <= stats.bytesCapacity, 'compaction gave the evicted bytes back');
      assert.ok(compaction.stats().bytesReclaimed > 0);
    } finally {
      await compaction.stop();
      await log.close();
    }
  });
});
