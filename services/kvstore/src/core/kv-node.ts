// The node's request logic shared by its two front doors (gRPC and the data channel): a client put
// is checked once and coordinated onto R nodes; a replica put (node to node) is stored here only, so
// it never fans out again. Reads, probes and DistAttention are local. Membership, the copy to a
// peer and the host's tier are injected, so this stays free of transports.
//
// Reads below DRAM: a block the store demoted is read back with the tier's promote (the tier gives
// it up: one owner at a time, so tier space stays bounded by the store's demoted metadata), handed
// to BlockStore.insertPromoted (verified like a put, re-enters DRAM) and served. Concurrent reads of
// one block share one promotion. Then, in the background (bounded queue and concurrency), its
// demoted ancestors are promoted too, and if a MatchPrefix recently named it as the first block
// below DRAM of a matched prefix, the rest of that prefix is prefetched.
import type { BlockHeader } from '@kvmesh/block';
import type { Kernels } from '@kvmesh/kernels';
import type { BlockHash, Namespace, NodeId } from '@kvmesh/protocol';

import { checkClientBlock } from './block-checks.ts';
import type { BlockStore } from './block-store.ts';
import {
  partialAttention,
  type PartialAttentionInput,
  type PartialAttentionOutput,
} from './partial-attention.ts';
import { coordinatePut, type PlacedBlock, type ReplicaOutcome } from './put-coordinator.ts';
import type { BlockRecord, BlockTier, LowerTier, PrefixMatch, PutBlockInput } from './types.ts';

/** The host's tiering service as the node needs it (the adapter does the I/O). */
export interface TierReader {
  /**
   * The block, removed from its tier, and the tier it came from; null when the tier does not hold it
   * (never had it, lost it, or dropped it as corrupt). Rejects when the tier cannot be reached.
   */
  promote(hash: BlockHash): Promise<{ block: PutBlockInput; tier: LowerTier } | null>;
}

/** Bounds of the read-back path (all counts of blocks). */
export interface PromotionLimits {
  /** Demoted ancestors promoted after a block is read back from a tier. */
  readonly parentsMax: number;
  /** Blocks of a matched prefix prefetched after its first block is read back. */
  readonly prefetchBlocksMax: number;
  /** Background promotions waiting; more are skipped. */
  readonly queueMax: number;
  /** Background promotions running at once. */
  readonly concurrency: number;
  /** Matched prefixes remembered for prefetching (least recently recorded go first). */
  readonly prefixHintsMax: number;
}

export const PROMOTION_DEFAULTS: PromotionLimits = {
  parentsMax: 8,
  prefetchBlocksMax: 64,
  queueMax: 1024,
  concurrency: 2,
  prefixHintsMax: 1024,
};

/** A block read for a client, and the tier the read was served from. */
export interface ReadBlock {
  readonly record: BlockRecord;
  readonly tier: BlockTier;
}

const keyOf = (namespace: Namespace, hash: BlockHash): string => hash + namespace;

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
  /** The host's tier (tiering on); without it demoted blocks cannot exist. */
  readonly tier?: TierReader;
  readonly promotion?: Partial<PromotionLimits>;
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
  /** Reads of a demoted block that the tier could not answer (unreachable): served as missing. */
  tierReadFailures: number;
  /** Background promotions done (ancestors and prefetched prefix blocks). */
  prefetched: number;
  /** Background promotions skipped because the queue was full. */
  prefetchSkipped: number;
}

