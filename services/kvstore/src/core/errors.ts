// Typed errors of the block store. Each carries what the caller needs to act: the claimed and
// computed hash of a rejected block, or the byte and entry numbers of a full node, so the service
// edge can map them to gRPC / HTTP statuses (via `kind`) without parsing messages.
import { KvmeshError } from '@kvmesh/errors';
import type { BlockHash, Namespace } from '@kvmesh/protocol';

/** A put whose claimed hash is not the spec v1 hash of its parent (or seed) and token ids. */
export class BlockHashMismatchError extends KvmeshError {
  constructor(claimed: BlockHash, computed: BlockHash, parentHash: BlockHash | null, namespace: Namespace) {
    super(
      'BLOCK_HASH_MISMATCH',
      'invalid-argument',
      `block hash ${claimed} does not match its token ids (computed ${computed} from ${
        parentHash === null ? 'the namespace seed' : `parent ${parentHash}`
      })`,
      { claimed, computed, parentHash, namespace },
    );
  }
}

export interface StoreFullDetails {
  /** Bytes the rejected block needs (payload + token ids + entry overhead). */
  bytesNeeded: number;
  bytesUsed: number;
  bytesBudget: number;
  blocks: number;
  blocksMax: number;
  /** Bytes that evicting every evictable block would have freed. */
  bytesEvictable: number;
}

/**
 * A put that does not fit even after evicting every block that may be evicted (the rest are
 * pinned, leased or parents of those). Nothing was stored or evicted; retry later or elsewhere.
 */
export class StoreFullError extends KvmeshError {
  constructor(details: StoreFullDetails) {
    super(
      'STORE_FULL',
      'resource-exhausted',
      `block store full: a block of ${details.bytesNeeded} bytes does not fit (${details.bytesUsed}/${details.bytesBudget} bytes, ${details.blocks}/${details.blocksMax} blocks used, ${details.bytesEvictable} bytes evictable)`,
      { ...details },
    );
  }
}
