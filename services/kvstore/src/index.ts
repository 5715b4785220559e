// Public surface of @kvmesh/kvstore: start a node in-process (tests, the local launcher) and the
// shapes a client or test needs around it: the config schema, the node handle (with its link to the
// host's tiering service), the errors a put can end with, and the pure decisions (placement of a
// put, re-replication planning) for simulations.
export {
  KVSTORE_CONFIG_SCHEMA,
  checkKvStoreConfig,
  kvStoreConfig,
  loadKvStoreConfig,
  resolveNodeId,
  type KvStoreConfig,
} from './config.ts';
export {
  KVSTORE_ROLE,
  KVSTORE_SERVICE_NAME,
  startKvStoreNode,
  type KvStoreNode,
  type StartKvStoreNodeOptions,
} from './node.ts';
export { ANONYMOUS_PIN_HOLDER } from './adapters/grpc-service.ts';
export type { PayloadPoolStats } from './adapters/payload-pool.ts';
export type { RebalancerStats } from './adapters/rebalancer.ts';
export type { TierLink, TierLinkCounters } from './adapters/tier-link.ts';
export {
  BlockHashMismatchError,
  BlockStore,
  KvNode,
  ReplicasExhaustedError,
  ReplicasUnavailableError,
  StoreFullError,
  classifyFailure,
  coordinatePut,
  planPushes,
  presumedHolders,
  type BlockRecord,
  type BlockStoreStats,
  type PlacedBlock,
  type PutBlockInput,
  type ReplicaOutcome,
} from './core/index.ts';