export class KvNode {
  readonly counters: KvNodeCounters = {
    clientPuts: 0,
    clientPutsFailed: 0,
    replicaPuts: 0,
    substitutions: 0,
    tierReadFailures: 0,
    prefetched: 0,
    prefetchSkipped: 0,
  };
  private readonly limits: PromotionLimits;
  /** Promotions in flight by block key; a second reader waits on the first. */
  private readonly promoting = new Map<string, Promise<ReadBlock | undefined>>();
  private readonly queue: { namespace: Namespace; hash: BlockHash }[] = [];
  private running = 0;
  /** First demoted hash of a recently matched prefix → the prefix's other demoted hashes. */
  private readonly prefixHints = new Map<string, { namespace: Namespace; hashes: BlockHash[] }>();
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly deps: KvNodeDeps) {
    this.limits = { ...PROMOTION_DEFAULTS, ...deps.promotion };
  }

  get self(): NodeId {
    return this.deps.self;
  }

  get store(): BlockStore {
    return this.deps.store;
  }

  get replicas(): number {
    return this.deps.replicas;
  }

  /** Stores here only, for another node's coordinator (it never fans out again). */
  putReplica(input: PutBlockInput): ReplicaOutcome {
    const outcome = this.deps.store.put(input).status;
    this.counters.replicaPuts++;
    return outcome;
  }

  /** A client put: resolves once R nodes hold the block (see coordinatePut for the failure modes). */
  async putClient(input: PutBlockInput): Promise<PlacedBlock> {
    const { store, kernels, replicas } = this.deps;
    try {
      const header = checkClientBlock(kernels, input, store.config.blockBytesMax);
      const placed = await coordinatePut({
        hash: input.hash,
        live: this.deps.live(),
        replicas,
        // NOTE: a bound method rather than an arrow (this runs on every put; see Placement).
        storeOn: this.storeCopy.bind(this, input, header),
      });
      this.counters.clientPuts++;
      this.counters.substitutions += placed.substitutes.length;
      return placed;
    } catch (err) {
      this.counters.clientPutsFailed++;
      throw err;
    }
  }

  /** One copy of a client put: into this node's store, or to a peer as a replica put. */
  private storeCopy(
    input: PutBlockInput,
    header: BlockHeader,
    node: NodeId,
  ): ReplicaOutcome | Promise<ReplicaOutcome> {
    if (node !== this.deps.self) return this.deps.replicate(node, input);
    // NOTE: with replicas > 1 the payload also goes to peers, in writes that may outlive this
    // node's copy, so the store must not reuse its memory (payloadShared).
    return this.deps.store.put(input, { payloadShared: this.deps.replicas > 1, header }).status;
  }

  partialAttention(input: PartialAttentionInput): Promise<PartialAttentionOutput> {
    return partialAttention(
      async (namespace, hash, leaseMs) => (await this.read(namespace, hash, leaseMs))?.record,
      this.deps.store.config.hashesPerRequestMax,
      this.deps.kernels,
      input,
      this.deps.attentionLeaseMs,
    );
  }

  /**
   * A block for a client, from DRAM or read back from the tier (then resident again), or
   * undefined (counted as a miss) when this node does not hold it, the tier lost it, it failed
   * verification, or the tier is unreachable right now.
   */
  async read(namespace: Namespace, hash: BlockHash, leaseMs = 0): Promise<ReadBlock | undefined> {
    const { store, tier } = this.deps;
    const where = store.tierOf(namespace, hash);
    if (tier === undefined || where === undefined || where === 'dram') {
      const record = store.get(namespace, hash, leaseMs);
      return record === undefined ? undefined : { record, tier: 'dram' };
    }
    const key = keyOf(namespace, hash);
    const pending = this.promoting.get(key);
    if (pending !== undefined) {
      await pending;
      // Whoever started it counted the tier hit; this read finds the block in DRAM (or misses).
      const record = store.get(namespace, hash, leaseMs);
      return record === undefined ? undefined : { record, tier: 'dram' };
    }
    const served = await this.promote(namespace, hash, { countHit: true, leaseMs });
    if (served !== undefined) {
      const ancestors = store.demotedAncestors(namespace, hash, this.limits.parentsMax);
      const hint = this.prefixHints.get(key);
      if (hint !== undefined) this.prefixHints.delete(key);
      this.enqueue(namespace, [...ancestors, ...(hint?.hashes ?? [])]);
    }
    return served;
  }

  /**
   * Which of a prompt's blocks this node holds (see BlockStore.matchPrefix). When some are below
   * DRAM, remembers them so that reading the first one prefetches the others.
   */
  matchPrefix(namespace: Namespace, hashes: readonly BlockHash[]): PrefixMatch {
    const match = this.deps.store.matchPrefix(namespace, hashes);
    if (this.deps.tier === undefined) return match;
    const below = match.held.filter((held) => held.tier !== 'dram').map((held) => held.hash);
    const first = below[0];
    if (first !== undefined && below.length > 1) {
      const key = keyOf(namespace, first);
      this.prefixHints.delete(key);
      this.prefixHints.set(key, { namespace, hashes: below.slice(1, 1 + this.limits.prefetchBlocksMax) });
      for (const oldest of this.prefixHints.keys()) {
        if (this.prefixHints.size <= this.limits.prefixHintsMax) break;
        this.prefixHints.delete(oldest);
      }
    }
    return match;
  }

  /** Resolves once no background promotion is queued or running (for tests and shutdown). */
  idle(): Promise<void> {
    if (this.queue.length === 0 && this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private promote(
    namespace: Namespace,
    hash: BlockHash,
    options: { countHit: boolean; leaseMs: number },
  ): Promise<ReadBlock | undefined> {
    const key = keyOf(namespace, hash);
    const running = (async (): Promise<ReadBlock | undefined> => {
      const { store } = this.deps;
      const tier = this.deps.tier as TierReader;
      let fetched: Awaited<ReturnType<TierReader['promote']>>;
      try {
        fetched = await tier.promote(hash);
      } catch {
        // Unreachable for now: the metadata stays (the tier may well still hold the block).
        this.counters.tierReadFailures++;
        if (options.countHit) store.countMiss();
        return undefined;
      }
      if (fetched === null) {
        store.promotionMissed(namespace, hash, options.countHit);
        return undefined;
      }
      const result = store.insertPromoted(namespace, fetched.block, fetched.tier, options);
      if (result.status === 'corrupt') return undefined;
      return { record: result.record, tier: result.status === 'held' ? 'dram' : fetched.tier };
    })();
    this.promoting.set(key, running);
    void running.finally(() => {
      if (this.promoting.get(key) === running) this.promoting.delete(key);
    });
    return running;
  }

  private enqueue(namespace: Namespace, hashes: readonly BlockHash[]): void {
    for (const hash of hashes) {
      if (this.queue.length >= this.limits.queueMax) {
        this.counters.prefetchSkipped++;
        continue;
      }
      this.queue.push({ namespace, hash });
    }
    this.pump();
  }

  private pump(): void {
    while (this.running < this.limits.concurrency) {
      const job = this.queue.shift();
      if (job === undefined) break;
      const where = this.deps.store.tierOf(job.namespace, job.hash);
      if (where === undefined || where === 'dram' || this.promoting.has(keyOf(job.namespace, job.hash)))
        continue;
      this.running++;
      void this.promote(job.namespace, job.hash, { countHit: false, leaseMs: 0 }).then((served) => {
        if (served !== undefined) this.counters.prefetched++;
        this.running--;
        this.pump();
      });
    }
    if (this.queue.length === 0 && this.running === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }
}
