// The tiering policy of one host: demote puts a block into far memory or the SSD tier, a far memory
// that is full demotes its least recently used blocks to SSD until the new block fits, read serves a
// block and keeps it, promote serves it and removes it. Far memory is checked before SSD (it is the
// faster copy). Every block served is verified first: record head checksum and identity, and the
// payload's section checksums (far memory) or the SSD record checksum over the whole record (the SSD
// tier checks it on every read); a block that fails is dropped from its tier, counted as a checksum
// failure and reported missing, never served.
// Durability: a far-memory demote is acknowledged once its bytes are written into the pool; an SSD
// demote once SsdTier.append resolved. A block demoted from far to SSD leaves far memory only after
// its append resolved, so an acknowledged block is held by some tier at every moment.
// The SSD tier is a cache too: an append it refuses for capacity evicts its least recently appended or
// read blocks (never one being read) until the live bytes leave room, and is tried once more (the
// SSD tier compacts then: log-structured space only comes back by compaction). An evicted block is
// simply missing afterwards.
// Pure: the pool region, the SSD tier and the kernels are injected; no transport or file access here.
import { verifyBlockPayload } from '@kvmesh/block';
import { CorruptDataError, InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import type { Kernels } from '@kvmesh/kernels';
import type { BlockHash } from '@kvmesh/protocol';

import { FarMemoryFullError, TierUnavailableError } from './errors.ts';
import { alignUp, type FarEntry, type FarPool } from './far-pool.ts';
import type { ReusableBuffers } from './reusable-buffers.ts';
import {
  decodeRecord,
  decodeRecordMeta,
  encodeRecord,
  encodeRecordHead,
  recordLayout,
  type TierBlock,
  type TierBlockMeta,
} from './tier-record.ts';

export type TierName = 'far' | 'ssd';

/** Bytes a tier lends out: valid until release() is called (once); never released, the GC frees them. */
export interface LentBytes {
  readonly payload: Uint8Array;
  release(): void;
}

/** What the policy needs of the SSD tier (the SegmentLog implements it, read as readLent). */
export interface SsdTier {
  append(hash: BlockHash, payload: Uint8Array): Promise<void>;
  /**
   * The verified record, in memory lent until its release(). Throws a CorruptDataError-kind error
   * on a checksum mismatch (the entry is dropped).
   */
  read(hash: BlockHash): Promise<LentBytes | null>;
  remove(hash: BlockHash): Promise<boolean>;
  has(hash: BlockHash): boolean;
  /** Every block held (at construction the policy takes these as its coldest, in this order). */
  hashes(): Iterable<BlockHash>;
  stats(): {
    blocks: number;
    bytesUsed: number;
    /** Bytes of the blocks held; bytesUsed also counts dead records not yet compacted away. */
    bytesLive: number;
    bytesCapacity: number;
    reads: number;
    writes: number;
    checksumFailures: number;
  };
}

export interface FarTier {
  /** The pool's bytes (a shared mapping, or process memory in the fallback). */
  readonly region: Uint8Array;
  readonly pool: FarPool;
}

/**
 * Room after the far-memory pool, in the same mapping, where stage() copies SSD blocks for same-host
 * readers: a copy is leased while read, and the least recently used unleased copy makes room first.
 * A copy is a cache of the SSD record, never the only one: it is dropped, not demoted.
 */
export interface StageArea {
  /** The area's bytes: a view of the mapping starting `offset` bytes into it. */
  readonly region: Uint8Array;
  /** Where the area starts inside the mapping same-host readers map. */
  readonly offset: number;
  readonly pool: FarPool;
}

export interface TierPolicyOptions {
  readonly kernels: Kernels;
  readonly far: FarTier | null;
  readonly ssd: SsdTier | null;
  /** Staging for SSD blocks located by same-host readers; absent or null: SSD blocks are not located. */
  readonly stage?: StageArea | null;
  /** Where SSD records being appended are built (reused once appended); absent: fresh buffers. */
  readonly recordBuffers?: ReusableBuffers;
  /** Largest block payload accepted. */
  readonly blockBytesMax: number;
  /** Longest lease a same-host reader may hold on located bytes. */
  readonly leaseMsMax: number;
  /** Told about blocks dropped for failing their checks and about failed spills (for logs). */
  readonly onFault?: (what: string, details: Record<string, unknown>) => void;
}

export interface TierStatsView {
  tier: TierName;
  blocks: number;
  bytesUsed: number;
  bytesCapacity: number;
  reads: number;
  writes: number;
  checksumFailures: number;
  /** SSD only: blocks dropped to make room (kept here, the wire's TierStats has no field for it). */
  evictions?: number;
  /** SSD only: blocks read into the staging area, and locations served by a copy staged before. */
  staged?: number;
  stageHits?: number;
}

export interface TierHit {
  /**
   * The block: a payload copied out of far memory, or lent from the SSD tier's read buffers (a
   * view into the record read), valid until releasePayload().
   */
  readonly block: TierBlock;
  readonly tier: TierName;
  /**
   * Lets the tier reuse the payload's memory; call it once, after the last use of block.payload
   * (e.g. once a socket took the bytes). Optional: without it the memory is left to the GC.
   */
  readonly releasePayload: () => void;
}

export interface FarLocationView {
  /** 'far': the block's far-memory record; 'ssd': a staged copy of its SSD record. */
  readonly tier: TierName;
  /** The block's metadata, decoded and checked (only when asked for). */
  readonly meta: TierBlockMeta | undefined;
  /** Offset of the payload inside the mapping (the far pool, then the staging area). */
  readonly payloadOffset: number;
  readonly payloadBytes: number;
  /** The lease granted (the request's, capped at leaseMsMax) and when it ends on the policy's clock. */
  readonly leaseMs: number;
  readonly leaseUntilMs: number;
}

interface Counters {
  reads: number;
  writes: number;
  checksumFailures: number;
}

export type DemoteOutcome = 'stored' | 'held';

/** stage(): where the block lies, 'unstaged' (on SSD, no staging room), or undefined (not held). */
export type StageOutcome = FarLocationView | 'unstaged' | undefined;

const NO_RELEASE = (): void => undefined;

export class TierPolicy {
  private readonly kernels: Kernels;
  private readonly far: FarTier | null;
  private readonly ssd: SsdTier | null;
  private readonly stageArea: StageArea | null;
  private readonly stageCounters = { staged: 0, hits: 0 };
  private readonly options: TierPolicyOptions;
  private readonly farCounters: Counters = { reads: 0, writes: 0, checksumFailures: 0 };
  /** Failures the SSD tier's own checks let through (record head, identity, payload sections). */
  private ssdRecordFailures = 0;
  /** Demotes to far memory that must make room run one at a time (see makeRoom). */
  private farQueue: Promise<unknown> = Promise.resolve();
  /** Blocks moved from far memory to SSD to make room. */
  spills = 0;
  /** Blocks dropped from the SSD tier to make room there. */
  ssdEvictions = 0;
  /**
   * The SSD tier's blocks, least recently appended or read first (a Set keeps insertion order; a
   * touch re-inserts). NOTE: bounded by the SSD tier itself: every block enters on a resolved append
   * and leaves on every removal the policy makes; one the tier dropped on its own is pruned when
   * eviction reaches it.
   */
  private readonly ssdRecency = new Set<BlockHash>();
  /** SSD reads in flight per block: eviction passes over these. */
  private readonly ssdReading = new Map<BlockHash, number>();

  constructor(options: TierPolicyOptions) {
    this.options = options;
    this.kernels = options.kernels;
    this.far = options.far;
    this.ssd = options.ssd;
    this.stageArea = options.ssd === null ? null : (options.stage ?? null);
    // Blocks from before a restart: nobody has asked for them yet, so they go first.
    for (const hash of this.ssd?.hashes() ?? []) this.ssdRecency.add(hash);
  }

  get hasFar(): boolean {
    return this.far !== null;
  }

  get hasSsd(): boolean {
    return this.ssd !== null;
  }

  /** Checks a block a client wants to store: size bound and every payload checksum. */
  checkIncoming(block: TierBlock): void {
    const bytes = block.payload.byteLength;
    if (bytes > this.options.blockBytesMax)
      throw new LimitExceededError(
        `block ${block.hash}: payload of ${bytes} bytes exceeds blockBytesMax ${this.options.blockBytesMax}`,
        { hash: block.hash, bytes, blockBytesMax: this.options.blockBytesMax },
      );
    try {
      verifyBlockPayload(this.kernels, block.payload);
    } catch (err) {
      if (!(err instanceof KvmeshError)) throw err;
      throw new InvalidArgumentError(
        `block ${block.hash}: payload is not a valid block payload: ${err.message}`,
        {
          ...err.details,
          hash: block.hash,
          cause: err.code,
        },
      );
    }
  }

  /** Which tier holds `hash` now (far first), or undefined. */
  where(hash: BlockHash): TierName | undefined {
    if (this.far?.pool.has(hash) === true) return 'far';
    if (this.ssd?.has(hash) === true) return 'ssd';
    return undefined;
  }

  /**
   * Stores `block` in `target` and resolves once it is durable there ('held' when some tier already
   * holds it: nothing is written). Throws InvalidArgumentError / LimitExceededError for a bad block,
   * TierUnavailableError for a tier this host lacks, FarMemoryFullError when no room can be made,
   * and the SSD tier's own error (e.g. its capacity) for a failed append.
   */
  async demote(block: TierBlock, target: TierName): Promise<DemoteOutcome> {
    this.checkIncoming(block);
    if (target === 'far') {
      const far = this.far;
      if (far === null) throw new TierUnavailableError('far', 'this service runs without far memory');
      return this.serialFar(() => this.demoteFar(far, block));
    }
    const ssd = this.ssd;
    if (ssd === null) throw new TierUnavailableError('ssd', 'this service runs without an SSD tier');
    if (this.where(block.hash) !== undefined) return 'held';
    const buffers = this.options.recordBuffers;
    const record = encodeRecord(
      this.kernels,
      block,
      buffers === undefined ? undefined : (n) => buffers.take(n),
    );
    try {
      await this.appendSsd(ssd, block.hash, record);
    } finally {
      // NOTE: the SSD tier does not keep an appended record's memory once the append settled.
      buffers?.giveBack(record);
    }
    return 'stored';
  }

  /** The block from the fastest tier holding it, verified; undefined when missing or corrupt. */
  async read(hash: BlockHash): Promise<TierHit | undefined> {
    const fromFar = this.readFar(hash);
    if (fromFar !== undefined) return { block: fromFar, tier: 'far', releasePayload: NO_RELEASE };
    const fromSsd = await this.readSsd(hash);
    if (fromSsd !== undefined) return { ...fromSsd, tier: 'ssd' };
    return undefined;
  }

  /**
   * Starts the reads of all `hashes` at once, one promise per hash in order. The SSD tier then sees
   * them together and serves reads of neighbouring records (a demoted prefix lies back to back) with
   * fewer, larger reads. Each promise settles on its own; the caller bounds how many it starts.
   */
  readMany(hashes: readonly BlockHash[]): Promise<TierHit | undefined>[] {
    return hashes.map((hash) => this.read(hash));
  }

  /** As read(), and the tier no longer holds the block afterwards. */
  async promote(hash: BlockHash): Promise<TierHit | undefined> {
    const hit = await this.read(hash);
    if (hit === undefined) return undefined;
    await this.release(hash, hit);
    return hit;
  }

  /** The second half of promote: `hit` (from read()) leaves the tier it was read from. */
  async release(hash: BlockHash, hit: TierHit): Promise<void> {
    if (hit.tier === 'far') this.far?.pool.remove(hash);
    else await this.removeSsd(hash);
  }

  /**
   * Where a far-memory block's payload lies in the pool, leased for `leaseMs` (capped at leaseMsMax)
   * so its bytes stay in place; undefined when far memory does not hold it. With `withMeta` the
   * record head and metadata are decoded and checked; without, only the head's lengths are read. The
   * reader verifies the payload sections itself before use.
   */
  locate(hash: BlockHash, leaseMs: number, withMeta = false): FarLocationView | undefined {
    const far = this.far;
    if (far === null) return undefined;
    let located: FarLocationView | undefined;
    try {
      located = this.locateIn('far', far.pool, far.region, 0, hash, leaseMs, withMeta);
    } catch (err) {
      this.dropCorruptFar(hash, err);
      return undefined;
    }
    if (located !== undefined) this.farCounters.reads++;
    return located;
  }

  /**
   * locate() that also reaches the SSD tier: a block held there is read (verified as every SSD read
   * is), copied into the staging area and leased there; a copy staged before is located without a
   * read. 'unstaged': on SSD, but every staging extent is leased (read it some other way).
   */
  async stage(hash: BlockHash, leaseMs: number, withMeta = false): Promise<StageOutcome> {
    const inFar = this.locate(hash, leaseMs, withMeta);
    const area = this.stageArea;
    if (inFar !== undefined || area === null) return inFar;
    const staged = this.locateStaged(area, hash, leaseMs, withMeta);
    if (staged !== undefined) {
      this.stageCounters.hits++;
      return staged;
    }
    const read = await this.readSsd(hash);
    if (read === undefined) return undefined;
    try {
      // Staged by a concurrent request meanwhile, or gone from SSD (a staged copy never outlives it).
      if (area.pool.has(hash) || this.ssd?.has(hash) !== true)
        return this.locateStaged(area, hash, leaseMs, withMeta);
      const entry = this.stageRoom(area, hash, read.record.length);
      if (entry === undefined) return 'unstaged';
      area.region.set(read.record, entry.offset);
      this.stageCounters.staged++;
      // NOTE: the read decoded and checked the record head already: its layout and metadata stand.
      const { payload, ...meta } = read.block;
      const layout = { payloadOffset: read.record.length - payload.length, recordBytes: read.record.length };
      return this.leased('ssd', area.pool, area.offset, entry, layout, withMeta ? meta : undefined, leaseMs);
    } finally {
      read.releasePayload();
    }
  }

  stats(): TierStatsView[] {
    const out: TierStatsView[] = [];
    if (this.far !== null) {
      const pool = this.far.pool.stats();
      out.push({
        tier: 'far',
        blocks: pool.blocks,
        bytesUsed: pool.bytesUsed,
        bytesCapacity: pool.bytesCapacity,
        ...this.farCounters,
      });
    }
    if (this.ssd !== null) {
      const ssd = this.ssd.stats();
      out.push({
        tier: 'ssd',
        blocks: ssd.blocks,
        bytesUsed: ssd.bytesUsed,
        bytesCapacity: ssd.bytesCapacity,
        reads: ssd.reads,
        writes: ssd.writes,
        checksumFailures: ssd.checksumFailures + this.ssdRecordFailures,
        evictions: this.ssdEvictions,
        ...(this.stageArea === null
          ? {}
          : { staged: this.stageCounters.staged, stageHits: this.stageCounters.hits }),
      });
    }
    return out;
  }

  /**
   * Demotes every far-memory block to SSD, coldest first, stopping at the first refusal (e.g. the
   * SSD is full); returns how many moved. For a clean shutdown: far memory does not outlive the
   * service, the SSD tier does.
   */
  async drainFarToSsd(): Promise<number> {
    const far = this.far;
    if (far === null || this.ssd === null) return 0;
    return this.serialFar(async () => {
      let moved = 0;
      for (const hash of [...far.pool.hashes()]) {
        const entry = far.pool.get(hash);
        if (entry === undefined || entry.pinned) continue;
        await this.spill(far, entry);
        moved++;
      }
      return moved;
    });
  }

  private serialFar<T>(body: () => Promise<T>): Promise<T> {
    const run = this.farQueue.then(body, body);
    this.farQueue = run.catch(() => undefined);
    return run;
  }

  private async demoteFar(far: FarTier, block: TierBlock): Promise<DemoteOutcome> {
    if (this.where(block.hash) !== undefined) {
      far.pool.touch(block.hash);
      return 'held';
    }
    const head = encodeRecordHead(this.kernels, block);
    const entry = await this.makeRoom(far, block.hash, head.recordBytes);
    far.region.set(head.bytes, entry.offset);
    far.region.set(block.payload, entry.offset + head.payloadOffset);
    this.farCounters.writes++;
    return 'stored';
  }

  /** Allocates room for a record, demoting the coldest evictable blocks to SSD until it fits. */
  private async makeRoom(far: FarTier, hash: BlockHash, recordBytes: number): Promise<FarEntry> {
    const full = (reason: string): FarMemoryFullError => {
      const stats = far.pool.stats();
      return new FarMemoryFullError({
        hash,
        bytesNeeded: recordBytes,
        bytesUsed: stats.bytesUsed,
        bytesCapacity: stats.bytesCapacity,
        blocks: stats.blocks,
        reason,
      });
    };
    // NOTE: bounded: every pass either allocates, throws, or removes one entry from the pool.
    for (;;) {
      const entry = far.pool.allocate(hash, recordBytes);
      if (entry !== null) return entry;
      const victim = far.pool.coldestEvictable();
      if (victim === undefined) throw full('every block held is leased by a reader or being demoted');
      if (this.ssd === null) throw full('no SSD tier to demote cold blocks to');
      try {
        await this.spill(far, victim);
      } catch (err) {
        const reason = `demoting cold block ${victim.hash} to SSD failed: ${err instanceof Error ? err.message : String(err)}`;
        this.options.onFault?.('far-spill-failed', { hash: victim.hash, err });
        throw full(reason);
      }
    }
  }

  /** Moves one far entry to SSD: append first, drop from far only once the append resolved. */
  private async spill(far: FarTier, entry: FarEntry): Promise<void> {
    const ssd = this.ssd as SsdTier;
    far.pool.pin(entry.hash, true);
    try {
      if (!ssd.has(entry.hash)) {
        // A copy: the SSD tier may hold the bytes across its await, and the extent must stay reusable.
        await this.appendSsd(ssd, entry.hash, far.region.slice(entry.offset, entry.offset + entry.bytes));
      }
    } catch (err) {
      far.pool.pin(entry.hash, false);
      throw err;
    }
    if (far.pool.get(entry.hash) === entry) {
      far.pool.remove(entry.hash);
      this.spills++;
    } else {
      // Promoted while the append ran: the block left the tiers, so the new SSD copy goes too.
      await this.removeSsd(entry.hash);
    }
  }

  /**
   * SsdTier.append that makes room: refused for capacity, it evicts the coldest SSD blocks until the
   * live bytes leave room for the record and tries once more. That try may still be refused when
   * compaction could not reclaim the space yet; the next append finds it reclaimed.
   */
  private async appendSsd(ssd: SsdTier, hash: BlockHash, record: Uint8Array): Promise<void> {
    try {
      await ssd.append(hash, record);
    } catch (err) {
      if (!(err instanceof LimitExceededError)) throw err;
      const needed = err.details['bytesNeeded'];
      // Only a refusal for capacity names bytesNeeded (not blocksMax or a record too large).
      if (typeof needed !== 'number' || !(await this.evictSsd(ssd, hash, needed))) throw err;
      await ssd.append(hash, record);
    }
    // A promote can take the block away while the append resolves.
    if (ssd.has(hash)) this.touchSsd(hash);
  }

  /**
   * Removes the coldest SSD blocks not being read until `bytesNeeded` more live bytes fit; false
   * when nothing could be evicted (every block is being read, or the tier is empty).
   */
  private async evictSsd(ssd: SsdTier, hash: BlockHash, bytesNeeded: number): Promise<boolean> {
    let evicted = false;
    // NOTE: bounded: every pass removes one hash from ssdRecency or stops.
    for (;;) {
      const stats = ssd.stats();
      if (stats.bytesLive + bytesNeeded <= stats.bytesCapacity) return true;
      let victim: BlockHash | undefined;
      for (const candidate of this.ssdRecency) {
        if (!ssd.has(candidate)) this.ssdRecency.delete(candidate);
        else if (candidate !== hash && !this.ssdReading.has(candidate)) {
          victim = candidate;
          break;
        }
      }
      if (victim === undefined) return evicted;
      this.ssdRecency.delete(victim);
      try {
        if (await ssd.remove(victim)) this.ssdEvictions++;
      } catch (err) {
        if (ssd.has(victim)) this.ssdRecency.add(victim);
        this.options.onFault?.('ssd-evict-failed', { hash: victim, err });
        return evicted;
      }
      evicted = true;
    }
  }

  private touchSsd(hash: BlockHash): void {
    this.ssdRecency.delete(hash);
    this.ssdRecency.add(hash);
  }

  private async removeSsd(hash: BlockHash): Promise<void> {
    this.ssdRecency.delete(hash);
    this.stageArea?.pool.remove(hash);
    try {
      await this.ssd?.remove(hash);
    } catch (err) {
      // Not removed: the block stays evictable.
      if (this.ssd?.has(hash) === true) this.touchSsd(hash);
      throw err;
    }
  }

  /**
   * Where `hash`'s record in `pool` puts its payload within the mapping (`base`: where the pool's
   * region starts in it), leased and touched; undefined when the pool lacks it. Throws the record's
   * CorruptDataError.
   */
  private locateIn(
    tier: TierName,
    pool: FarPool,
    region: Uint8Array,
    base: number,
    hash: BlockHash,
    leaseMs: number,
    withMeta: boolean,
  ): FarLocationView | undefined {
    const entry = pool.get(hash);
    if (entry === undefined) return undefined;
    const record = region.subarray(entry.offset, entry.offset + entry.bytes);
    if (!withMeta)
      return this.leased(tier, pool, base, entry, recordLayout(record, hash), undefined, leaseMs);
    const decoded = decodeRecordMeta(this.kernels, record, hash);
    return this.leased(tier, pool, base, entry, decoded, decoded.meta, leaseMs);
  }

  /** `entry`'s payload location (its record laid out as `layout`), leased for `leaseMs` and touched. */
  private leased(
    tier: TierName,
    pool: FarPool,
    base: number,
    entry: FarEntry,
    layout: { readonly payloadOffset: number; readonly recordBytes: number },
    meta: TierBlockMeta | undefined,
    leaseMs: number,
  ): FarLocationView {
    const granted = Math.min(Math.max(leaseMs, 0), this.options.leaseMsMax);
    const leaseUntilMs = pool.lease(entry.hash, granted) ?? 0;
    pool.touch(entry.hash);
    return {
      tier,
      meta,
      payloadOffset: base + entry.offset + layout.payloadOffset,
      payloadBytes: layout.recordBytes - layout.payloadOffset,
      leaseMs: granted,
      leaseUntilMs,
    };
  }

  /** A staged copy of an SSD block, leased; a copy whose block left the SSD or fails its checks is dropped. */
  private locateStaged(
    area: StageArea,
    hash: BlockHash,
    leaseMs: number,
    withMeta: boolean,
  ): FarLocationView | undefined {
    if (this.ssd?.has(hash) !== true) {
      area.pool.remove(hash);
      return undefined;
    }
    try {
      return this.locateIn('ssd', area.pool, area.region, area.offset, hash, leaseMs, withMeta);
    } catch (err) {
      if (!(err instanceof CorruptDataError)) throw err;
      // NOTE: only the copy is bad (the SSD record was verified when it was read): read it again.
      area.pool.remove(hash);
      this.options.onFault?.('staged-copy-corrupt', { hash, err });
      return undefined;
    }
  }

  /** An extent for a staged record, reusing unleased copies least recently used first; undefined: none free. */
  private stageRoom(area: StageArea, hash: BlockHash, recordBytes: number): FarEntry | undefined {
    if (alignUp(recordBytes, area.pool.config.alignBytes) > area.pool.config.bytesCapacity) return undefined;
    // NOTE: bounded: every pass allocates, stops, or removes one staged copy.
    for (;;) {
      const entry = area.pool.allocate(hash, recordBytes);
      if (entry !== null) return entry;
      const victim = area.pool.coldestEvictable();
      if (victim === undefined) return undefined;
      area.pool.remove(victim.hash);
    }
  }

  private readFar(hash: BlockHash): TierBlock | undefined {
    const far = this.far;
    const entry = far?.pool.get(hash);
    if (far === null || entry === undefined) return undefined;
    // NOTE: copy first, verify the copy: what is served is exactly what was checked.
    const copy = far.region.slice(entry.offset, entry.offset + entry.bytes);
    try {
      const { block } = decodeRecord(this.kernels, copy, hash);
      far.pool.touch(hash);
      this.farCounters.reads++;
      return block;
    } catch (err) {
      this.dropCorruptFar(hash, err);
      return undefined;
    }
  }

  private dropCorruptFar(hash: BlockHash, err: unknown): void {
    if (!(err instanceof CorruptDataError)) throw err;
    this.far?.pool.remove(hash);
    this.farCounters.checksumFailures++;
    this.options.onFault?.('far-block-corrupt', { hash, err });
  }

  private async readSsd(
    hash: BlockHash,
  ): Promise<{ block: TierBlock; record: Uint8Array; releasePayload: () => void } | undefined> {
    const ssd = this.ssd;
    if (ssd === null || !ssd.has(hash)) return undefined;
    let lent: LentBytes | null;
    this.ssdReading.set(hash, (this.ssdReading.get(hash) ?? 0) + 1);
    try {
      lent = await ssd.read(hash);
    } catch (err) {
      // The SSD tier counts its own checksum failures and drops the entry.
      if (err instanceof KvmeshError && err.kind === 'data-loss') {
        this.ssdRecency.delete(hash);
        this.stageArea?.pool.remove(hash);
        this.options.onFault?.('ssd-block-corrupt', { hash, err });
        return undefined;
      }
      throw err;
    } finally {
      const reading = (this.ssdReading.get(hash) ?? 1) - 1;
      if (reading === 0) this.ssdReading.delete(hash);
      else this.ssdReading.set(hash, reading);
    }
    if (lent === null) {
      if (!ssd.has(hash)) this.ssdRecency.delete(hash);
      return undefined;
    }
    this.touchSsd(hash);
    const bytes = lent.payload;
    try {
      // NOTE: the SSD tier verified its record checksum over all of these bytes on this read, so the
      // payload sections are not hashed a second time; head, metadata and identity are checked here.
      const { meta, payloadOffset, recordBytes } = decodeRecordMeta(this.kernels, bytes, hash);
      return {
        block: { ...meta, payload: bytes.subarray(payloadOffset, recordBytes) },
        record: bytes.subarray(0, recordBytes),
        releasePayload: () => lent.release(),
      };
    } catch (err) {
      lent.release();
      if (!(err instanceof CorruptDataError)) throw err;
      this.ssdRecordFailures++;
      await this.removeSsd(hash);
      this.options.onFault?.('ssd-block-corrupt', { hash, err });
      return undefined;
    }
  }
}
