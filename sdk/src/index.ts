// Public surface of @kvmesh/sdk: MeshClient (generate / listModels through the router's gRPC front
// door), KvStoreClient (put / get / matchPrefix / partialAttention / pin / unpin / stats over a
// kvstore cluster), their options, result shapes and typed errors, and the pure helpers KvStoreClient
// is built from (placement order, prefix-match merge, DistAttention assignment), which callers may
// reuse to plan their own requests.
export { MESH_CLIENT_DEFAULTS, MeshClient, toGenerateRequest } from './mesh-client.ts';
export type {
  MeshCallOptions,
  MeshChatMessage,
  MeshChatRole,
  MeshClientCounters,
  MeshClientOptions,
  MeshCodecName,
  MeshFinishReason,
  MeshGenerateChunk,
  MeshGenerateRequest,
  MeshModel,
  MeshUsage,
} from './mesh-client.ts';
export { KvStoreClient } from './client.ts';
export type {
  ClientCounters,
  ClusterStats,
  DistAttentionResult,
  GetOptions,
  NodeStats,
  PartialAttentionArgs,
  PinOptions,
  PinReport,
  PutOutcome,
  PutReport,
} from './client.ts';
export { CLIENT_DEFAULTS } from './options.ts';
export type { KvStoreClientOptions, StaticNode } from './options.ts';
export {
  BlockNotFoundError,
  BlockUnavailableError,
  ClientClosedError,
  ContextLengthExceededError,
  DeadlineExceededError,
  ModelNotFoundError,
  NoLiveNodesError,
  PutNotAcknowledgedError,
  RequestCancelledError,
  UnauthenticatedError,
} from './errors.ts';
export { isTransportFailure } from './calls.ts';
export {
  chainBlocks,
  codecName,
  encodePutHeader,
  normalizeBlock,
  tierName,
  toBlockHash,
  toWireBlock,
  verifyFetchedBlock,
} from './core/blocks.ts';
export type {
  BlockInput,
  ChainBlocksArgs,
  ChainedBlock,
  FetchedBlock,
  FetchCheck,
  NormalizedBlock,
  PutBlockInput,
  TierName,
} from './core/blocks.ts';
export {
  QUERY_FLOATS_MAX,
  assignHolders,
  candidateNodes,
  checkAttentionQuery,
  decodePartial,
  emptyPartial,
  mergeMatches,
  queryBytes,
} from './core/plan.ts';
export type { AttentionQuery, BlockLocationView, PrefixMatchResult } from './core/plan.ts';
export { Semaphore, mapBounded } from './core/bounded.ts';
