// The SSD tier against real files in a temp dir: what was acknowledged and not removed comes back
// after a reopen, tombstones keep removals removed, compaction frees space while reads racing it get
// the right bytes, full disks and full capacity are clear errors the log recovers from, a flipped
// byte on disk is caught and never served, strange files in the dir are reported, not fatal.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { CorruptDataError, LimitExceededError } from '@kvmesh/errors';
import { blockHashFromBytes, type BlockHash } from '@kvmesh/protocol';

import { SegmentLog, type FsyncPolicy, type SegmentLogOptions } from '../src/adapters/segment-log.ts';
import {
  DiskFullError,
  SegmentDirectoryLockedError,
  SegmentFormatVersionError,
  SegmentLogClosedError,
} from '../src/core/errors.ts';
import {
  SEGMENT_RECORD_HEADER_BYTES,
  segmentFileName,
  segmentRecordBytes,
} from '../src/core/segment-records.ts';
import { tempDirs } from './support.ts';

const tempDir = tempDirs('kvmesh-seglog-');

function randomHash(): BlockHash {
  return blockHashFromBytes(randomBytes(16));
}

/** Random blocks of random sizes (never zeros). */
function randomBlocks(count: number, bytesMin = 1000, bytesMax = 40_000): Map<BlockHash, Uint8Array> {
  const blocks = new Map<BlockHash, Uint8Array>();
  for (let i = 0; i < count; i++) blocks.set(randomHash(), randomBytes(randomInt(bytesMin, bytesMax)));
  return blocks;
}

function options(dir: string, extra: Partial<SegmentLogOptions> = {}): SegmentLogOptions {
  return { dir, capacityBytes: 64 * 1024 * 1024, segmentBytesMax: 128 * 1024, ...extra };
}

async function appendAll(log: SegmentLog, blocks: Map<BlockHash, Uint8Array>): Promise<void> {
  await Promise.all([...blocks].map(([hash, payload]) => log.append(hash, payload)));
}

async function expectBlocks(log: SegmentLog, blocks: Map<BlockHash, Uint8Array>): Promise<void> {
  for (const [hash, payload] of blocks) {
    const got = await log.read(hash);
    assert.ok(got !== null, `block ${hash} is missing`);
    assert.ok(Buffer.from(payload).equals(Buffer.from(got)), `block ${hash} came back different`);
  }
}

function segmentFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((name) => name.startsWith('seg-'))
    .sort();
}

