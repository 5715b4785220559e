// Where a client put goes: the coordinator stores the block on its R owners (rendezvous order over
// the live nodes), in parallel, and when an owner fails it substitutes the next node of the rank
// that was not tried yet, until R nodes hold the block. Only then is the put acknowledged. The
// effect of storing on one node is injected (`storeOn`), so this module is pure and testable
// without sockets. Failures are classified: a full node and an unreachable node are skipped; an
// error that says the block itself is bad (bad hash, corrupt payload) ends the put at once, since
// every node would refuse it the same way.
import { KvmeshError } from '@kvmesh/errors';
import type { BlockHash, NodeId } from '@kvmesh/protocol';
import { rankNodes } from '@kvmesh/runtime';

export type ReplicaOutcome = 'stored' | 'deduplicated';

/** How a failed store on one node counts: skip the node ('full', 'unavailable') or end the put. */
export type FailureClass = 'full' | 'unavailable' | 'fatal';

export interface ReplicaFailure {
  readonly node: NodeId;
  readonly failure: FailureClass;
  readonly error: unknown;
}

export interface PlacedBlock {
  /** 'deduplicated' when every node that acknowledged already held the block. */
  readonly status: ReplicaOutcome;
  /** Nodes that hold the block now, in the order they acknowledged (exactly R). */
  readonly holders: NodeId[];
  /** Holders that are not among the R owners (they stood in for failed owners). */
  readonly substitutes: NodeId[];
  /** Nodes that were tried and failed. */
  readonly failures: ReplicaFailure[];
}

export interface CoordinatePutArgs {
  readonly hash: BlockHash;
  /** Live members, self included. */
  readonly live: readonly NodeId[];
  readonly replicas: number;
  /**
   * Stores the block on `node` (locally when it is this node); fails with the node's error. A local
   * store may answer synchronously (return or throw).
   */
  readonly storeOn: (node: NodeId) => ReplicaOutcome | Promise<ReplicaOutcome>;
}

/** Fewer nodes than R are live, or too few of them could be reached to make R copies. */
export class ReplicasUnavailableError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown>) {
    super('REPLICAS_UNAVAILABLE', 'unavailable', message, details);
  }
}

/**
 * Enough nodes were reachable, but too many were full (or over another bound) to make R copies.
 * Carries the code of the first such refusal (STORE_FULL, LIMIT_EXCEEDED) so a client matches the
 * same code whether one node or a whole cluster is full.
 */
export class ReplicasExhaustedError extends KvmeshError {
  constructor(code: string, message: string, details: Record<string, unknown>) {
    super(code, 'resource-exhausted', message, details);
  }
}

/** Error codes that mean the peer or the channel to it failed, not the block. */
const PEER_FAULT_CODES = new Set([
  'DATA_CHANNEL_UNAVAILABLE',
  'DATA_CHANNEL_PROTOCOL',
  'DATA_CHANNEL_AUTH',
  'DATA_CHANNEL_METHOD_NOT_FOUND',
  'INTERNAL',
]);

