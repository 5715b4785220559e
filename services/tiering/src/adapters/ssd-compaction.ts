// Keeps the SSD tier's space reclaimed without anyone asking: a periodic pass compacts once dead
// records (removed or promoted blocks) make up enough of the log, and an append refused for
// capacity compacts once and tries again before the refusal reaches the caller (that pass also takes
// segments below the ratio, until the record fits: the tier policy evicts cold blocks one by one and
// their garbage is spread thin). Compaction never blocks reads (SegmentLog.compact copies live
// records forward); passes never overlap.
import { LimitExceededError } from '@kvmesh/errors';
import type { BlockHash } from '@kvmesh/protocol';
import type { Logger } from '@kvmesh/runtime';

import type { SsdTier } from '../core/index.ts';

import type { SegmentLog } from './segment-log.ts';

export interface SsdCompactionOptions {
  /** Period of the check; 0 turns the periodic pass off (capacity-driven passes remain). */
  readonly intervalMs: number;
  /** Dead bytes, as a fraction of the bytes on disk, from which a periodic pass compacts. */
  readonly garbageRatio: number;
}

export interface SsdCompaction {
  /** SegmentLog.append that compacts and retries once when the log is at capacity. */
  append(hash: BlockHash, payload: Uint8Array): Promise<void>;
  /**
   * Runs one pass now (or joins the running one); resolves to the bytes reclaimed. With
   * `roomForBytes` it also copies segments below the ratio until a record of that size fits.
   */
  compact(roomForBytes?: number): Promise<number>;
  stop(): Promise<void>;
  stats(): { passes: number; bytesReclaimed: number; capacityRetries: number };
}

export function startSsdCompaction(
  log: SegmentLog,
  options: SsdCompactionOptions,
  logger: Logger,
): SsdCompaction {
  let running: Promise<number> | null = null;
  const counts = { passes: 0, bytesReclaimed: 0, capacityRetries: 0 };
  const compact = (roomForBytes?: number): Promise<number> => {
    running ??= log
      .compact(roomForBytes)
      .then((bytes) => {
        counts.passes++;
        counts.bytesReclaimed += bytes;
        if (bytes > 0) logger.info('ssd tier compacted', { bytesReclaimed: bytes });
        return bytes;
      })
      .finally(() => {
        running = null;
      });
    return running;
  };
  const garbage = (): number => {
    const stats = log.stats();
    return stats.bytesUsed === 0 ? 0 : (stats.bytesUsed - stats.bytesLive) / stats.bytesUsed;
  };
  const timer =
    options.intervalMs > 0
      ? setInterval(() => {
          if (running === null && garbage() >= options.garbageRatio)
            compact().catch((err: unknown) => logger.warn('ssd tier compaction failed', { err }));
        }, options.intervalMs)
      : null;
  timer?.unref();
  return {
    async append(hash, payload) {
      try {
        await log.append(hash, payload);
      } catch (err) {
        if (!(err instanceof LimitExceededError) || log.stats().bytesUsed === log.stats().bytesLive)
          throw err;
        counts.capacityRetries++;
        // The log names the record's size; the pass reclaims at least that much when it can (the
        // tier policy evicts cold blocks first, so the garbage is there).
        const needed = err.details['bytesNeeded'];
        if ((await compact(typeof needed === 'number' ? needed : undefined)) === 0) throw err;
        await log.append(hash, payload);
      }
    },
    compact,
    async stop() {
      if (timer !== null) clearInterval(timer);
      await running?.catch(() => undefined);
    },
    stats: () => ({ ...counts }),
  };
}

/**
 * The SSD tier the policy works with: `log`, its appends through `compaction` (compact once and
 * retry when at capacity), its reads lent (the data channel hands a span back once the socket took
 * the bytes: no garbage).
 */
export function ssdTierOf(log: SegmentLog, compaction: SsdCompaction): SsdTier {
  return {
    append: (hash, payload) => compaction.append(hash, payload),
    read: (hash) => log.readLent(hash),
    remove: (hash) => log.remove(hash),
    has: (hash) => log.has(hash),
    hashes: () => log.hashes(),
    stats: () => log.stats(),
  };
}
