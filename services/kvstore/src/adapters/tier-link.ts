// The kvstore node's link to its host's tiering service: it moves the blocks the BlockStore decided
// to demote (claimDemotions → Demote to far memory over the service's data channel → the store
// records the acknowledgement), removes blocks the store forgot (dropped metadata, orphans), reads
// demoted blocks back for KvNode (Promote), and reads copies of them for re-replication (Read: the
// tier keeps its copy). The store stays the single owner of what is where; this adapter only does
// I/O and reports outcomes.
//
// Durability: a block leaves the store's demoting buffer only when the service acknowledged it
// (held in its tier) or refused it for good; while the service cannot be reached, claimed blocks go
// back to the buffer (still readable there) and are sent again after a backoff, across restarts of
// the service (each retry reconnects through gRPC OpenDataChannel, so a new data port is fine).
import { KvmeshError } from '@kvmesh/errors';
import type { BlockHash } from '@kvmesh/protocol';
import type { Logger } from '@kvmesh/runtime';
import { TierServiceClient, type TierName } from '@kvmesh/tiering';

import type { BlockRecord, BlockStore, LowerTier, PutBlockInput, TierReader } from '../core/index.ts';

export interface TierLinkOptions {
  /** host:port of the tiering service's gRPC server. */
  readonly grpcAddress: string;
  readonly store: BlockStore;
  readonly logger: Logger;
  /** Demotions in flight at once. */
  readonly concurrency: number;
  /** First wait after the service could not be reached; doubles per failure up to 20×. */
  readonly retryDelayMs: number;
  /** Bound on connecting and on each call. */
  readonly timeoutMs: number;
  /**
   * Period of the check that learns which far-memory demotions the service has since spilled to
   * SSD (one LocateFar of up to TIER_CHECK_BLOCKS_MAX hashes per round); 0 turns it off.
   */
  readonly tierCheckIntervalMs?: number;
}

export interface TierLinkCounters {
  demoteCalls: number;
  demoteFailures: number;
  /** Times the service could not be reached (each starts a backoff). */
  outages: number;
  removals: number;
  removalFailures: number;
}

/** Hashes waiting to be removed from the tier; beyond it the oldest are given up (they leak there). */
const REMOVALS_PENDING_MAX = 65_536;
const BACKOFF_FACTOR_MAX = 20;
/** Hashes one tier check asks about. */
const TIER_CHECK_BLOCKS_MAX = 256;

/** The service could not be reached or answered with a fault: try again later. */
function isRetryable(err: unknown): boolean {
  if (!(err instanceof KvmeshError)) return true;
  return err.kind === 'unavailable' || err.kind === 'internal';
}

export class TierLink implements TierReader {
  readonly counters: TierLinkCounters = {
    demoteCalls: 0,
    demoteFailures: 0,
    outages: 0,
    removals: 0,
    removalFailures: 0,
  };
  private connecting: Promise<TierServiceClient> | undefined;
  private client: TierServiceClient | undefined;
  /** Far memory first; a service without it takes demotions straight to SSD. */
  private target: TierName = 'far';
  private inFlight = 0;
  private removing = false;
  private readonly removals: BlockHash[] = [];
  private scheduled = false;
  private backoff: NodeJS.Timeout | undefined;
  private failuresInARow = 0;
  private closed = false;
  private readonly settled: (() => void)[] = [];
  private tierCheck: NodeJS.Timeout | undefined;
  private tierCheckCursor = 0;
  private checking = false;

  constructor(private readonly options: TierLinkOptions) {
    const interval = options.tierCheckIntervalMs ?? 0;
    if (interval > 0) {
      this.tierCheck = setInterval(() => void this.checkTiers(), interval);
      this.tierCheck.unref();
    }
  }

  /**
   * One round of the tier check: the far-memory demotions the pool no longer holds were spilled to
   * SSD by the service (or lost with it; a read then finds them missing and drops them).
   */
  async checkTiers(): Promise<number> {
    if (this.checking || this.closed || this.target !== 'far') return 0;
    this.checking = true;
    try {
      const { store } = this.options;
      const { blocks, next } = store.demotedIn('far', TIER_CHECK_BLOCKS_MAX, this.tierCheckCursor);
      this.tierCheckCursor = next;
      if (blocks.length === 0) return 0;
      const client = await this.connect();
      // NOTE: a 1 ms lease: the check must not hold far memory in place (0 means the default lease).
      const located = await client.locateFar(
        blocks.map((b) => b.hash),
        1,
      );
      const missing = new Set(located.missingHashes.map((h) => Buffer.from(h).toString('hex')));
      let moved = 0;
      for (const block of blocks) {
        if (missing.has(block.hash) && store.demotedMoved(block.namespace, block.hash, 'ssd')) moved++;
      }
      return moved;
    } catch (err) {
      this.options.logger.debug('tier check failed', { err });
      return 0;
    } finally {
      this.checking = false;
    }
  }

  /** Call when the store has tier work (BlockStoreDeps.onTierWork). */
  readonly wake = (): void => {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  };

  /** Demotions in flight now and removals waiting (for tests and metrics). */
  get pending(): { demotionsInFlight: number; removalsWaiting: number; backingOff: boolean } {
    return {
      demotionsInFlight: this.inFlight,
      removalsWaiting: this.removals.length,
      backingOff: this.backoff !== undefined,
    };
  }

