// The decode worker's local prefix cache: full blocks of finished sequences kept in the engine's
// pool (one reference each), keyed by block hash, so a later request with the same prefix (the next
// turn of a conversation, a shared system prompt) imports them without touching the store. Bounded
// by blocksMax; evicts least recently used first, and because a hit or insert touches a chain from
// its last block back to its first, the least recently used entry is normally a leaf: a parent
// never leaves before its children (a child is useless without it). Pure: pool references and
// events are the caller's, through the entries it gets back.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { BlockHash } from '@kvmesh/protocol';

export interface CachedBlock {
  readonly hash: BlockHash;
  readonly parent: BlockHash | null;
  /** The engine pool id this entry holds one reference on. */
  readonly poolId: number;
  readonly namespace: string;
  /** Payload bytes (what a fetch of the block would move). */
  readonly bytes: number;
}

export class LocalPrefixCache {
  /** In least-recently-used-first order (Map insertion order, refreshed by delete + set). */
  private readonly entries = new Map<BlockHash, CachedBlock>();

  constructor(readonly blocksMax: number) {
    if (!Number.isInteger(blocksMax) || blocksMax < 0)
      throw new InvalidArgumentError(`blocksMax must be a non-negative integer, got ${blocksMax}`, {
        blocksMax,
      });
  }

  get size(): number {
    return this.entries.size;
  }

  /** Pool ids of the leading `hashes` held, in order (stops at the first miss); touches them. */
  match(hashes: readonly BlockHash[]): number[] {
    const hits: CachedBlock[] = [];
    for (const hash of hashes) {
      const entry = this.entries.get(hash);
      if (entry === undefined) break;
      hits.push(entry);
    }
    this.touch(hits);
    return hits.map((e) => e.poolId);
  }

  /**
   * Adds a chain's blocks (blocks[i]'s parent is blocks[i-1], the first's is given in it). Returns
   * the entries that took no place (already held, or the cache is off: the caller releases their
   * references) and the entries evicted to stay within blocksMax (released and reported removed).
   */
  insert(blocks: readonly CachedBlock[]): {
    added: CachedBlock[];
    refused: CachedBlock[];
    evicted: CachedBlock[];
  } {
    const added: CachedBlock[] = [];
    const refused: CachedBlock[] = [];
    const evicted: CachedBlock[] = [];
    const chain: CachedBlock[] = [];
    for (const block of blocks) {
      const held = this.entries.get(block.hash);
      if (held !== undefined || this.blocksMax === 0) {
        refused.push(block);
        if (held !== undefined) chain.push(held);
        continue;
      }
      this.entries.set(block.hash, block);
      added.push(block);
      chain.push(block);
    }
    this.touch(chain);
    while (this.entries.size > this.blocksMax) {
      const oldest = this.evictOne();
      if (oldest === undefined) break;
      evicted.push(oldest);
    }
    return { added, refused, evicted };
  }

  /** Removes the least recently used entry (its reference is the caller's to release). */
  evictOne(): CachedBlock | undefined {
    const first = this.entries.values().next();
    if (first.done === true) return undefined;
    this.entries.delete(first.value.hash);
    return first.value;
  }

  /** Removes every entry (for shutdown); the references are the caller's to release. */
  clear(): CachedBlock[] {
    const all = [...this.entries.values()];
    this.entries.clear();
    return all;
  }

  /** Most recent last: the chain's first block ends most recent, so leaves go first. */
  private touch(chain: readonly CachedBlock[]): void {
    for (let i = chain.length - 1; i >= 0; i--) {
      const entry = chain[i] as CachedBlock;
      this.entries.delete(entry.hash);
      this.entries.set(entry.hash, entry);
    }
  }
}
