// Public surface of the decode worker's pure core: request validation, the fetch / write-back plan
// and usage, the bounded sequence slots, and the continuous-batching step loop over one engine.
// Adapters and the worker import from here only.
export {
  DecodeBatcher,
  type BatchEngine,
  type BatcherOptions,
  type BatcherStats,
  type FinishedSequence,
  type SequenceEvent,
} from './batcher.ts';
export { CodecMismatchError, ModelMismatchError } from '@kvmesh/worker';
export { TooManySequencesError } from './errors.ts';
export {
  blocksToFetch,
  blocksToDemote,
  blocksToWriteBack,
  decodeUsage,
  farBlocksAtAdmission,
  importableBlocks,
  usablePrefix,
  type DecodeUsage,
} from './plan.ts';
export { STOP_TOKEN_IDS_MAX, parseDecodeRequest, type DecodeInput, type DecodeLimits } from './request.ts';
export { EventChannel } from './channel.ts';
export { LocalPrefixCache, type CachedBlock } from './local-cache.ts';
export { SequenceSlots } from './slots.ts';