describe('tiering - segment log', () => {
  it('segment log - appended blocks read back; removals and everything else survive a reopen', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir));
    const blocks = randomBlocks(60);
    await appendAll(log, blocks);
    assert.equal(log.stats().blocks, 60);
    assert.ok(log.stats().segments > 3, 'small segments roll over');
    await expectBlocks(log, blocks);
    const removed = [...blocks.keys()].filter((_, i) => i % 3 === 0);
    for (const hash of removed) {
      assert.equal(await log.remove(hash), true);
      blocks.delete(hash);
    }
    assert.equal(await log.remove(removed[0] as BlockHash), false, 'removing twice reports absent');
    assert.equal(await log.read(removed[0] as BlockHash), null);
    assert.equal(await log.read(randomHash()), null);
    await log.close();
    await assert.rejects(log.read(randomHash()), SegmentLogClosedError);

    const reopened = await SegmentLog.open(options(dir));
    assert.equal(reopened.recovery().manifest, 'loaded');
    assert.deepEqual(new Set(reopened.hashes()), new Set(blocks.keys()));
    for (const hash of removed) assert.equal(reopened.has(hash), false, 'a tombstone keeps it removed');
    await expectBlocks(reopened, blocks);
    assert.equal(reopened.stats().tornRecordsDropped, 0);
    await reopened.close();
  });

  it('segment log - re-appending a stored hash is a no-op; concurrent appends of one hash store it once', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir));
    const hash = randomHash();
    const payload = randomBytes(5000);
    await Promise.all([log.append(hash, payload), log.append(hash, payload), log.append(hash, payload)]);
    const used = log.stats().bytesUsed;
    assert.equal(used, segmentRecordBytes(5000));
    await log.append(hash, randomBytes(9000));
    assert.equal(log.stats().bytesUsed, used);
    assert.equal(log.stats().writes, 1);
    await expectBlocks(log, new Map([[hash, payload]]));
    await log.close();
  });

  it('segment log - compaction reclaims dead bytes while concurrent reads return the right bytes', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir, { segmentBytesMax: 256 * 1024 }));
    const blocks = randomBlocks(120, 4000, 30_000);
    await appendAll(log, blocks);
    const removed = [...blocks.keys()].filter((_, i) => i % 4 !== 0);
    for (const hash of removed) {
      await log.remove(hash);
      blocks.delete(hash);
    }
    const before = log.stats();
    const segmentsBefore = new Set(segmentFiles(dir));

    let compacted = false;
    const compaction = log.compact().finally(() => {
      compacted = true;
    });
    let readsDuring = 0;
    while (!compacted) {
      // Every survivor, concurrently, over and over until the compaction is done.
      await Promise.all(
        [...blocks].map(async ([hash, payload]) => {
          const got = await log.read(hash);
          assert.ok(
            got !== null && Buffer.from(payload).equals(Buffer.from(got)),
            `read of ${hash} during compaction`,
          );
          readsDuring++;
        }),
      );
    }
    const reclaimed = await compaction;
    const afterStats = log.stats();
    assert.ok(readsDuring >= blocks.size);
    assert.ok(afterStats.compactions > 0);
    assert.ok(reclaimed > 0);
    assert.ok(afterStats.bytesUsed < before.bytesUsed, `${afterStats.bytesUsed} < ${before.bytesUsed}`);
    assert.equal(afterStats.blocks, blocks.size);
    assert.ok(
      [...segmentsBefore].some((name) => !segmentFiles(dir).includes(name)),
      'compacted segment files are gone',
    );
    await expectBlocks(log, blocks);
    await log.close();

    const reopened = await SegmentLog.open(options(dir, { segmentBytesMax: 256 * 1024 }));
    assert.deepEqual(new Set(reopened.hashes()), new Set(blocks.keys()), 'no removed block comes back');
    await expectBlocks(reopened, blocks);
    assert.deepEqual(reopened.recovery().leftoverSegmentsRemoved, []);
    await reopened.close();
  });

  it('segment log - removing and compacting everything leaves no resurrection across two reopens', async () => {
    const dir = tempDir();
    let log = await SegmentLog.open(options(dir));
    const blocks = randomBlocks(40);
    await appendAll(log, blocks);
    for (const hash of blocks.keys()) await log.remove(hash);
    await log.compact();
    await log.compact(); // the second pass reclaims segments holding only the now-dead tombstones
    assert.equal(log.stats().blocks, 0);
    await log.close();
    for (let i = 0; i < 2; i++) {
      log = await SegmentLog.open(options(dir));
      assert.equal(log.stats().blocks, 0);
      await log.compact();
      await log.close();
    }
  });

  it('segment log - capacity exceeded is a LimitExceededError; appends work again after remove + compact', async () => {
    const dir = tempDir();
    const recordBytes = segmentRecordBytes(60_000);
    const log = await SegmentLog.open(
      options(dir, { capacityBytes: 10 * recordBytes, segmentBytesMax: 2 * recordBytes }),
    );
    const blocks = randomBlocks(10, 60_000, 60_001);
    for (const [hash, payload] of blocks) await log.append(hash, payload);
    const extra = randomHash();
    await assert.rejects(
      log.append(extra, randomBytes(60_000)),
      (err: unknown) =>
        err instanceof LimitExceededError &&
        err.details.bytesCapacity === 10 * recordBytes &&
        /full/.test(err.message),
    );
    await expectBlocks(log, blocks);
    const victims = [...blocks.keys()].slice(0, 6);
    for (const hash of victims) {
      assert.equal(await log.remove(hash), true, 'removal works on a full tier');
      blocks.delete(hash);
    }
    await assert.rejects(
      log.append(extra, randomBytes(60_000)),
      LimitExceededError,
      'dead bytes still count',
    );
    assert.ok((await log.compact()) > 0);
    const payload = randomBytes(60_000);
    await log.append(extra, payload);
    blocks.set(extra, payload);
    await expectBlocks(log, blocks);
    await log.close();
  });

  it('segment log - blocksMax and recordBytesMax are enforced', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir, { blocksMax: 3, recordBytesMax: 10_000 }));
    await assert.rejects(log.append(randomHash(), randomBytes(10_001)), LimitExceededError);
    for (let i = 0; i < 3; i++) await log.append(randomHash(), randomBytes(100));
    await assert.rejects(
      log.append(randomHash(), randomBytes(100)),
      (err: unknown) => err instanceof LimitExceededError && err.details.limit === 3,
    );
    await assert.rejects(log.append('nothex' as BlockHash, randomBytes(10)), /block hash/);
    await log.close();
  });

  it('segment log - a flipped payload byte is detected on read, counted, and the block is then missing', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir, { segmentBytesMax: 64 * 1024 * 1024 }));
    const blocks = randomBlocks(5, 8000, 8001);
    for (const [hash, payload] of blocks) await log.append(hash, payload);
    const [victim] = [...blocks.keys()] as [BlockHash];
    // The first record of the first segment: flip a payload byte behind the log's back.
    const path = join(dir, segmentFileName(0));
    const bytes = readFileSync(path);
    bytes[SEGMENT_RECORD_HEADER_BYTES + 777] = (bytes[SEGMENT_RECORD_HEADER_BYTES + 777] as number) ^ 0x01;
    writeFileSync(path, bytes);

    await assert.rejects(
      log.read(victim),
      (err: unknown) =>
        err instanceof CorruptDataError && err.code === 'CORRUPT_DATA' && err.details.hash === victim,
    );
    assert.equal(log.stats().checksumFailures, 1);
    assert.equal(log.has(victim), false);
    assert.equal(await log.read(victim), null, 'treated as missing afterwards');
    blocks.delete(victim);
    await expectBlocks(log, blocks);
    await log.close();

    const reopened = await SegmentLog.open(options(dir));
    assert.equal(reopened.has(victim), false, 'the drop survives a restart');
    await expectBlocks(reopened, blocks);
    await reopened.close();
  });

  it('segment log - a flipped byte in a sealed segment is caught on read after a reopen', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir, { segmentBytesMax: 64 * 1024 }));
    const blocks = randomBlocks(12, 20_000, 20_001);
    for (const [hash, payload] of blocks) await log.append(hash, payload);
    await log.close();
    const [victim] = [...blocks.keys()] as [BlockHash];
    const path = join(dir, segmentFileName(0));
    const bytes = readFileSync(path);
    bytes[SEGMENT_RECORD_HEADER_BYTES + 5] = (bytes[SEGMENT_RECORD_HEADER_BYTES + 5] as number) ^ 0x80;
    writeFileSync(path, bytes);

    const reopened = await SegmentLog.open(options(dir, { segmentBytesMax: 64 * 1024 }));
    await assert.rejects(reopened.read(victim), CorruptDataError);
    assert.equal(reopened.stats().checksumFailures, 1);
    assert.equal(await reopened.read(victim), null);
    blocks.delete(victim);
    await expectBlocks(reopened, blocks);
    await reopened.close();
  });

  it('segment log - foreign and unreadable files are reported, left alone, and not fatal', async () => {
    const dir = tempDir();
    const first = await SegmentLog.open(options(dir));
    const blocks = randomBlocks(8);
    await appendAll(first, blocks);
    await first.close();
    writeFileSync(join(dir, 'notes.txt'), 'not a segment');
    mkdirSync(join(dir, 'seg-00000099.log')); // named like a segment, but a directory: unreadable

    const log = await SegmentLog.open(options(dir));
    const report = log.recovery();
    assert.deepEqual(report.foreignFiles, ['notes.txt']);
    assert.deepEqual(
      report.unreadableFiles.map((f) => f.name),
      ['seg-00000099.log'],
    );
    await expectBlocks(log, blocks);
    const more = randomBlocks(3);
    await appendAll(log, more);
    assert.ok(segmentFiles(dir).includes('seg-00000100.log'), 'new records go to a segment numbered past it');
    await log.close();
    assert.equal(readFileSync(join(dir, 'notes.txt'), 'utf8'), 'not a segment');
    assert.ok(statSync(join(dir, 'seg-00000099.log')).isDirectory());

    const again = await SegmentLog.open(options(dir));
    await expectBlocks(again, new Map([...blocks, ...more]));
    await again.close();
  });

  it('segment log - a manifest from a newer format version is refused with a clear error', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir));
    await appendAll(log, randomBlocks(3));
    await log.close();
    const manifestPath = join(dir, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Record<string, unknown>;
    manifest.version = 99;
    writeFileSync(manifestPath, JSON.stringify(manifest));
    const filesBefore = segmentFiles(dir).map((name) => [name, statSync(join(dir, name)).size]);
    await assert.rejects(
      SegmentLog.open(options(dir)),
      (err: unknown) => err instanceof SegmentFormatVersionError && /version 99/.test(err.message),
    );
    assert.deepEqual(
      segmentFiles(dir).map((name) => [name, statSync(join(dir, name)).size]),
      filesBefore,
      'nothing on disk was changed',
    );
    assert.ok(!readdirSync(dir).includes('segment-log.lock'), 'the lock is released');
  });

  it('segment log - a corrupt manifest falls back to scanning every segment', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir));
    const blocks = randomBlocks(30);
    await appendAll(log, blocks);
    const removed = [...blocks.keys()].slice(0, 10);
    for (const hash of removed) {
      await log.remove(hash);
      blocks.delete(hash);
    }
    await log.close();
    writeFileSync(join(dir, 'manifest.json'), '{"format":"kvmesh-segment-manifest","vers');
    const reopened = await SegmentLog.open(options(dir));
    assert.equal(reopened.recovery().manifest, 'corrupt');
    assert.deepEqual(new Set(reopened.hashes()), new Set(blocks.keys()));
    await expectBlocks(reopened, blocks);
    await reopened.close();
  });

  it('segment log - a second open of a directory in use is refused', async () => {
    const dir = tempDir();
    const log = await SegmentLog.open(options(dir));
    await assert.rejects(SegmentLog.open(options(dir)), SegmentDirectoryLockedError);
    await log.close();
    const again = await SegmentLog.open(options(dir));
    await again.close();
  });

  it('segment log - ENOSPC part way through a write: typed error, partial record cut off, log usable', async () => {
    const dir = tempDir();
    let failNext = false;
    const writeVectored = async (
      file: FileHandle,
      buffers: Uint8Array[],
      position: number,
    ): Promise<number> => {
      if (failNext) {
        failNext = false;
        // The first 4 KiB of the record reach the disk (aligned, so O_DIRECT takes it too), then
        // the filesystem is full.
        const first = buffers[0] as Uint8Array;
        await file.write(first, 0, Math.min(first.length, 4096), position);
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      }
      return (await file.writev(buffers, position)).bytesWritten;
    };
    const log = await SegmentLog.open(options(dir, { writeVectored, segmentBytesMax: 1024 * 1024 }));
    const blocks = randomBlocks(5);
    for (const [hash, payload] of blocks) await log.append(hash, payload);
    const used = log.stats().bytesUsed;
    const sizeBefore = statSync(join(dir, segmentFileName(0))).size;

    failNext = true;
    const refused = randomHash();
    await assert.rejects(
      log.append(refused, randomBytes(20_000)),
      (err: unknown) =>
        err instanceof DiskFullError && err.code === 'DISK_FULL' && err.details.errno === 'ENOSPC',
    );
    assert.equal(log.has(refused), false);
    assert.equal(statSync(join(dir, segmentFileName(0))).size, sizeBefore, 'the partial record was cut off');
    assert.equal(log.stats().bytesUsed, used);
    await expectBlocks(log, blocks);

    const later = randomBlocks(3);
    for (const [hash, payload] of later) await log.append(hash, payload);
    for (const [hash, payload] of later) blocks.set(hash, payload);
    await expectBlocks(log, blocks);
    await log.close();

    const reopened = await SegmentLog.open(options(dir));
    assert.equal(reopened.stats().tornRecordsDropped, 0);
    assert.deepEqual(new Set(reopened.hashes()), new Set(blocks.keys()));
    await expectBlocks(reopened, blocks);
    await reopened.close();
  });

  for (const fsync of ['always', 'group', 'interval'] as FsyncPolicy[]) {
    it(`segment log - fsync '${fsync}': concurrent appends are acknowledged and survive a reopen`, async () => {
      const dir = tempDir();
      let writes = 0;
      const writeVectored = async (
        file: FileHandle,
        buffers: Uint8Array[],
        position: number,
      ): Promise<number> => {
        writes++;
        return (await file.writev(buffers, position)).bytesWritten;
      };
      const log = await SegmentLog.open(
        options(dir, { fsync, fsyncIntervalMs: 5, writeVectored, segmentBytesMax: 64 * 1024 * 1024 }),
      );
      const blocks = randomBlocks(40);
      await appendAll(log, blocks);
      await expectBlocks(log, blocks);
      if (fsync === 'always') assert.equal(writes, 40, "'always' writes (and syncs) each record on its own");
      else assert.ok(writes < 40, `concurrent appends share writes (${writes} for 40)`);
      await log.close();
      const reopened = await SegmentLog.open(options(dir, { fsync }));
      await expectBlocks(reopened, blocks);
      await reopened.close();
    });
  }

  it('segment log - O_DIRECT on and off read the same bytes; the verdict is in stats and recovery()', async () => {
    const blocks = randomBlocks(10, 100_000, 300_000);
    const dir = tempDir();
    const direct = await SegmentLog.open(options(dir, { directIo: true }));
    await appendAll(direct, blocks);
    await expectBlocks(direct, blocks);
    const verdict = direct.stats().directIo;
    assert.match(direct.recovery().directIoReason, verdict ? /O_DIRECT/ : /.+/);
    await direct.close();
    const buffered = await SegmentLog.open(options(dir, { directIo: false }));
    assert.equal(buffered.stats().directIo, false);
    await expectBlocks(buffered, blocks);
    await buffered.close();
  });
});
