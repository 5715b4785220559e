// Shapes the block store hands out: the read-only view of a stored block and the results of its
// operations. Records are live views of the store's entries (no copy per read): their counters
// (lastAccessMs, putCount, localChildren) move as the store changes, and the payload is shared.
import type { BlockHeader } from '@kvmesh/block';
import type { CodecName } from '@kvmesh/kernels';
import type { BlockHash, ModelFingerprint, Namespace } from '@kvmesh/protocol';

/** Where a block copy lives (proto Tier without the UNSPECIFIED value). This store holds 'dram'. */
export type BlockTier = 'dram' | 'far' | 'ssd';
export const BLOCK_TIERS: readonly BlockTier[] = ['dram', 'far', 'ssd'];

export interface BlockRecord {
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  /** null for the first block of a sequence (its parent is the namespace seed). */
  readonly parentHash: BlockHash | null;
  readonly modelFingerprint: ModelFingerprint;
  readonly tokenIds: Uint32Array;
  /** Block payload format v1, held by reference: never mutate it. */
  readonly payload: Uint8Array;
  /** The payload's parsed, checksum-verified header (codec, dims, section table). */
  readonly header: BlockHeader;
  readonly codec: CodecName;
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
  /** Blocks currently pinned or leased. */
  protectedBlocks: number;
}