  async promote(hash: BlockHash): Promise<{ block: PutBlockInput; tier: LowerTier } | null> {
    const client = await this.connect();
    try {
      const hit = await client.promote(hash);
      return hit === null ? null : { block: hit.block, tier: hit.tier };
    } catch (err) {
      // An undecodable answer: the tier gave the block up, and what came back is not it.
      if (err instanceof KvmeshError && err.kind === 'data-loss') return null;
      if (isRetryable(err)) this.outage(err);
      throw err;
    }
  }

  /**
   * A copy of the block, left in its tier (re-replication sends it to a peer while this node keeps
   * its demoted copy), or null when the tier does not hold it. Unverified: the caller checks it
   * (BlockStore.checkTierCopy). Rejects when the tier cannot be reached or answers garbage.
   */
  async read(hash: BlockHash): Promise<{ block: PutBlockInput; tier: LowerTier } | null> {
    const client = await this.connect();
    try {
      const hit = await client.read(hash);
      return hit === null ? null : { block: hit.block, tier: hit.tier };
    } catch (err) {
      if (isRetryable(err)) this.outage(err);
      throw err;
    }
  }

  /** Stops sending; waits for the calls in flight to settle, then closes the connection. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.backoff);
    clearInterval(this.tierCheck);
    while (this.inFlight > 0 || this.removing) await new Promise<void>((r) => this.settled.push(r));
    const client = this.client ?? (await this.connecting?.catch(() => undefined));
    this.client = undefined;
    this.connecting = undefined;
    await client?.close();
  }

  private pump(): void {
    if (this.closed || this.backoff !== undefined) return;
    const { store } = this.options;
    while (this.inFlight < this.options.concurrency) {
      const [record] = store.claimDemotions(1);
      if (record === undefined) break;
      this.inFlight++;
      void this.demote(record).finally(() => {
        this.inFlight--;
        this.notifySettled();
        this.pump();
      });
    }
    for (const hash of store.claimTierRemovals()) {
      if (this.removals.length >= REMOVALS_PENDING_MAX) this.removals.shift();
      this.removals.push(hash);
    }
    if (!this.removing && this.removals.length > 0) {
      this.removing = true;
      void this.removeAll().finally(() => {
        this.removing = false;
        this.notifySettled();
      });
    }
  }

  private async demote(record: BlockRecord): Promise<void> {
    const { store, logger } = this.options;
    const target = this.target;
    this.counters.demoteCalls++;
    try {
      const client = await this.connect();
      await client.demote(record, target);
      this.failuresInARow = 0;
      if (store.demotionAcknowledged(record.namespace, record.hash, target) === 'orphan')
        this.queueRemoval(record.hash);
    } catch (err) {
      this.counters.demoteFailures++;
      if (err instanceof KvmeshError && err.code === 'TIER_UNAVAILABLE' && target === 'far') {
        logger.info('tiering service has no far memory: demoting to SSD');
        this.target = 'ssd';
        store.demotionFailed(record.namespace, record.hash, true);
      } else if (isRetryable(err)) {
        store.demotionFailed(record.namespace, record.hash, true);
        this.outage(err);
      } else {
        logger.warn('tier refused a demotion: block dropped', { hash: record.hash, err });
        store.demotionFailed(record.namespace, record.hash, false);
      }
    }
  }

  private queueRemoval(hash: BlockHash): void {
    if (this.removals.length >= REMOVALS_PENDING_MAX) this.removals.shift();
    this.removals.push(hash);
    this.wake();
  }

  /**
   * Removes forgotten blocks from the tier, one at a time. The Tiering API has no delete, so this
   * is a Promote whose block is discarded (rare: only dropped metadata and orphans come here).
   */
  private async removeAll(): Promise<void> {
    while (this.removals.length > 0 && !this.closed && this.backoff === undefined) {
      const hash = this.removals[0] as BlockHash;
      try {
        const client = await this.connect();
        await client.promote(hash);
        this.removals.shift();
        this.counters.removals++;
      } catch (err) {
        this.counters.removalFailures++;
        if (isRetryable(err)) {
          this.outage(err);
          return;
        }
        this.removals.shift();
      }
    }
  }

  private connect(): Promise<TierServiceClient> {
    if (this.client !== undefined) return Promise.resolve(this.client);
    this.connecting ??= TierServiceClient.connect({
      grpcAddress: this.options.grpcAddress,
      timeoutMs: this.options.timeoutMs,
    }).then(
      (client) => {
        this.connecting = undefined;
        if (this.closed) {
          void client.close();
          throw new KvmeshError('UNAVAILABLE', 'unavailable', 'the tier link is closed');
        }
        this.client = client;
        return client;
      },
      (err: unknown) => {
        this.connecting = undefined;
        throw err;
      },
    );
    return this.connecting;
  }

  /** The service is unreachable: drop the connection and pause demotions for a growing while. */
  private outage(err: unknown): void {
    const client = this.client;
    this.client = undefined;
    void client?.close().catch(() => undefined);
    if (this.backoff !== undefined || this.closed) return;
    this.counters.outages++;
    this.failuresInARow++;
    const delayMs =
      this.options.retryDelayMs * Math.min(BACKOFF_FACTOR_MAX, 2 ** Math.min(this.failuresInARow - 1, 8));
    this.options.logger.warn('tiering service unreachable: demotions wait', {
      address: this.options.grpcAddress,
      retryInMs: delayMs,
      err,
    });
    this.backoff = setTimeout(() => {
      this.backoff = undefined;
      this.pump();
    }, delayMs);
    this.backoff.unref();
  }

  private notifySettled(): void {
    for (const resolve of this.settled.splice(0)) resolve();
  }
}
