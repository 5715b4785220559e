// Sequential read-ahead in the SSD tier (O_DIRECT reads): a reader that goes through back-to-back
// records is served from windows read ahead of it, with far fewer kernel reads than records and the
// right bytes; scattered reads start no window; a corrupt record inside a window is still caught and
// never served; windows never read bytes a batch is still writing (reads of the active segment while
// appends go on), and reads racing compaction get the right bytes.
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { CorruptDataError } from '@kvmesh/errors';
import { type BlockHash } from '@kvmesh/protocol';

import { SegmentLog, type LentPayload, type SegmentLogOptions } from '../src/adapters/segment-log.ts';
import {
  SEGMENT_RECORD_HEADER_BYTES,
  segmentFileName,
  segmentRecordBytes,
} from '../src/core/segment-records.ts';
import { tempDirs, randomRecords } from './support.ts';

const tempDir = tempDirs('kvmesh-segahead-');

async function open(dir: string, extra: Partial<SegmentLogOptions> = {}): Promise<SegmentLog> {
  const log = await SegmentLog.open({ dir, capacityBytes: 256 * 1024 * 1024, ...extra });
  assert.equal(log.stats().directIo, true, 'O_DIRECT reads (the temp dir allows them)');
  return log;
}

/** Appends one after another, so records lie back to back in append order. */
async function appendInOrder(log: SegmentLog, blocks: [BlockHash, Uint8Array][]): Promise<void> {
  for (const [hash, payload] of blocks) await log.append(hash, payload);
}

/** Reads `blocks` in order, `concurrency` at a time (each worker takes the next), checking bytes. */
async function readInOrder(
  log: SegmentLog,
  blocks: [BlockHash, Uint8Array][],
  concurrency: number,
  lent: boolean,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < blocks.length) {
        const i = next++;
        const [hash, payload] = blocks[i] as [BlockHash, Uint8Array];
        const got = lent ? await log.readLent(hash) : { payload: await log.read(hash), release: () => {} };
        assert.ok(got?.payload != null, `block ${i} is missing`);
        assert.ok(Buffer.from(payload).equals(Buffer.from(got.payload)), `block ${i} came back different`);
        got.release();
      }
    }),
  );
}

