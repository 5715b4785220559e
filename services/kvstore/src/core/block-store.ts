// The DRAM block pool of one kvstore node: content-addressed blocks keyed by (namespace, hash),
// verified against their token ids on put, deduplicated, protected by leases and pins, and evicted
// leaf-first in LRU order between two watermarks. Pure: time, kernels and the event sink are
// injected, and every operation is synchronous, so a fake clock makes every eviction exact.
//
// Invariants (checked by the tests after random operations):
// - bytesUsed = Σ entry.sizeBytes ≤ bytesBudget and entries ≤ blocksMax after every operation.
// - Every entry with a parent hash is counted exactly once: in its parent's localChildren when the
//   parent is held here (same namespace), else in orphanChildren[parentKey]. Placement is per block,
//   so a node holds fragments of chains; a child whose parent lives elsewhere is a local root.
// - An entry is in `expiry` iff it has an unexpired lease or pin ("protected"); it is in `eligible`
//   iff it has no local children and is not protected. Only `eligible` entries are ever evicted, so a
//   parent never leaves before its local children.
// - Every stored or removed block is reported in exactly one event, one event per operation
//   (`removed` in eviction order, then `stored`; clear() reports everything at once as `cleared`).
//
// Cost: put/get/pin/delete are O(log n) plus O(log n) per evicted or expired block; eviction pops
// the LRU of eligible leaves from an indexed heap (never scans), and a parent re-enters that heap
// the moment its last local child leaves. A rejected put pops fewer bytes than its own size.
//
// Tiering (config.tiering): a victim is not dropped but moves to the bounded `demoting` buffer,
// payload still referenced and readable, until an adapter (claimDemotions) has the host's tier
// acknowledge it; then only its metadata stays indexed here (`demoted`, tier 'far'/'ssd'), so
// matchPrefix still finds it and a `stored` event reports the new tier. A key lives in exactly one
// of blocks / demoting / demoted. The store never does I/O: adapters read demoted blocks back and
// hand them to insertPromoted(), which verifies them like a put before they re-enter DRAM.
import {
  BlockSeeds,
  computeBlockHashBytes,
  namespaceBytes,
  parseBlockHeader,
  toTokenIds,
  verifyBlockPayload,
  type BlockHeader,
} from '@kvmesh/block';
import { CorruptDataError, InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import { checkBlockTokens, loadKernels, type CodecName, type Kernels } from '@kvmesh/kernels';
import {
  blockHashFromBytes,
  blockHashToBytes,
  parseModelFingerprint,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';

import {
  ENTRY_OVERHEAD_BYTES,
  PIN_HOLDER_CHARS_MAX,
  resolveBlockStoreConfig,
  type BlockStoreConfig,
  type ResolvedBlockStoreConfig,
} from './config.ts';
import { BlockHashMismatchError, StoreFullError } from './errors.ts';
import { KvEventLog, type KvEventSink } from './events.ts';
import { IndexedMinHeap } from './indexed-heap.ts';
import type {
  BlockRecord,
  BlockStoreStats,
  BlockTier,
  DeleteResult,
  DemotedRecord,
  HeldBlock,
  HeldRecord,
  IndexedBlock,
  LowerTier,
  PinResult,
  PrefixMatch,
  PromotionResult,
  PutBlockInput,
  PutBlockResult,
  TickResult,
} from './types.ts';

export interface BlockStoreDeps {
  /** Milliseconds, non-negative and non-decreasing (a monotonic clock or a test's fake one). */
  now: () => number;
  /**
   * Receives every event. Undefined when nobody listens (a standalone node publishes no events):
   * sequence numbers still advance, but no event is built.
   */
  sink?: KvEventSink;
  /** Hashing and header parsing; defaults to loadKernels(). */
  kernels?: Kernels;
  /**
   * Called (synchronously, after the operation) when demotions or tier removals are waiting to be
   * claimed; the tiering adapter schedules its I/O from here. Must not call back into the store.
   */
  onTierWork?: () => void;
  /**
   * Takes back the memory of a payload the store drops without ever having handed it out, so it can
   * be reused at once rather than after a garbage collection (the data channel's payload pool).
   * Returns whether it did; the store then never hands that payload out again. Called synchronously
   * at the end of the operation that dropped the block; must not call back into the store.
   */
  releasePayload?: (payload: Uint8Array) => boolean;
}

/** Options of BlockStore.put. */
export interface PutOptions {
  /**
   * The caller goes on using `input.payload` after put returns (a coordinator sends it to peers),
   * so its memory must never be released for reuse while the store drops the block.
   */
  payloadShared?: boolean;
  /**
   * What verifyBlockPayload returned for this very payload (a coordinator verified it before
   * placing it), so the store does not parse and checksum the header a second time.
   */
  header?: BlockHeader;
}

const HASH_HEX = /^[0-9a-f]{32}$/;
/** Equal to no input: what put() remembers as checked before its first put. */
const UNCHECKED = Symbol('unchecked');

/** Map key of a block: the fixed-width hash first makes the concatenation unambiguous. */
function keyOf(namespace: Namespace, hash: BlockHash): string {
  return hash + namespace;
}

/**
 * One block held in memory. Its payload is handed out only through the `payload` getter (or with
 * the records of claimDemotions() and entries(), whose users read it after I/O), which marks it
 * lent: from then on only the garbage collector reclaims that memory. A payload never lent is
 * released to BlockStoreDeps.releasePayload when the block is dropped, and a released entry refuses
 * to hand it out.
 */
class Entry implements BlockRecord {
  readonly tier: BlockTier = 'dram';
  readonly codec: CodecName;
  lastAccessMs: number;
  putCount = 1;
  localChildren = 0;
  /** Store-wide access counter value at the last access: the LRU key (unique, so no ties). */
  accessSeq: number;
  /** End of the read lease; expired once ≤ now. */
  leaseUntilMs = 0;
  /** holder → pin end; null when never pinned, to keep unpinned entries small. */
  pins: Map<string, number> | null = null;
  /** The latest lease or pin end, while the entry is in the expiry heap. */
  protectedUntilMs = 0;
  eligibleIndex = -1;
  expiryIndex = -1;

  /**
   * The payload's header checksum as verified at put (see payloadIntact), as two u32 words.
   * NOTE: numbers, not a slice: Buffer.prototype.slice is a view, so a "copy" taken with it would
   * read the very bytes it is meant to check.
   */
  readonly payloadTagLow: number;
  readonly payloadTagHigh: number;
  /** Someone outside the store got the payload (see the class comment). */
  payloadLent: boolean;
  /** The payload's memory went back to its pool: it must never be read through this entry again. */
  payloadReleased = false;

  constructor(
    readonly key: string,
    readonly namespace: Namespace,
    readonly hash: BlockHash,
    readonly parentHash: BlockHash | null,
    readonly modelFingerprint: ModelFingerprint,
    readonly tokenIds: Uint32Array,
    /** The payload, for the store's own checks; everyone else goes through `payload`. */
    readonly payloadMemory: Uint8Array,
    readonly header: BlockHeader,
    readonly sizeBytes: number,
    readonly storedAtMs: number,
    accessSeq: number,
    payloadLent: boolean,
  ) {
    this.codec = header.codec;
    this.payloadTagLow = u32At(payloadMemory, header.headerBytes - 8);
    this.payloadTagHigh = u32At(payloadMemory, header.headerBytes - 4);
    this.lastAccessMs = storedAtMs;
    this.accessSeq = accessSeq;
    this.payloadLent = payloadLent;
  }

  get payload(): Uint8Array {
    if (this.payloadReleased)
      throw new KvmeshError(
        'PAYLOAD_RELEASED',
        'internal',
        `block ${this.hash} left the store and its payload memory went back to the pool for reuse`,
        { hash: this.hash },
      );
    this.payloadLent = true;
    return this.payloadMemory;
  }

  get payloadBytes(): number {
    return this.payloadMemory.byteLength;
  }
}

/** The little-endian u32 at `at` (the caller checked the bounds). */
function u32At(bytes: Uint8Array, at: number): number {
  return (
    ((bytes[at] as number) |
      ((bytes[at + 1] as number) << 8) |
      ((bytes[at + 2] as number) << 16) |
      ((bytes[at + 3] as number) << 24)) >>>
    0
  );
}

/**
 * The header checksum stored in a payload (its last 8 header bytes). It covers every section
 * checksum, so it names the content: a read compares it with the copy taken at put, which
 * catches payload memory that was reused or overwritten since, for the price of two compares.
 */
function payloadIntact(entry: Entry): boolean {
  const at = entry.header.headerBytes - 8;
  return (
    u32At(entry.payloadMemory, at) === entry.payloadTagLow &&
    u32At(entry.payloadMemory, at + 4) === entry.payloadTagHigh
  );
}

/** The metadata a demoted block leaves behind (a few hundred bytes; its payload is in the tier). */
class DemotedEntry implements DemotedRecord {
  readonly key: string;
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  readonly parentHash: BlockHash | null;
  readonly modelFingerprint: ModelFingerprint;
  readonly codec: CodecName;
  readonly payloadBytes: number;
  readonly storedAtMs: number;

  constructor(
    entry: Entry,
    /** Where the tier holds it; far memory may later spill it to SSD (demotedMoved). */
    public tier: LowerTier,
  ) {
    this.key = entry.key;
    this.namespace = entry.namespace;
    this.hash = entry.hash;
    this.parentHash = entry.parentHash;
    this.modelFingerprint = entry.modelFingerprint;
    this.codec = entry.codec;
    this.payloadBytes = entry.payloadBytes;
    this.storedAtMs = entry.storedAtMs;
  }
}

function checkHash(name: string, hash: unknown): void {
  if (typeof hash !== 'string' || !HASH_HEX.test(hash)) {
    throw new InvalidArgumentError(`${name} must be 32 lowercase hex characters, got ${String(hash)}`, {
      [name]: hash,
    });
  }
}

function checkMs(name: string, value: number): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${String(value)}`, {
      [name]: value,
    });
  }
}

export class BlockStore {
  readonly config: ResolvedBlockStoreConfig;
  private readonly now: () => number;
  private readonly kernels: Kernels;
  private readonly seeds: BlockSeeds;
  private readonly events: KvEventLog;
  private readonly blocks = new Map<string, Entry>();
  /** parent key → children held here whose parent is not (see the invariants above). */
  private readonly orphanChildren = new Map<string, number>();
  /** Evictable entries, least recently used on top. */
  private readonly eligible = new IndexedMinHeap<Entry>((a, b) => a.accessSeq < b.accessSeq, {
    getIndex: (e) => e.eligibleIndex,
    setIndex: (e, i) => {
      e.eligibleIndex = i;
    },
  });
  /** Leased or pinned entries, soonest protection end on top. */
  private readonly expiry = new IndexedMinHeap<Entry>((a, b) => a.protectedUntilMs < b.protectedUntilMs, {
    getIndex: (e) => e.expiryIndex,
    setIndex: (e, i) => {
      e.expiryIndex = i;
    },
  });
  private accessCounter = 0;
  private bytesUsed = 0;
  private readonly highBytes: number;
  private readonly lowBytes: number;
  private readonly highBlocks: number;
  private readonly lowBlocks: number;
  private readonly counters = {
    hits: 0,
    misses: 0,
    stored: 0,
    deduplicated: 0,
    evictions: 0,
    deleted: 0,
    rejectedFull: 0,
    payloadMismatches: 0,
  };
  private readonly hitsByTier: Record<BlockTier, number> = { dram: 0, far: 0, ssd: 0 };
  /** Evicted with tiering on, payload held until the tier acknowledges; oldest first. */
  private readonly demoting = new Map<string, Entry>();
  /** The demoting entries no adapter has claimed yet (a claimed one returns here on a retryable failure). */
  private readonly unclaimed = new Map<string, Entry>();
  private demotingBytes = 0;
  /** Acknowledged demotions, oldest first (the first to go beyond demotedBlocksMax). */
  private readonly demoted = new Map<string, DemotedEntry>();
  /** Hashes the tier should forget (dropped metadata, orphaned demotions); bounded by demotedBlocksMax. */
  private tierRemovals: BlockHash[] = [];
  private readonly tierCounters = {
    demotions: 0,
    demotionsDropped: 0,
    demotedDropped: 0,
    promotions: 0,
    promotionsMissed: 0,
    promotionsCorrupt: 0,
    tierRemovalsLost: 0,
  };
  private readonly onTierWork: (() => void) | undefined;
  private readonly releasePayload: ((payload: Uint8Array) => boolean) | undefined;
  /** The last namespace and model fingerprint put() found valid (UNCHECKED before the first). */
  private namespaceChecked: unknown = UNCHECKED;
  private fingerprintChecked: unknown = UNCHECKED;

  constructor(config: BlockStoreConfig, deps: BlockStoreDeps) {
    this.config = resolveBlockStoreConfig(config);
    this.now = deps.now;
    this.onTierWork = deps.onTierWork;
    this.releasePayload = deps.releasePayload;
    this.kernels = deps.kernels ?? loadKernels();
    this.seeds = new BlockSeeds(this.kernels);
    this.events = new KvEventLog(this.config.nodeId, deps.now, deps.sink);
    // The watermarks apply to bytes and to entries alike: either one above high starts eviction,
    // which goes on until both are at or below low.
    this.highBytes = this.config.highWatermark * this.config.bytesBudget;
    this.lowBytes = this.config.lowWatermark * this.config.bytesBudget;
    this.highBlocks = this.config.highWatermark * this.config.blocksMax;
    this.lowBlocks = this.config.lowWatermark * this.config.blocksMax;
  }

  /** Sequence number of the last event emitted (0n before the first). */
  get lastEventSeq(): bigint {
    return this.events.lastSeq;
  }

  /**
   * Stores a block after checking its payload header and its token identity, or counts a
   * deduplicated put of a block already held in this namespace (the held copy, codec included, is
   * kept). May evict other blocks first; throws StoreFullError, changing nothing, when the block
   * cannot fit. Emits one event: the evicted blocks as `removed`, the new block as `stored`.
   */
  put(input: PutBlockInput, options: PutOptions = {}): PutBlockResult {
    const { namespace, hash, parentHash, modelFingerprint, payload } = input;
    checkHash('hash', hash);
    if (parentHash !== null) checkHash('parentHash', parentHash);
    // NOTE: the last namespace and fingerprint that passed are remembered: a node sees few of them,
    // and encoding the namespace (a TextEncoder per call) costs more than the rest of these checks.
    if (namespace !== this.namespaceChecked) {
      namespaceBytes(namespace); // type, UTF-8 encodability and byte bound
      this.namespaceChecked = namespace;
    }
    if (modelFingerprint !== this.fingerprintChecked) {
      parseModelFingerprint(modelFingerprint);
      this.fingerprintChecked = modelFingerprint;
    }
    const tokenIds = toTokenIds(input.tokenIds);
    checkBlockTokens(tokenIds.length, 'tokenIds.length');
    if (!(payload instanceof Uint8Array)) {
      throw new InvalidArgumentError('payload must be a Uint8Array', { type: typeof payload });
    }
    if (payload.byteLength > this.config.blockBytesMax) {
      throw new LimitExceededError(
        `block payload of ${payload.byteLength} bytes exceeds blockBytesMax ${this.config.blockBytesMax}`,
        { bytes: payload.byteLength, blockBytesMax: this.config.blockBytesMax },
      );
    }
    const header = options.header ?? parseBlockHeader(this.kernels, payload);
    if (header.dims.blockTokens !== tokenIds.length) {
      throw new InvalidArgumentError(
        `payload holds ${header.dims.blockTokens} tokens per block but ${tokenIds.length} token ids were given`,
        { payloadBlockTokens: header.dims.blockTokens, tokenIds: tokenIds.length },
      );
    }
    // NOTE: identity is checked on dedup too, so a put that "succeeds" always named its tokens right.
    this.checkIdentity(namespace, hash, parentHash, modelFingerprint, tokenIds);

    const now = this.now();
    this.expire(now);
    const key = keyOf(namespace, hash);
    const existing = this.blocks.get(key) ?? this.demoting.get(key);
    if (existing !== undefined) {
      existing.putCount += 1;
      this.counters.deduplicated += 1;
      if (this.blocks.has(key)) this.touch(existing, now);
      return { status: 'deduplicated', record: existing, evicted: [] };
    }

    const { entry, victims, dropped } = this.insert(
      input,
      tokenIds,
      header,
      now,
      options.payloadShared ?? false,
    );
    this.releasePayloads(dropped);
    // A fresh copy of a block demoted earlier: the tier's copy is now redundant.
    if (this.demoted.delete(key)) this.queueTierRemoval(hash);
    this.counters.stored += 1;
    this.events.emit({ stored: [entry], removed: dropped });
    this.wakeTierWork();
    return { status: 'stored', record: entry, evicted: victims };
  }

  /**
   * Makes room for and stores a new entry (checked by the caller, its key held nowhere here), or
   * throws StoreFullError changing nothing. Victims leave DRAM; with tiering on, those that fit the
   * demoting buffer start their demotion and the rest are `dropped` (for the `removed` event).
   */
  private insert(
    input: PutBlockInput,
    tokenIds: Uint32Array,
    header: BlockHeader,
    now: number,
    payloadLent: boolean,
  ): { entry: Entry; victims: Entry[]; dropped: Entry[] } {
    const { namespace, hash, parentHash, modelFingerprint, payload } = input;
    const key = keyOf(namespace, hash);
    const sizeBytes = payload.byteLength + tokenIds.byteLength + ENTRY_OVERHEAD_BYTES;
    const parent = parentHash === null ? undefined : this.blocks.get(keyOf(namespace, parentHash));
    // NOTE: the parent counts its new child before room is made, so making room never evicts the
    // new block's own parent.
    if (parent !== undefined) this.addChild(parent);
    const plan = this.planEviction(sizeBytes, 1);
    if (!plan.fits) {
      if (parent !== undefined) this.removeChild(parent);
      this.counters.rejectedFull += 1;
      throw new StoreFullError({
        bytesNeeded: sizeBytes,
        bytesUsed: this.bytesUsed,
        bytesBudget: this.config.bytesBudget,
        blocks: this.blocks.size,
        blocksMax: this.config.blocksMax,
        bytesEvictable: plan.bytesEvictable,
      });
    }
    for (const victim of plan.victims) this.detach(victim);
    this.counters.evictions += plan.victims.length;
    const dropped = this.retire(plan.victims);

    const entry = new Entry(
      key,
      namespace,
      hash,
      parentHash,
      modelFingerprint,
      tokenIds,
      payload,
      header,
      sizeBytes,
      now,
      ++this.accessCounter,
      payloadLent,
    );
    // Children that arrived before this block (other nodes wrote them here first) now hang off it.
    const waiting = this.orphanChildren.get(key);
    if (waiting !== undefined) {
      entry.localChildren = waiting;
      this.orphanChildren.delete(key);
    }
    if (parentHash !== null && parent === undefined) this.addOrphan(keyOf(namespace, parentHash));
    this.blocks.set(key, entry);
    this.bytesUsed += sizeBytes;
    this.syncEligible(entry);
    return { entry, victims: plan.victims, dropped };
  }

  /**
   * The block, or undefined (counted as a hit or a miss). A hit is an access for LRU purposes;
   * leaseMs > 0 also protects the block from eviction until now + min(leaseMs, leaseMsMax)
   * (a shorter lease never shortens a longer one already held).
   */
  get(namespace: Namespace, hash: BlockHash, leaseMs = 0): BlockRecord | undefined {
    checkMs('leaseMs', leaseMs);
    const now = this.now();
    this.expire(now);
    const key = keyOf(namespace, hash);
    const entry = this.blocks.get(key);
    if (entry === undefined) {
      // Leaving for a lower tier: still in memory, so still a DRAM hit (no lease: it is not resident).
      const leaving = this.demoting.get(key);
      if (leaving !== undefined && payloadIntact(leaving)) {
        this.counters.hits += 1;
        this.hitsByTier.dram += 1;
        return leaving;
      }
      this.counters.misses += 1;
      return undefined;
    }
    if (!payloadIntact(entry)) {
      // NOTE: bytes that changed under a stored block are not served; the caller recomputes.
      this.counters.payloadMismatches += 1;
      this.counters.misses += 1;
      return undefined;
    }
    this.counters.hits += 1;
    this.hitsByTier[entry.tier] += 1;
    this.touch(entry, now);
    const leaseUntilMs = now + Math.min(leaseMs, this.config.leaseMsMax);
    if (leaseUntilMs > now && leaseUntilMs > entry.leaseUntilMs) {
      entry.leaseUntilMs = leaseUntilMs;
      this.refreshProtection(entry, now);
    }
    return entry;
  }

  /** Whether the block is held at any tier; not an access (no LRU refresh, no hit/miss count). */
  has(namespace: Namespace, hash: BlockHash): boolean {
    return this.tierOf(namespace, hash) !== undefined;
  }

  /**
   * Where this node holds the block: 'dram' (resident, or leaving for a lower tier but still in
   * memory), 'far' / 'ssd' (demoted: get() misses, an adapter must read it back), or undefined.
   */
  tierOf(namespace: Namespace, hash: BlockHash): BlockTier | undefined {
    const key = keyOf(namespace, hash);
    if (this.blocks.has(key) || this.demoting.has(key)) return 'dram';
    return this.demoted.get(key)?.tier;
  }

  /**
   * Which of a prompt's block hashes this node holds. A probe, not an access: it neither refreshes
   * recency nor counts hits (the caller follows up with get() for the blocks it actually reads).
   */
  matchPrefix(namespace: Namespace, hashes: readonly BlockHash[]): PrefixMatch {
    this.checkRequestLength(hashes);
    const held: HeldBlock[] = [];
    let matchedBlocks = 0;
    hashes.forEach((hash, index) => {
      const key = keyOf(namespace, hash);
      const entry: IndexedBlock | undefined =
        this.blocks.get(key) ?? this.demoting.get(key) ?? this.demoted.get(key);
      if (entry === undefined) return;
      if (matchedBlocks === index) matchedBlocks += 1;
      held.push({ index, hash, codec: entry.codec, tier: entry.tier });
    });
    return { matchedBlocks, held };
  }

  /**
   * Pins the held blocks for `holder` until now + ttl (0 → pinTtlMsDefault, capped at pinTtlMsMax);
   * pinning again renews to the new end. All or nothing: if any block would exceed pinHoldersMax,
   * LimitExceededError and no pin changes.
   */
  pin(namespace: Namespace, hashes: readonly BlockHash[], holder: string, ttlMs = 0): PinResult {
    this.checkRequestLength(hashes);
    this.checkHolder(holder);
    checkMs('ttlMs', ttlMs);
    const ttl = ttlMs === 0 ? this.config.pinTtlMsDefault : Math.min(ttlMs, this.config.pinTtlMsMax);
    const now = this.now();
    this.expire(now);
    const found: Entry[] = [];
    const missing: BlockHash[] = [];
    for (const hash of hashes) {
      const entry = this.blocks.get(keyOf(namespace, hash));
      if (entry === undefined) {
        missing.push(hash);
        continue;
      }
      // Expired pins are dropped first so they do not count against the bound.
      if (entry.pins !== null && !dropExpiredPins(entry.pins, now).has(holder)) {
        if (entry.pins.size >= this.config.pinHoldersMax) {
          throw new LimitExceededError(
            `block ${hash} already has ${entry.pins.size} pin holders (pinHoldersMax ${this.config.pinHoldersMax})`,
            { hash, holders: entry.pins.size, pinHoldersMax: this.config.pinHoldersMax },
          );
        }
      }
      found.push(entry);
    }
    for (const entry of found) {
      entry.pins ??= new Map();
      entry.pins.set(holder, now + ttl);
      this.refreshProtection(entry, now);
    }
    return { pinned: found.length, missing };
  }

  /** Releases `holder`'s unexpired pins on the listed blocks; returns how many it released. */
  unpin(namespace: Namespace, hashes: readonly BlockHash[], holder: string): number {
    this.checkRequestLength(hashes);
    this.checkHolder(holder);
    const now = this.now();
    this.expire(now);
    let unpinned = 0;
    for (const hash of hashes) {
      const entry = this.blocks.get(keyOf(namespace, hash));
      const pinEndMs = entry?.pins?.get(holder);
      if (entry === undefined || pinEndMs === undefined) continue;
      entry.pins?.delete(holder);
      if (pinEndMs > now) unpinned += 1;
      this.refreshProtection(entry, now);
    }
    return unpinned;
  }

  /**
   * Removes one block if the eviction rules would allow it (no local children, no unexpired pin or
   * lease); otherwise says why and changes nothing. Emits a `removed` event on success.
   */
  delete(namespace: Namespace, hash: BlockHash): DeleteResult {
    const now = this.now();
    this.expire(now);
    const entry = this.blocks.get(keyOf(namespace, hash));
    if (entry === undefined) return { deleted: false, reason: 'not-found' };
    if (entry.localChildren > 0) return { deleted: false, reason: 'has-children' };
    if (entry.pins !== null && [...entry.pins.values()].some((endMs) => endMs > now)) {
      return { deleted: false, reason: 'pinned' };
    }
    if (entry.leaseUntilMs > now) return { deleted: false, reason: 'leased' };
    this.releaseParent(entry);
    this.detach(entry);
    this.counters.deleted += 1;
    this.events.emit({ removed: [entry] });
    this.releasePayloads([entry]);
    return { deleted: true, record: entry };
  }

  /**
   * Releases expired leases and pins, then evicts down to the low watermark if usage is above the
   * high one (a put may have left it there when too much was protected). Call it periodically.
   */
  tick(): TickResult {
    const now = this.now();
    const released = this.expire(now);
    const plan = this.planEviction(0, 0);
    // NOTE: nothing is incoming and a put never leaves usage above the hard bounds, so this fits.
    const victims = plan.fits ? plan.victims : [];
    for (const victim of victims) this.detach(victim);
    this.counters.evictions += victims.length;
    const dropped = this.retire(victims);
    this.events.emit({ removed: dropped });
    this.releasePayloads(dropped);
    this.wakeTierWork();
    return { released, evicted: victims };
  }

  /** Same as tick(): expiry first, then eviction above the high watermark. */
  evictExpired(): TickResult {
    return this.tick();
  }

  /** Drops every block, leases and pins included, and emits a `cleared` event. Returns the count. */
  clear(): number {
    const dropped = this.blocks.size + this.demoting.size + this.demoted.size;
    this.releasePayloads(this.blocks.values());
    this.releasePayloads(this.demoting.values());
    this.blocks.clear();
    this.orphanChildren.clear();
    this.eligible.clear();
    this.expiry.clear();
    this.bytesUsed = 0;
    // NOTE: demotions in flight are acknowledged as orphans later (demotionAcknowledged) and removed then.
    this.demoting.clear();
    this.unclaimed.clear();
    this.demotingBytes = 0;
    for (const meta of this.demoted.values()) this.queueTierRemoval(meta.hash);
    this.demoted.clear();
    this.events.emit({ cleared: true });
    this.wakeTierWork();
    return dropped;
  }

  /**
   * Every block resident in DRAM, oldest insertion first (heldRecords() also lists those leaving for
   * the tier and those in it). Safe while the store changes: removed blocks are skipped and new ones
   * are visited.
   */
  *entries(): IterableIterator<BlockRecord> {
    for (const entry of this.blocks.values()) {
      // NOTE: lent on hand-out: re-replication reads the payload only after probing peers.
      entry.payloadLent = true;
      yield entry;
    }
  }

  /**
   * Every block this node holds, whatever its tier (for re-replication and anti-entropy): DRAM
   * blocks, then those leaving for the tier (still in memory), then demoted ones (metadata only: a
   * copy reads the payload back from the tier). Safe while the store changes, like entries().
   */
  *heldRecords(): IterableIterator<HeldRecord> {
    yield* this.entries();
    for (const entry of this.demoting.values()) {
      // NOTE: lent for the same reason as in entries(): an acknowledged demotion must not hand
      // this payload back to the pool while a copy may still be about to send it.
      entry.payloadLent = true;
      yield entry;
    }
    yield* this.demoted.values();
  }

  stats(): BlockStoreStats {
    return {
      blocks: this.blocks.size,
      blocksMax: this.config.blocksMax,
      bytesUsed: this.bytesUsed,
      bytesBudget: this.config.bytesBudget,
      ...this.counters,
      hitsByTier: { ...this.hitsByTier },
      protectedBlocks: this.expiry.size,
      demoting: this.demoting.size,
      demotingBytes: this.demotingBytes,
      demoted: this.demoted.size,
      demotions: this.tierCounters.demotions,
      demotionsDropped: this.tierCounters.demotionsDropped,
      demotedDropped: this.tierCounters.demotedDropped,
      promotions: this.tierCounters.promotions,
      promotionsMissed: this.tierCounters.promotionsMissed,
      promotionsCorrupt: this.tierCounters.promotionsCorrupt,
    };
  }

  // ---------------------------------------------------------------------------------------------
  // Tiering: the store decides and records, an adapter moves the bytes.

  /**
   * Up to `max` demoting blocks for the adapter to send to the tier, oldest first. Each is handed
   * out once; the adapter must answer with demotionAcknowledged() or demotionFailed().
   */
  claimDemotions(max: number): BlockRecord[] {
    const out: BlockRecord[] = [];
    for (const [key, entry] of this.unclaimed) {
      if (out.length >= max) break;
      this.unclaimed.delete(key);
      // NOTE: lent on hand-out: the adapter reads the payload after connecting to the tier.
      entry.payloadLent = true;
      out.push(entry);
    }
    return out;
  }

  /** Hashes the tier should forget, each handed out once. */
  claimTierRemovals(): BlockHash[] {
    const out = this.tierRemovals;
    this.tierRemovals = [];
    return out;
  }

  /**
   * The tier acknowledged a demotion: the block's payload is released and its metadata stays
   * indexed with `tier` (a `stored` event says so; routers replace the copy's description). Beyond
   * demotedBlocksMax the oldest demoted metadata is dropped (`removed`, and queued for removal from
   * the tier). 'orphan' when the block is no longer demoting here (cleared meanwhile): the caller
   * should have the tier forget it.
   */
  demotionAcknowledged(namespace: Namespace, hash: BlockHash, tier: LowerTier): 'demoted' | 'orphan' {
    const key = keyOf(namespace, hash);
    const entry = this.demoting.get(key);
    if (entry === undefined) return 'orphan';
    this.demoting.delete(key);
    this.unclaimed.delete(key);
    this.demotingBytes -= entry.sizeBytes;
    const meta = new DemotedEntry(entry, tier);
    this.demoted.set(key, meta);
    this.tierCounters.demotions += 1;
    const removed: DemotedEntry[] = [];
    // NOTE: demotedBlocksMax ≥ 1 and the new entry is the newest, so it is never the one dropped.
    for (const oldest of this.demoted.values()) {
      if (this.demoted.size <= this.config.demotedBlocksMax) break;
      this.demoted.delete(oldest.key);
      removed.push(oldest);
      this.queueTierRemoval(oldest.hash);
      this.tierCounters.demotedDropped += 1;
    }
    this.events.emit({ removed, stored: [meta] });
    this.releasePayloads([entry]);
    this.wakeTierWork();
    return 'demoted';
  }

  /**
   * Demoted blocks recorded in `tier`, up to `max`, starting after the `after`-th (a rotating cursor
   * lets an adapter check them all over several rounds); the cursor for the next round comes back.
   */
  demotedIn(
    tier: LowerTier,
    max: number,
    after = 0,
  ): { blocks: { namespace: Namespace; hash: BlockHash }[]; next: number } {
    const all = [...this.demoted.values()].filter((d) => d.tier === tier);
    const start = after < all.length ? after : 0;
    const blocks = all.slice(start, start + max).map((d) => ({ namespace: d.namespace, hash: d.hash }));
    return { blocks, next: start + blocks.length };
  }

  /**
   * The tier moved a demoted block (far memory spilled it to SSD): records the new tier, and a
   * `stored` event says so, so routers price a hit by where it lives. False when not demoted here.
   */
  demotedMoved(namespace: Namespace, hash: BlockHash, tier: LowerTier): boolean {
    const meta = this.demoted.get(keyOf(namespace, hash));
    if (meta === undefined) return false;
    if (meta.tier === tier) return true;
    meta.tier = tier;
    this.events.emit({ stored: [meta] });
    return true;
  }

  /**
   * A demotion failed. `retry`: the tier could not be reached; the block stays in the buffer
   * (readable) and is handed out again by the next claimDemotions(). Otherwise the tier refused it
   * (full, or rejected it): it is dropped here, exactly as an eviction without tiering.
   */
  demotionFailed(namespace: Namespace, hash: BlockHash, retry: boolean): void {
    const key = keyOf(namespace, hash);
    const entry = this.demoting.get(key);
    if (entry === undefined) return;
    if (retry) {
      this.unclaimed.set(key, entry);
      return;
    }
    this.demoting.delete(key);
    this.unclaimed.delete(key);
    this.demotingBytes -= entry.sizeBytes;
    this.tierCounters.demotionsDropped += 1;
    this.events.emit({ removed: [entry] });
    this.releasePayloads([entry]);
  }

  /**
   * The demoted ancestors of a block, nearest first, up to `max`: the chain walked through parent
   * hashes for as long as each parent is demoted here (stops at one held in DRAM or not held).
   */
  demotedAncestors(namespace: Namespace, hash: BlockHash, max: number): BlockHash[] {
    const key = keyOf(namespace, hash);
    let parentHash = (this.demoted.get(key) ?? this.blocks.get(key) ?? this.demoting.get(key))?.parentHash;
    const out: BlockHash[] = [];
    while (parentHash !== null && parentHash !== undefined && out.length < max) {
      const parent = this.demoted.get(keyOf(namespace, parentHash));
      if (parent === undefined) break;
      out.push(parent.hash);
      parentHash = parent.parentHash;
    }
    return out;
  }

  /**
   * Takes in a block read back from `fromTier` (the tier no longer holds it). Verified like a put:
   * every payload checksum, the header against the token count, the token identity, and the
   * metadata indexed at demotion. A block that fails is 'corrupt': dropped (`removed` event),
   * never served. Otherwise it re-enters DRAM (which may demote others); if everything in DRAM is
   * protected it is 'served' once and demoted again. `countHit` counts a hit in hitsByTier[fromTier]
   * (false for prefetches); `leaseMs` leases it like get().
   */
  insertPromoted(
    namespace: Namespace,
    block: PutBlockInput,
    fromTier: LowerTier,
    options: { countHit: boolean; leaseMs?: number },
  ): PromotionResult {
    const key = keyOf(namespace, block.hash);
    const meta = this.demoted.get(key);
    let tokenIds: Uint32Array;
    let header: BlockHeader;
    try {
      ({ tokenIds, header } = this.verifyTierCopy(namespace, block, meta));
    } catch (err) {
      if (!(err instanceof KvmeshError)) throw err;
      this.tierCounters.promotionsCorrupt += 1;
      if (options.countHit) this.counters.misses += 1;
      if (meta !== undefined) {
        this.demoted.delete(key);
        this.events.emit({ removed: [meta] });
      }
      return { status: 'corrupt', error: err };
    }

    const now = this.now();
    this.expire(now);
    const held = this.blocks.get(key) ?? this.demoting.get(key);
    if (held !== undefined) {
      if (options.countHit) this.countHit(held, 'dram', now, options.leaseMs ?? 0);
      return { status: 'held', record: held };
    }
    this.demoted.delete(key);
    this.tierCounters.promotions += 1;
    try {
      const { entry, dropped } = this.insert(block, tokenIds, header, now, false);
      if (options.countHit) this.countHit(entry, fromTier, now, options.leaseMs ?? 0);
      this.events.emit({ stored: [entry], removed: dropped });
      this.releasePayloads(dropped);
      this.wakeTierWork();
      return { status: 'promoted', record: entry };
    } catch (err) {
      if (!(err instanceof StoreFullError)) throw err;
      // Everything in DRAM is protected: serve this copy once and send it back down.
      const entry = new Entry(
        key,
        namespace,
        block.hash,
        block.parentHash,
        block.modelFingerprint,
        tokenIds,
        block.payload,
        header,
        block.payload.byteLength + tokenIds.byteLength + ENTRY_OVERHEAD_BYTES,
        now,
        ++this.accessCounter,
        false,
      );
      if (options.countHit) {
        this.counters.hits += 1;
        this.hitsByTier[fromTier] += 1;
      }
      const dropped = this.retire([entry]);
      this.events.emit(dropped.length > 0 ? { removed: dropped } : { stored: [entry] });
      this.wakeTierWork();
      return { status: 'served', record: entry };
    }
  }

  /**
   * Checks a copy of a demoted block read from the tier without promoting it (re-replication sends
   * it on to a peer): verified like a promotion, against the metadata indexed at demotion while it
   * is still here. Throws CorruptDataError (or BlockHashMismatchError); changes nothing, counts
   * nothing: the tier keeps its copy, and a later promotion judges that one itself.
   */
  checkTierCopy(namespace: Namespace, block: PutBlockInput): void {
    this.verifyTierCopy(namespace, block, this.demoted.get(keyOf(namespace, block.hash)));
  }

  /** Every check a block read back from the tier must pass before it is served or copied. */
  private verifyTierCopy(
    namespace: Namespace,
    block: PutBlockInput,
    meta: DemotedEntry | undefined,
  ): { tokenIds: Uint32Array; header: BlockHeader } {
    if (block.namespace !== namespace)
      throw new CorruptDataError(`tier sent block ${block.hash} of namespace '${block.namespace}'`);
    const tokenIds = toTokenIds(block.tokenIds);
    verifyBlockPayload(this.kernels, block.payload);
    const header = parseBlockHeader(this.kernels, block.payload);
    if (header.dims.blockTokens !== tokenIds.length)
      throw new CorruptDataError(
        `tier sent block ${block.hash} with a token count its payload does not hold`,
      );
    if (
      meta !== undefined &&
      (meta.parentHash !== block.parentHash ||
        meta.modelFingerprint !== block.modelFingerprint ||
        meta.payloadBytes !== block.payload.byteLength ||
        meta.codec !== header.codec)
    )
      throw new CorruptDataError(`tier sent block ${block.hash} unlike the one demoted`);
    this.checkIdentity(namespace, block.hash, block.parentHash, block.modelFingerprint, tokenIds);
    return { tokenIds, header };
  }

  /**
   * A read-back found nothing (the tier lost the block, or dropped it as corrupt): the metadata
   * goes (`removed` event), and with `countMiss` the read counts as a miss.
   */
  promotionMissed(namespace: Namespace, hash: BlockHash, countMiss: boolean): void {
    if (countMiss) this.counters.misses += 1;
    const key = keyOf(namespace, hash);
    const meta = this.demoted.get(key);
    if (meta === undefined) return;
    this.demoted.delete(key);
    this.tierCounters.promotionsMissed += 1;
    this.events.emit({ removed: [meta] });
  }

  /** Counts a read that could not be served for now (the tier is unreachable; metadata kept). */
  countMiss(): void {
    this.counters.misses += 1;
  }

  private countHit(entry: Entry, tier: BlockTier, now: number, leaseMs: number): void {
    this.counters.hits += 1;
    this.hitsByTier[tier] += 1;
    if (!this.blocks.has(entry.key)) return;
    this.touch(entry, now);
    const leaseUntilMs = now + Math.min(leaseMs, this.config.leaseMsMax);
    if (leaseUntilMs > now && leaseUntilMs > entry.leaseUntilMs) {
      entry.leaseUntilMs = leaseUntilMs;
      this.refreshProtection(entry, now);
    }
  }

  /**
   * Victims that already left DRAM (detached): with tiering on, each that fits the demoting buffer
   * starts its demotion; the rest are dropped. Returns the dropped ones (for the `removed` event).
   */
  private retire(victims: Entry[]): Entry[] {
    if (!this.config.tiering) return victims;
    const dropped: Entry[] = [];
    for (const victim of victims) {
      if (this.demotingBytes + victim.sizeBytes > this.config.demotingBytesMax) {
        dropped.push(victim);
        this.tierCounters.demotionsDropped += 1;
        continue;
      }
      this.demoting.set(victim.key, victim);
      this.unclaimed.set(victim.key, victim);
      this.demotingBytes += victim.sizeBytes;
    }
    return dropped;
  }

  /** Hands the payloads of dropped entries that were never lent back to their pool (see Entry). */
  private releasePayloads(dropped: Iterable<Entry>): void {
    const release = this.releasePayload;
    if (release === undefined) return;
    for (const entry of dropped) {
      if (!entry.payloadLent && !entry.payloadReleased && release(entry.payloadMemory))
        entry.payloadReleased = true;
    }
  }

  private queueTierRemoval(hash: BlockHash): void {
    if (this.tierRemovals.length >= this.config.demotedBlocksMax) {
      this.tierCounters.tierRemovalsLost += 1;
      return;
    }
    this.tierRemovals.push(hash);
  }

  private wakeTierWork(): void {
    if (this.unclaimed.size > 0 || this.tierRemovals.length > 0) this.onTierWork?.();
  }

  private checkIdentity(
    namespace: Namespace,
    hash: BlockHash,
    parentHash: BlockHash | null,
    modelFingerprint: ModelFingerprint,
    tokenIds: Uint32Array,
  ): void {
    // The chain formula makes the parent hash the seed of its child's hash.
    const seed =
      parentHash === null
        ? this.seeds.get({ modelFingerprint, blockTokens: tokenIds.length, namespace })
        : blockHashToBytes(parentHash);
    const computed = blockHashFromBytes(computeBlockHashBytes(seed, tokenIds, tokenIds.length, this.kernels));
    if (computed !== hash) throw new BlockHashMismatchError(hash, computed, parentHash, namespace);
  }

  private checkRequestLength(hashes: readonly BlockHash[]): void {
    if (!Array.isArray(hashes)) {
      throw new InvalidArgumentError('hashes must be an array', { type: typeof hashes });
    }
    if (hashes.length > this.config.hashesPerRequestMax) {
      throw new LimitExceededError(
        `request lists ${hashes.length} hashes, limit is ${this.config.hashesPerRequestMax}`,
        { hashes: hashes.length, hashesPerRequestMax: this.config.hashesPerRequestMax },
      );
    }
  }

  private checkHolder(holder: string): void {
    if (typeof holder !== 'string' || holder.length === 0 || holder.length > PIN_HOLDER_CHARS_MAX) {
      throw new InvalidArgumentError(
        `pin holder must be a string of 1 to ${PIN_HOLDER_CHARS_MAX} characters, got ${String(holder)}`,
        { holder },
      );
    }
  }

  private touch(entry: Entry, now: number): void {
    entry.lastAccessMs = now;
    entry.accessSeq = ++this.accessCounter;
    this.eligible.update(entry);
  }

  /** Puts the entry in or out of the eligible heap to match its children and protection. */
  private syncEligible(entry: Entry): void {
    if (entry.localChildren === 0 && !this.expiry.has(entry)) this.eligible.push(entry);
    else this.eligible.remove(entry);
  }

  private addChild(parent: Entry): void {
    parent.localChildren += 1;
    this.syncEligible(parent);
  }

  private removeChild(parent: Entry): void {
    parent.localChildren -= 1;
    this.syncEligible(parent);
  }

  private addOrphan(parentKey: string): void {
    this.orphanChildren.set(parentKey, (this.orphanChildren.get(parentKey) ?? 0) + 1);
  }

  private localParent(entry: Entry): Entry | undefined {
    return entry.parentHash === null ? undefined : this.blocks.get(keyOf(entry.namespace, entry.parentHash));
  }

  /** The child-count half of removing an entry: its local parent (if any) loses a child. */
  private releaseParent(entry: Entry): void {
    const parent = this.localParent(entry);
    if (parent !== undefined) this.removeChild(parent);
  }

  /**
   * The rest of removing an entry whose parent was already released. NOTE: a parent leaves only
   * after its local children, so "parent held" here is the same answer releaseParent() got.
   */
  private detach(entry: Entry): void {
    this.eligible.remove(entry);
    this.expiry.remove(entry);
    this.blocks.delete(entry.key);
    this.bytesUsed -= entry.sizeBytes;
    if (entry.parentHash !== null && this.localParent(entry) === undefined) {
      const parentKey = keyOf(entry.namespace, entry.parentHash);
      const count = (this.orphanChildren.get(parentKey) ?? 0) - 1;
      if (count > 0) this.orphanChildren.set(parentKey, count);
      else this.orphanChildren.delete(parentKey);
    }
  }

  /**
   * Chooses victims so that `bytesIncoming` / `blocksIncoming` fit under the hard bounds and, if that
   * leaves usage above the high watermark, down to the low one (best effort). Victims are popped
   * from the eligible heap in LRU order; popping one releases its parent, which may become eligible
   * in the same pass. On success the victims are released from their parents but still held (the
   * caller detaches them); if the hard bounds cannot be met everything is rolled back.
   */
  private planEviction(
    bytesIncoming: number,
    blocksIncoming: number,
  ): { fits: true; victims: Entry[] } | { fits: false; bytesEvictable: number } {
    const victims: Entry[] = [];
    let bytes = this.bytesUsed + bytesIncoming;
    let blocks = this.blocks.size + blocksIncoming;
    while (bytes > this.config.bytesBudget || blocks > this.config.blocksMax) {
      const victim = this.takeVictim(victims);
      if (victim === undefined) {
        // NOTE: failing here pops fewer bytes than the incoming block's own size (everything that
        // could go went, and it was not enough), so a rejected put stays cheap.
        const bytesEvictable = this.bytesUsed + bytesIncoming - bytes;
        this.rollback(victims);
        return { fits: false, bytesEvictable };
      }
      bytes -= victim.sizeBytes;
      blocks -= 1;
    }
    if (bytes > this.highBytes || blocks > this.highBlocks) {
      while (bytes > this.lowBytes || blocks > this.lowBlocks) {
        const victim = this.takeVictim(victims);
        if (victim === undefined) break;
        bytes -= victim.sizeBytes;
        blocks -= 1;
      }
    }
    return { fits: true, victims };
  }

  /**
   * Pops the LRU eligible entry into `victims` and releases its parent, or undefined when none is
   * left. A method rather than a closure in planEviction: this runs on every put.
   */
  private takeVictim(victims: Entry[]): Entry | undefined {
    const victim = this.eligible.pop();
    if (victim === undefined) return undefined;
    this.releaseParent(victim);
    victims.push(victim);
    return victim;
  }

  /** Undoes planEviction's pops, last first, so each parent gets its child back before re-entry. */
  private rollback(victims: Entry[]): void {
    for (let i = victims.length - 1; i >= 0; i--) {
      const victim = victims[i] as Entry;
      const parent = this.localParent(victim);
      if (parent !== undefined) this.addChild(parent);
      this.syncEligible(victim);
    }
  }

  /**
   * Sets the entry's protection from its lease and pins as of `now` (dropping expired pins): in the
   * expiry heap keyed by the latest end while any is unexpired, otherwise out of it and eligible
   * again if it has no local children.
   */
  private refreshProtection(entry: Entry, now: number): void {
    let untilMs = 0;
    if (entry.leaseUntilMs > now) untilMs = entry.leaseUntilMs;
    else entry.leaseUntilMs = 0;
    if (entry.pins !== null) {
      for (const endMs of dropExpiredPins(entry.pins, now).values()) untilMs = Math.max(untilMs, endMs);
      if (entry.pins.size === 0) entry.pins = null;
    }
    if (untilMs > now) {
      entry.protectedUntilMs = untilMs;
      if (this.expiry.has(entry)) this.expiry.update(entry);
      else this.expiry.push(entry);
      this.eligible.remove(entry);
    } else {
      entry.protectedUntilMs = 0;
      this.expiry.remove(entry);
      this.syncEligible(entry);
    }
  }

  /** Releases every protection that ended at or before `now`; returns how many blocks it freed. */
  private expire(now: number): number {
    let released = 0;
    for (let top = this.expiry.peek(); top !== undefined && top.protectedUntilMs <= now;) {
      this.refreshProtection(top, now);
      if (!this.expiry.has(top)) released += 1;
      top = this.expiry.peek();
    }
    return released;
  }
}

/** Deletes the pins that ended at or before `now` (deleting while iterating a Map is safe). */
function dropExpiredPins(pins: Map<string, number>, now: number): Map<string, number> {
  for (const [holder, endMs] of pins) if (endMs <= now) pins.delete(holder);
  return pins;
}
