// Routing policies of the router: which worker of a pool gets a request, and whether the request
// needs a prefill worker at all (conditional disaggregation). Pure and deterministic: the same input
// and the same earlier choices give the same worker. A tie (equal estimate, equal load) falls to the
// worker this router chose least recently, then the lowest node id: always breaking ties toward the
// lowest id piled every request of a lull onto one worker (73 of 129 under least-loaded in the mesh
// bench), where rotating among equals spreads them as round-robin would. The kv-aware cost model is
// documented on RoutingConfig.
import { InvalidArgumentError } from '@kvmesh/errors';
import { Tier, type NodeId } from '@kvmesh/protocol';

import type { IndexMatch } from './block-index.ts';
import {
  checkNonNegative,
  resolveRoutingConfig,
  type ResolvedRoutingConfig,
  type RoutingConfig,
  type RoutingPolicyName,
} from './config.ts';
import { NoWorkerAvailableError } from './errors.ts';

export interface WorkerCandidate {
  readonly nodeId: NodeId;
  /** Requests waiting on the worker (from its heartbeat). */
  readonly queueDepth: number;
  /** Sequences the worker is running (from its heartbeat). */
  readonly activeSequences: number;
  /**
   * Leading prompt blocks in the worker's own pool, when the worker publishes kv events (its entry in
   * IndexMatch.leadingBlocksByNode); 0 or absent when unknown.
   */
  readonly localCachedBlocks?: number;
  /**
   * Estimated work (ms) already queued on the worker ahead of this request (the requests a router
   * sent there that have not started, at their own estimates); when set, it replaces queueDepth ×
   * queueWaitMsPerRequest in the kv-aware estimate.
   */
  readonly pendingMs?: number;
  /** Rates the worker measured on its own work; each one given (> 0) replaces the cost model's. */
  readonly rates?: WorkerRates;
}

/** Per-worker rates (ms): see RoutingConfig for their meaning. */
export interface WorkerRates {
  readonly prefillMsPerToken?: number;
  /** For copies in DRAM; far and SSD copies keep the cost model's rates. */
  readonly transferMsPerToken?: number;
  readonly activeSequenceMs?: number;
}

export interface RouteInput {
  /** Prompt length; only its full blocks can be cached. */
  readonly promptTokens: number;
  readonly blockSizeTokens: number;
  /** Leading prompt blocks the store can serve to any worker (see storeCachedBlocks). */
  readonly storeCachedBlocks: number;
  /** The best tier each of those blocks is held in (see storeBlockTiers); absent: all in DRAM. */
  readonly storeBlockTiers?: readonly Tier[];
  readonly workers: readonly WorkerCandidate[];
}

/** How a request would start on one worker under the cost model. */
export interface TtftEstimate {
  readonly nodeId: NodeId;
  readonly promptTokens: number;
  /** Prompt tokens reused: already on the worker plus fetched from the store. */
  readonly cachedTokens: number;
  readonly localCachedTokens: number;
  readonly fetchedTokens: number;
  /** Prompt tokens that must be computed. */
  readonly uncachedTokens: number;
  /** This request's own work on the worker: computing its uncached tokens and fetching the rest. */
  readonly workMs: number;
  /** The rate a fetch of a DRAM copy into this worker was priced at (ms per token). */
  readonly transferMsPerToken: number;
  readonly ttftMs: number;
}

export interface RouteDecision {
  readonly nodeId: NodeId;
  readonly policy: RoutingPolicyName;
  /** The chosen worker's estimate, computed under every policy so their choices can be compared. */
  readonly estimate: TtftEstimate;
}

export type RequestPlanKind = 'decode-only' | 'prefill-then-decode';

export interface RequestPlan {
  readonly kind: RequestPlanKind;
  readonly uncachedTokens: number;
}

type CostModel = Pick<
  ResolvedRoutingConfig,
  | 'prefillMsPerToken'
  | 'transferMsPerToken'
  | 'farTransferMsPerToken'
  | 'ssdTransferMsPerToken'
  | 'queueWaitMsPerRequest'
  | 'activeSequenceMs'
>;

const compareIds = (a: NodeId, b: NodeId): number => (a < b ? -1 : a > b ? 1 : 0);