describe('tiering - SSD read-ahead', () => {
  for (const [concurrency, lent] of [
    [1, false],
    [1, true],
    [8, true],
  ] as const) {
    it(`segment log - a sequential reader is served from read-ahead windows (concurrency ${concurrency}, ${lent ? 'lent' : 'owned'} payloads)`, async () => {
      const payloadBytes = randomInt(20_000, 40_000);
      const log = await open(tempDir(), { readAheadBytes: 8 * segmentRecordBytes(payloadBytes) });
      const blocks = randomRecords(64, payloadBytes);
      await appendInOrder(log, blocks);
      const before = log.stats();
      await readInOrder(log, blocks, concurrency, lent);
      const after = log.stats();
      assert.equal(after.reads - before.reads, blocks.length);
      assert.ok(after.readAheadHits - before.readAheadHits >= blocks.length / 2, 'most came from windows');
      const syscalls = after.readSyscalls - before.readSyscalls;
      assert.ok(syscalls <= blocks.length / 2, `${syscalls} kernel reads for ${blocks.length} records`);
      await log.close();
    });
  }

  it('segment log - a reader starting over and two readers at different places each get read-ahead', async () => {
    const payloadBytes = 10_000;
    const log = await open(tempDir(), { readAheadBytes: 8 * segmentRecordBytes(payloadBytes) });
    const blocks = randomRecords(96, payloadBytes);
    await appendInOrder(log, blocks);
    const hitsOf = async (run: () => Promise<void>): Promise<number> => {
      const before = log.stats().readAheadHits;
      await run();
      return log.stats().readAheadHits - before;
    };
    const first = blocks.slice(0, 40);
    assert.ok((await hitsOf(() => readInOrder(log, first, 1, true))) >= 30, 'first pass');
    assert.ok((await hitsOf(() => readInOrder(log, first, 1, true))) >= 30, 'the same records again');
    // Two readers taking turns, one in each half of the segment.
    const a = blocks.slice(0, 40);
    const b = blocks.slice(50, 90);
    const interleaved = a.flatMap((block, i) => [block, b[i] as [BlockHash, Uint8Array]]);
    assert.ok((await hitsOf(() => readInOrder(log, interleaved, 1, true))) >= 60, 'two readers');
    await log.close();
  });

  it('segment log - sequential, strided and scattered readers at once each get their own bytes', async () => {
    // Strided readers leave windows half read, so the bound on bytes held keeps dropping windows
    // while other readers are being served from them; lent payloads are held a while before release.
    const payloadBytes = 6000;
    const recordBytes = segmentRecordBytes(payloadBytes);
    const log = await open(tempDir(), { readAheadBytes: 6 * recordBytes, readsInFlightMax: 4 });
    const blocks = randomRecords(400, payloadBytes);
    await appendInOrder(log, blocks);
    const reader = async (indexes: number[]): Promise<void> => {
      const held: { i: number; lent: LentPayload }[] = [];
      for (const i of indexes) {
        const [hash] = blocks[i] as [BlockHash, Uint8Array];
        const lent = await log.readLent(hash);
        assert.ok(lent !== null, `block ${i} is missing`);
        held.push({ i, lent });
        if (held.length > randomInt(1, 6)) {
          const { i: j, lent: old } = held.shift() as { i: number; lent: LentPayload };
          const [, payload] = blocks[j] as [BlockHash, Uint8Array];
          assert.ok(Buffer.from(payload).equals(Buffer.from(old.payload)), `block ${j} changed while lent`);
          old.release();
        }
      }
      for (const { i, lent } of held) {
        assert.ok(Buffer.from((blocks[i] as [BlockHash, Uint8Array])[1]).equals(Buffer.from(lent.payload)));
        lent.release();
      }
    };
    const range = (from: number, to: number, step: number): number[] =>
      Array.from({ length: Math.ceil((to - from) / step) }, (_, k) => from + k * step);
    for (let round = 0; round < 3; round++) {
      await Promise.all([
        reader(range(0, 400, 1)),
        reader(range(100, 400, 2)),
        reader(range(1, 400, 3)),
        reader(Array.from({ length: 150 }, () => randomInt(0, 400))),
      ]);
    }
    assert.ok(log.stats().readAheadHits > 0);
    assert.equal(log.stats().checksumFailures, 0);
    await log.close();
  });

  it('segment log - scattered reads start no read-ahead', async () => {
    const log = await open(tempDir(), { readAheadBytes: 1 << 20 });
    const blocks = randomRecords(120, 5000);
    await appendInOrder(log, blocks);
    // Every read lands at least 10 records away from the one before (the slack is 8).
    const order = Array.from({ length: 12 }, (_, i) => i * 10);
    for (let i = 0; i < order.length; i++) {
      const from = order[i] as number;
      const to = order[(i * 7) % order.length] as number;
      order[i] = to;
      order[(i * 7) % order.length] = from;
    }
    const picked = order.map((i) => blocks[i] as [BlockHash, Uint8Array]);
    await readInOrder(log, picked, 1, true);
    assert.equal(log.stats().readAheadReads, 0);
    assert.equal(log.stats().readAheadHits, 0);
    await log.close();
  });

  it('segment log - a corrupt record inside a read-ahead window is caught and never served', async () => {
    const dir = tempDir();
    const payloadBytes = 9000;
    const recordBytes = segmentRecordBytes(payloadBytes);
    const log = await open(dir, { readAheadBytes: 16 * recordBytes });
    const blocks = randomRecords(24, payloadBytes);
    await appendInOrder(log, blocks);
    const victim = randomInt(4, 20);
    const at = victim * recordBytes + SEGMENT_RECORD_HEADER_BYTES + randomInt(0, payloadBytes);
    const fd = openSync(join(dir, segmentFileName(0)), 'r+');
    try {
      const byte = Buffer.alloc(1);
      readSync(fd, byte, 0, 1, at);
      byte[0] = (byte[0] as number) ^ 0x20;
      writeSync(fd, byte, 0, 1, at);
    } finally {
      closeSync(fd);
    }
    for (const [i, [hash, payload]] of blocks.entries()) {
      if (i === victim) {
        await assert.rejects(log.readLent(hash), CorruptDataError);
        continue;
      }
      const got = await log.readLent(hash);
      assert.ok(got !== null && Buffer.from(payload).equals(Buffer.from(got.payload)), `block ${i}`);
      got.release();
    }
    const stats = log.stats();
    assert.ok(stats.readAheadHits > 0, 'the reads around it came from windows');
    assert.equal(stats.checksumFailures, 1);
    assert.equal(log.has((blocks[victim] as [BlockHash, Uint8Array])[0]), false, 'dropped');
    await log.close();
  });

  it('segment log - sequential reads of the active segment while appends go on get the right bytes', async () => {
    const payloadBytes = 12_000;
    const log = await open(tempDir(), { readAheadBytes: 8 * segmentRecordBytes(payloadBytes) });
    const blocks = randomRecords(96, payloadBytes);
    await appendInOrder(log, blocks.slice(0, 8));
    let appended = 8;
    const appending = (async () => {
      for (; appended < blocks.length; appended++) {
        const [hash, payload] = blocks[appended] as [BlockHash, Uint8Array];
        await log.append(hash, payload);
      }
    })();
    // The reader follows right behind the writer: windows must stop where written records end.
    for (let i = 0; i < blocks.length; i++) {
      while (i >= appended) await new Promise((resolve) => setImmediate(resolve));
      const [hash, payload] = blocks[i] as [BlockHash, Uint8Array];
      const got = await log.readLent(hash);
      assert.ok(got !== null && Buffer.from(payload).equals(Buffer.from(got.payload)), `block ${i}`);
      got.release();
    }
    await appending;
    assert.equal(log.stats().checksumFailures, 0);
    await log.close();
  });

  it('segment log - sequential reads racing compaction get the right bytes', async () => {
    const log = await open(tempDir(), { segmentBytesMax: 256 * 1024, readAheadBytes: 128 * 1024 });
    const blocks = randomRecords(160, randomInt(4000, 8000));
    await appendInOrder(log, blocks);
    for (const [i, [hash]] of blocks.entries()) if (i % 3 !== 0) await log.remove(hash);
    const survivors = blocks.filter((_, i) => i % 3 === 0);
    let compacted = false;
    const compaction = log.compact().finally(() => {
      compacted = true;
    });
    let rounds = 0;
    while (!compacted || rounds === 0) {
      await readInOrder(log, survivors, 4, true);
      rounds++;
    }
    assert.ok((await compaction) > 0, 'compaction reclaimed space');
    await readInOrder(log, survivors, 4, true);
    assert.equal(log.stats().checksumFailures, 0);
    await log.close();
  });
});
