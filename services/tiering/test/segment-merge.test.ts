// Read merging in the SSD tier: the elevator plan (pure), then the segment log against real files.
// Reads of neighbouring records pending together come back right from one larger read, bounded by
// readMergeBytesMax; a corrupt record inside a merged read fails only that block; reads racing
// compaction still return the right bytes; buffered reads (no O_DIRECT) merge the same way; a
// lone read is one read of its own record.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { CorruptDataError } from '@kvmesh/errors';
import { nativeMemory } from '@kvmesh/kernels';
import { blockHashFromBytes, type BlockHash } from '@kvmesh/protocol';

import { SegmentLog, type SegmentLogOptions } from '../src/adapters/segment-log.ts';
import { SegmentLogClosedError } from '../src/core/errors.ts';
import {
  SEGMENT_RECORD_HEADER_BYTES,
  planMergedReads,
  segmentFileName,
  segmentRecordBytes,
  type PendingRecordRead,
} from '../src/core/segment-records.ts';
import { tempDirs } from './support.ts';

const tempDir = tempDirs('kvmesh-segmerge-');

function randomHash(): BlockHash {
  return blockHashFromBytes(randomBytes(16));
}

/** `count` blocks of exactly `bytes` random bytes each (never zeros), in append order. */
function sameSizeBlocks(count: number, bytes: number): [BlockHash, Uint8Array][] {
  return Array.from({ length: count }, () => [randomHash(), randomBytes(bytes)] as [BlockHash, Uint8Array]);
}

function options(dir: string, extra: Partial<SegmentLogOptions> = {}): SegmentLogOptions {
  // NOTE: read-ahead off: these tests count the kernel reads the elevator makes (segment-read-ahead
  // tests the two together).
  return { dir, capacityBytes: 256 * 1024 * 1024, readAheadBytes: 0, ...extra };
}

/** Appends in order, each batch together: records of one batch lie back to back in the segment. */
async function appendInOrder(log: SegmentLog, blocks: [BlockHash, Uint8Array][]): Promise<void> {
  await Promise.all(blocks.map(([hash, payload]) => log.append(hash, payload)));
}

/** Reads every block at once (one tick, so they are pending together) and checks the bytes. */
async function readAllTogether(log: SegmentLog, blocks: [BlockHash, Uint8Array][]): Promise<void> {
  const got = await Promise.all(blocks.map(([hash]) => log.read(hash)));
  for (const [i, [hash, payload]] of blocks.entries()) {
    const bytes = got[i];
    assert.ok(bytes !== null && bytes !== undefined, `block ${i} (${hash}) is missing`);
    assert.ok(Buffer.from(payload).equals(Buffer.from(bytes)), `block ${i} (${hash}) came back different`);
  }
}

function pending(segmentId: number, offset: number, recordBytes: number, arrival: number): PendingRecordRead {
  return { segmentId, offset, recordBytes, arrival };
}

