// The SSD tier: a log-structured store of blocks in append-only segment files (`seg-<n>.log`, record
// format in core/segment-records.ts), an in-memory index hash → (segment, offset), a manifest of the
// sealed segments, crash recovery and compaction. Invariants: a segment file only grows while it is
// the active one and is never rewritten once sealed (so a location read from the index stays valid
// until the file is unlinked, and an open descriptor keeps it readable after that); every put a
// removal shadows keeps a tombstone on disk until the put's segment is gone.
//
// Acknowledged durability (the point at which append()/remove() resolve):
// - 'always':   one record per write, fdatasync before the ack. Survives process crash and power loss.
// - 'group':    the records queued while the previous write was in flight go out in one pwritev and
//               share one fdatasync; each ack comes after that fdatasync. Survives process crash and
//               power loss (the cost of a sync is shared, not skipped).
// - 'interval': ack right after the write returns, fdatasync every fsyncIntervalMs. The data is in
//               the page cache (buffered) or handed to the device (O_DIRECT) but neither the file
//               size nor the device cache is flushed. Survives a process crash (kill -9); a power
//               loss or kernel crash can lose the acks of the last interval (recovery then drops
//               the torn tail cleanly).
// With O_DIRECT (the default where the filesystem takes it) each batch is copied into one aligned
// buffer and written with one pwrite, bypassing the page cache; fdatasync is still what makes it
// durable (it commits the file size and flushes the device cache).
// Compaction copies and segment seals are always fdatasync'd before the manifest stops naming the
// old segment, whatever the policy. Tombstones follow the policy like puts.
//
// Reads go through a small elevator (issueReads): at most readsInFlightMax kernel reads at once;
// reads pending together for records that lie back to back in one segment are served by one read
// of their span (up to readMergeBytesMax), merged only as far as the free slots require, and each
// record in it is still verified on its own. read() hands out memory the caller owns: with an
// injected aligned allocator each payload is a view of a fresh span (no copy); otherwise the span
// comes from a buffer pool and payloads are copied. readLent() hands out views of a pooled span and
// the span returns to the pool once every payload read from it is released: no copy, no allocation,
// and so no garbage (a fresh span per read of a few hundred KiB drives V8 into back-to-back major
// GCs at SSD speed).
// Sequential read-ahead (O_DIRECT only; the page cache does its own): a read that starts where
// earlier reads of its segment ended marks a sequential reader (a promoted prefix lies back to
// back), and the log reads up to readAheadBytes past it in windows of half that, ahead of demand.
// Reads of records inside a window wait for it or are served from it, each record verified on its
// own as always (one that fails is read again alone before it is called corrupt). Windows only
// cover settled bytes (written, and past where a failed batch could be cut off: they never change),
// hold at most 4x readAheadBytes, and go first in the elevator, since readers wait on them.
//
// Recovery: the manifest (written tmp + fdatasync + rename + directory fsync) names the sealed
// segments; their record headers are read back (one 4 KiB read per record) to rebuild the index.
// Segments from `tailFrom` on are tails: read in full with every checksum verified, and a torn last
// record is truncated away. For each hash the record with the highest sequence number wins.
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, readSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