export function classifyFailure(error: unknown): FailureClass {
  if (!(error instanceof KvmeshError)) return 'fatal';
  if (error.kind === 'resource-exhausted') return 'full';
  if (error.kind === 'unavailable' || error.kind === 'internal' || PEER_FAULT_CODES.has(error.code))
    return 'unavailable';
  return 'fatal';
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function summarize(failures: readonly ReplicaFailure[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of failures) out[f.node] = `${f.failure}: ${messageOf(f.error)}`.slice(0, 300);
  return out;
}

/**
 * Places one block on R nodes. Resolves once R nodes acknowledged it; rejects with
 * ReplicasUnavailableError (too few live or reachable nodes), ReplicasExhaustedError (the reachable
 * ones were full) or the first fatal error (the block is bad). Copies made before a failure stay
 * where they are (unacknowledged; LRU eviction reclaims them).
 */
export function coordinatePut(args: CoordinatePutArgs): Promise<PlacedBlock> {
  const { hash, replicas } = args;
  // A single live node ranks trivially (a standalone node on every put): no scores to compute.
  const rank = args.live.length === 1 ? [args.live[0] as NodeId] : rankNodes(hash, args.live);
  if (rank.length < replicas) {
    return Promise.reject(
      new ReplicasUnavailableError(
        `block ${hash} needs ${replicas} replicas but only ${rank.length} kvstore node(s) are live`,
        { hash, liveNodes: rank.length, live: rank, replicas },
      ),
    );
  }
  if (replicas === 1 && rank.length === 1) {
    // One copy on the only live node (a standalone node on every put): settled exactly as a
    // Placement would settle it, without its promise chain when the store answers synchronously.
    const only = rank[0] as NodeId;
    const placed = (status: ReplicaOutcome): PlacedBlock => ({
      status,
      holders: [only],
      substitutes: [],
      failures: [],
    });
    const refused = (error: unknown): Promise<never> => {
      const failure = classifyFailure(error);
      return Promise.reject(
        failure === 'fatal' ? error : shortfall(hash, replicas, rank, [], [{ node: only, failure, error }]),
      );
    };
    try {
      const outcome = args.storeOn(only);
      return outcome instanceof Promise ? outcome.then(placed, refused) : Promise.resolve(placed(outcome));
    } catch (error) {
      return refused(error);
    }
  }
  return new Promise<PlacedBlock>((resolve, reject) => {
    new Placement(args, rank, resolve, reject).launch();
  });
}

/**
 * The state of one coordinatePut until it settles. A class rather than closures over locals: this
 * runs on every put, and each named closure costs an allocation plus, under tsx (keepNames), an
 * Object.defineProperty.
 */
class Placement {
  private readonly owners: Set<NodeId>;
  private readonly holders: NodeId[] = [];
  private readonly failures: ReplicaFailure[] = [];
  private deduplicated = 0;
  private next = 0;
  private inFlight = 0;
  private settled = false;

  constructor(
    private readonly args: CoordinatePutArgs,
    private readonly rank: readonly NodeId[],
    private readonly resolve: (placed: PlacedBlock) => void,
    private readonly reject: (error: unknown) => void,
  ) {
    this.owners = new Set(rank.slice(0, args.replicas));
  }

  launch(): void {
    const { replicas, storeOn } = this.args;
    while (this.holders.length + this.inFlight < replicas && this.next < this.rank.length) {
      const node = this.rank[this.next++] as NodeId;
      this.inFlight++;
      // NOTE: through a microtask so a synchronous throw (the local store) is a rejection too.
      Promise.resolve()
        .then(() => storeOn(node))
        .then(
          (outcome) => this.stored(node, outcome),
          (error: unknown) => this.failed(node, error),
        );
    }
  }

  private stored(node: NodeId, outcome: ReplicaOutcome): void {
    this.inFlight--;
    this.holders.push(node);
    if (outcome === 'deduplicated') this.deduplicated++;
    this.finish();
  }

  private failed(node: NodeId, error: unknown): void {
    this.inFlight--;
    const failure = classifyFailure(error);
    this.failures.push({ node, failure, error });
    if (failure === 'fatal' && !this.settled) {
      this.settled = true;
      this.reject(error);
      return;
    }
    this.finish();
  }

  private finish(): void {
    if (this.settled) return;
    const { holders, failures } = this;
    if (holders.length >= this.args.replicas) {
      this.settled = true;
      this.resolve({
        status: this.deduplicated === holders.length ? 'deduplicated' : 'stored',
        holders,
        substitutes: holders.filter((n) => !this.owners.has(n)),
        failures,
      });
      return;
    }
    this.launch();
    if (this.inFlight > 0) return;
    this.settled = true;
    this.reject(shortfall(this.args.hash, this.args.replicas, this.rank, holders, failures));
  }
}

function shortfall(
  hash: BlockHash,
  replicas: number,
  rank: readonly NodeId[],
  holders: readonly NodeId[],
  failures: readonly ReplicaFailure[],
): KvmeshError {
  const full = failures.filter((f) => f.failure === 'full');
  const unavailable = failures.filter((f) => f.failure === 'unavailable');
  const details = {
    hash,
    replicas,
    liveNodes: rank.length,
    held: holders.length,
    holders: [...holders],
    failures: summarize(failures),
  };
  // Full nodes were reachable: if they would have made up R, fullness (not reachability) is the cause.
  const first = full[0];
  if (first !== undefined && holders.length + full.length >= replicas) {
    const code = first.error instanceof KvmeshError ? first.error.code : 'STORE_FULL';
    return new ReplicasExhaustedError(
      code,
      `block ${hash}: only ${holders.length} of ${replicas} replicas could be stored; ${full.length} of ${rank.length} live node(s) refused it for space (${full.map((f) => f.node).join(', ')}): ${messageOf(first.error)}`,
      details,
    );
  }
  return new ReplicasUnavailableError(
    `block ${hash}: only ${holders.length} of ${replicas} replicas could be stored among ${rank.length} live node(s); unreachable: ${unavailable.map((f) => f.node).join(', ') || 'none'}${full.length > 0 ? `; full: ${full.map((f) => f.node).join(', ')}` : ''}`,
    details,
  );
}
