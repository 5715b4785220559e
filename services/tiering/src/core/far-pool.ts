// The far-memory pool's bookkeeping: which byte extent of the pool each block's record occupies, a
// first-fit allocator over the free extents (coalesced on free, so fragmentation only ever costs
// evictions, never capacity), and LRU order for demotion to SSD. Pure: the bytes themselves live in
// an injected region the caller writes, and time comes from an injected clock.
// Invariants: extents of live entries, retired extents and free extents tile [0, bytesCapacity)
// exactly; a leased or pinned entry is never chosen for eviction, and a leased extent is not reused
// before its lease ends, even after its entry is removed (a same-host reader may still be reading it).
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import type { BlockHash } from '@kvmesh/protocol';

export interface FarPoolConfig {
  /** Bytes of the pool region. */
  readonly bytesCapacity: number;
  /** Most blocks held at once (bounds the index). */
  readonly blocksMax: number;
  /** Every extent starts at a multiple of this (a power of two); record sizes round up to it. */
  readonly alignBytes: number;
}

export interface FarEntry {
  readonly hash: BlockHash;
  /** Offset of the record in the region. */
  readonly offset: number;
  /** Record bytes as written (the extent may be larger by the alignment). */
  readonly bytes: number;
  /** Extent bytes reserved. */
  readonly extentBytes: number;
  /** Reads may not move or reuse the extent before this clock value. */
  leaseUntilMs: number;
  /** Pinned entries (a demotion to SSD in flight) are not chosen for eviction again. */
  pinned: boolean;
}

interface Extent {
  offset: number;
  bytes: number;
}

export interface FarPoolStats {
  blocks: number;
  /** Extent bytes of live entries plus retired (leased after removal) extents. */
  bytesUsed: number;
  bytesCapacity: number;
  bytesFree: number;
  /** The largest record that fits without evicting anything. */
  freeExtentBytesMax: number;
  freeExtents: number;
  retiredExtents: number;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

export class FarPool {
  readonly config: FarPoolConfig;
  private readonly now: () => number;
  /** Insertion order is recency: the first entry is the coldest. */
  private readonly entries = new Map<BlockHash, FarEntry>();
  /** Free extents sorted by offset, never adjacent (coalesced). */
  private readonly free: Extent[] = [];
  /** Removed while leased: freed once the clock passes `untilMs`. */
  private readonly retired: (Extent & { untilMs: number })[] = [];
  private bytesLive = 0;
  private bytesRetired = 0;

  constructor(config: FarPoolConfig, now: () => number) {
    if (!Number.isSafeInteger(config.bytesCapacity) || config.bytesCapacity < 1)
      throw new InvalidArgumentError(
        `far pool bytesCapacity must be a positive integer, got ${config.bytesCapacity}`,
        {
          bytesCapacity: config.bytesCapacity,
        },
      );
    if (!isPowerOfTwo(config.alignBytes))
      throw new InvalidArgumentError(`far pool alignBytes must be a power of two, got ${config.alignBytes}`, {
        alignBytes: config.alignBytes,
      });
    if (!Number.isSafeInteger(config.blocksMax) || config.blocksMax < 1)
      throw new InvalidArgumentError(
        `far pool blocksMax must be a positive integer, got ${config.blocksMax}`,
        {
          blocksMax: config.blocksMax,
        },
      );
    this.config = { ...config };
    this.now = now;
    const usable = Math.floor(config.bytesCapacity / config.alignBytes) * config.alignBytes;
    if (usable > 0) this.free.push({ offset: 0, bytes: usable });
  }

  get size(): number {
    return this.entries.size;
  }

  has(hash: BlockHash): boolean {
    return this.entries.has(hash);
  }

  /** The entry without changing its recency. */
  get(hash: BlockHash): FarEntry | undefined {
    return this.entries.get(hash);
  }

  /** Marks the entry most recently used. */
  touch(hash: BlockHash): void {
    const entry = this.entries.get(hash);
    if (entry === undefined) return;
    this.entries.delete(hash);
    this.entries.set(hash, entry);
  }

  /** Hashes coldest first. */
  hashes(): IterableIterator<BlockHash> {
    return this.entries.keys();
  }

