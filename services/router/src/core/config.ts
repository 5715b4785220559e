// Configuration of the router's pure core: the bounds of the global block index and the routing
// policy with its cost model. Every field has a documented default and is validated once here, so the
// index and the policies can trust a resolved config (finite, in range, integers where counted).
import { InvalidArgumentError } from '@kvmesh/errors';

export interface BlockIndexConfig {
  /**
   * Most (node, block) pairs the index holds. Past it, the least recently matched or stored blocks
   * are evicted with all their holders (see block-index.ts); the index then under-reports, which is safe.
   */
  entriesMax?: number;
  /** Most nodes whose event streams are tracked; events from further nodes are rejected. */
  nodesMax?: number;
  /** Most hashes one match may ask about (8192 blocks of 64 tokens is a 512k-token prompt). */
  hashesPerMatchMax?: number;
}

export type ResolvedBlockIndexConfig = Readonly<Required<BlockIndexConfig>>;

export const BLOCK_INDEX_DEFAULTS = {
  // ~1M pairs is a few hundred MB of JS objects at most: 64M cached tokens at block size 64.
  entriesMax: 1 << 20,
  nodesMax: 1024,
  hashesPerMatchMax: 8192,
} as const satisfies Required<BlockIndexConfig>;

export const ROUTING_POLICIES = ['kv-aware', 'round-robin', 'least-loaded'] as const;
export type RoutingPolicyName = (typeof ROUTING_POLICIES)[number];

/**
 * The kv-aware cost model: estimated TTFT (ms) = uncached tokens × prefillMsPerToken + tokens fetched
 * from the store × transferMsPerToken (far / SSD copies at their own rates) + the work queued ahead
 * on the worker + sequences already running × activeSequenceMs (they share every engine step with
 * it). Tokens cached on the worker itself cost nothing. The queued work is the candidate's
 * pendingMs when the caller knows it (the router does: its own requests at their estimates), else
 * queue depth × queueWaitMsPerRequest. A worker that reports its own measured rates (heartbeats)
 * is priced at those; these rates are what is used before any worker has measured one.
 */
export interface RoutingConfig {
  policy?: RoutingPolicyName;
  /** Time to compute one prompt token's KV on a worker. */
  prefillMsPerToken?: number;
  /** Time to fetch one cached token's KV from the store into a worker (a copy in DRAM). */
  transferMsPerToken?: number;
  /** The same from a copy demoted to far memory or to SSD (events report each copy's tier). */
  farTransferMsPerToken?: number;
  ssdTransferMsPerToken?: number;
  /** Expected wait added by each request already queued on a worker. */
  queueWaitMsPerRequest?: number;
  /** Delay each sequence already running on a worker adds to a new request's first token. */
  activeSequenceMs?: number;
  /**
   * Conditional disaggregation: a request whose uncached part is shorter than this runs directly on
   * the decode worker; one with at least this many uncached tokens is prefilled on a prefill worker.
   */
  prefillUncachedTokensMin?: number;
}

export type ResolvedRoutingConfig = Readonly<Required<RoutingConfig>>;

export const ROUTING_DEFAULTS = {
  policy: 'kv-aware',
  prefillMsPerToken: 0.25,
  transferMsPerToken: 0.01,
  farTransferMsPerToken: 0.02,
  ssdTransferMsPerToken: 0.08,
  queueWaitMsPerRequest: 50,
  activeSequenceMs: 10,
  prefillUncachedTokensMin: 512,
} as const satisfies Required<RoutingConfig>;

function checkInteger(name: string, value: unknown, min: number): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(value)}`, {
      [name]: value,
      min,
    });
  }
}

export function checkNonNegative(name: string, value: unknown): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new InvalidArgumentError(`${name} must be a finite number >= 0, got ${String(value)}`, {
      [name]: value,
    });
  }
}

/** Fills defaults and validates; throws InvalidArgumentError naming the first bad field. */
export function resolveBlockIndexConfig(config: BlockIndexConfig = {}): ResolvedBlockIndexConfig {
  const resolved = {
    entriesMax: config.entriesMax ?? BLOCK_INDEX_DEFAULTS.entriesMax,
    nodesMax: config.nodesMax ?? BLOCK_INDEX_DEFAULTS.nodesMax,
    hashesPerMatchMax: config.hashesPerMatchMax ?? BLOCK_INDEX_DEFAULTS.hashesPerMatchMax,
  };
  checkInteger('entriesMax', resolved.entriesMax, 1);
  checkInteger('nodesMax', resolved.nodesMax, 1);
  checkInteger('hashesPerMatchMax', resolved.hashesPerMatchMax, 1);
  return Object.freeze(resolved);
}

/** Fills defaults and validates; throws InvalidArgumentError naming the first bad field. */
export function resolveRoutingConfig(config: RoutingConfig = {}): ResolvedRoutingConfig {
  const resolved = {
    policy: config.policy ?? ROUTING_DEFAULTS.policy,
    prefillMsPerToken: config.prefillMsPerToken ?? ROUTING_DEFAULTS.prefillMsPerToken,
    transferMsPerToken: config.transferMsPerToken ?? ROUTING_DEFAULTS.transferMsPerToken,
    farTransferMsPerToken: config.farTransferMsPerToken ?? ROUTING_DEFAULTS.farTransferMsPerToken,
    ssdTransferMsPerToken: config.ssdTransferMsPerToken ?? ROUTING_DEFAULTS.ssdTransferMsPerToken,
    queueWaitMsPerRequest: config.queueWaitMsPerRequest ?? ROUTING_DEFAULTS.queueWaitMsPerRequest,
    activeSequenceMs: config.activeSequenceMs ?? ROUTING_DEFAULTS.activeSequenceMs,
    prefillUncachedTokensMin: config.prefillUncachedTokensMin ?? ROUTING_DEFAULTS.prefillUncachedTokensMin,
  };
  if (!(ROUTING_POLICIES as readonly string[]).includes(resolved.policy)) {
    throw new InvalidArgumentError(
      `policy must be one of ${ROUTING_POLICIES.join(', ')}, got '${String(resolved.policy)}'`,
      { policy: resolved.policy, allowed: [...ROUTING_POLICIES] },
    );
  }
  checkNonNegative('prefillMsPerToken', resolved.prefillMsPerToken);
  checkNonNegative('transferMsPerToken', resolved.transferMsPerToken);
  checkNonNegative('farTransferMsPerToken', resolved.farTransferMsPerToken);
  checkNonNegative('ssdTransferMsPerToken', resolved.ssdTransferMsPerToken);
  checkNonNegative('queueWaitMsPerRequest', resolved.queueWaitMsPerRequest);
  checkNonNegative('activeSequenceMs', resolved.activeSequenceMs);
  checkInteger('prefillUncachedTokensMin', resolved.prefillUncachedTokensMin, 0);
  return Object.freeze(resolved);
}
