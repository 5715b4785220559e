// Which prompt blocks a prefill imports from the store and which it writes back. Only full blocks
// are shared; the engine always computes the last prompt token itself (its logits give the first
// new token), so at most floor((len - 1) / B) leading blocks are imported, and only a contiguous
// prefix of them: block i is useless without blocks 0..i-1. Pure: no transport, no clock.
import { InvalidArgumentError } from '@kvmesh/errors';

export interface PrefillPlanInput {
  /** Prompt length in tokens (> 0). */
  readonly promptTokens: number;
  readonly blockTokens: number;
  /** Leading full prompt blocks the store holds (MatchPrefix). */
  readonly matchedBlocks: number;
  /** Per full prompt block, in order: does the store hold it (at any position of the match)? */
  readonly held: readonly boolean[];
}

export interface PrefillPlan {
  readonly promptTokens: number;
  readonly blockTokens: number;
  /** floor(promptTokens / B): the blocks whose hashes the response carries. */
  readonly fullBlocks: number;
  /** floor((promptTokens - 1) / B): the most blocks the engine accepts as imports. */
  readonly importableBlocks: number;
  /** Leading blocks to fetch and import: min(matchedBlocks, importableBlocks). */
  readonly importBlocks: number;
  readonly held: readonly boolean[];
}

export function importableBlocks(promptTokens: number, blockTokens: number): number {
  return Math.floor((promptTokens - 1) / blockTokens);
}

export function planPrefill(input: PrefillPlanInput): PrefillPlan {
  const { promptTokens, blockTokens, matchedBlocks, held } = input;
  if (!Number.isInteger(promptTokens) || promptTokens < 1)
    throw new InvalidArgumentError(`promptTokens must be a positive integer, got ${promptTokens}`, {
      promptTokens,
    });
  if (!Number.isInteger(blockTokens) || blockTokens < 1)
    throw new InvalidArgumentError(`blockTokens must be a positive integer, got ${blockTokens}`, {
      blockTokens,
    });
  const fullBlocks = Math.floor(promptTokens / blockTokens);
  if (held.length !== fullBlocks)
    throw new InvalidArgumentError(
      `held lists ${held.length} blocks, the prompt has ${fullBlocks} full ones`,
      {
        held: held.length,
        fullBlocks,
      },
    );
  if (!Number.isInteger(matchedBlocks) || matchedBlocks < 0 || matchedBlocks > fullBlocks)
    throw new InvalidArgumentError(`matchedBlocks must be in [0, ${fullBlocks}], got ${matchedBlocks}`, {
      matchedBlocks,
      fullBlocks,
    });
  const importable = importableBlocks(promptTokens, blockTokens);
  return {
    promptTokens,
    blockTokens,
    fullBlocks,
    importableBlocks: importable,
    importBlocks: Math.min(matchedBlocks, importable),
    held,
  };
}

/** How many leading fetches are usable: the prefix up to (not including) the first failure. */
export function usablePrefix(fetched: readonly boolean[]): number {
  const firstMissing = fetched.indexOf(false);
  return firstMissing === -1 ? fetched.length : firstMissing;
}

/**
 * Full blocks to put after computing, in order: every block the store does not hold, plus those
 * planned as imports whose fetch failed (a fresh copy is cheap to offer; the node deduplicates).
 */
export function blocksToPut(plan: PrefillPlan, importedBlocks: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < plan.fullBlocks; i++) {
    const fetchFailed = i >= importedBlocks && i < plan.importBlocks;
    if (plan.held[i] !== true || fetchFailed) out.push(i);
  }
  return out;
}

/** Prompt tokens whose KV came from the store and those the engine computed. */
export function prefillUsage(
  plan: PrefillPlan,
  importedBlocks: number,
): { reusedTokens: number; computedTokens: number } {
  const reusedTokens = importedBlocks * plan.blockTokens;
  return { reusedTokens, computedTokens: plan.promptTokens - reusedTokens };
}