describe('tiering - segment read merging', () => {
  it('read plan - back-to-back records merge up to the bound, gaps and segments split, oldest first', () => {
    const reads = [
      pending(1, 8192, 4096, 0),
      pending(1, 0, 8192, 1),
      pending(1, 12_288, 4096, 2),
      pending(1, 16_384, 4096, 3), // would make the span 20 KiB: a new run
      pending(1, 28_672, 4096, 4), // a gap before it
      pending(0, 4096, 4096, 5), // another segment
    ];
    const runs = planMergedReads(reads, 16_384);
    assert.deepEqual(
      runs.map((r) => [r.segmentId, r.offset, r.bytes, r.members.map((m) => m.arrival)]),
      [
        [1, 0, 16_384, [1, 0, 2]],
        [1, 16_384, 4096, [3]],
        [1, 28_672, 4096, [4]],
        [0, 4096, 4096, [5]],
      ],
    );
  });

  it('read plan - two reads of one record share a read; a record above the bound is read alone', () => {
    const runs = planMergedReads(
      [pending(0, 0, 4096, 0), pending(0, 0, 4096, 1), pending(0, 4096, 65_536, 2)],
      16_384,
    );
    assert.deepEqual(
      runs.map((r) => [r.offset, r.bytes, r.members.map((m) => m.arrival)]),
      [
        [0, 4096, [0, 1]],
        [4096, 65_536, [2]],
      ],
    );
  });

  it('read plan - free slots split runs so reads that can all be in flight stay separate', () => {
    const reads = Array.from({ length: 8 }, (_, i) => pending(0, i * 4096, 4096, i));
    assert.equal(planMergedReads(reads, 1 << 20, 1).length, 1, 'one slot: one read of the span');
    const two = planMergedReads(reads, 1 << 20, 2);
    assert.deepEqual(
      two.map((r) => r.members.map((m) => m.arrival)),
      [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
      ],
    );
    assert.equal(planMergedReads(reads, 1 << 20, 16).length, 8, 'more slots than reads: none merge');
    const shared = planMergedReads([pending(0, 0, 4096, 0), pending(0, 0, 4096, 1)], 1 << 20, 4);
    assert.equal(shared.length, 1, 'two reads of one record are never split apart');
  });

  it('segment log - concurrent reads of neighbouring records come back right from merged reads', async () => {
    const log = await SegmentLog.open(options(tempDir(), { readsInFlightMax: 1 }));
    const blocks = sameSizeBlocks(40, randomInt(5000, 30_000));
    await appendInOrder(log, blocks);
    const before = log.stats();
    await readAllTogether(log, blocks);
    const after = log.stats();
    assert.equal(after.reads - before.reads, blocks.length);
    assert.ok(after.mergedReads > before.mergedReads, 'some reads were merged');
    assert.ok(
      after.readSyscalls - before.readSyscalls < blocks.length,
      `${after.readSyscalls - before.readSyscalls} kernel reads for ${blocks.length} records`,
    );
    await log.close();
  });

  it('segment log - a merged read never spans more than readMergeBytesMax', async () => {
    const payloadBytes = 8000;
    const recordBytes = segmentRecordBytes(payloadBytes);
    const perRead = 3;
    const log = await SegmentLog.open(
      options(tempDir(), { readsInFlightMax: 1, readMergeBytesMax: perRead * recordBytes + 100 }),
    );
    const blocks = sameSizeBlocks(12, payloadBytes);
    await appendInOrder(log, blocks);
    const before = log.stats();
    await readAllTogether(log, blocks);
    const after = log.stats();
    assert.equal(after.readSyscalls - before.readSyscalls, blocks.length / perRead);
    assert.equal(after.mergedReads - before.mergedReads, blocks.length / perRead);
    await log.close();
  });

  it('segment log - a lone read is one read of its record, not merged', async () => {
    const log = await SegmentLog.open(options(tempDir()));
    const blocks = sameSizeBlocks(4, 10_000);
    await appendInOrder(log, blocks);
    const before = log.stats();
    const [hash, payload] = blocks[2] as [BlockHash, Uint8Array];
    const got = await log.read(hash);
    assert.ok(got !== null && Buffer.from(payload).equals(Buffer.from(got)));
    const after = log.stats();
    assert.equal(after.readSyscalls - before.readSyscalls, 1);
    assert.equal(after.mergedReads, before.mergedReads);
    await log.close();
  });

  it('segment log - a corrupt record inside a merged read fails only that block', async () => {
    const dir = tempDir();
    const payloadBytes = 9000;
    const recordBytes = segmentRecordBytes(payloadBytes);
    const log = await SegmentLog.open(options(dir, { readsInFlightMax: 1 }));
    const blocks = sameSizeBlocks(9, payloadBytes);
    await appendInOrder(log, blocks);
    // Flip one payload byte of record 4 (of the first segment) behind the log's back.
    const victimIndex = 4;
    const at = victimIndex * recordBytes + SEGMENT_RECORD_HEADER_BYTES + randomInt(0, payloadBytes);
    const fd = openSync(join(dir, segmentFileName(0)), 'r+');
    try {
      const byte = Buffer.alloc(1);
      readSync(fd, byte, 0, 1, at);
      byte[0] = (byte[0] as number) ^ 0x10;
      writeSync(fd, byte, 0, 1, at);
    } finally {
      closeSync(fd);
    }
    const before = log.stats();
    const results = await Promise.allSettled(blocks.map(([hash]) => log.read(hash)));
    for (const [i, result] of results.entries()) {
      const [hash, payload] = blocks[i] as [BlockHash, Uint8Array];
      if (i === victimIndex) {
        assert.equal(result.status, 'rejected', 'the damaged block fails');
        assert.ok(result.status === 'rejected' && result.reason instanceof CorruptDataError);
        continue;
      }
      assert.equal(result.status, 'fulfilled', `block ${i} reads despite its damaged neighbour`);
      const bytes = result.status === 'fulfilled' ? result.value : null;
      assert.ok(bytes !== null && Buffer.from(payload).equals(Buffer.from(bytes)), `block ${i} bytes`);
      assert.equal(log.has(hash), true);
    }
    const after = log.stats();
    assert.equal(after.readSyscalls - before.readSyscalls, 1, 'all nine came from one read');
    assert.equal(after.checksumFailures - before.checksumFailures, 1);
    assert.equal(log.has((blocks[victimIndex] as [BlockHash, Uint8Array])[0]), false, 'dropped');
    await log.close();
  });

  it('segment log - merged reads racing compaction return the right bytes', async () => {
    const log = await SegmentLog.open(
      options(tempDir(), { segmentBytesMax: 256 * 1024, readsInFlightMax: 2, readMergeBytesMax: 64 * 1024 }),
    );
    const blocks = sameSizeBlocks(120, randomInt(4000, 20_000));
    await appendInOrder(log, blocks);
    const survivors = blocks.filter((_, i) => i % 3 === 0);
    for (const [i, [hash]] of blocks.entries()) if (i % 3 !== 0) await log.remove(hash);
    const mergedBefore = log.stats().mergedReads;
    let compacted = false;
    const compaction = log.compact().finally(() => {
      compacted = true;
    });
    let rounds = 0;
    while (!compacted || rounds === 0) {
      await readAllTogether(log, survivors);
      rounds++;
    }
    assert.ok((await compaction) > 0, 'compaction reclaimed space');
    assert.ok(log.stats().compactions > 0);
    assert.ok(log.stats().mergedReads > mergedBefore, 'reads were merged meanwhile');
    await readAllTogether(log, survivors);
    await log.close();
  });

  it('segment log - with an aligned allocator each payload is its own view of the merged read', async (t) => {
    const memory = nativeMemory();
    if (memory === null) {
      t.skip('no native module: the allocator path needs allocAligned (npm run build:native)');
      return;
    }
    const log = await SegmentLog.open(
      options(tempDir(), {
        readsInFlightMax: 1,
        allocate: (bytes) => new Uint8Array(memory.allocAligned(bytes, 4096)),
      }),
    );
    const blocks = sameSizeBlocks(16, randomInt(3000, 12_000));
    await appendInOrder(log, blocks);
    const got = await Promise.all(blocks.map(([hash]) => log.read(hash)));
    assert.ok(log.stats().mergedReads > 0);
    // Writing into one payload must not show in any other.
    (got[0] as Uint8Array).fill(0);
    for (const [i, [, payload]] of blocks.entries()) {
      if (i === 0) continue;
      assert.ok(Buffer.from(payload).equals(Buffer.from(got[i] as Uint8Array)), `block ${i} bytes`);
    }
    await log.close();
  });

  it('segment log - buffered reads (no O_DIRECT) merge and read the same bytes', async () => {
    const log = await SegmentLog.open(options(tempDir(), { directIo: false, readsInFlightMax: 1 }));
    assert.equal(log.stats().directIo, false);
    const blocks = sameSizeBlocks(20, randomInt(3000, 12_000));
    await appendInOrder(log, blocks);
    const before = log.stats();
    await readAllTogether(log, blocks);
    assert.ok(log.stats().mergedReads > before.mergedReads);
    await log.close();
  });

  it('segment log - reads still queued when the log closes fail with SegmentLogClosedError', async () => {
    const log = await SegmentLog.open(options(tempDir(), { readsInFlightMax: 1, readMergeBytesMax: 4096 }));
    const blocks = sameSizeBlocks(6, 20_000);
    await appendInOrder(log, blocks);
    const reads = Promise.allSettled(blocks.map(([hash]) => log.read(hash)));
    await log.close();
    for (const result of await reads) {
      if (result.status === 'rejected') assert.ok(result.reason instanceof SegmentLogClosedError);
      else assert.ok(result.value !== null);
    }
  });
});
