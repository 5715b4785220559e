// Public surface of the router's pure core: the global block index fed by kv events, the routing
// policies with their cost model and the conditional-disaggregation decision, their config and
// typed errors. Adapters import from here only.
export {
  BlockIndex,
  type ApplyResult,
  type BlockHolder,
  type BlockIndexStats,
  type IndexMatch,
  type IndexedBlock,
  type NodeSequence,
  type PrefixPosition,
} from './block-index.ts';
export {
  BLOCK_INDEX_DEFAULTS,
  ROUTING_DEFAULTS,
  ROUTING_POLICIES,
  resolveBlockIndexConfig,
  resolveRoutingConfig,
  type BlockIndexConfig,
  type ResolvedBlockIndexConfig,
  type ResolvedRoutingConfig,
  type RoutingConfig,
  type RoutingPolicyName,
} from './config.ts';
export { NoWorkerAvailableError } from './errors.ts';
export { derivedCosts, modelParameters, type DeploymentSpeeds, type ModelShapeForCosts } from './costs.ts';
export { InflightPrefixes, PendingWork, type InflightTicket } from './inflight.ts';
export {
  WorkerRouter,
  compareLoad,
  estimateTtft,
  pickKvAware,
  pickLeastLoaded,
  pickRoundRobin,
  planRequest,
  storeBlockTiers,
  storeCachedBlocks,
  type RequestPlan,
  type RequestPlanKind,
  type RouteDecision,
  type RouteInput,
  type TtftEstimate,
  type WorkerCandidate,
  type WorkerRates,
} from './routing.ts';
