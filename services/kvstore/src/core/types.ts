// Shapes the block store hands out: the read-only view of a stored block and the results of its
// operations. Records are live views of the store's entries (no copy per read): their counters
// (lastAccessMs, putCount, localChildren) move as the store changes, and the payload is shared.
import type { BlockHeader } from '@kvmesh/block';
import type { CodecName } from '@kvmesh/kernels';
import type { BlockHash, ModelFingerprint, Namespace } from '@kvmesh/protocol';

/**
 * Where a block copy lives (proto Tier without the UNSPECIFIED value). The store holds payloads in
 * 'dram'; with tiering on it also indexes blocks it demoted to the host's 'far' / 'ssd' tiers.
 */
export type BlockTier = 'dram' | 'far' | 'ssd';
export const BLOCK_TIERS: readonly BlockTier[] = ['dram', 'far', 'ssd'];
/** The tiers below DRAM a block can be demoted to. */
export type LowerTier = 'far' | 'ssd';

/** What the index and the events know of any block held here, whatever its tier. */
export interface IndexedBlock {
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  readonly parentHash: BlockHash | null;
  readonly modelFingerprint: ModelFingerprint;
  readonly codec: CodecName;
  readonly tier: BlockTier;
  /** Length of the block payload (what a fetch moves). */
  readonly payloadBytes: number;
}

/** A block demoted to a lower tier: its metadata stays indexed here, its payload lives in the tier. */
export interface DemotedRecord extends IndexedBlock {
  readonly tier: LowerTier;
  /** When it was stored here (kept through demotion: re-replication presumes holders by it). */
  readonly storedAtMs: number;
}

export interface BlockRecord extends IndexedBlock {
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  /** null for the first block of a sequence (its parent is the namespace seed). */
  readonly parentHash: BlockHash | null;
  readonly modelFingerprint: ModelFingerprint;
  readonly tokenIds: Uint32Array;
  /**
   * Block payload format v1, held by reference: never mutate it. Take it in the same turn that got
   * the record: the first read pins its memory for as long as it is referenced, but a block dropped
   * before anyone read its payload gives the memory back for reuse, and then this throws.
   */
  readonly payload: Uint8Array;
  /** The payload's parsed, checksum-verified header (codec, dims, section table). */
  readonly header: BlockHeader;
  readonly codec: CodecName;
  /** Always 'dram': a record carries its payload. */
  readonly tier: BlockTier;
  /** Bytes charged against the budget: payload + token ids + ENTRY_OVERHEAD_BYTES. */
  readonly sizeBytes: number;
  readonly storedAtMs: number;
  readonly lastAccessMs: number;
  /** Puts of this block (1 + deduplicated puts). */
  readonly putCount: number;
  /** Children of this block stored on this node (a block with children is never evicted). */
  readonly localChildren: number;
}

/**
 * A block this node holds for re-replication: resident (a BlockRecord, payload in hand) or demoted
 * (a DemotedRecord, payload to be read back from the tier); `tier` tells them apart.
 */
export type HeldRecord = BlockRecord | DemotedRecord;

export interface PutBlockInput {
  namespace: Namespace;
  hash: BlockHash;
  parentHash: BlockHash | null;
  modelFingerprint: ModelFingerprint;
  tokenIds: Uint32Array | readonly number[];
  payload: Uint8Array;
}

export interface PutBlockResult {
  status: 'stored' | 'deduplicated';
  record: BlockRecord;
  /** Blocks this put evicted to make room, in eviction order (e.g. for demotion to a lower tier). */
  evicted: BlockRecord[];
}

export interface HeldBlock {
  /** Position in the request. */
  index: number;
  hash: BlockHash;
  codec: CodecName;
  tier: BlockTier;
}

export interface PrefixMatch {
  /** Leading requested hashes held here, contiguously from the first. */
  matchedBlocks: number;
  /** Every requested hash held here, in request order. */
  held: HeldBlock[];
}

export interface PinResult {
  /** Requested hashes found and pinned (a hash listed twice counts twice). */
  pinned: number;
  missing: BlockHash[];
}

export type DeleteResult =
  | { deleted: true; record: BlockRecord }
  | { deleted: false; reason: 'not-found' | 'has-children' | 'pinned' | 'leased' };

export interface TickResult {
  /** Blocks whose last lease / pin expired during this tick. */
  released: number;
  /** Blocks evicted because usage was above the high watermark, in eviction order. */
  evicted: BlockRecord[];
}

export interface BlockStoreStats {
  blocks: number;
  blocksMax: number;
  bytesUsed: number;
  bytesBudget: number;
  hits: number;
  misses: number;
  hitsByTier: Record<BlockTier, number>;
  /** New blocks stored. */
  stored: number;
  deduplicated: number;
  evictions: number;
  deleted: number;
  /** Puts rejected with StoreFullError. */
  rejectedFull: number;
  /**
   * Reads whose payload bytes no longer carried the header checksum recorded at put (the memory
   * was overwritten): served as misses, never as data.
   */
  payloadMismatches: number;
  /** Blocks currently pinned or leased. */
  protectedBlocks: number;
  /** Evicted blocks held in memory until the tier acknowledges them, and their charged bytes. */
  demoting: number;
  demotingBytes: number;
  /** Demoted blocks whose metadata is indexed here (payload in the tier). */
  demoted: number;
  /** Demotions the tier acknowledged. */
  demotions: number;
  /** Victims dropped instead of demoted: the demoting buffer was full or the tier refused them. */
  demotionsDropped: number;
  /** Demoted blocks forgotten because demotedBlocksMax was reached (removed from the tier too). */
  demotedDropped: number;
  /** Demoted blocks read back into DRAM (on a hit or prefetched). */
  promotions: number;
  /** Promotions the tier could not serve (it no longer held the block). */
  promotionsMissed: number;
  /** Promoted blocks that failed verification here (dropped, never served). */
  promotionsCorrupt: number;
}

/** How a block read back from a lower tier was taken in (see BlockStore.insertPromoted). */
export type PromotionResult =
  | {
      /**
       * 'promoted': now resident in DRAM; 'held': this node already held it (in DRAM or leaving);
       * 'served': verified but no room in DRAM (everything protected): served, then demoted again.
       */
      status: 'promoted' | 'held' | 'served';
      record: BlockRecord;
    }
  | { status: 'corrupt'; error: Error };
