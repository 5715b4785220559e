// What the router has sent to each worker and not yet seen finish: per worker, the requests in flight
// and the prompt blocks they are computing. Heartbeats report load only every interval and the block
// index learns of blocks only once they are stored; this fills both gaps, so that kv-aware routing
// sends a request to the worker already computing its prefix (it queues behind it there and then
// finds the prefix stored, instead of computing it a second time elsewhere) and counts requests the
// heartbeat has not reported yet. Bounded by blocksMax: a request that does not fit is still
// counted as in flight, its blocks are just not tracked (it loses affinity, not correctness). Also
// the estimated work of those requests not yet started there (PendingWork), which prices its queue.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { NodeId } from '@kvmesh/protocol';

/** What releases one tracked request. */
export interface InflightTicket {
  readonly nodeId: NodeId;
  readonly keys: readonly string[];
}

interface WorkerInflight {
  requests: number;
  /** Block key → requests in flight on this worker whose prompts contain it. */
  blocks: Map<string, number>;
}

export class InflightPrefixes {
  private readonly workers = new Map<NodeId, WorkerInflight>();
  private blocksTracked = 0;

  constructor(readonly blocksMax: number) {
    if (!Number.isInteger(blocksMax) || blocksMax < 0)
      throw new InvalidArgumentError(`blocksMax must be a non-negative integer, got ${blocksMax}`, {
        blocksMax,
      });
  }

  /** Counts a request sent to `nodeId` whose prompt's full blocks are `keys` (in order). */
  add(nodeId: NodeId, keys: readonly string[]): InflightTicket {
    let worker = this.workers.get(nodeId);
    if (worker === undefined) {
      worker = { requests: 0, blocks: new Map() };
      this.workers.set(nodeId, worker);
    }
    worker.requests++;
    const fresh = keys.filter((k) => !worker.blocks.has(k)).length;
    if (this.blocksTracked + fresh > this.blocksMax) return { nodeId, keys: [] };
    for (const key of keys) {
      const count = worker.blocks.get(key) ?? 0;
      if (count === 0) this.blocksTracked++;
      worker.blocks.set(key, count + 1);
    }
    return { nodeId, keys: [...keys] };
  }

  /** The request finished (or failed): forgets it. Releasing a ticket twice is a caller bug. */
  release(ticket: InflightTicket): void {
    const worker = this.workers.get(ticket.nodeId);
    if (worker === undefined) return;
    worker.requests = Math.max(0, worker.requests - 1);
    for (const key of ticket.keys) {
      const count = worker.blocks.get(key) ?? 0;
      if (count <= 1) {
        if (worker.blocks.delete(key)) this.blocksTracked--;
      } else worker.blocks.set(key, count - 1);
    }
    if (worker.requests === 0 && worker.blocks.size === 0) this.workers.delete(ticket.nodeId);
  }

  /** Requests in flight on the worker. */
  requests(nodeId: NodeId): number {
    return this.workers.get(nodeId)?.requests ?? 0;
  }

  /** How many of `keys`, from the first, requests in flight on the worker are computing. */
  leadingBlocks(nodeId: NodeId, keys: readonly string[]): number {
    const worker = this.workers.get(nodeId);
    if (worker === undefined) return 0;
    let n = 0;
    while (n < keys.length && worker.blocks.has(keys[n] as string)) n++;
    return n;
  }

  get trackedBlocks(): number {
    return this.blocksTracked;
  }
}

/**
 * Estimated work (ms) of the requests this router sent to each worker that have not started there
 * (a prefill not answered, a decode before its first token), keyed by worker: kv-aware prices a
 * worker's queue by it. Bounded by the live workers: a worker whose work all ended is forgotten.
 */
export class PendingWork {
  private readonly byWorker = new Map<NodeId, number>();

  /** Adds `ms` to the worker's pending work; the returned function takes it back (once). */
  hold(nodeId: NodeId, ms: number): () => void {
    if (!(ms > 0)) return () => undefined;
    this.byWorker.set(nodeId, (this.byWorker.get(nodeId) ?? 0) + ms);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const left = (this.byWorker.get(nodeId) ?? 0) - ms;
      // NOTE: float sums of the same terms in another order can leave a residue of ~1e-12.
      if (left > 1e-6) this.byWorker.set(nodeId, left);
      else this.byWorker.delete(nodeId);
    };
  }

  of(nodeId: NodeId): number {
    return this.byWorker.get(nodeId) ?? 0;
  }
}
