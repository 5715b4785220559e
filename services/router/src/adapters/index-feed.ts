// Keeps the router's BlockIndex current from the JetStream kv-event stream, the index's only input.
// It first replays from a stream sequence (1 for a fresh router, or a saved position after a
// restart) until it has caught up, then follows new events. Gaps and restarts the index reports
// are counted and logged; the index already dropped that node's entries, so it may under-report
// (safe: a miss costs a recompute, a false hit would cost a failed fetch).
import type { JetStreamClient } from '@nats-io/jetstream';

import type { NodeId } from '@kvmesh/protocol';
import { replayKvEvents, type Logger } from '@kvmesh/runtime';

import type { ApplyResult, BlockIndex } from '../core/block-index.ts';

export interface IndexFeedOptions {
  js: JetStreamClient;
  index: BlockIndex;
  /** First stream sequence to read (default 1: the whole retained stream). */
  fromStreamSeq?: number;
  streamName?: string;
  logger?: Logger;
}

export interface IndexFeedStats {
  /** Next stream sequence to read: save it to resume after a restart. */
  position: number;
  applied: number;
  duplicates: number;
  gaps: number;
  restarts: number;
  rejected: number;
}

export interface IndexFeed {
  /** Resolves once everything that was in the stream at start has been applied. */
  readonly caughtUp: Promise<void>;
  stats(): IndexFeedStats;
  /** Drops a node that left membership (its blocks stop being routed to). */
  removeNode(nodeId: NodeId): number;
  stop(): Promise<void>;
}

export function startIndexFeed(options: IndexFeedOptions): IndexFeed {
  const { js, index, logger } = options;
  const stats: IndexFeedStats = {
    position: Math.max(1, options.fromStreamSeq ?? 1),
    applied: 0,
    duplicates: 0,
    gaps: 0,
    restarts: 0,
    rejected: 0,
  };
  const abort = new AbortController();
  const streamName = options.streamName === undefined ? {} : { streamName: options.streamName };

  const record = (result: ApplyResult, streamSeq: number): void => {
    stats.position = streamSeq + 1;
    switch (result.kind) {
      case 'applied':
        stats.applied++;
        break;
      case 'duplicate':
        stats.duplicates++;
        break;
      case 'gap':
        stats.gaps++;
        logger?.warn('kv event gap: dropped the node from the index until it re-announces', { ...result });
        break;
      case 'restart':
        stats.restarts++;
        break;
      case 'rejected':
        stats.rejected++;
        logger?.warn('kv event rejected', { ...result, streamSeq });
        break;
    }
  };

  let markCaughtUp: () => void = () => undefined;
  const caughtUp = new Promise<void>((resolve) => (markCaughtUp = resolve));
  const run = async (): Promise<void> => {
    // Catch up first (the replay ends once it reached what was there), then follow from there.
    for await (const { streamSeq, event } of replayKvEvents(js, { fromSeq: stats.position, ...streamName })) {
      record(index.apply(event), streamSeq);
    }
    markCaughtUp();
    if (abort.signal.aborted) return;
    for await (const { streamSeq, event } of replayKvEvents(js, {
      fromSeq: stats.position,
      follow: true,
      signal: abort.signal,
      ...streamName,
    })) {
      record(index.apply(event), streamSeq);
    }
  };
  const done = run().catch((err: unknown) => {
    markCaughtUp();
    if (!abort.signal.aborted) logger?.error('kv event feed stopped', { err });
  });

  return {
    caughtUp,
    stats: () => ({ ...stats }),
    removeNode: (nodeId) => index.removeNode(nodeId),
    async stop() {
      abort.abort();
      await done;
    },
  };
}