function checkCount(name: string, value: unknown, min: number): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(value)}`, {
      [name]: value,
    });
  }
}

function checkInput(input: RouteInput, pool: string): void {
  checkCount('promptTokens', input.promptTokens, 1);
  checkCount('blockSizeTokens', input.blockSizeTokens, 1);
  checkCount('storeCachedBlocks', input.storeCachedBlocks, 0);
  if (input.workers.length === 0) throw new NoWorkerAvailableError(pool);
  const seen = new Set<NodeId>();
  for (const w of input.workers) {
    if (seen.has(w.nodeId)) {
      throw new InvalidArgumentError(`worker '${w.nodeId}' is listed twice`, { nodeId: w.nodeId });
    }
    seen.add(w.nodeId);
    checkCount('queueDepth', w.queueDepth, 0);
    checkCount('activeSequences', w.activeSequences, 0);
    checkCount('localCachedBlocks', w.localCachedBlocks ?? 0, 0);
    checkNonNegative('pendingMs', w.pendingMs ?? 0);
    for (const [name, rate] of Object.entries(w.rates ?? {})) checkNonNegative(name, rate);
  }
}

/**
 * Leading blocks of a match that nodes accepted by `isStoreNode` can serve (each block by any of
 * them), e.g. the kvstore nodes as opposed to workers that also publish their pools' events.
 */
export function storeCachedBlocks(match: IndexMatch, isStoreNode: (nodeId: NodeId) => boolean): number {
  return storeBlockTiers(match, isStoreNode).length;
}

/**
 * The best (fastest) tier of each leading store-held block, for pricing its fetch; its length is
 * storeCachedBlocks.
 */
export function storeBlockTiers(match: IndexMatch, isStoreNode: (nodeId: NodeId) => boolean): Tier[] {
  const rank = (tier: Tier): number => (tier === Tier.TIER_FAR ? 1 : tier === Tier.TIER_SSD ? 2 : 0);
  const tiers: Tier[] = [];
  for (const position of match.positions) {
    const held = position.holders.filter((h) => isStoreNode(h.nodeId));
    if (held.length === 0) break;
    tiers.push(held.reduce<Tier>((best, h) => (rank(h.tier) < rank(best) ? h.tier : best), Tier.TIER_SSD));
  }
  return tiers;
}

function transferMsPerToken(tier: Tier | undefined, costs: CostModel, dramMsPerToken: number): number {
  if (tier === Tier.TIER_FAR) return costs.farTransferMsPerToken;
  if (tier === Tier.TIER_SSD) return costs.ssdTransferMsPerToken;
  return dramMsPerToken;
}

/** The worker's own measured rate where it has one, else the cost model's. */
function rateOf(worker: WorkerCandidate, name: keyof WorkerRates, costs: CostModel): number {
  const measured = worker.rates?.[name];
  return measured !== undefined && measured > 0 ? measured : costs[name];
}

/**
 * The worker's estimated TTFT: computed tokens at prefill cost, tokens the store has beyond the
 * worker's own prefix at the transfer cost of the tier each block lives in, tokens already on the
 * worker for free, plus the work queued ahead of it and the sequences it runs. Rates are the
 * worker's measured ones where it reports them.
 */
export function estimateTtft(worker: WorkerCandidate, input: RouteInput, costs: CostModel): TtftEstimate {
  const { promptTokens, blockSizeTokens } = input;
  const localCachedTokens = Math.min((worker.localCachedBlocks ?? 0) * blockSizeTokens, promptTokens);
  const storeTokens = Math.min(input.storeCachedBlocks * blockSizeTokens, promptTokens);
  const cachedTokens = Math.max(localCachedTokens, storeTokens);
  const fetchedTokens = cachedTokens - localCachedTokens;
  const uncachedTokens = promptTokens - cachedTokens;
  const dramMsPerToken = rateOf(worker, 'transferMsPerToken', costs);
  let fetchMs = 0;
  for (let start = localCachedTokens; start < cachedTokens;) {
    const block = Math.floor(start / blockSizeTokens);
    const end = Math.min(cachedTokens, (block + 1) * blockSizeTokens);
    fetchMs += (end - start) * transferMsPerToken(input.storeBlockTiers?.[block], costs, dramMsPerToken);
    start = end;
  }
  const workMs = uncachedTokens * rateOf(worker, 'prefillMsPerToken', costs) + fetchMs;
  const ttftMs =
    workMs +
    (worker.pendingMs ?? worker.queueDepth * costs.queueWaitMsPerRequest) +
    worker.activeSequences * rateOf(worker, 'activeSequenceMs', costs);
  return {
    nodeId: worker.nodeId,
    promptTokens,
    cachedTokens,
    localCachedTokens,
    fetchedTokens,
    uncachedTokens,
    workMs,
    transferMsPerToken: dramMsPerToken,
    ttftMs,
  };
}

/** When a worker was last chosen (higher is later; 0: never). */
export type ChoiceRecency = (nodeId: NodeId) => number;

const NEVER_CHOSEN: ChoiceRecency = () => 0;

/** Lowest queue depth, then fewest active sequences, then least recently chosen, then lowest id. */
export function compareLoad(
  a: WorkerCandidate,
  b: WorkerCandidate,
  recency: ChoiceRecency = NEVER_CHOSEN,
): number {
  return (
    a.queueDepth - b.queueDepth ||
    a.activeSequences - b.activeSequences ||
    recency(a.nodeId) - recency(b.nodeId) ||
    compareIds(a.nodeId, b.nodeId)
  );
}

export function pickLeastLoaded(
  workers: readonly WorkerCandidate[],
  recency: ChoiceRecency = NEVER_CHOSEN,
): WorkerCandidate {
  let best = workers[0];
  if (best === undefined) throw new NoWorkerAvailableError('any');
  for (const w of workers) if (compareLoad(w, best, recency) < 0) best = w;
  return best;
}

/**
 * The worker after `previous` in id order, wrapping to the first. Keyed by id rather than by a
 * position, so a worker joining or leaving neither skips nor repeats the others.
 */
export function pickRoundRobin(
  workers: readonly WorkerCandidate[],
  previous: NodeId | null,
): WorkerCandidate {
  const sorted = [...workers].sort((a, b) => compareIds(a.nodeId, b.nodeId));
  const first = sorted[0];
  if (first === undefined) throw new NoWorkerAvailableError('any');
  if (previous === null) return first;
  return sorted.find((w) => w.nodeId > previous) ?? first;
}

/** Minimum estimated TTFT; ties by the least-loaded order (queue, active sequences, recency, id). */
export function pickKvAware(
  input: RouteInput,
  costs: CostModel,
  recency: ChoiceRecency = NEVER_CHOSEN,
): TtftEstimate {
  let best: { worker: WorkerCandidate; estimate: TtftEstimate } | undefined;
  for (const worker of input.workers) {
    const estimate = estimateTtft(worker, input, costs);
    if (
      best === undefined ||
      estimate.ttftMs < best.estimate.ttftMs ||
      (estimate.ttftMs === best.estimate.ttftMs && compareLoad(worker, best.worker, recency) < 0)
    ) {
      best = { worker, estimate };
    }
  }
  if (best === undefined) throw new NoWorkerAvailableError('any');
  return best.estimate;
}

/**
 * Conditional disaggregation: a request whose uncached part is shorter than prefillUncachedTokensMin
 * runs directly on its decode worker (a prefill hop would cost more than it saves); longer ones are
 * prefilled on a prefill worker, which writes the blocks to the store for the decode worker to fetch.
 */
export function planRequest(
  request: { readonly promptTokens: number; readonly cachedTokens: number },
  config: Pick<ResolvedRoutingConfig, 'prefillUncachedTokensMin'>,
): RequestPlan {
  checkCount('promptTokens', request.promptTokens, 1);
  checkCount('cachedTokens', request.cachedTokens, 0);
  const uncachedTokens = Math.max(0, request.promptTokens - request.cachedTokens);
  const kind = uncachedTokens < config.prefillUncachedTokensMin ? 'decode-only' : 'prefill-then-decode';
  return { kind, uncachedTokens };
}

/**
 * Routes requests within one worker pool under the configured policy. Its only state is its earlier
 * choices (the previous one for round-robin, when each worker was last chosen for breaking ties), so
 * two routers fed the same requests choose the same workers.
 */
export class WorkerRouter {
  readonly config: ResolvedRoutingConfig;
  private previous: NodeId | null = null;
  /** Choice number at which each worker was last chosen; pruned to the workers of recent inputs. */
  private readonly chosenAt = new Map<NodeId, number>();
  private choices = 0;
  private readonly recency: ChoiceRecency = (nodeId) => this.chosenAt.get(nodeId) ?? 0;

  constructor(
    config: RoutingConfig = {},
    /** Names the pool in errors ('decode', 'prefill'). */
    readonly pool = 'decode',
  ) {
    this.config = resolveRoutingConfig(config);
  }

  /** Chooses a worker; throws NoWorkerAvailableError for an empty pool, InvalidArgumentError for bad input. */
  route(input: RouteInput): RouteDecision {
    checkInput(input, this.pool);
    const decision = this.decide(input);
    // NOTE: bounded: workers that left are forgotten once the map outgrows the pool it routes over.
    if (this.chosenAt.size > 2 * input.workers.length + 16) {
      const present = new Set(input.workers.map((w) => w.nodeId));
      for (const id of this.chosenAt.keys()) if (!present.has(id)) this.chosenAt.delete(id);
    }
    this.chosenAt.set(decision.nodeId, ++this.choices);
    return decision;
  }

  private decide(input: RouteInput): RouteDecision {
    const { policy } = this.config;
    let chosen: WorkerCandidate;
    switch (policy) {
      case 'kv-aware': {
        const estimate = pickKvAware(input, this.config, this.recency);
        return { nodeId: estimate.nodeId, policy, estimate };
      }
      case 'least-loaded':
        chosen = pickLeastLoaded(input.workers, this.recency);
        break;
      case 'round-robin':
        chosen = pickRoundRobin(input.workers, this.previous);
        this.previous = chosen.nodeId;
        break;
    }
    return { nodeId: chosen.nodeId, policy, estimate: estimateTtft(chosen, input, this.config) };
  }

  /** The conditional-disaggregation decision for a request routed by this router. */
  plan(estimate: { readonly promptTokens: number; readonly cachedTokens: number }): RequestPlan {
    return planRequest(estimate, this.config);
  }
}
