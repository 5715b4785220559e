// Cache-state events of one node, shaped as the wire KvEvent so the adapter publishes them as they
// are. The log owns the per-node sequence: contiguous from 1, one number per event, assigned only
// when an event is emitted (an operation that changes no block emits nothing and takes no number).
import type { CodecName } from '@kvmesh/kernels';
import { Tier, codecToWire, type Codec, type KvEvent, type NodeId, type StoredBlock } from '@kvmesh/protocol';

import type { BlockTier, IndexedBlock } from './types.ts';

/** Receives every event synchronously, after the operation's state change is complete. */
export type KvEventSink = (event: KvEvent) => void;

const TIER_TO_PROTO: Readonly<Record<BlockTier, Tier>> = {
  dram: Tier.TIER_DRAM,
  far: Tier.TIER_FAR,
  ssd: Tier.TIER_SSD,
};

export function codecToProto(codec: CodecName): Codec {
  return codecToWire(codec);
}

export function tierToProto(tier: BlockTier): Tier {
  return TIER_TO_PROTO[tier];
}

/** The wire form of a stored block (at any tier); `bytes` is the payload length (what a fetch moves). */
export function storedBlockOf(record: IndexedBlock): StoredBlock {
  return {
    hash: Buffer.from(record.hash, 'hex'),
    parentHash: record.parentHash === null ? Buffer.alloc(0) : Buffer.from(record.parentHash, 'hex'),
    tier: tierToProto(record.tier),
    codec: codecToProto(record.codec),
    bytes: BigInt(record.payloadBytes),
    namespace: record.namespace,
  };
}

export class KvEventLog {
  private seq = 0n;

  constructor(
    private readonly nodeId: NodeId,
    private readonly now: () => number,
    /** Undefined: nobody listens, so events are numbered but never built. */
    private readonly sink: KvEventSink | undefined,
  ) {}

  /** Sequence number of the last emitted event (0 before the first). */
  get lastSeq(): bigint {
    return this.seq;
  }

  /**
   * Emits one event for one operation, unless it changed nothing. `removed` comes in the order the
   * blocks left the store and is applied before `stored`.
   */
  emit(change: {
    stored?: readonly IndexedBlock[];
    removed?: readonly Pick<IndexedBlock, 'hash' | 'namespace'>[];
    cleared?: boolean;
  }): void {
    const stored = change.stored ?? [];
    const removed = change.removed ?? [];
    const cleared = change.cleared ?? false;
    if (stored.length === 0 && removed.length === 0 && !cleared) return;
    this.seq += 1n;
    if (this.sink === undefined) return;
    this.sink({
      nodeId: this.nodeId,
      seq: this.seq,
      stored: stored.map(storedBlockOf),
      removed: removed.map((record) => Buffer.from(record.hash, 'hex')),
      removedNamespaces: removed.map((record) => record.namespace),
      cleared,
      timestampMs: BigInt(Math.floor(this.now())),
    });
  }
}
