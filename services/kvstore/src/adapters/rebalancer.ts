// Keeps every block this node holds at R copies as membership changes. A join or leave schedules a
// membership pass (changes within `settleDelayMs` are coalesced): holders are presumed from the
// membership the blocks were placed under, minus nodes that left or restarted since. A periodic
// anti-entropy pass asks the other owners (MatchPrefix) which blocks they really hold, so a missed
// change or a failed copy still converges. Copies are replica puts with bounded concurrency; surplus
// copies are left to LRU eviction. Planning yields to the event loop every PLAN_CHUNK_BLOCKS blocks.
//
// Both passes cover every block held here, in DRAM or only in the host's tier (demoted): a demoted
// block's payload is read from the tier (a Read, which leaves it there and in this node's index)
// right before it is pushed, checked like a promotion, and sent on; a read that fails is a failed
// copy, tried again by a later pass. Only `concurrency` copies, tier reads included, run at once, so
// at most that many read-back payloads are held.
import { KvmeshError } from '@kvmesh/errors';
import type { BlockHash, Namespace, NodeId } from '@kvmesh/protocol';
import { UnavailableError, type Logger, type MembershipChange } from '@kvmesh/runtime';

import {
  blockKey,
  isDemoted,
  learnedHolders,
  planPushes,
  presumedHolders,
  probesFor,
  type BlockPush,
  type BlockStore,
  type HeldRecord,
  type LowerTier,
  type ReplicaOutcome,
  type PutBlockInput,
} from '../core/index.ts';

export interface RebalancerPeers {
  putReplica(node: NodeId, input: PutBlockInput): Promise<ReplicaOutcome>;
  /** Which of `hashes` `node` holds, at any tier (a block it holds only in its tier is readable there). */
  heldBlocks(node: NodeId, namespace: Namespace, hashes: readonly BlockHash[]): Promise<BlockHash[]>;
}

/** The host's tier as re-replication needs it (TierLink): a copy of a demoted block, left in place. */
export interface RebalancerTier {
  read(hash: BlockHash): Promise<{ block: PutBlockInput; tier: LowerTier } | null>;
}

export interface RebalancerOptions {
  readonly self: NodeId;
  readonly replicas: number;
  readonly store: BlockStore;
  /** Live kvstore members, self included. */
  readonly live: () => NodeId[];
  readonly peers: RebalancerPeers;
  /** The host's tier (tiering on): where the payloads of demoted blocks are read from. */
  readonly tier?: RebalancerTier;
  /** Copies in flight at once (tier reads of demoted blocks included). */
  readonly concurrency: number;
  /** Wait after a membership change before planning, to coalesce a burst of changes. */
  readonly settleDelayMs: number;
  /** Period of the anti-entropy pass; 0 disables it. */
  readonly antiEntropyIntervalMs: number;
  readonly antiEntropyBlocksPerPass: number;
  /** Most hashes in one probe (the peers' hashesPerRequestMax). */
  readonly probeHashesMax: number;
  readonly logger: Logger;
  /** The BlockStore's clock (record.storedAtMs is on it). */
  readonly now: () => number;
}

export interface RebalancerStats {
  passes: number;
  /** Copies peers acknowledged, from DRAM and from the tier alike. */
  copies: number;
  /** Of `copies`, those of blocks held here only in the tier (payload read back for the copy). */
  copiesFromTier: number;
  /** Copies that failed: the peer refused or was unreachable, or the tier read failed. */
  copiesFailed: number;
  probesFailed: number;
}

type PassKind = 'membership' | 'anti-entropy';

