// The node's request logic shared by its two front doors (gRPC and the data channel): a client put
// is checked once and coordinated onto R nodes; a replica put (node to node) is stored here only, so
// it never fans out again. Reads, probes and DistAttention are local. Membership and the copy to a
// peer are injected, so this stays free of transports.
import type { Kernels } from '@kvmesh/kernels';
import type { NodeId } from '@kvmesh/protocol';

import { checkClientBlock } from './block-checks.ts';
import type { BlockStore } from './block-store.ts';
import {
  partialAttention,
  type PartialAttentionInput,
  type PartialAttentionOutput,
} from './partial-attention.ts';
import { coordinatePut, type PlacedBlock, type ReplicaOutcome } from './put-coordinator.ts';
import type { PutBlockInput } from './types.ts';

export interface KvNodeDeps {
  readonly self: NodeId;
  readonly store: BlockStore;
  readonly kernels: Kernels;
  /** Copies this node's puts must reach (R). */
  readonly replicas: number;
  /** Live kvstore members, self included. */
  readonly live: () => readonly NodeId[];
  /** Stores the block on another node as a replica put. */
  readonly replicate: (node: NodeId, input: PutBlockInput) => Promise<ReplicaOutcome>;
  /** Read lease PartialAttention takes on the blocks it reads. */
  readonly attentionLeaseMs: number;
}

export interface KvNodeCounters {
  /** Client puts acknowledged (R copies made). */
  clientPuts: number;
  /** Client puts that failed. */
  clientPutsFailed: number;
  /** Replica puts stored here for another coordinator. */
  replicaPuts: number;
  /** Copies placed on a substitute because an owner was full or unreachable. */
  substitutions: number;
}

export class KvNode {
  readonly counters: KvNodeCounters = {
    clientPuts: 0,
    clientPutsFailed: 0,
    replicaPuts: 0,
    substitutions: 0,
  };

  constructor(private readonly deps: KvNodeDeps) {}

  get self(): NodeId {
    return this.deps.self;
  }

  get store(): BlockStore {
    return this.deps.store;
  }

  get replicas(): number {
    return this.deps.replicas;
  }

  /** Stores here only (a replica put, or this node's share of a coordinated one). */
  putLocal(input: PutBlockInput): ReplicaOutcome {
    return this.deps.store.put(input).status;
  }

  putReplica(input: PutBlockInput): ReplicaOutcome {
    const outcome = this.putLocal(input);
    this.counters.replicaPuts++;
    return outcome;
  }

  /** A client put: resolves once R nodes hold the block (see coordinatePut for the failure modes). */
  async putClient(input: PutBlockInput): Promise<PlacedBlock> {
    const { self, store, kernels, replicas } = this.deps;
    try {
      checkClientBlock(kernels, input, store.config.blockBytesMax);
      const placed = await coordinatePut({
        hash: input.hash,
        live: this.deps.live(),
        replicas,
        storeOn: async (node) => (node === self ? this.putLocal(input) : this.deps.replicate(node, input)),
      });
      this.counters.clientPuts++;
      this.counters.substitutions += placed.substitutes.length;
      return placed;
    } catch (err) {
      this.counters.clientPutsFailed++;
      throw err;
    }
  }

  partialAttention(input: PartialAttentionInput): Promise<PartialAttentionOutput> {
    return partialAttention(this.deps.store, this.deps.kernels, input, this.deps.attentionLeaseMs);
  }
}
