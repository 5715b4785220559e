// Public surface of the kvstore node's pure core: the DRAM block pool (BlockStore), its config,
// typed errors, record and result shapes, and the wire mapping of its events; plus the node's
// decisions over it (put coordination, block checks, partial attention, re-replication planning).
// Adapters import from here only.
export { BlockStore, type BlockStoreDeps, type PutOptions } from './block-store.ts';
export {
  BLOCK_STORE_DEFAULTS,
  ENTRY_OVERHEAD_BYTES,
  PIN_HOLDER_CHARS_MAX,
  resolveBlockStoreConfig,
  type BlockStoreConfig,
  type ResolvedBlockStoreConfig,
} from './config.ts';
export { BlockHashMismatchError, StoreFullError, type StoreFullDetails } from './errors.ts';
export { KvEventLog, codecToProto, storedBlockOf, tierToProto, type KvEventSink } from './events.ts';
export { IndexedMinHeap, type HeapSlots } from './indexed-heap.ts';
export {
  BLOCK_TIERS,
  type BlockRecord,
  type BlockStoreStats,
  type BlockTier,
  type DeleteResult,
  type DemotedRecord,
  type HeldBlock,
  type HeldRecord,
  type IndexedBlock,
  type LowerTier,
  type PinResult,
  type PrefixMatch,
  type PromotionResult,
  type PutBlockInput,
  type PutBlockResult,
  type TickResult,
} from './types.ts';
export { checkClientBlock } from './block-checks.ts';
export {
  ReplicasExhaustedError,
  ReplicasUnavailableError,
  classifyFailure,
  coordinatePut,
  type CoordinatePutArgs,
  type FailureClass,
  type PlacedBlock,
  type ReplicaFailure,
  type ReplicaOutcome,
} from './put-coordinator.ts';
export {
  HEAD_DIM_MAX,
  QUERY_HEADS_MAX,
  checkAttentionInput,
  f32FromLittleEndian,
  f32ToLittleEndian,
  partialAttention,
  type AttentionBlockReader,
  type PartialAttentionInput,
  type PartialAttentionOutput,
} from './partial-attention.ts';
export {
  blockKey,
  isDemoted,
  learnedHolders,
  planPushes,
  presumedHolders,
  probesFor,
  type BlockPush,
  type OwnerProbe,
  type PlanPushesInput,
  type PlannedBlock,
  type PresumptionInput,
} from './rebalance.ts';
export {
  KvNode,
  PROMOTION_DEFAULTS,
  type KvNodeCounters,
  type KvNodeDeps,
  type PromotionLimits,
  type ReadBlock,
  type TierReader,
} from './kv-node.ts';