const PLAN_CHUNK_BLOCKS = 1024;

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class Rebalancer {
  readonly stats: RebalancerStats = {
    passes: 0,
    copies: 0,
    copiesFromTier: 0,
    copiesFailed: 0,
    probesFailed: 0,
  };
  /** Membership the held blocks were last planned under. */
  private placedLive: NodeId[];
  /** Nodes that left (or restarted) since the last membership pass: they hold nothing we know of. */
  private readonly departed = new Set<NodeId>();
  /** When the first change since the last membership pass was seen (store clock). */
  private changedAtMs: number | undefined;
  private membershipTimer: NodeJS.Timeout | undefined;
  private antiEntropyTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private queued = new Set<PassKind>();
  private cursor = 0;
  private closed = false;

  constructor(private readonly options: RebalancerOptions) {
    this.placedLive = options.live();
  }

  start(): void {
    if (this.options.antiEntropyIntervalMs > 0) {
      this.antiEntropyTimer = setInterval(
        () => this.request('anti-entropy'),
        this.options.antiEntropyIntervalMs,
      );
      this.antiEntropyTimer.unref();
    }
  }

  onChange(change: MembershipChange): void {
    if (this.closed || change.member.nodeId === this.options.self) return;
    // NOTE: bounded by the tracker's nodesMax; cleared by every membership pass.
    if (change.type === 'leave') this.departed.add(change.member.nodeId);
    this.changedAtMs ??= this.options.now();
    if (this.membershipTimer !== undefined) return;
    this.membershipTimer = setTimeout(() => {
      this.membershipTimer = undefined;
      this.request('membership');
    }, this.options.settleDelayMs);
    this.membershipTimer.unref();
  }

  /** Runs one pass of `kind` now (after any pass in progress); resolves when it is done. */
  async runNow(kind: PassKind): Promise<void> {
    this.request(kind);
    while (this.running !== undefined) await this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.membershipTimer);
    clearInterval(this.antiEntropyTimer);
    this.queued.clear();
    while (this.running !== undefined) await this.running;
  }

  private request(kind: PassKind): void {
    if (this.closed) return;
    this.queued.add(kind);
    if (this.running !== undefined) return;
    this.running = (async () => {
      try {
        while (this.queued.size > 0 && !this.closed) {
          // A membership pass first: it also covers what an anti-entropy pass would repair soonest.
          const next: PassKind = this.queued.has('membership') ? 'membership' : 'anti-entropy';
          this.queued.delete(next);
          await this.pass(next);
        }
      } finally {
        this.running = undefined;
      }
    })();
  }

  private async pass(kind: PassKind): Promise<void> {
    const startedMs = Date.now();
    try {
      const { blocks, pushes } =
        kind === 'membership' ? await this.planMembership() : await this.planAntiEntropy();
      const { copies, failed } = await this.push(pushes);
      this.stats.passes++;
      const fields = { kind, blocks, pushes: pushes.length, copies, failed, ms: Date.now() - startedMs };
      if (copies > 0 || failed > 0) this.options.logger.info('re-replication pass', fields);
      else this.options.logger.debug('re-replication pass', fields);
    } catch (err) {
      this.options.logger.error('re-replication pass failed', { kind, err });
    }
  }

  private async planMembership(): Promise<{ blocks: number; pushes: BlockPush[] }> {
    const { self, replicas, store } = this.options;
    const live = this.options.live();
    const holdersOf = presumedHolders({
      placedLive: this.placedLive,
      departed: new Set(this.departed),
      replicas,
      live,
      // NOTE: a pass without a recorded change (runNow) presumes everything placed under placedLive.
      changedAtMs: this.changedAtMs ?? Number.POSITIVE_INFINITY,
    });
    this.departed.clear();
    this.changedAtMs = undefined;
    this.placedLive = live;
    const pushes: BlockPush[] = [];
    let blocks = 0;
    for (const chunk of chunks(store.heldRecords(), PLAN_CHUNK_BLOCKS)) {
      if (this.closed) break;
      blocks += chunk.length;
      pushes.push(...planPushes({ self, live, replicas, records: chunk, holdersOf }));
      await yieldToEventLoop();
    }
    return { blocks, pushes };
  }

  private async planAntiEntropy(): Promise<{ blocks: number; pushes: BlockPush[] }> {
    const { self, replicas, peers } = this.options;
    const live = this.options.live();
    if (live.length < 2) return { blocks: 0, pushes: [] };
    const records = this.nextSlice();
    const probes = probesFor(self, live, replicas, records);
    const held = new Map<NodeId, Set<string>>();
    const unknown = new Set<NodeId>();
    for (const [owner, byNamespace] of probes) {
      const keys = new Set<string>();
      held.set(owner, keys);
      try {
        for (const [namespace, hashes] of byNamespace) {
          for (let i = 0; i < hashes.length; i += this.options.probeHashesMax) {
            if (this.closed) return { blocks: 0, pushes: [] };
            const batch = hashes.slice(i, i + this.options.probeHashesMax);
            for (const hash of await peers.heldBlocks(owner, namespace, batch))
              keys.add(blockKey(namespace, hash));
          }
        }
      } catch (err) {
        unknown.add(owner);
        this.stats.probesFailed++;
        this.options.logger.debug('anti-entropy probe failed', { peer: owner, err });
      }
    }
    const holdersOf = learnedHolders(self, live, replicas, held, unknown);
    return { blocks: records.length, pushes: planPushes({ self, live, replicas, records, holdersOf }) };
  }

  /** The next `antiEntropyBlocksPerPass` held blocks, continuing where the last pass stopped. */
  private nextSlice(): HeldRecord[] {
    const out: HeldRecord[] = [];
    let position = 0;
    for (const record of this.options.store.heldRecords()) {
      if (position++ < this.cursor) continue;
      out.push(record);
      if (out.length >= this.options.antiEntropyBlocksPerPass) break;
    }
    this.cursor = out.length < this.options.antiEntropyBlocksPerPass ? 0 : this.cursor + out.length;
    return out;
  }

  private async push(pushes: readonly BlockPush[]): Promise<{ copies: number; failed: number }> {
    let copies = 0;
    let failed = 0;
    let next = 0;
    // NOTE: stats move as copies settle, not at the end of the pass, so they are current while it runs.
    const failedCopies = (count: number): void => {
      failed += count;
      this.stats.copiesFailed += count;
    };
    // One job per block: a demoted block is read from the tier once for all its targets.
    const worker = async (): Promise<void> => {
      while (next < pushes.length && !this.closed) {
        const { record, targets } = pushes[next++] as BlockPush;
        let input: PutBlockInput;
        try {
          input = isDemoted(record) ? await this.readFromTier(record) : record;
        } catch (err) {
          failedCopies(targets.length);
          // A tier that is down is already reported by the tier link; a bad copy is news.
          const corrupt = err instanceof KvmeshError && err.kind !== 'unavailable';
          this.options.logger[corrupt ? 'warn' : 'debug']('re-replication tier read failed', {
            hash: record.hash,
            err,
          });
          continue;
        }
        for (const target of targets) {
          if (this.closed) break;
          try {
            await this.options.peers.putReplica(target, input);
            copies++;
            this.stats.copies++;
            if (isDemoted(record)) this.stats.copiesFromTier++;
          } catch (err) {
            failedCopies(1);
            this.options.logger.debug('re-replication copy failed', { peer: target, hash: record.hash, err });
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.options.concurrency, pushes.length) }, worker));
    return { copies, failed };
  }

  /**
   * The payload of a block held here only in the tier, read without promoting it (a re-replication
   * must not push hot blocks out of DRAM) and checked like a promotion, so a corrupt tier copy is
   * never replicated. Rejects when the tier cannot be reached, no longer holds it, or sent a bad copy.
   */
  private async readFromTier(record: HeldRecord): Promise<PutBlockInput> {
    const { tier, store } = this.options;
    if (tier === undefined)
      throw new UnavailableError(`block ${record.hash} is demoted but this node has no tier link`, {
        hash: record.hash,
      });
    const read = await tier.read(record.hash);
    // NOTE: promoted or dropped since it was planned (a later pass plans it from where it is now), or
    // lost by the tier (the next read of it drops the metadata); the index is left to those paths.
    if (read === null)
      throw new UnavailableError(`the tier no longer holds block ${record.hash}`, { hash: record.hash });
    store.checkTierCopy(record.namespace, read.block);
    return read.block;
  }
}

function* chunks<T>(items: Iterable<T>, size: number): Generator<T[]> {
  let chunk: T[] = [];
  for (const item of items) {
    chunk.push(item);
    if (chunk.length === size) {
      yield chunk;
      chunk = [];
    }
  }
  if (chunk.length > 0) yield chunk;
}