import { CorruptDataError, InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { loadKernels, type Kernels } from '@kvmesh/kernels';
import { blockHashToBytes, type BlockHash } from '@kvmesh/protocol';

import {
  DiskFullError,
  SegmentDirectoryLockedError,
  SegmentFormatVersionError,
  SegmentLogClosedError,
  StorageIoError,
} from '../core/errors.ts';
import {
  SEGMENT_FORMAT_VERSION,
  SEGMENT_RECORD_ALIGN_BYTES,
  SEGMENT_RECORD_HEADER_BYTES,
  decodeSegmentRecordHeader,
  decodeTombstonePayload,
  encodeSegmentManifest,
  encodeSegmentRecord,
  encodeTombstonePayload,
  parseSegmentFileName,
  parseSegmentManifest,
  scanSegmentRecords,
  planMergedReads,
  segmentFileName,
  segmentRecordBytes,
  verifySegmentPayload,
  type DamagedRegion,
  type Hash128,
  type ManifestSegment,
  type MergedRecordRead,
  type PendingRecordRead,
  type ScannedRecord,
  type SegmentManifest,
  type SegmentRecordHeader,
} from '../core/segment-records.ts';

export type FsyncPolicy = 'always' | 'group' | 'interval';

export interface SegmentLogOptions {
  /** Data directory (created if missing). One process at a time: a lock file names the owner. */
  dir: string;
  /**
   * Bytes of live + dead records allowed on disk; an append beyond it fails with
   * LimitExceededError. Tombstones and compaction copies may pass it (by at most one segment), so
   * that removing and compacting always work on a full tier.
   */
  capacityBytes: number;
  /** A segment is sealed and a new one started once the next record would pass this. Default 64 MiB. */
  segmentBytesMax?: number;
  /** Default 'group'. */
  fsync?: FsyncPolicy;
  /** For 'interval'. Default 100. */
  fsyncIntervalMs?: number;
  /** Largest payload accepted. Default 8 MiB. */
  recordBytesMax?: number;
  /** Bound on the in-memory index. Default 1_000_000. */
  blocksMax?: number;
  /**
   * O_DIRECT reads and writes where the filesystem supports them (default true). Without
   * `allocate`, aligned buffers are found by probing; when that fails (EINVAL) I/O falls back to
   * the page cache, stats().directIo says false and recovery() says why.
   */
  directIo?: boolean;
  /** A sealed segment with more dead bytes than this fraction is compacted. Default 0.5. */
  compactGarbageRatio?: number;
  /** Memory whose address is 4096-aligned (e.g. a native allocator), for O_DIRECT reads. */
  allocate?: (bytes: number) => Uint8Array;
  /** Most segment files held open for reading. Default 256. */
  openSegmentsMax?: number;
  /**
   * Reads of records that lie back to back in one segment and wait at the same time are served by
   * one read of their span, up to this many bytes (a longer record is read alone). Default 4 MiB.
   */
  readMergeBytesMax?: number;
  /**
   * Record reads issued to the kernel at once (each may be a merged span). Reads that fit in the
   * free slots go out on their own (most parallelism); beyond that they queue and merge. Default
   * 16: above libuv's thread pool (4 by default), so its threads never wait on this queue.
   */
  readsInFlightMax?: number;
  /** Record reads allowed to wait for a slot; past it a read fails with LimitExceededError. */
  readsQueuedMax?: number;
  /**
   * How far ahead of a sequential reader (reads that go on where the last ones of their segment
   * ended) the log reads, in windows of half this; at most 4x this is held read ahead and not yet
   * read. O_DIRECT only. 0 turns read-ahead off. Default 2 MiB.
   */
  readAheadBytes?: number;
  /** Checksums; default loadKernels(). */
  kernels?: Pick<Kernels, 'hash128'>;
  /**
   * Test seam: performs the vectored write of one batch and returns the bytes written (fault
   * injection such as ENOSPC after a partial write). Default: FileHandle.writev.
   */
  writeVectored?: (file: FileHandle, buffers: Uint8Array[], position: number) => Promise<number>;
}

export interface SegmentLogStats {
  blocks: number;
  bytesUsed: number;
  bytesLive: number;
  bytesCapacity: number;
  segments: number;
  reads: number;
  /** Read calls made to the kernel for record reads (a merged span is one, unless cut short). */
  readSyscalls: number;
  /** Kernel reads that served more than one record read. */
  mergedReads: number;
  /** Kernel reads issued ahead of sequential readers (read-ahead windows). */
  readAheadReads: number;
  /** Record reads served from a read-ahead window. */
  readAheadHits: number;
  writes: number;
  checksumFailures: number;
  tornRecordsDropped: number;
  compactions: number;
  directIo: boolean;
}

/** What open() found and did; nothing here stopped it from opening. */
export interface SegmentLogRecoveryReport {
  manifest: 'loaded' | 'absent' | 'corrupt';
  manifestError?: string;
  /** Files in the directory that are not the log's (left untouched). */
  foreignFiles: string[];
  /** Files that could not be read (left untouched; their blocks are missing). */
  unreadableFiles: { name: string; error: string }[];
  /** Sealed segments the manifest names that are not in the directory. */
  missingSegments: number[];
  /** Sealed segments shorter than the manifest says. */
  truncatedSegments: number[];
  /** Segments a finished compaction had not yet unlinked when the process stopped. */
  leftoverSegmentsRemoved: number[];
  tornTails: { segment: number; offset: number; bytesDropped: number; reason: string }[];
  damagedRegions: (DamagedRegion & { segment: number })[];
  /** Blocks in the index after recovery; above blocksMax, appends are refused until removals. */
  blocks: number;
  /** Why reads are (or are not) O_DIRECT; stats().directIo is the verdict. */
  directIoReason: string;
  /** Appends go to disk with O_DIRECT (through an aligned copy of each batch). */
  directWrites: boolean;
  directWritesReason: string;
}

const DEFAULTS = {
  segmentBytesMax: 64 * 1024 * 1024,
  fsync: 'group' as FsyncPolicy,
  fsyncIntervalMs: 100,
  recordBytesMax: 8 * 1024 * 1024,
  blocksMax: 1_000_000,
  directIo: true,
  compactGarbageRatio: 0.5,
  openSegmentsMax: 256,
  readMergeBytesMax: 4 * 1024 * 1024,
  readsInFlightMax: 16,
  readsQueuedMax: 65_536,
  readAheadBytes: 2 * 1024 * 1024,
};

const MANIFEST_FILE = 'manifest.json';
const MANIFEST_TMP_FILE = 'manifest.json.tmp';
const LOCK_FILE = 'segment-log.lock';
const PROBE_FILE = /^\.direct-probe-\d+$/;
/** A group-commit batch: bounded so one pwritev stays a reasonable size (and under IOV_MAX / 3). */
const BATCH_RECORDS_MAX = 256;
const BATCH_BYTES_MAX = 32 * 1024 * 1024;
/** Records compaction reads and copies at once. */
const COMPACT_WINDOW = 16;
/** A tail is read into memory whole; a larger file is reported as unreadable instead. */
const TAIL_BYTES_MAX = 2 ** 31 - 1;
/** Aligned read buffers kept for reuse. */
const ALIGNED_RETAIN_BYTES_MAX = 64 * 1024 * 1024;
const READ_RETRIES_MAX = 3;
/** Readers whose position is remembered for read-ahead (the least recently read is forgotten first). */
const READ_STREAMS_MAX = 16;
/**
 * A read counts as sequential when it starts where its segment's reads ended or at most this many
 * records before (concurrent readers of one prefix arrive a little out of order).
 */
const READ_STREAM_SLACK_RECORDS = 8;

interface IndexEntry {
  readonly segmentId: number;
  readonly offset: number;
  readonly recordBytes: number;
  readonly payloadBytes: number;
}

interface TombstoneEntry {
  readonly hash: BlockHash;
  readonly sequence: bigint;
  readonly segmentId: number;
  readonly offset: number;
  readonly recordBytes: number;
  readonly target: number;
}

interface Segment {
  readonly id: number;
  readonly path: string;
  sizeBytes: number;
  /**
   * Bytes that never change again: written and past the point where a failed batch is cut off
   * (sizeBytes runs ahead of it while a batch syncs). Read-ahead stays below it.
   */
  settledBytes: number;
  bytesLive: number;
  records: number;
  sealed: boolean;
  /** Compaction has copied everything out and is removing it: left out of new manifests. */
  retiring: boolean;
  /** Set while this is the active segment. */
  writer: FileHandle | null;
  /** The writer was opened with O_DIRECT (writes go through an aligned copy). */
  writerDirect: boolean;
  dirty: boolean;
  /** Hashes whose live put is in this segment. */
  readonly puts: Set<BlockHash>;
  /** Live tombstones in this segment, by offset. */
  readonly tombstones: Map<number, TombstoneEntry>;
}

interface RecordWrite {
  type: 'record';
  buffers: Uint8Array[];
  recordBytes: number;
  /** Capacity reserved at enqueue time, released when the write settles. */
  bytesReserved: number;
  /** fdatasync before the ack whatever the policy (compaction copies). */
  durable: boolean;
  /** Applies the record to the in-memory state; runs synchronously once it is durable per policy. */
  commit: (segment: Segment, offset: number) => void;
  resolve: () => void;
  reject: (err: unknown) => void;
}

interface ControlWrite {
  type: 'roll' | 'sync';
  resolve: () => void;
  reject: (err: unknown) => void;
}

type WriteOp = RecordWrite | ControlWrite;

interface ReadHandle {
  readonly id: number;
  readonly direct: boolean;
  readonly opened: Promise<FileHandle>;
  refs: number;
  retired: boolean;
}

type RecordRead =
  | {
      ok: true;
      headerBytes: Uint8Array;
      header: SegmentRecordHeader;
      payload: Uint8Array;
      /** Returns a lent payload's span to the pool (a no-op for memory the caller owns). */
      release: () => void;
    }
  | { ok: false; reason: string };

/** Where one reader of a segment got to: its last read and the windows read ahead of it end at `end`. */
interface ReadStream {
  readonly segmentId: number;
  end: number;
}

/** A window read ahead of a sequential reader (see readAhead). */
interface AheadSpan {
  readonly stream: ReadStream;
  readonly segmentId: number;
  readonly offset: number;
  readonly bytes: number;
  state: 'queued' | 'reading' | 'ready' | 'failed';
  /** Pooled memory (taken when the read is issued); `got` bytes of it were read. */
  buffer: Uint8Array | null;
  got: number;
  /** Holds on `buffer`: the cache's, the running read's, one per payload lent from it. */
  holders: number;
  /** Bytes of the records served from it; once they cover it the cache lets go of it. */
  servedBytes: number;
  /** Record reads that came in before it was read. */
  readonly waiters: QueuedRead[];
}

/** A verified payload in memory the log lends out (readLent). */
export interface LentPayload {
  readonly payload: Uint8Array;
  /**
   * Gives the memory back for reuse; call it once, after the last use of `payload`. A payload never
   * released is safe, only wasteful: its memory is then left to the garbage collector.
   */
  release(): void;
}

const NO_RELEASE = (): void => undefined;

/** A record read waiting for a slot (see issueReads). */
interface QueuedRead extends PendingRecordRead {
  readonly entry: IndexEntry;
  /** Also return the header bytes (compaction copies them). */
  readonly whole: boolean;
  /** The payload may be a view of pooled memory, returned by its release() (readLent). */
  readonly lend: boolean;
  readonly resolve: (result: RecordRead) => void;
  readonly reject: (err: unknown) => void;
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function checkInteger(name: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got ${String(value)}`, {
      [name]: value,
      min,
      max,
    });
  }
}

function resolveOptions(
  options: SegmentLogOptions,
): Required<Omit<SegmentLogOptions, 'allocate' | 'kernels' | 'writeVectored'>> &
  Pick<SegmentLogOptions, 'allocate' | 'kernels' | 'writeVectored'> {
  if (typeof options.dir !== 'string' || options.dir === '') {
    throw new InvalidArgumentError('segment log dir must be a non-empty path');
  }
  const resolved = { ...DEFAULTS, ...stripUndefined(options) };
  checkInteger('capacityBytes', resolved.capacityBytes, SEGMENT_RECORD_ALIGN_BYTES);
  checkInteger('segmentBytesMax', resolved.segmentBytesMax, SEGMENT_RECORD_ALIGN_BYTES, 2 ** 40);
  checkInteger('recordBytesMax', resolved.recordBytesMax, 0, 1 << 30);
  checkInteger('blocksMax', resolved.blocksMax, 1, 1 << 30);
  checkInteger('fsyncIntervalMs', resolved.fsyncIntervalMs, 1, 60_000);
  checkInteger('openSegmentsMax', resolved.openSegmentsMax, 1, 65_536);
  checkInteger('readMergeBytesMax', resolved.readMergeBytesMax, SEGMENT_RECORD_ALIGN_BYTES, 1 << 30);
  checkInteger('readsInFlightMax', resolved.readsInFlightMax, 1, 1024);
  checkInteger('readsQueuedMax', resolved.readsQueuedMax, 1, 1 << 24);
  checkInteger('readAheadBytes', resolved.readAheadBytes, 0, 1 << 30);
  if (!['always', 'group', 'interval'].includes(resolved.fsync)) {
    throw new InvalidArgumentError(
      `fsync must be 'always', 'group' or 'interval', got '${String(resolved.fsync)}'`,
    );
  }
  const ratio = resolved.compactGarbageRatio;
  if (typeof ratio !== 'number' || !(ratio >= 0 && ratio < 1)) {
    throw new InvalidArgumentError(`compactGarbageRatio must be in [0, 1), got ${String(ratio)}`);
  }
  return resolved;
}

function stripUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

async function readFully(file: FileHandle, buffer: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesRead } = await file.read(buffer, done, buffer.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoOf(err) === 'EPERM';
  }
}

/** Takes the directory's lock file, replacing one left by a process that no longer runs. */
async function acquireLock(dir: string): Promise<string> {
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await open(path, 'wx');
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return path;
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST' || attempt > 0) throw new StorageIoError('lock', path, err);
    }
    const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (Number.isSafeInteger(pid) && pid > 0 && (pid === process.pid || processAlive(pid))) {
      throw new SegmentDirectoryLockedError(dir, pid);
    }
    await unlink(path).catch(() => undefined);
  }
}

/**
 * 4096-aligned read buffers for O_DIRECT. JS cannot ask for alignment, so without an injected
 * allocator each buffer is over-allocated by 4 KiB and the aligned offset inside it is found by
 * trying O_DIRECT reads of a probe file at each 8-byte step (EINVAL until the address is aligned).
 */
class AlignedBuffers {
  private readonly free: Uint8Array[] = [];
  private freeBytes = 0;

  constructor(
    private readonly probeFd: number,
    private readonly allocate: ((bytes: number) => Uint8Array) | undefined,
  ) {}

  /** An aligned buffer of at least `bytes`, or null when no aligned address could be found. */
  acquire(bytes: number): Uint8Array | null {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const candidate = this.free[i] as Uint8Array;
      if (
        candidate.length >= bytes &&
        (best < 0 || candidate.length < (this.free[best] as Uint8Array).length)
      ) {
        best = i;
      }
    }
    if (best >= 0) {
      const [found] = this.free.splice(best, 1) as [Uint8Array];
      this.freeBytes -= found.length;
      return found;
    }
    let capacity = 64 * 1024;
    while (capacity < bytes) capacity *= 2;
    return this.allocateAligned(capacity);
  }

  /**
   * A new aligned buffer of exactly `bytes` that is never pooled (it is handed out in pieces), or
   * null without an injected allocator (probing each new buffer would cost more than a copy).
   * NOTE: not probed: the allocator promises alignment and open() probed it once; should it break
   * that promise, the O_DIRECT read fails with EINVAL and the log falls back to buffered reads.
   */
  acquireUnpooled(bytes: number): Uint8Array | null {
    return this.allocate === undefined ? null : this.allocate(bytes).subarray(0, bytes);
  }

  release(buffer: Uint8Array): void {
    if (this.freeBytes + buffer.length > ALIGNED_RETAIN_BYTES_MAX) return;
    this.free.push(buffer);
    this.freeBytes += buffer.length;
  }

  private allocateAligned(bytes: number): Uint8Array | null {
    if (this.allocate) {
      const buffer = this.allocate(bytes);
      return this.probe(buffer) ? buffer.subarray(0, bytes) : null;
    }
    // NOTE: plain Uint8Array views, never Buffers: Buffer#slice does not copy, and these are reused.
    const raw = Buffer.allocUnsafeSlow(bytes + SEGMENT_RECORD_ALIGN_BYTES);
    for (let at = 0; at < SEGMENT_RECORD_ALIGN_BYTES; at += 8) {
      const candidate = new Uint8Array(raw.buffer, raw.byteOffset + at, bytes);
      if (this.probe(candidate)) return candidate;
    }
    return null;
  }

  private probe(buffer: Uint8Array): boolean {
    try {
      readSync(this.probeFd, buffer, 0, SEGMENT_RECORD_ALIGN_BYTES, 0);
      return true;
    } catch (err) {
      if (errnoOf(err) === 'EINVAL') return false;
      throw err;
    }
  }
}

export class SegmentLog {
  private readonly dir: string;
  private readonly capacityBytes: number;
  private readonly segmentBytesMax: number;
  private readonly fsyncPolicy: FsyncPolicy;
  private readonly fsyncIntervalMs: number;
  private readonly recordBytesMax: number;
  private readonly blocksMax: number;
  private readonly compactGarbageRatio: number;
  private readonly openSegmentsMax: number;
  private readonly readMergeBytesMax: number;
  private readonly readsInFlightMax: number;
  private readonly readsQueuedMax: number;
  private readonly readAheadBytes: number;
  private readonly hash128: Hash128;
  private readonly writeVectored: (
    file: FileHandle,
    buffers: Uint8Array[],
    position: number,
  ) => Promise<number>;
  private readonly allocate: ((bytes: number) => Uint8Array) | undefined;
  private readonly lockPath: string;

  private readonly index = new Map<BlockHash, IndexEntry>();
  private readonly segments = new Map<number, Segment>();
  /** Live tombstones by the segment whose put they shadow. */
  private readonly tombstonesByTarget = new Map<number, Set<TombstoneEntry>>();
  /** Segment ids on disk that could not be read; tombstones aimed at them stay live. */
  private readonly unreadableSegments = new Map<number, ManifestSegment | null>();
  private readonly pendingAppends = new Map<BlockHash, Promise<void>>();
  /** Hashes compaction is copying; remove() waits for them (never read()). */
  private readonly moving = new Map<BlockHash, Promise<void>>();
  private readonly readers = new Map<number, ReadHandle>();
  private readonly background = new Set<Promise<unknown>>();

  private active!: Segment;
  private nextSegmentId = 0;
  private sequenceNext = 0n;
  private bytesOnDisk = 0;
  private bytesReserved = 0;
  private queue: WriteOp[] = [];
  private pumping = false;
  private manifestChain: Promise<void> = Promise.resolve();
  private compacting: Promise<number> | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private closing = false;
  private closed: Promise<void> | null = null;

  private directIo = false;
  private directIoReason = 'disabled by option';
  private probeFd = -1;
  private probeHandle: FileHandle | null = null;
  private directWrites = false;
  private directWritesReason = 'disabled by option';
  private alignedBuffers: AlignedBuffers | null = null;

  private readsDone = 0;
  private readSyscalls = 0;
  private mergedReads = 0;
  /** Record reads waiting for one of readsInFlightMax slots; merged when they are issued. */
  private readQueue: QueuedRead[] = [];
  private readsInFlight = 0;
  private readArrivals = 0;
  private readFlushScheduled = false;
  /** Set once the read descriptors are closed for good: queued reads then fail. */
  private readersReleased = false;
  /** Read-ahead windows the cache holds, oldest first, and those waiting for a slot. */
  private aheadSpans: AheadSpan[] = [];
  private aheadQueue: AheadSpan[] = [];
  private aheadBytesHeld = 0;
  /** Readers' positions, least recently read first (at most READ_STREAMS_MAX). */
  private readStreams: ReadStream[] = [];
  private readAheadReads = 0;
  private readAheadHits = 0;
  private writesDone = 0;
  private checksumFailures = 0;
  private tornRecordsDropped = 0;
  private compactions = 0;
  private report!: SegmentLogRecoveryReport;

  private constructor(options: ReturnType<typeof resolveOptions>, lockPath: string) {
    this.dir = options.dir;
    this.capacityBytes = options.capacityBytes;
    this.segmentBytesMax = options.segmentBytesMax;
    this.fsyncPolicy = options.fsync;
    this.fsyncIntervalMs = options.fsyncIntervalMs;
    this.recordBytesMax = options.recordBytesMax;
    this.blocksMax = options.blocksMax;
    this.compactGarbageRatio = options.compactGarbageRatio;
    this.openSegmentsMax = options.openSegmentsMax;
    this.readMergeBytesMax = options.readMergeBytesMax;
    this.readsInFlightMax = options.readsInFlightMax;
    this.readsQueuedMax = options.readsQueuedMax;
    this.readAheadBytes = options.readAheadBytes;
    this.allocate = options.allocate;
    const kernels = options.kernels ?? loadKernels();
    this.hash128 = (data) => kernels.hash128(data);
    this.writeVectored =
      options.writeVectored ??
      (async (file, buffers, position) => (await file.writev(buffers, position)).bytesWritten);
    this.lockPath = lockPath;
    this.directIo = options.directIo;
  }

  /**
   * Opens (or creates) the log in `options.dir` and recovers it: manifest, sealed segment headers,
   * full scan of the tails, torn last records truncated. Rejects a newer format version with
   * SegmentFormatVersionError; foreign and unreadable files are reported in recovery(), not fatal.
   */
  static async open(options: SegmentLogOptions): Promise<SegmentLog> {
    const resolved = resolveOptions(options);
    try {
      await mkdir(resolved.dir, { recursive: true });
    } catch (err) {
      throw new StorageIoError('mkdir', resolved.dir, err);
    }
    const lockPath = await acquireLock(resolved.dir);
    const log = new SegmentLog(resolved, lockPath);
    try {
      await log.probeDirectIo();
      await log.recover();
    } catch (err) {
      await log.releaseResources();
      throw err;
    }
    if (log.fsyncPolicy === 'interval') {
      log.syncTimer = setInterval(() => log.onSyncTick(), log.fsyncIntervalMs);
      log.syncTimer.unref();
    }
    return log;
  }

  // -------------------------------------------------------------------------------------------
  // Public operations

  /**
   * Stores a block. Resolves at the policy's durability point (see the file header). A hash already
   * stored (or being stored) is a no-op. Throws LimitExceededError past capacityBytes, blocksMax or
   * recordBytesMax, DiskFullError on ENOSPC/EDQUOT (nothing stored, the log stays usable).
   * NOTE: `payload` is written without a copy; do not change it until the promise settles.
   */
  async append(hash: BlockHash, payload: Uint8Array): Promise<void> {
    this.checkOpen();
    if (blockHashToBytes(hash).length !== 16) {
      throw new InvalidArgumentError(`'${String(hash)}' is not a block hash`, { hash });
    }
    if (!(payload instanceof Uint8Array)) throw new InvalidArgumentError('payload must be a Uint8Array');
    if (payload.length > this.recordBytesMax) {
      throw new LimitExceededError(
        `SSD tier: payload of ${payload.length} bytes is above recordBytesMax ${this.recordBytesMax}`,
        { hash, bytes: payload.length, limit: this.recordBytesMax },
      );
    }
    for (;;) {
      if (this.index.has(hash)) return;
      const pending = this.pendingAppends.get(hash);
      if (pending === undefined) break;
      await pending.catch(() => undefined);
      this.checkOpen();
    }
    if (this.index.size + this.pendingAppends.size >= this.blocksMax) {
      throw new LimitExceededError(
        `SSD tier holds ${this.index.size} blocks, blocksMax is ${this.blocksMax}`,
        {
          hash,
          blocks: this.index.size,
          limit: this.blocksMax,
        },
      );
    }
    const recordBytes = segmentRecordBytes(payload.length);
    if (this.bytesOnDisk + this.bytesReserved + recordBytes > this.capacityBytes) {
      throw new LimitExceededError(
        `SSD tier full: a record of ${recordBytes} bytes does not fit (${this.bytesOnDisk} bytes on disk, ${this.bytesReserved} in flight, capacity ${this.capacityBytes}); remove blocks and compact`,
        {
          hash,
          bytesNeeded: recordBytes,
          bytesUsed: this.bytesOnDisk,
          bytesLive: this.liveBytes(),
          bytesCapacity: this.capacityBytes,
        },
      );
    }
    const sequence = this.sequenceNext++;
    const { buffers } = encodeSegmentRecord(this.hash128, 'put', hash, sequence, payload);
    const written = this.enqueueRecord(buffers, recordBytes, recordBytes, false, (segment, offset) => {
      this.index.set(hash, { segmentId: segment.id, offset, recordBytes, payloadBytes: payload.length });
      segment.puts.add(hash);
      segment.bytesLive += recordBytes;
      segment.records++;
      this.writesDone++;
    });
    this.pendingAppends.set(hash, written);
    try {
      await written;
    } finally {
      this.pendingAppends.delete(hash);
    }
  }

  /**
   * The block's payload, or null when absent. Verifies the record; on a mismatch counts a checksum
   * failure, drops the block (a tombstone keeps it dropped across restarts) and throws
   * CorruptDataError. Never waits for compaction: a read that races a move retries at the new place.
   */
  async read(hash: BlockHash): Promise<Uint8Array | null> {
    return (await this.readPayload(hash, false))?.payload ?? null;
  }

  /**
   * As read(), but the payload lies in memory the log lends out and reuses once `release()` is
   * called: for a caller that is done with the bytes at a known point (e.g. once a socket took
   * them). Same verification, same errors.
   */
  readLent(hash: BlockHash): Promise<LentPayload | null> {
    return this.readPayload(hash, true);
  }

  private async readPayload(hash: BlockHash, lend: boolean): Promise<LentPayload | null> {
    this.checkOpen();
    for (let attempt = 0; ; attempt++) {
      const entry = this.index.get(hash);
      if (entry === undefined) return null;
      let result: RecordRead;
      try {
        result = await this.readRecord(entry, false, lend);
      } catch (err) {
        // The segment was compacted away between the lookup and the open: look again.
        if (this.index.get(hash) !== entry && attempt < READ_RETRIES_MAX) continue;
        throw err;
      }
      if (result.ok && result.header.kind === 'put' && result.header.hash === hash) {
        this.readsDone++;
        return { payload: result.payload, release: result.release };
      }
      if (result.ok) result.release();
      if (this.index.get(hash) !== entry) {
        if (attempt < READ_RETRIES_MAX) continue;
        return null;
      }
      const reason = result.ok ? 'record names another block' : result.reason;
      this.checksumFailures++;
      this.dropCorrupt(hash, entry);
      throw new CorruptDataError(
        `SSD tier: block ${hash} in ${segmentFileName(entry.segmentId)} at offset ${entry.offset} failed verification (${reason}); dropped`,
        { hash, segment: entry.segmentId, offset: entry.offset, reason },
      );
    }
  }

  /** Removes a block; a tombstone record keeps it removed across restarts. False when absent. */
  async remove(hash: BlockHash): Promise<boolean> {
    this.checkOpen();
    for (;;) {
      const waitFor = this.pendingAppends.get(hash) ?? this.moving.get(hash);
      if (waitFor === undefined) break;
      await waitFor.catch(() => undefined);
      this.checkOpen();
    }
    const entry = this.index.get(hash);
    if (entry === undefined) return false;
    this.unindex(hash, entry);
    try {
      await this.appendTombstone(hash, entry.segmentId);
    } catch (err) {
      // Not durable: the block stays, unless its segment went away meanwhile.
      if (!this.index.has(hash) && !this.pendingAppends.has(hash)) {
        const segment = this.segments.get(entry.segmentId);
        if (segment === undefined || segment.retiring) return true;
        this.index.set(hash, entry);
        segment.puts.add(hash);
        segment.bytesLive += entry.recordBytes;
      }
      throw err;
    }
    return true;
  }

  has(hash: BlockHash): boolean {
    return this.index.has(hash);
  }

  hashes(): IterableIterator<BlockHash> {
    return this.index.keys();
  }

  stats(): SegmentLogStats {
    return {
      blocks: this.index.size,
      bytesUsed: this.bytesOnDisk,
      bytesLive: this.liveBytes(),
      bytesCapacity: this.capacityBytes,
      segments: this.segments.size,
      reads: this.readsDone,
      readSyscalls: this.readSyscalls,
      mergedReads: this.mergedReads,
      readAheadReads: this.readAheadReads,
      readAheadHits: this.readAheadHits,
      writes: this.writesDone,
      checksumFailures: this.checksumFailures,
      tornRecordsDropped: this.tornRecordsDropped,
      compactions: this.compactions,
      directIo: this.directIo,
    };
  }

  /** What open() found (foreign and unreadable files, torn tails, damage) and the O_DIRECT verdict. */
  recovery(): Readonly<SegmentLogRecoveryReport> {
    return {
      ...this.report,
      directIoReason: this.directIoReason,
      directWrites: this.directWrites,
      directWritesReason: this.directWritesReason,
    };
  }

  /**
   * Reclaims sealed segments whose dead bytes are above compactGarbageRatio: live records are
   * copied forward into the active segment (fdatasync'd), the manifest drops the segment, then the
   * file is unlinked. The active segment is sealed first when it is itself above the ratio.
   * Resolves to the bytes reclaimed (stats().compactions counts segments). One run at a time: a
   * call during a run joins it. Reads never wait for it.
   * With `roomForBytes` (an append refused for capacity) segments below the ratio are taken too,
   * most garbage first, until a record of that many bytes fits: blocks evicted one by one leave
   * garbage spread too thin for the ratio, and without this the space would never come back.
   */
  compact(roomForBytes?: number): Promise<number> {
    this.checkOpen();
    if (this.compacting === null) {
      this.compacting = this.runCompaction(roomForBytes).finally(() => {
        this.compacting = null;
      });
    }
    return this.compacting;
  }

  /** Waits for queued writes and a running compaction, syncs, writes the manifest, releases the dir. */
  close(): Promise<void> {
    if (this.closed === null) this.closed = this.shutdown();
    return this.closed;
  }

  // -------------------------------------------------------------------------------------------
  // Writing

  private enqueueRecord(
    buffers: Uint8Array[],
    recordBytes: number,
    bytesReserved: number,
    durable: boolean,
    commit: (segment: Segment, offset: number) => void,
  ): Promise<void> {
    this.bytesReserved += bytesReserved;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({
        type: 'record',
        buffers,
        recordBytes,
        bytesReserved,
        durable,
        commit,
        resolve,
        reject,
      });
      void this.pump();
    });
  }

  private enqueueControl(type: ControlWrite['type']): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ type, resolve, reject });
      void this.pump();
    });
  }

  private appendTombstone(hash: BlockHash, target: number, sequence = this.sequenceNext++): Promise<void> {
    const { buffers, recordBytes } = encodeSegmentRecord(
      this.hash128,
      'tombstone',
      hash,
      sequence,
      encodeTombstonePayload(target),
    );
    // NOTE: tombstones pass the capacity check: a full tier must still be able to remove blocks.
    return this.enqueueRecord(buffers, recordBytes, 0, false, (segment, offset) => {
      segment.records++;
      if (this.segmentHeld(target)) {
        this.addTombstone({ hash, sequence, segmentId: segment.id, offset, recordBytes, target });
      }
    });
  }

  /** The single writer: runs queued operations in order, batching consecutive records. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0) {
        const op = this.queue[0] as WriteOp;
        if (op.type !== 'record') {
          this.queue.shift();
          try {
            if (op.type === 'roll') await this.roll();
            else await this.syncActive();
            op.resolve();
          } catch (err) {
            op.reject(err);
          }
          continue;
        }
        if (this.active.sizeBytes > 0 && this.active.sizeBytes + op.recordBytes > this.segmentBytesMax) {
          try {
            await this.roll();
          } catch (err) {
            this.queue.shift();
            this.bytesReserved -= op.bytesReserved;
            op.reject(err);
            continue;
          }
        }
        const batch: RecordWrite[] = [];
        let bytes = 0;
        const recordsMax = this.fsyncPolicy === 'always' ? 1 : BATCH_RECORDS_MAX;
        while (batch.length < recordsMax) {
          const next = this.queue[0];
          if (next === undefined || next.type !== 'record') break;
          if (
            batch.length > 0 &&
            (bytes + next.recordBytes > BATCH_BYTES_MAX ||
              this.active.sizeBytes + bytes + next.recordBytes > this.segmentBytesMax)
          ) {
            break;
          }
          this.queue.shift();
          batch.push(next);
          bytes += next.recordBytes;
        }
        await this.writeBatch(batch, bytes);
      }
    } finally {
      this.pumping = false;
    }
  }

  private async writeBatch(batch: RecordWrite[], bytes: number): Promise<void> {
    const segment = this.active;
    const start = segment.sizeBytes;
    const buffers = batch.flatMap((op) => op.buffers);
    try {
      await this.writeAt(segment, buffers, start, bytes);
      segment.sizeBytes = start + bytes;
      this.bytesOnDisk += bytes;
      segment.dirty = true;
      if (this.fsyncPolicy !== 'interval' || batch.some((op) => op.durable)) await this.syncSegment(segment);
    } catch (err) {
      // NOTE: cut the partial batch off so the next write starts at a record boundary.
      if (segment.sizeBytes > start) {
        this.bytesOnDisk -= segment.sizeBytes - start;
        segment.sizeBytes = start;
      }
      await segment.writer?.truncate(start).catch(() => undefined);
      const code = errnoOf(err);
      const failure =
        code === 'ENOSPC' || code === 'EDQUOT'
          ? new DiskFullError(segment.path, code, bytes)
          : new StorageIoError('write', segment.path, err);
      for (const op of batch) {
        this.bytesReserved -= op.bytesReserved;
        op.reject(failure);
      }
      return;
    }
    segment.settledBytes = segment.sizeBytes;
    let offset = start;
    for (const op of batch) {
      this.bytesReserved -= op.bytesReserved;
      op.commit(segment, offset);
      offset += op.recordBytes;
      op.resolve();
    }
  }

  /**
   * Writes `bytes` at `start` of the segment: through an aligned copy when its writer is O_DIRECT
   * (records are 4096-aligned in offset and length, so the batch is too), else vectored from the
   * caller's buffers. An EINVAL from O_DIRECT switches this log to buffered writes and retries.
   */
  private async writeAt(
    segment: Segment,
    buffers: Uint8Array[],
    start: number,
    bytes: number,
  ): Promise<void> {
    let aligned: Uint8Array | null = null;
    try {
      let source = buffers;
      if (segment.writerDirect) {
        aligned = this.alignedBuffers?.acquire(bytes) ?? null;
        if (aligned === null) {
          await this.useBufferedWriter(segment, 'no 4096-aligned buffer could be found');
        } else {
          let at = 0;
          for (const buffer of buffers) {
            aligned.set(buffer, at);
            at += buffer.length;
          }
          source = [aligned.subarray(0, bytes)];
        }
      }
      const writer = segment.writer as FileHandle;
      let written = 0;
      // A short write (the kernel ran out of room part way) is retried for the rest, which then
      // fails with the real error.
      while (written < bytes) {
        const rest = written === 0 ? source : sliceBuffers(source, written);
        const more = await this.writeVectored(writer, rest, start + written);
        if (more <= 0) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
        written += more;
      }
    } catch (err) {
      if (segment.writerDirect && errnoOf(err) === 'EINVAL') {
        await this.useBufferedWriter(
          segment,
          `EINVAL from an O_DIRECT write to ${segmentFileName(segment.id)}`,
        );
        await this.writeAt(segment, buffers, start, bytes);
        return;
      }
      throw err;
    } finally {
      if (aligned !== null) this.alignedBuffers?.release(aligned);
    }
  }

  /** Opens a segment for appending: O_DIRECT while direct writes work, buffered otherwise. */
  private async openWriter(segment: Segment, create: boolean): Promise<void> {
    const flags = fsConstants.O_RDWR | (create ? fsConstants.O_CREAT | fsConstants.O_EXCL : 0);
    if (this.directWrites) {
      try {
        segment.writer = await open(segment.path, flags | fsConstants.O_DIRECT, 0o644);
        segment.writerDirect = true;
        return;
      } catch (err) {
        if (errnoOf(err) !== 'EINVAL') throw err;
        this.directWrites = false;
        this.directWritesReason = 'the filesystem refuses O_DIRECT writes (EINVAL on open)';
      }
    }
    segment.writer = await open(segment.path, flags, 0o644);
    segment.writerDirect = false;
  }

  private async useBufferedWriter(segment: Segment, reason: string): Promise<void> {
    this.directWrites = false;
    this.directWritesReason = `fell back to buffered writes: ${reason}`;
    const old = segment.writer;
    segment.writer = null;
    await old?.close().catch(() => undefined);
    await this.openWriter(segment, false);
  }

  private async syncSegment(segment: Segment): Promise<void> {
    if (!segment.dirty || segment.writer === null) return;
    await segment.writer.datasync();
    segment.dirty = false;
  }

  private async syncActive(): Promise<void> {
    try {
      await this.syncSegment(this.active);
    } catch (err) {
      throw new StorageIoError('fdatasync', this.active.path, err);
    }
  }

  private onSyncTick(): void {
    if (this.closing || !this.active.dirty) return;
    if (this.queue.some((op) => op.type === 'sync')) return;
    // Errors surface on the next durable operation (close, seal); a failed periodic sync is retried.
    void this.enqueueControl('sync').catch(() => undefined);
  }

  /** Seals the active segment (synced first) and starts the next one. Runs inside the writer. */
  private async roll(): Promise<void> {
    const old = this.active;
    await this.syncActive();
    const next = await this.createSegment(this.nextSegmentId);
    this.nextSegmentId++;
    old.sealed = true;
    const writer = old.writer;
    old.writer = null;
    await writer?.close().catch(() => undefined);
    this.active = next;
    // The manifest is an accelerator for seals: a stale one only makes recovery scan more tails.
    await this.writeManifest().catch(() => undefined);
  }

  private async createSegment(id: number): Promise<Segment> {
    const path = join(this.dir, segmentFileName(id));
    const segment = newSegment(id, path);
    try {
      await this.openWriter(segment, true);
      await fsyncDirectory(this.dir);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new DiskFullError(path, code, 0);
      throw new StorageIoError('create', path, err);
    }
    this.segments.set(id, segment);
    return segment;
  }

  /** Writes the manifest atomically (tmp + fdatasync + rename + dir fsync); serialised. */
  private writeManifest(): Promise<void> {
    const run = this.manifestChain.then(() => this.writeManifestNow());
    this.manifestChain = run.catch(() => undefined);
    return run;
  }

  private async writeManifestNow(): Promise<void> {
    const sealed: ManifestSegment[] = [];
    for (const segment of this.segments.values()) {
      if (!segment.sealed || segment.retiring) continue;
      sealed.push({
        id: segment.id,
        bytes: segment.sizeBytes,
        records: segment.records,
        bytesLive: segment.bytesLive,
        bytesDead: segment.sizeBytes - segment.bytesLive,
      });
    }
    for (const [id, entry] of this.unreadableSegments) {
      if (entry !== null && id < this.active.id) sealed.push(entry);
    }
    sealed.sort((a, b) => a.id - b.id);
    const manifest: SegmentManifest = { tailFrom: this.active.id, sequenceNext: this.sequenceNext, sealed };
    const tmp = join(this.dir, MANIFEST_TMP_FILE);
    try {
      const handle = await open(tmp, 'w');
      try {
        await handle.writeFile(encodeSegmentManifest(this.hash128, manifest));
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(tmp, join(this.dir, MANIFEST_FILE));
      await fsyncDirectory(this.dir);
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new DiskFullError(tmp, code, 0);
      throw new StorageIoError('write manifest', tmp, err);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  /**
   * Reads and verifies one record (header, hash, length, payload checksum). `whole` also returns
   * the header bytes (compaction copies them). The payload is a fresh buffer the caller owns, or with
   * `lend` possibly a view of pooled memory until its release(). The read waits in the read queue
   * until issueReads merges it with its neighbours and issues it.
   */
  private readRecord(entry: IndexEntry, whole: boolean, lend = false): Promise<RecordRead> {
    if (this.readQueue.length >= this.readsQueuedMax) {
      return Promise.reject(
        new LimitExceededError(
          `SSD tier: ${this.readQueue.length} reads already wait (readsQueuedMax ${this.readsQueuedMax})`,
          { queued: this.readQueue.length, limit: this.readsQueuedMax },
        ),
      );
    }
    return new Promise<RecordRead>((resolve, reject) => {
      const read: QueuedRead = {
        segmentId: entry.segmentId,
        offset: entry.offset,
        recordBytes: entry.recordBytes,
        arrival: this.readArrivals++,
        entry,
        whole,
        lend,
        resolve,
        reject,
      };
      // NOTE: compaction's reads (whole) neither use nor start read-ahead: it reads a segment once.
      if (!whole && this.readAheadBytes > 0 && this.directIo && this.readAhead(read)) return;
      this.queueRead(read);
    });
  }

  /**
   * Serves `read` from a read-ahead window that holds its record (true), or finds the reader it
   * continues (one whose reads ended where this one starts, or a few records after) and reads
   * ahead of it (false: the read is the caller's to queue). A read that continues no reader starts
   * a new one. A window the reader moved into is followed by the next, so a sequential reader keeps
   * readAheadBytes read ahead of it.
   */
  private readAhead(read: QueuedRead): boolean {
    const { segmentId, offset, recordBytes } = read;
    const end = offset + recordBytes;
    const span = this.aheadSpans.find(
      (s) => s.segmentId === segmentId && s.offset <= offset && end <= s.offset + s.bytes,
    );
    const stream =
      span?.stream ??
      this.readStreams.find(
        (s) =>
          s.segmentId === segmentId &&
          offset <= s.end &&
          offset >= s.end - READ_STREAM_SLACK_RECORDS * recordBytes,
      );
    this.touchReadStream(stream ?? { segmentId, end });
    if (span !== undefined) {
      this.readAheadHits++;
      span.servedBytes += recordBytes;
      if (span.state === 'ready') this.serveFromSpan(read, span);
      else span.waiters.push(read);
      if (span.servedBytes >= span.bytes) this.dropAheadSpan(span);
    }
    // NOTE: only after the read took its hold on `span`: making room for new windows may drop it.
    if (stream !== undefined) {
      stream.end = Math.max(stream.end, end);
      this.extendReadAhead(stream, end, recordBytes);
    }
    return span !== undefined;
  }

  /**
   * Queues read-ahead windows of `segmentId` until readAheadBytes past `from` are read or being
   * read, within the bytes the segment holds and the bound on bytes held. A window is half of
   * readAheadBytes, in whole records of the reader's size (the records of one model's blocks are
   * all one size, so windows end on record boundaries).
   */
  private extendReadAhead(stream: ReadStream, from: number, recordBytes: number): void {
    const segmentId = stream.segmentId;
    const segment = this.segments.get(segmentId);
    if (segment === undefined || segment.retiring) return;
    const windowBytes = Math.max(1, Math.floor(this.readAheadBytes / 2 / recordBytes)) * recordBytes;
    const target = Math.min(from + this.readAheadBytes, segment.settledBytes);
    let at = Math.max(stream.end, from);
    let queued = false;
    while (at < target) {
      const bytes = Math.min(windowBytes, segment.settledBytes - at);
      if (!this.makeRoomAhead(bytes)) break;
      const span: AheadSpan = {
        stream,
        segmentId,
        offset: at,
        bytes,
        state: 'queued',
        buffer: null,
        got: 0,
        holders: 1,
        servedBytes: 0,
        waiters: [],
      };
      this.aheadSpans.push(span);
      this.aheadQueue.push(span);
      this.aheadBytesHeld += bytes;
      at += bytes;
      queued = true;
    }
    stream.end = Math.max(stream.end, at);
    if (queued) this.queueRead();
  }

  /** Makes `stream` the most recently read one, forgetting the least recently read past the bound. */
  private touchReadStream(stream: ReadStream): void {
    const i = this.readStreams.indexOf(stream);
    if (i >= 0) this.readStreams.splice(i, 1);
    this.readStreams.push(stream);
    if (this.readStreams.length > READ_STREAMS_MAX) this.readStreams.shift();
  }

  /** Drops the oldest windows already read until `bytes` more fit in 4x readAheadBytes. */
  private makeRoomAhead(bytes: number): boolean {
    const limit = 4 * this.readAheadBytes;
    while (this.aheadBytesHeld + bytes > limit) {
      const oldest = this.aheadSpans.find((s) => s.state === 'ready');
      if (oldest === undefined) return false;
      this.dropAheadSpan(oldest);
    }
    return true;
  }

  /** The cache lets go of `span` (its lent payloads and a running read keep their holds). */
  private dropAheadSpan(span: AheadSpan): void {
    const i = this.aheadSpans.indexOf(span);
    if (i < 0) return;
    this.aheadSpans.splice(i, 1);
    this.aheadBytesHeld -= span.bytes;
    this.unholdAheadSpan(span);
  }

  private unholdAheadSpan(span: AheadSpan): void {
    if (--span.holders === 0 && span.buffer !== null) this.alignedBuffers?.release(span.buffer);
  }

  /**
   * Verifies `read`'s record inside a window that was read, as a read of the record alone would. A
   * record that fails is read again on its own before anyone calls it corrupt: a window is a guess
   * made ahead of time, the verdict belongs to a read made for the record.
   */
  private serveFromSpan(read: QueuedRead, span: AheadSpan): void {
    try {
      const buffer = span.buffer as Uint8Array;
      const result = this.verifyRecord(read, buffer, read.offset - span.offset, span.got, !read.lend);
      if (!result.ok) {
        this.queueRead(read);
        return;
      }
      if (read.lend) {
        span.holders++;
        result.release = once(() => this.unholdAheadSpan(span));
      }
      read.resolve(result);
    } catch (err) {
      read.reject(err);
    }
  }

  /** One kernel read of a read-ahead window, then the reads that waited for it are served. */
  private async readAheadSpan(span: AheadSpan): Promise<void> {
    span.state = 'reading';
    span.holders++;
    let handle: ReadHandle | undefined;
    try {
      handle = await this.acquireReader(span.segmentId);
      const file = await handle.opened;
      if (!handle.direct) throw new Error('O_DIRECT reads were turned off');
      span.buffer = this.alignedBuffers?.acquire(span.bytes) ?? null;
      if (span.buffer === null) throw new Error('no 4096-aligned buffer could be found');
      this.readAheadReads++;
      span.got = await this.readSpan(file, span.buffer.subarray(0, span.bytes), span.offset);
      span.state = 'ready';
      for (const read of span.waiters.splice(0)) this.serveFromSpan(read, span);
    } catch {
      // A window is only a guess: the reads that waited go their own way (and meet the error, if
      // it was the device's); the window is forgotten.
      span.state = 'failed';
      this.dropAheadSpan(span);
      const waiters = span.waiters.splice(0);
      if (waiters.length > 0) this.queueRead(...waiters);
    } finally {
      if (handle !== undefined) this.releaseReader(handle);
      this.unholdAheadSpan(span);
    }
  }

  /** Forgets the read-ahead windows of a segment that goes away (their waiters read on their own). */
  private dropReadAheadOf(segmentId: number): void {
    this.readStreams = this.readStreams.filter((s) => s.segmentId !== segmentId);
    for (const span of this.aheadSpans.filter((s) => s.segmentId === segmentId)) {
      this.dropAheadSpan(span);
      if (span.state !== 'queued') continue; // a running read still serves its waiters
      this.aheadQueue = this.aheadQueue.filter((s) => s !== span);
      const waiters = span.waiters.splice(0);
      if (waiters.length > 0) this.queueRead(...waiters);
    }
  }

  /**
   * Queues reads and issues them once the current task's microtasks ran, so that reads started
   * together (a multi-hash request, compaction's window) are planned together. A lone read is
   * issued at once in all but name: the microtask runs before any I/O callback.
   */
  private queueRead(...reads: QueuedRead[]): void {
    this.readQueue.push(...reads);
    if (this.readFlushScheduled) return;
    this.readFlushScheduled = true;
    queueMicrotask(() => {
      this.readFlushScheduled = false;
      this.issueReads();
    });
  }

  /**
   * The read elevator: while fewer than readsInFlightMax kernel reads run, plans everything queued
   * into spans (oldest first, merged only as far as the free slots require) and issues as many as
   * there are free slots. Reads that come in while the slots are busy queue up and merge, which is
   * what turns a burst of small reads of neighbouring records into a few large ones.
   */
  private issueReads(): void {
    if (this.readersReleased) {
      this.failQueuedReads();
      return;
    }
    // Read-ahead windows go first: readers are waiting on them or about to be.
    while (this.aheadQueue.length > 0 && this.readsInFlight < this.readsInFlightMax) {
      const span = this.aheadQueue.shift() as AheadSpan;
      this.readsInFlight++;
      void this.readAheadSpan(span).finally(() => {
        this.readsInFlight--;
        this.issueReads();
      });
    }
    const slots = this.readsInFlightMax - this.readsInFlight;
    if (this.readQueue.length === 0 || slots <= 0) return;
    const runs = planMergedReads(this.readQueue, this.readMergeBytesMax, slots);
    const issued = runs.length <= slots ? runs : runs.slice(0, slots);
    if (issued.length === runs.length) {
      this.readQueue = [];
    } else {
      const taken = new Set<QueuedRead>(issued.flatMap((run) => run.members));
      this.readQueue = this.readQueue.filter((read) => !taken.has(read));
    }
    for (const run of issued) {
      this.readsInFlight++;
      void this.readRun(run).finally(() => {
        this.readsInFlight--;
        this.issueReads();
      });
    }
  }

  private failQueuedReads(): void {
    const queued = this.readQueue;
    this.readQueue = [];
    for (const span of this.aheadQueue.splice(0)) {
      this.dropAheadSpan(span);
      queued.push(...span.waiters.splice(0));
    }
    for (const read of queued) read.reject(new SegmentLogClosedError(this.dir));
  }

  /** One kernel read of a run's span, then each record in it verified and handed out on its own. */
  private async readRun(run: MergedRecordRead<QueuedRead>): Promise<void> {
    const members = run.members;
    let handle: ReadHandle;
    try {
      handle = await this.acquireReader(run.segmentId);
    } catch (err) {
      for (const read of members) read.reject(err);
      return;
    }
    let aligned: Uint8Array | null = null;
    let pooled = false;
    // A pooled span goes back to the pool when this run and every payload lent from it let go.
    let holders = 1;
    const letGo = (): void => {
      if (--holders === 0 && pooled && aligned !== null) this.alignedBuffers?.release(aligned);
    };
    try {
      const file = await handle.opened;
      const last = members[members.length - 1] as QueuedRead;
      // Buffered reads stop at the last payload byte; O_DIRECT reads whole (aligned) records.
      const length = handle.direct
        ? run.bytes
        : last.offset + SEGMENT_RECORD_HEADER_BYTES + last.entry.payloadBytes - run.offset;
      // A run with a lent read takes its span from the pool (lent payloads are views, the others
      // copies). Otherwise, with an allocator, the span is fresh memory and each payload a view of
      // it (no copy, no pool); else it comes from the pool and each payload is copied out.
      const lending = members.some((read) => read.lend);
      if (handle.direct || lending) {
        if (handle.direct && !lending) aligned = this.alignedBuffers?.acquireUnpooled(length) ?? null;
        if (aligned === null) {
          aligned = this.alignedBuffers?.acquire(length) ?? null;
          pooled = aligned !== null;
        }
      }
      if (handle.direct && aligned === null) {
        this.disableDirectIo('no 4096-aligned buffer could be found');
        this.queueRead(...members);
        return;
      }
      const bytes = aligned !== null ? aligned.subarray(0, length) : uninitialized(length);
      let got: number;
      try {
        got = await this.readSpan(file, bytes, run.offset);
      } catch (err) {
        if (handle.direct && errnoOf(err) === 'EINVAL') {
          this.disableDirectIo(`EINVAL from an O_DIRECT read of ${segmentFileName(run.segmentId)}`);
          this.queueRead(...members);
          return;
        }
        const failure = new StorageIoError('read', join(this.dir, segmentFileName(run.segmentId)), err);
        for (const read of members) read.reject(failure);
        return;
      }
      if (members.length > 1) this.mergedReads++;
      for (const read of members) {
        try {
          const lent = pooled && read.lend;
          const result = this.verifyRecord(read, bytes, read.offset - run.offset, got, pooled && !lent);
          if (result.ok && lent) {
            holders++;
            result.release = once(letGo);
          }
          read.resolve(result);
        } catch (err) {
          read.reject(err);
        }
      }
    } catch (err) {
      // Unexpected (e.g. the allocator failed): every read not yet answered gets the error.
      for (const read of members) read.reject(err);
    } finally {
      letGo();
      this.releaseReader(handle);
    }
  }

  /** Like readFully, counting each kernel read. */
  private async readSpan(file: FileHandle, buffer: Uint8Array, position: number): Promise<number> {
    let done = 0;
    while (done < buffer.length) {
      this.readSyscalls++;
      const { bytesRead } = await file.read(buffer, done, buffer.length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  /**
   * Checks one record inside a span read, exactly as a read of the record alone would: header,
   * length, payload checksum. The record starts `at` bytes into `span`, of which `got` were read.
   * `copy`: the span goes back to the buffer pool, so what the caller keeps is a copy.
   */
  private verifyRecord(
    read: QueuedRead,
    span: Uint8Array,
    at: number,
    got: number,
    copy: boolean,
  ): RecordRead {
    const { entry, whole } = read;
    const end = at + SEGMENT_RECORD_HEADER_BYTES + entry.payloadBytes;
    if (got < end) return { ok: false, reason: 'record cut short' };
    const decoded = decodeSegmentRecordHeader(
      this.hash128,
      span.subarray(at, at + SEGMENT_RECORD_HEADER_BYTES),
    );
    if (!decoded.ok) return { ok: false, reason: decoded.reason };
    if (decoded.header.payloadBytes !== entry.payloadBytes) return { ok: false, reason: 'length mismatch' };
    let payload = span.subarray(at + SEGMENT_RECORD_HEADER_BYTES, end);
    if (!verifySegmentPayload(this.hash128, decoded.header, payload))
      return { ok: false, reason: 'payload-checksum' };
    // NOTE: an aligned buffer goes back to the pool, so what the caller keeps is a copy.
    if (copy) payload = new Uint8Array(payload);
    const headerBytes = whole
      ? new Uint8Array(span.subarray(at, at + SEGMENT_RECORD_HEADER_BYTES))
      : new Uint8Array(0);
    return { ok: true, header: decoded.header, headerBytes, payload, release: NO_RELEASE };
  }

  private acquireReader(id: number): Promise<ReadHandle> {
    let handle = this.readers.get(id);
    if (handle !== undefined && handle.direct !== this.directIo) {
      this.retireReader(handle);
      handle = undefined;
    }
    if (handle === undefined) {
      const path = join(this.dir, segmentFileName(id));
      const flags = fsConstants.O_RDONLY | (this.directIo ? fsConstants.O_DIRECT : 0);
      const opened = open(path, flags);
      handle = { id, direct: this.directIo, opened, refs: 0, retired: false };
      opened.catch(() => undefined);
      this.evictReaders();
    } else {
      this.readers.delete(id); // re-inserted below: the map's order is least-recently-used first
    }
    this.readers.set(id, handle);
    handle.refs++;
    const acquired = handle;
    return acquired.opened.then(
      () => acquired,
      (err: unknown) => {
        acquired.refs--;
        this.retireReader(acquired);
        throw new StorageIoError('open', join(this.dir, segmentFileName(id)), err);
      },
    );
  }

  private releaseReader(handle: ReadHandle): void {
    handle.refs--;
    if (handle.retired && handle.refs === 0) closeReader(handle);
  }

  private retireReader(handle: ReadHandle): void {
    if (handle.retired) return;
    handle.retired = true;
    if (this.readers.get(handle.id) === handle) this.readers.delete(handle.id);
    if (handle.refs === 0) closeReader(handle);
  }

  private evictReaders(): void {
    if (this.readers.size < this.openSegmentsMax) return;
    for (const handle of this.readers.values()) {
      if (this.readers.size < this.openSegmentsMax) break;
      if (handle.refs === 0) this.retireReader(handle);
    }
  }

  private disableDirectIo(reason: string): void {
    if (!this.directIo) return;
    this.directIo = false;
    this.directIoReason = `fell back to buffered reads: ${reason}`;
  }

  // -------------------------------------------------------------------------------------------
  // Index bookkeeping

  private liveBytes(): number {
    let live = 0;
    for (const segment of this.segments.values()) live += segment.bytesLive;
    return live;
  }

  /** The segment file still exists (readable or not): tombstones aimed at it stay live. */
  private segmentHeld(id: number): boolean {
    const segment = this.segments.get(id);
    return (segment !== undefined && !segment.retiring) || this.unreadableSegments.has(id);
  }

  private unindex(hash: BlockHash, entry: IndexEntry): void {
    this.index.delete(hash);
    const segment = this.segments.get(entry.segmentId);
    if (segment !== undefined && segment.puts.delete(hash)) segment.bytesLive -= entry.recordBytes;
  }

  private addTombstone(tombstone: TombstoneEntry): void {
    const segment = this.segments.get(tombstone.segmentId);
    if (segment === undefined) return;
    segment.tombstones.set(tombstone.offset, tombstone);
    segment.bytesLive += tombstone.recordBytes;
    let set = this.tombstonesByTarget.get(tombstone.target);
    if (set === undefined) this.tombstonesByTarget.set(tombstone.target, (set = new Set()));
    set.add(tombstone);
  }

  private dropTombstone(tombstone: TombstoneEntry): void {
    const segment = this.segments.get(tombstone.segmentId);
    if (segment !== undefined && segment.tombstones.delete(tombstone.offset)) {
      segment.bytesLive -= tombstone.recordBytes;
    }
    const set = this.tombstonesByTarget.get(tombstone.target);
    set?.delete(tombstone);
    if (set?.size === 0) this.tombstonesByTarget.delete(tombstone.target);
  }

  /** A block that failed verification: gone from the index now, a tombstone keeps it gone. */
  private dropCorrupt(hash: BlockHash, entry: IndexEntry): void {
    this.unindex(hash, entry);
    const tombstone = this.appendTombstone(hash, entry.segmentId).catch(() => undefined);
    this.background.add(tombstone);
    void tombstone.finally(() => this.background.delete(tombstone));
  }

  // -------------------------------------------------------------------------------------------
  // Compaction

  private garbageRatio(segment: Segment): number {
    return segment.sizeBytes === 0 ? 0 : (segment.sizeBytes - segment.bytesLive) / segment.sizeBytes;
  }

  private async runCompaction(roomForBytes: number | undefined): Promise<number> {
    const fits = (): boolean =>
      roomForBytes !== undefined &&
      this.bytesOnDisk + this.bytesReserved + roomForBytes <= this.capacityBytes;
    // Below the ratio a segment is only worth copying when an append is waiting for its garbage.
    const ratioMin = roomForBytes === undefined || fits() ? this.compactGarbageRatio : 0;
    if (this.active.sizeBytes > 0 && this.garbageRatio(this.active) > ratioMin) {
      await this.enqueueControl('roll');
    }
    const candidates = [...this.segments.values()]
      .filter((s) => s.sealed && !s.retiring && (s.sizeBytes === 0 || this.garbageRatio(s) > ratioMin))
      .sort((a, b) => this.garbageRatio(b) - this.garbageRatio(a));
    let reclaimed = 0;
    for (const segment of candidates) {
      if (this.closing) break;
      // NOTE: only the capacity-driven pass stops early; it copies no more than the append needs.
      if (
        ratioMin < this.compactGarbageRatio &&
        this.garbageRatio(segment) <= this.compactGarbageRatio &&
        fits()
      )
        break;
      reclaimed += await this.compactSegment(segment);
    }
    return reclaimed;
  }

  private async compactSegment(segment: Segment): Promise<number> {
    const puts = [...segment.puts];
    for (let i = 0; i < puts.length; i += COMPACT_WINDOW) {
      await Promise.all(puts.slice(i, i + COMPACT_WINDOW).map((hash) => this.moveRecord(hash, segment)));
    }
    const tombstones = [...segment.tombstones.values()];
    for (let i = 0; i < tombstones.length; i += COMPACT_WINDOW) {
      await Promise.all(tombstones.slice(i, i + COMPACT_WINDOW).map((t) => this.moveTombstone(t, segment)));
    }
    if (segment.puts.size > 0 || segment.tombstones.size > 0) {
      throw new StorageIoError('compact', segment.path, new Error('live records remain after the copy'));
    }
    // NOTE: the manifest must stop naming the segment before it is unlinked; a crash in between
    // leaves a leftover file that recovery removes (everything live in it was copied and synced).
    segment.retiring = true;
    try {
      await this.writeManifest();
    } catch (err) {
      segment.retiring = false;
      throw err;
    }
    this.segments.delete(segment.id);
    for (const tombstone of this.tombstonesByTarget.get(segment.id) ?? []) this.dropTombstone(tombstone);
    this.tombstonesByTarget.delete(segment.id);
    this.bytesOnDisk -= segment.sizeBytes;
    this.dropReadAheadOf(segment.id);
    const reader = this.readers.get(segment.id);
    if (reader !== undefined) this.retireReader(reader);
    await unlink(segment.path).catch(() => undefined);
    await fsyncDirectory(this.dir).catch(() => undefined);
    this.compactions++;
    return segment.sizeBytes;
  }

  private async moveRecord(hash: BlockHash, from: Segment): Promise<void> {
    const entry = this.index.get(hash);
    if (entry === undefined || entry.segmentId !== from.id || this.moving.has(hash)) return;
    let done!: () => void;
    this.moving.set(
      hash,
      new Promise<void>((resolve) => {
        done = resolve;
      }),
    );
    try {
      const record = await this.readRecord(entry, true);
      if (this.index.get(hash) !== entry) return;
      if (!record.ok || record.header.hash !== hash) {
        // Damaged: it goes away with its segment, nothing to copy.
        this.checksumFailures++;
        this.unindex(hash, entry);
        return;
      }
      const pad = new Uint8Array(entry.recordBytes - SEGMENT_RECORD_HEADER_BYTES - entry.payloadBytes);
      const buffers = [record.headerBytes, record.payload, pad];
      // NOTE: copied unchanged, sequence included, so a tombstone written later still wins.
      await this.enqueueRecord(buffers, entry.recordBytes, 0, true, (to, offset) => {
        to.records++;
        if (this.index.get(hash) !== entry) return;
        this.unindex(hash, entry);
        this.index.set(hash, { ...entry, segmentId: to.id, offset });
        to.puts.add(hash);
        to.bytesLive += entry.recordBytes;
      });
    } finally {
      this.moving.delete(hash);
      done();
    }
  }

  private async moveTombstone(tombstone: TombstoneEntry, from: Segment): Promise<void> {
    if (tombstone.target === from.id || !this.segmentHeld(tombstone.target)) {
      this.dropTombstone(tombstone);
      return;
    }
    const { buffers, recordBytes } = encodeSegmentRecord(
      this.hash128,
      'tombstone',
      tombstone.hash,
      tombstone.sequence,
      encodeTombstonePayload(tombstone.target),
    );
    await this.enqueueRecord(buffers, recordBytes, 0, true, (to, offset) => {
      to.records++;
      this.dropTombstone(tombstone);
      if (this.segmentHeld(tombstone.target)) {
        this.addTombstone({ ...tombstone, segmentId: to.id, offset });
      }
    });
  }

  // -------------------------------------------------------------------------------------------
  // Open, recovery, close

  private async probeDirectIo(): Promise<void> {
    if (!this.directIo) return;
    this.directIo = false;
    const path = join(this.dir, `.direct-probe-${process.pid}`);
    try {
      await writeWhole(path, randomBytes(SEGMENT_RECORD_ALIGN_BYTES));
      const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECT).catch((err: unknown) => {
        this.directIoReason = `the filesystem refuses O_DIRECT (${errnoOf(err) ?? String(err)})`;
        return null;
      });
      if (handle === null) return;
      // NOTE: the probe file is unlinked at once; the descriptor keeps it readable for later probes.
      this.probeFd = handle.fd;
      this.probeHandle = handle;
      this.alignedBuffers = new AlignedBuffers(this.probeFd, this.allocate);
      const buffer = this.alignedBuffers.acquire(SEGMENT_RECORD_ALIGN_BYTES);
      if (buffer === null) {
        this.directIoReason = 'no O_DIRECT read succeeded at any buffer alignment (EINVAL)';
        return;
      }
      this.alignedBuffers.release(buffer);
      this.directIo = true;
      this.directWrites = true;
      this.directWritesReason = 'O_DIRECT';
      this.directIoReason = this.allocate
        ? 'O_DIRECT with the injected allocator'
        : 'O_DIRECT with probed alignment';
    } catch (err) {
      this.directIoReason = `O_DIRECT probe failed: ${(err as Error).message}`;
    } finally {
      await unlink(path).catch(() => undefined);
    }
  }

  private async recover(): Promise<void> {
    const report: SegmentLogRecoveryReport = {
      manifest: 'absent',
      foreignFiles: [],
      unreadableFiles: [],
      missingSegments: [],
      truncatedSegments: [],
      leftoverSegmentsRemoved: [],
      tornTails: [],
      damagedRegions: [],
      blocks: 0,
      directIoReason: this.directIoReason,
      directWrites: this.directWrites,
      directWritesReason: this.directWritesReason,
    };
    this.report = report;
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      throw new StorageIoError('readdir', this.dir, err);
    }
    const ids: number[] = [];
    for (const name of names) {
      const id = parseSegmentFileName(name);
      if (id !== null) ids.push(id);
      else if (name === MANIFEST_TMP_FILE || PROBE_FILE.test(name)) {
        if (name !== `.direct-probe-${process.pid}`)
          await unlink(join(this.dir, name)).catch(() => undefined);
      } else if (name !== MANIFEST_FILE && name !== LOCK_FILE) report.foreignFiles.push(name);
    }
    ids.sort((a, b) => a - b);

    const manifest = await this.readManifest(report);
    const sealedById = new Map((manifest?.sealed ?? []).map((s) => [s.id, s]));
    const tailFrom = manifest?.tailFrom ?? 0;
    const scans = new Map<number, ScannedRecord[]>();
    for (const id of ids) {
      const path = join(this.dir, segmentFileName(id));
      const listed = sealedById.get(id);
      if (id < tailFrom && listed === undefined) {
        try {
          await unlink(path);
          report.leftoverSegmentsRemoved.push(id);
        } catch (err) {
          report.unreadableFiles.push({ name: segmentFileName(id), error: (err as Error).message });
          this.unreadableSegments.set(id, null);
        }
        continue;
      }
      try {
        const { records, sizeBytes } =
          listed !== undefined
            ? await this.scanSealed(id, path, listed, report)
            : await this.scanTail(id, path, report);
        scans.set(id, records);
        const segment = newSegment(id, path);
        segment.sizeBytes = sizeBytes;
        segment.settledBytes = sizeBytes;
        segment.records = records.length;
        segment.sealed = true;
        this.segments.set(id, segment);
        this.bytesOnDisk += sizeBytes;
      } catch (err) {
        if (err instanceof SegmentFormatVersionError) throw err;
        report.unreadableFiles.push({ name: segmentFileName(id), error: (err as Error).message });
        this.unreadableSegments.set(id, listed ?? null);
      }
    }
    for (const listed of sealedById.values()) {
      if (!ids.includes(listed.id)) report.missingSegments.push(listed.id);
    }

    // For each hash the record with the highest sequence wins (ties: the later segment, a copy).
    let sequenceMax = -1n;
    const winners = new Map<BlockHash, { segmentId: number; record: ScannedRecord }>();
    for (const [segmentId, records] of scans) {
      for (const record of records) {
        const { hash, sequence } = record.header;
        if (sequence > sequenceMax) sequenceMax = sequence;
        const current = winners.get(hash);
        if (
          current === undefined ||
          sequence > current.record.header.sequence ||
          (sequence === current.record.header.sequence && segmentId > current.segmentId)
        ) {
          winners.set(hash, { segmentId, record });
        }
      }
    }
    for (const [hash, { segmentId, record }] of winners) {
      if (record.header.kind !== 'put') continue;
      const segment = this.segments.get(segmentId) as Segment;
      this.index.set(hash, {
        segmentId,
        offset: record.offset,
        recordBytes: record.recordBytes,
        payloadBytes: record.header.payloadBytes,
      });
      segment.puts.add(hash);
      segment.bytesLive += record.recordBytes;
    }
    for (const [segmentId, records] of scans) {
      for (const record of records) {
        if (record.header.kind !== 'tombstone' || record.tombstoneTarget === undefined) continue;
        if (!this.segmentHeld(record.tombstoneTarget)) continue;
        this.addTombstone({
          hash: record.header.hash,
          sequence: record.header.sequence,
          segmentId,
          offset: record.offset,
          recordBytes: record.recordBytes,
          target: record.tombstoneTarget,
        });
      }
    }
    report.blocks = this.index.size;
    const sequenceFloor = manifest?.sequenceNext ?? 0n;
    this.sequenceNext = sequenceMax + 1n > sequenceFloor ? sequenceMax + 1n : sequenceFloor;

    // Keep appending to the newest tail when it is the newest segment file of all; else start one.
    const highest = Math.max(-1, tailFrom - 1, ...ids);
    const newest = this.segments.get(highest);
    if (newest !== undefined && newest.id >= tailFrom) {
      try {
        await this.openWriter(newest, false);
      } catch (err) {
        throw new StorageIoError('open', newest.path, err);
      }
      newest.sealed = false;
      this.active = newest;
      this.nextSegmentId = highest + 1;
    } else {
      this.nextSegmentId = highest + 1;
      this.active = await this.createSegment(this.nextSegmentId++);
    }
    await this.writeManifest();
  }

  private async readManifest(report: SegmentLogRecoveryReport): Promise<SegmentManifest | null> {
    let text: string;
    try {
      text = await readFile(join(this.dir, MANIFEST_FILE), 'utf8');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return null;
      report.manifest = 'corrupt';
      report.manifestError = (err as Error).message;
      return null;
    }
    try {
      const manifest = parseSegmentManifest(this.hash128, text);
      report.manifest = 'loaded';
      return manifest;
    } catch (err) {
      if (err instanceof SegmentFormatVersionError) throw err;
      // Every segment is then scanned in full as a tail: slower, never wrong.
      report.manifest = 'corrupt';
      report.manifestError = (err as Error).message;
      return null;
    }
  }

  /** Rebuilds a sealed segment's records from its headers: one 4 KiB read per record. */
  private async scanSealed(
    id: number,
    path: string,
    listed: ManifestSegment,
    report: SegmentLogRecoveryReport,
  ): Promise<{ records: ScannedRecord[]; sizeBytes: number }> {
    const file = await open(path, 'r');
    try {
      const sizeBytes = (await file.stat()).size;
      if (sizeBytes < listed.bytes) report.truncatedSegments.push(id);
      const end = Math.min(sizeBytes, listed.bytes);
      const records: ScannedRecord[] = [];
      const head = new Uint8Array(SEGMENT_RECORD_ALIGN_BYTES);
      let offset = 0;
      while (offset < end) {
        const got = await readFully(file, head, offset);
        const decoded = decodeSegmentRecordHeader(
          this.hash128,
          head.subarray(0, Math.min(got, SEGMENT_RECORD_HEADER_BYTES)),
        );
        if (decoded.ok) {
          const recordBytes = segmentRecordBytes(decoded.header.payloadBytes);
          if (offset + recordBytes <= end) {
            const record: ScannedRecord = { offset, recordBytes, header: decoded.header };
            if (decoded.header.kind === 'tombstone') {
              const payload = head.subarray(SEGMENT_RECORD_HEADER_BYTES, SEGMENT_RECORD_HEADER_BYTES + 8);
              if (!verifySegmentPayload(this.hash128, decoded.header, payload)) {
                report.damagedRegions.push({
                  segment: id,
                  offset,
                  bytes: recordBytes,
                  reason: 'payload-checksum',
                });
                offset += recordBytes;
                continue;
              }
              record.tombstoneTarget = decodeTombstonePayload(payload);
            }
            records.push(record);
            offset += recordBytes;
            continue;
          }
        } else if (decoded.reason === 'newer-version') {
          throw new SegmentFormatVersionError('record', decoded.version ?? 0, SEGMENT_FORMAT_VERSION, {
            segment: id,
            offset,
          });
        }
        // Damage inside a sealed segment: read the rest and resynchronise on the 4 KiB boundaries.
        const rest = new Uint8Array(end - offset);
        await readFully(file, rest, offset);
        const scan = scanSegmentRecords(this.hash128, rest, { verifyPayloads: false, baseOffset: offset });
        if (scan.newerVersion) {
          throw new SegmentFormatVersionError('record', scan.newerVersion.version, SEGMENT_FORMAT_VERSION, {
            segment: id,
            offset: scan.newerVersion.offset,
          });
        }
        records.push(...scan.records);
        for (const region of scan.damaged) report.damagedRegions.push({ segment: id, ...region });
        if (scan.torn) {
          report.damagedRegions.push({
            segment: id,
            offset: scan.validBytes,
            bytes: end - scan.validBytes,
            reason: scan.tornReason ?? 'short',
          });
        }
        break;
      }
      return { records, sizeBytes };
    } finally {
      await file.close();
    }
  }

  /** Reads a tail whole, verifies every record, truncates a torn end, syncs what stays. */
  private async scanTail(
    id: number,
    path: string,
    report: SegmentLogRecoveryReport,
  ): Promise<{ records: ScannedRecord[]; sizeBytes: number }> {
    const file = await open(path, 'r+');
    try {
      const size = (await file.stat()).size;
      if (size > TAIL_BYTES_MAX) throw new Error(`tail segment of ${size} bytes is too large to scan`);
      const bytes = new Uint8Array(size);
      const got = await readFully(file, bytes, 0);
      const scan = scanSegmentRecords(this.hash128, bytes.subarray(0, got), { verifyPayloads: true });
      if (scan.newerVersion) {
        throw new SegmentFormatVersionError('record', scan.newerVersion.version, SEGMENT_FORMAT_VERSION, {
          segment: id,
          offset: scan.newerVersion.offset,
        });
      }
      for (const region of scan.damaged) {
        report.damagedRegions.push({ segment: id, ...region });
        if (region.reason === 'payload-checksum') this.checksumFailures++;
      }
      let sizeBytes = size;
      if (scan.torn || scan.validBytes < size) {
        await file.truncate(scan.validBytes);
        this.tornRecordsDropped++;
        report.tornTails.push({
          segment: id,
          offset: scan.validBytes,
          bytesDropped: size - scan.validBytes,
          reason: scan.tornReason ?? 'short',
        });
        sizeBytes = scan.validBytes;
      }
      // NOTE: acks under 'interval' may sit in the page cache only; the tail is sealed or appended
      // to from here on, so make what it holds durable now.
      await file.datasync();
      return { records: scan.records, sizeBytes };
    } finally {
      await file.close();
    }
  }

  private checkOpen(): void {
    if (this.closing) throw new SegmentLogClosedError(this.dir);
  }

  private async shutdown(): Promise<void> {
    this.closing = true;
    if (this.syncTimer !== null) clearInterval(this.syncTimer);
    this.syncTimer = null;
    await this.compacting?.catch(() => undefined);
    await Promise.allSettled([...this.pendingAppends.values()]);
    await Promise.allSettled([...this.background]);
    let failure: unknown;
    try {
      await this.enqueueControl('sync');
      await this.writeManifest();
    } catch (err) {
      failure = err;
    }
    await this.releaseResources();
    if (failure !== undefined) throw failure;
  }

  private async releaseResources(): Promise<void> {
    this.closing = true;
    for (const segment of this.segments.values()) {
      const writer = segment.writer;
      segment.writer = null;
      await writer?.close().catch(() => undefined);
    }
    this.readersReleased = true;
    this.failQueuedReads();
    for (const handle of [...this.readers.values()]) this.retireReader(handle);
    await this.probeHandle?.close().catch(() => undefined);
    this.probeHandle = null;
    await unlink(this.lockPath).catch(() => undefined);
  }
}

function newSegment(id: number, path: string): Segment {
  return {
    id,
    path,
    sizeBytes: 0,
    settledBytes: 0,
    bytesLive: 0,
    records: 0,
    sealed: false,
    retiring: false,
    writer: null,
    writerDirect: false,
    dirty: false,
    puts: new Set(),
    tombstones: new Map(),
  };
}

/** `fn` on the first call only (a lent payload released twice must not free its span twice). */
function once(fn: () => void): () => void {
  let called = false;
  return () => {
    if (called) return;
    called = true;
    fn();
  };
}

/** Fresh memory without zero-filling (it is read into at once) and outside Buffer's shared pool. */
function uninitialized(bytes: number): Uint8Array {
  const raw = Buffer.allocUnsafeSlow(bytes);
  return new Uint8Array(raw.buffer, raw.byteOffset, bytes);
}

function closeReader(handle: ReadHandle): void {
  handle.opened.then(
    (file) => file.close().catch(() => undefined),
    () => undefined,
  );
}

/** The buffers from byte `skip` on (the rest of a short vectored write). */
function sliceBuffers(buffers: Uint8Array[], skip: number): Uint8Array[] {
  const rest: Uint8Array[] = [];
  let left = skip;
  for (const buffer of buffers) {
    if (left >= buffer.length) {
      left -= buffer.length;
      continue;
    }
    rest.push(left > 0 ? buffer.subarray(left) : buffer);
    left = 0;
  }
  return rest;
}

async function writeWhole(path: string, bytes: Uint8Array): Promise<void> {
  const handle = await open(path, 'w');
  try {
    await handle.writeFile(bytes);
  } finally {
    await handle.close();
  }
}
