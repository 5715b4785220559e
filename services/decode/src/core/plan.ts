// Which prompt blocks a decode imports from the store, which finished blocks it writes back, and the
// usage it reports. Only full blocks are shared; the engine always computes the last prompt token
// itself (its logits give the first new token), so at most floor((len - 1) / B) leading blocks are
// imported, and only a contiguous prefix: block i is useless without blocks 0..i-1. Pure.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { BlockHash } from '@kvmesh/protocol';

export function importableBlocks(promptTokens: number, blockTokens: number): number {
  return Math.max(0, Math.floor((promptTokens - 1) / blockTokens));
}

/**
 * The requested block hashes to fetch: each must be the hash this worker computes for that prompt
 * block (a hash of other tokens would import KV of another text), cut to what the engine imports.
 */
export function blocksToFetch(
  requested: readonly BlockHash[],
  computed: readonly BlockHash[],
  promptTokens: number,
  blockTokens: number,
): BlockHash[] {
  requested.forEach((hash, i) => {
    if (hash !== computed[i])
      throw new InvalidArgumentError(
        `block_hashes[${i}] is ${hash}, but block ${i} of the prompt hashes to ${computed[i] ?? 'nothing'} (model, block size and namespace of this worker)`,
        { field: 'block_hashes', index: i, requested: hash, computed: computed[i] },
      );
  });
  return requested.slice(0, importableBlocks(promptTokens, blockTokens));
}

/** How many leading fetches are usable: the prefix up to (not including) the first failure. */
export function usablePrefix(fetched: readonly boolean[]): number {
  const firstMissing = fetched.indexOf(false);
  return firstMissing === -1 ? fetched.length : firstMissing;
}

/** Indices of the finished sequence's full blocks the store does not hold, in order. */
export function blocksToWriteBack(held: readonly boolean[]): number[] {
  const out: number[] = [];
  held.forEach((isHeld, i) => {
    if (!isHeld) out.push(i);
  });
  return out;
}

export interface DecodeUsage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** Prompt tokens whose KV came from the store instead of being computed. */
  readonly cachedTokens: number;
}

export function decodeUsage(
  promptTokens: number,
  completionTokens: number,
  reusedTokens: number,
): DecodeUsage {
  if (reusedTokens > promptTokens)
    throw new InvalidArgumentError(`reusedTokens ${reusedTokens} exceeds promptTokens ${promptTokens}`, {
      reusedTokens,
      promptTokens,
    });
  return { promptTokens, completionTokens, cachedTokens: reusedTokens };
}

/**
 * DistAttention at admission: of `usable` leading prompt blocks the store holds, how many stay in
 * the store (far) so that at most `budget` are imported; 0 when the budget is off (0) or not hit.
 */
export function farBlocksAtAdmission(usable: number, budget: number): number {
  return budget > 0 && usable > budget ? usable - budget : 0;
}

/**
 * Blocks to move from the pool to the store's side (far) once they are stored: the oldest local
 * blocks beyond `budget`, never past the first block the store has not acknowledged.
 */
export function blocksToDemote(args: {
  readonly farBlocks: number;
  readonly fullBlocks: number;
  /** Leading blocks the store is known to hold. */
  readonly storedBlocks: number;
  readonly budget: number;
}): number {
  const { farBlocks, fullBlocks, storedBlocks, budget } = args;
  if (budget <= 0) return 0;
  return Math.max(0, Math.min(fullBlocks - farBlocks - budget, storedBlocks - farBlocks));
}
