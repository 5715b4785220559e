// Configuration of one kvstore node's DRAM block pool: the byte and entry bounds, the eviction
// watermarks, and the lease / pin limits. Every field has a default and is validated once here, so
// the store itself can trust a ResolvedBlockStoreConfig (all integers finite, low ≤ high ≤ 1).
import { InvalidArgumentError } from '@kvmesh/errors';
import { parseNodeId, type NodeId } from '@kvmesh/protocol';

/**
 * Bytes charged per entry on top of its payload and token ids: the record object, its map slot, heap
 * slots and key string. An estimate, so the budget stays honest when blocks are small.
 */
export const ENTRY_OVERHEAD_BYTES = 256;
/** Longest pin holder id (characters). */
export const PIN_HOLDER_CHARS_MAX = 256;

export interface BlockStoreConfig {
  /** Stamped on every event; required because event streams are per node. */
  nodeId: NodeId;
  /** DRAM bytes the pool may hold (payload + token ids + ENTRY_OVERHEAD_BYTES per entry). */
  bytesBudget?: number;
  /** Fraction of bytesBudget (and of blocksMax) above which a put or tick starts evicting. */
  highWatermark?: number;
  /** Fraction eviction brings usage down to once it starts. */
  lowWatermark?: number;
  /** Most entries the pool holds. */
  blocksMax?: number;
  /** Largest payload one put may carry (at most bytesBudget; the default is capped by it). */
  blockBytesMax?: number;
  /** Longest read lease a get may take; longer requests are capped. */
  leaseMsMax?: number;
  /** Pin TTL used when a pin asks for 0. */
  pinTtlMsDefault?: number;
  /** Longest pin TTL; longer requests are capped. */
  pinTtlMsMax?: number;
  /** Most distinct holders pinning one block. */
  pinHoldersMax?: number;
  /** Most hashes in one matchPrefix / pin / unpin request. */
  hashesPerRequestMax?: number;
  /**
   * Evicted blocks become demotion candidates for a lower tier instead of being dropped (an adapter
   * moves them; see BlockStore.claimDemotions). Off: eviction drops, exactly as without a tier.
   */
  tiering?: boolean;
  /**
   * Memory of evicted blocks awaiting the tier's acknowledgement, on top of bytesBudget (charged
   * like the budget). A victim that does not fit is dropped, as without a tier. The default is
   * min(256 MiB, bytesBudget / 4).
   */
  demotingBytesMax?: number;
  /** Most demoted blocks whose metadata stays indexed here; beyond it the oldest are dropped. */
  demotedBlocksMax?: number;
}

export type ResolvedBlockStoreConfig = Readonly<Required<BlockStoreConfig>>;

export const BLOCK_STORE_DEFAULTS = {
  bytesBudget: 1024 * 1024 * 1024,
  highWatermark: 0.95,
  lowWatermark: 0.85,
  blocksMax: 1 << 20,
  blockBytesMax: 64 * 1024 * 1024,
  leaseMsMax: 60_000,
  pinTtlMsDefault: 60_000,
  pinTtlMsMax: 3_600_000,
  pinHoldersMax: 16,
  // 8192 blocks of 64 tokens is a 512k-token prompt.
  hashesPerRequestMax: 8192,
  tiering: false,
  demotingBytesMax: 256 * 1024 * 1024,
  demotedBlocksMax: 1 << 20,
} as const satisfies Omit<Required<BlockStoreConfig>, 'nodeId'>;

function checkInteger(name: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got ${String(value)}`, {
      [name]: value,
      min,
      max,
    });
  }
}

function checkFraction(name: string, value: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > 1) {
    throw new InvalidArgumentError(`${name} must be a fraction in (0, 1], got ${String(value)}`, {
      [name]: value,
    });
  }
}

/** Fills defaults and validates; throws InvalidArgumentError naming the first bad field. */
export function resolveBlockStoreConfig(config: BlockStoreConfig): ResolvedBlockStoreConfig {
  if (typeof config.nodeId !== 'string') {
    throw new InvalidArgumentError('nodeId is required', { nodeId: config.nodeId });
  }
  const resolved: Required<BlockStoreConfig> = {
    ...BLOCK_STORE_DEFAULTS,
    nodeId: parseNodeId(config.nodeId),
  };
  for (const key of Object.keys(BLOCK_STORE_DEFAULTS) as (keyof typeof BLOCK_STORE_DEFAULTS)[]) {
    const value = config[key];
    if (value !== undefined) (resolved as Record<string, unknown>)[key] = value;
  }
  checkInteger('bytesBudget', resolved.bytesBudget, 1);
  // A small pool (tests, a laptop) still gets a usable default block bound.
  if (config.blockBytesMax === undefined) {
    resolved.blockBytesMax = Math.min(BLOCK_STORE_DEFAULTS.blockBytesMax, resolved.bytesBudget);
  }
  checkFraction('highWatermark', resolved.highWatermark);
  checkFraction('lowWatermark', resolved.lowWatermark);
  if (resolved.lowWatermark > resolved.highWatermark) {
    throw new InvalidArgumentError(
      `lowWatermark ${resolved.lowWatermark} must not exceed highWatermark ${resolved.highWatermark}`,
      { lowWatermark: resolved.lowWatermark, highWatermark: resolved.highWatermark },
    );
  }
  checkInteger('blocksMax', resolved.blocksMax, 1);
  checkInteger('blockBytesMax', resolved.blockBytesMax, 1, resolved.bytesBudget);
  checkInteger('leaseMsMax', resolved.leaseMsMax, 0);
  checkInteger('pinTtlMsMax', resolved.pinTtlMsMax, 1);
  checkInteger('pinTtlMsDefault', resolved.pinTtlMsDefault, 1, resolved.pinTtlMsMax);
  checkInteger('pinHoldersMax', resolved.pinHoldersMax, 1);
  checkInteger('hashesPerRequestMax', resolved.hashesPerRequestMax, 1);
  if (typeof resolved.tiering !== 'boolean') {
    throw new InvalidArgumentError(`tiering must be a boolean, got ${String(resolved.tiering)}`, {
      tiering: resolved.tiering,
    });
  }
  if (config.demotingBytesMax === undefined) {
    resolved.demotingBytesMax = Math.min(
      BLOCK_STORE_DEFAULTS.demotingBytesMax,
      Math.max(1, Math.floor(resolved.bytesBudget / 4)),
    );
  }
  checkInteger('demotingBytesMax', resolved.demotingBytesMax, 1);
  checkInteger('demotedBlocksMax', resolved.demotedBlocksMax, 1);
  return Object.freeze(resolved);
}