  /**
   * Reserves an extent for a `bytes`-byte record of `hash` and makes it the most recently used
   * entry, or returns null when no free extent is large enough (evict, then try again). Throws for a
   * hash already held, a record larger than the pool, or a full index (blocksMax).
   */
  allocate(hash: BlockHash, bytes: number): FarEntry | null {
    if (this.entries.has(hash))
      throw new InvalidArgumentError(`far pool already holds block ${hash}`, { hash });
    if (!Number.isSafeInteger(bytes) || bytes < 1)
      throw new InvalidArgumentError(`far pool record size must be a positive integer, got ${bytes}`, {
        bytes,
      });
    const extentBytes = alignUp(bytes, this.config.alignBytes);
    if (extentBytes > this.config.bytesCapacity)
      throw new LimitExceededError(
        `a record of ${bytes} bytes does not fit a far pool of ${this.config.bytesCapacity} bytes`,
        { bytes, bytesCapacity: this.config.bytesCapacity },
      );
    if (this.entries.size >= this.config.blocksMax) return null;
    this.reap();
    const i = this.free.findIndex((extent) => extent.bytes >= extentBytes);
    if (i < 0) return null;
    const extent = this.free[i] as Extent;
    const entry: FarEntry = {
      hash,
      offset: extent.offset,
      bytes,
      extentBytes,
      leaseUntilMs: 0,
      pinned: false,
    };
    if (extent.bytes === extentBytes) this.free.splice(i, 1);
    else {
      extent.offset += extentBytes;
      extent.bytes -= extentBytes;
    }
    this.entries.set(hash, entry);
    this.bytesLive += extentBytes;
    return entry;
  }

  /** Whether the index is at blocksMax (an eviction is needed before any allocation). */
  get full(): boolean {
    return this.entries.size >= this.config.blocksMax;
  }

  /**
   * Drops the entry. Its extent is free at once, or, while leased, once the lease ends. Returns the
   * removed entry, or undefined when it was not held.
   */
  remove(hash: BlockHash): FarEntry | undefined {
    const entry = this.entries.get(hash);
    if (entry === undefined) return undefined;
    this.entries.delete(hash);
    this.bytesLive -= entry.extentBytes;
    const extent = { offset: entry.offset, bytes: entry.extentBytes };
    if (entry.leaseUntilMs > this.now()) {
      // NOTE: a same-host reader may still be reading these bytes: keep them until the lease ends.
      this.retired.push({ ...extent, untilMs: entry.leaseUntilMs });
      this.bytesRetired += extent.bytes;
    } else this.release(extent);
    return entry;
  }

  /** Extends the entry's lease to at least `ms` from now; returns the lease end, or undefined if not held. */
  lease(hash: BlockHash, ms: number): number | undefined {
    const entry = this.entries.get(hash);
    if (entry === undefined) return undefined;
    entry.leaseUntilMs = Math.max(entry.leaseUntilMs, this.now() + ms);
    return entry.leaseUntilMs;
  }

  pin(hash: BlockHash, pinned: boolean): void {
    const entry = this.entries.get(hash);
    if (entry !== undefined) entry.pinned = pinned;
  }

  /** The coldest entry that may be demoted now (not pinned, not leased), or undefined. */
  coldestEvictable(): FarEntry | undefined {
    const now = this.now();
    for (const entry of this.entries.values()) {
      if (!entry.pinned && entry.leaseUntilMs <= now) return entry;
    }
    return undefined;
  }

  stats(): FarPoolStats {
    this.reap();
    let bytesFree = 0;
    let freeExtentBytesMax = 0;
    for (const extent of this.free) {
      bytesFree += extent.bytes;
      freeExtentBytesMax = Math.max(freeExtentBytesMax, extent.bytes);
    }
    return {
      blocks: this.entries.size,
      bytesUsed: this.bytesLive + this.bytesRetired,
      bytesCapacity: this.config.bytesCapacity,
      bytesFree,
      freeExtentBytesMax,
      freeExtents: this.free.length,
      retiredExtents: this.retired.length,
    };
  }

  /** Frees retired extents whose lease has ended. */
  private reap(): void {
    if (this.retired.length === 0) return;
    const now = this.now();
    for (let i = this.retired.length - 1; i >= 0; i--) {
      const extent = this.retired[i] as Extent & { untilMs: number };
      if (extent.untilMs > now) continue;
      this.retired.splice(i, 1);
      this.bytesRetired -= extent.bytes;
      this.release(extent);
    }
  }

  /** Returns an extent to the free list, merged with its neighbours. */
  private release(extent: Extent): void {
    const free = this.free;
    // Binary search: the first free extent after this one.
    let lo = 0;
    let hi = free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((free[mid] as Extent).offset < extent.offset) lo = mid + 1;
      else hi = mid;
    }
    const before = free[lo - 1];
    const after = free[lo];
    const joinsBefore = before !== undefined && before.offset + before.bytes === extent.offset;
    const joinsAfter = after !== undefined && extent.offset + extent.bytes === after.offset;
    if (joinsBefore && joinsAfter) {
      before.bytes += extent.bytes + after.bytes;
      free.splice(lo, 1);
    } else if (joinsBefore) before.bytes += extent.bytes;
    else if (joinsAfter) {
      after.offset = extent.offset;
      after.bytes += extent.bytes;
    } else free.splice(lo, 0, { offset: extent.offset, bytes: extent.bytes });
  }
}
