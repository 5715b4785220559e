// Lent reads in the SSD tier (SegmentLog.readLent): the payload is a view of a pooled read span that
// goes back to the pool once every payload lent from it is released. What must hold: released spans
// are reused (steady reads allocate nothing), a span still lent is never handed to another read
// (also after a double release), read() callers sharing a merged span keep their own copy, and a
// corrupt record is never lent.
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { CorruptDataError } from '@kvmesh/errors';
import { nativeMemory } from '@kvmesh/kernels';
import { type BlockHash } from '@kvmesh/protocol';

import { SegmentLog, type LentPayload, type SegmentLogOptions } from '../src/adapters/segment-log.ts';
import {
  SEGMENT_RECORD_HEADER_BYTES,
  segmentFileName,
  segmentRecordBytes,
} from '../src/core/segment-records.ts';
import { tempDirs, randomRecords } from './support.ts';

const tempDir = tempDirs('kvmesh-seglend-');

/** An aligned allocator (the service's) that counts the buffers it hands out. */
function countingAllocator(): { allocate: (bytes: number) => Uint8Array; calls: () => number } | null {
  const memory = nativeMemory();
  if (memory === null) return null;
  let calls = 0;
  return {
    allocate: (bytes) => {
      calls++;
      return new Uint8Array(memory.allocAligned(bytes, 4096));
    },
    calls: () => calls,
  };
}

async function open(extra: Partial<SegmentLogOptions> = {}): Promise<SegmentLog> {
  return SegmentLog.open({ dir: tempDir(), capacityBytes: 64 * 1024 * 1024, ...extra });
}

async function lendAll(log: SegmentLog, blocks: [BlockHash, Uint8Array][]): Promise<LentPayload[]> {
  const lent = await Promise.all(blocks.map(([hash]) => log.readLent(hash)));
  return lent.map((l, i) => {
    assert.ok(l !== null, `block ${i} is missing`);
    return l;
  });
}

function assertBytes(blocks: [BlockHash, Uint8Array][], got: readonly Uint8Array[], what: string): void {
  for (const [i, [, payload]] of blocks.entries()) {
    assert.ok(Buffer.from(payload).equals(Buffer.from(got[i] as Uint8Array)), `${what}: block ${i} bytes`);
  }
}

describe('tiering - lent SSD reads', () => {
  it('segment log - released spans are reused: steady lent reads allocate no new buffers', async (t) => {
    const counting = countingAllocator();
    if (counting === null) {
      t.skip('no native module: the allocator path needs allocAligned (npm run build:native)');
      return;
    }
    // Read-ahead off: its windows are pooled too, and would make the warm-up longer than a round.
    const log = await open({ allocate: counting.allocate, readAheadBytes: 0 });
    assert.equal(log.stats().directIo, true, 'O_DIRECT reads (the temp dir allows them)');
    const blocks = randomRecords(12, randomInt(20_000, 60_000));
    await Promise.all(blocks.map(([hash, payload]) => log.append(hash, payload)));
    const round = async (release: boolean): Promise<void> => {
      for (let i = 0; i < blocks.length; i += 4) {
        const batch = blocks.slice(i, i + 4);
        const lent = await lendAll(log, batch);
        assertBytes(
          batch,
          lent.map((l) => l.payload),
          'lent read',
        );
        if (release) for (const l of lent) l.release();
      }
    };
    await round(true); // fills the pool
    const warm = counting.calls();
    for (let r = 0; r < 5; r++) await round(true);
    assert.equal(counting.calls(), warm, 'released spans were reused');
    // Control: spans never released cannot be reused, so each read needs a new one.
    await round(false);
    assert.ok(counting.calls() >= warm + blocks.length / 4, 'unreleased spans are not reused');
    await log.close();
  });

  it('segment log - a span still lent is never handed to another read, also after a double release', async () => {
    for (const allocate of [countingAllocator()?.allocate, undefined]) {
      const log = await open({ readsInFlightMax: 1, ...(allocate === undefined ? {} : { allocate }) });
      const blocks = randomRecords(16, randomInt(3000, 12_000));
      await Promise.all(blocks.map(([hash, payload]) => log.append(hash, payload)));
      // Read together with one slot: they merge, so several payloads share a span.
      const held = await lendAll(log, blocks);
      assert.ok(log.stats().mergedReads > 0, 'some lent reads shared a span');
      // Release every other payload twice; the span of a kept neighbour must stay put.
      for (const [i, l] of held.entries()) {
        if (i % 2 === 0) {
          l.release();
          l.release();
        }
      }
      // NOTE: each round starts one record later, so a reused span holds other bytes at each offset.
      for (let r = 1; r <= 4; r++) {
        const some = blocks.slice(r);
        const again = await lendAll(log, some);
        assertBytes(
          some,
          again.map((l) => l.payload),
          `round ${r}`,
        );
        for (const l of again) l.release();
      }
      assertBytes(
        blocks.filter((_, i) => i % 2 === 1),
        held.filter((_, i) => i % 2 === 1).map((l) => l.payload),
        'payloads still held',
      );
      for (const l of held) l.release();
      await log.close();
    }
  });

  it('segment log - read() callers that share a merged span with lent reads keep their own copy', async () => {
    const log = await open({ readsInFlightMax: 1 });
    const blocks = randomRecords(10, randomInt(3000, 12_000));
    await Promise.all(blocks.map(([hash, payload]) => log.append(hash, payload)));
    const got = await Promise.all(
      blocks.map(([hash], i) => (i % 2 === 0 ? log.read(hash) : log.readLent(hash))),
    );
    assert.ok(log.stats().mergedReads > 0);
    const owned = got.filter((_, i) => i % 2 === 0) as Uint8Array[];
    for (const [i, g] of got.entries()) if (i % 2 === 1) (g as LentPayload).release();
    // The released spans go to other reads now; the owned copies must not change.
    for (let r = 1; r <= 3; r++) for (const l of await lendAll(log, blocks.slice(r))) l.release();
    assertBytes(
      blocks.filter((_, i) => i % 2 === 0),
      owned,
      'owned copies',
    );
    await log.close();
  });

  it('segment log - a corrupt record is never lent: CorruptDataError, counted, dropped', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open({ dir, capacityBytes: 64 * 1024 * 1024 });
    const payloadBytes = 9000;
    const blocks = randomRecords(3, payloadBytes);
    for (const [hash, payload] of blocks) await log.append(hash, payload);
    const victim = 1;
    const at =
      victim * segmentRecordBytes(payloadBytes) + SEGMENT_RECORD_HEADER_BYTES + randomInt(0, payloadBytes);
    const fd = openSync(join(dir, segmentFileName(0)), 'r+');
    try {
      const byte = Buffer.alloc(1);
      readSync(fd, byte, 0, 1, at);
      byte[0] = (byte[0] as number) ^ 0x04;
      writeSync(fd, byte, 0, 1, at);
    } finally {
      closeSync(fd);
    }
    const [victimHash] = blocks[victim] as [BlockHash, Uint8Array];
    await assert.rejects(log.readLent(victimHash), CorruptDataError);
    assert.equal(log.stats().checksumFailures, 1);
    assert.equal(log.has(victimHash), false);
    assert.equal(await log.readLent(victimHash), null, 'dropped, not served later either');
    const [goodHash, goodPayload] = blocks[0] as [BlockHash, Uint8Array];
    const good = await log.readLent(goodHash);
    assert.ok(good !== null && Buffer.from(goodPayload).equals(Buffer.from(good.payload)));
    good.release();
    await log.close();
  });
});
