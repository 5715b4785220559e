// KvStoreClient: the kvmesh block store as one object. It finds the nodes (NATS heartbeats or a
// fixed list), sends each block to its primary by rendezvous placement (the node then replicates and
// acknowledges once R copies exist), reads blocks from their owners, merges per-node prefix matches,
// and runs DistAttention by fanning a query out to the nodes that hold the blocks and merging the
// partial results exactly. Invariants: a put reports a block as stored only when a node listed it as
// acknowledged; a get returns only verified copies of the block asked for; every call to a node holds
// one of inFlightMax slots, and every per-call fan-out is bounded by `concurrency` and `attemptsMax`.
import type { ClientReadableStream } from '@grpc/grpc-js';
import { CorruptDataError, InvalidArgumentError, type KvmeshError, LimitExceededError } from '@kvmesh/errors';
import { loadKernels, type Kernels, type PartialAttention } from '@kvmesh/kernels';
import {
  GetBlocksRequest,
  GetBlocksResponse,
  KVSTORE_DATA_METHODS,
  PutBlocksResponse,
  blockHashFromBytes,
  blockHashToBytes,
  parseNamespace,
  type BlockHash,
  type MatchPrefixResponse,
  type Namespace,
  type NodeId,
  type PartialAttentionResponse,
  type PinResponse,
  type StatsResponse,
  type UnpinResponse,
} from '@kvmesh/protocol';

import { isTransportFailure, callOptions, toKvmeshError, unary } from './calls.ts';
import { Semaphore, mapBounded } from './core/bounded.ts';
import {
  encodePutHeader,
  normalizeBlock,
  toBlockHash,
  toWireBlock,
  verifyFetchedBlock,
  type FetchedBlock,
  type NormalizedBlock,
  type PutBlockInput,
} from './core/blocks.ts';
import {
  assignHolders,
  candidateNodes,
  checkAttentionQuery,
  decodePartial,
  emptyPartial,
  mergeMatches,
  queryBytes,
  type AttentionQuery,
  type PrefixMatchResult,
} from './core/plan.ts';
import {
  BlockNotFoundError,
  BlockUnavailableError,
  ClientClosedError,
  NoLiveNodesError,
  PutNotAcknowledgedError,
} from './errors.ts';
import { NodeDirectory } from './nodes.ts';
import { resolveOptions, type KvStoreClientOptions, type ResolvedOptions } from './options.ts';

export type PutOutcome =
  | {
      readonly index: number;
      readonly hash: BlockHash;
      readonly acknowledged: true;
      /** The node that coordinated the acknowledged put. */
      readonly nodeId: NodeId;
      /** The coordinator already held the block. */
      readonly deduplicated: boolean;
      readonly attempts: number;
    }
  | {
      readonly index: number;
      readonly hash: BlockHash;
      readonly acknowledged: false;
      readonly error: KvmeshError;
      readonly attempts: number;
    };

export interface PutReport {
  /** One per block, in request order. */
  readonly outcomes: PutOutcome[];
  /** Hashes acknowledged by the cluster (held by R nodes), in request order. */
  readonly acknowledged: BlockHash[];
  /** Blocks not acknowledged, each with the typed error of its last attempt. */
  readonly failed: { index: number; hash: BlockHash; error: KvmeshError }[];
}

export interface GetOptions {
  readonly namespace?: string;
  /** Read lease taken on the copy that is read (protects it from eviction on that node). */
  readonly leaseMs?: number;
}

export interface PartialAttentionArgs extends AttentionQuery {
  /** The blocks whose tokens the query attends to (each once). */
  readonly hashes: readonly (BlockHash | string)[];
  readonly namespace?: string;
}

export interface DistAttentionResult extends PartialAttention {
  /** Blocks covered (= hashes requested). */
  readonly blocksUsed: number;
  /** Hashes each node computed over, for diagnostics. */
  readonly byNode: ReadonlyMap<NodeId, readonly BlockHash[]>;
}

export interface PinOptions {
  readonly namespace?: string;
  /** Pin lifetime; 0 means the nodes' default TTL. */
  readonly ttlMs?: number;
  /** Who holds the pin. Default: the client's name. */
  readonly holder?: string;
}

export interface PinReport {
  /** Requested hashes pinned on at least one node. */
  readonly pinned: BlockHash[];
  /** Pins placed, over all copies. */
  readonly copiesPinned: number;
  /** Requested hashes that no answering node holds. */
  readonly missing: BlockHash[];
  readonly unreachable: NodeId[];
}

export interface NodeStats extends StatsResponse {
  readonly nodeId: NodeId;
}

export interface ClusterStats {
  readonly nodes: NodeStats[];
  readonly unreachable: NodeId[];
  /** Sums over the answering nodes (copies count once per node). */
  readonly totals: {
    blocks: bigint;
    bytesUsed: bigint;
    hits: bigint;
    misses: bigint;
    evictions: bigint;
    deduplicated: bigint;
  };
}

export interface ClientCounters {
  putAttempts: number;
  /** Put attempts that moved on to another node after a failure. */
  putRetries: number;
  putsAcknowledged: number;
  putsFailed: number;
  getAttempts: number;
  getRetries: number;
  /** Calls whose node could not be reached (the node became a suspect). */
  transportFailures: number;
}

const U32_MAX = 0xffffffff;

function checkU32(name: string, value: number | undefined): number {
  const v = value ?? 0;
  if (!Number.isSafeInteger(v) || v < 0 || v > U32_MAX)
    throw new InvalidArgumentError(`${name} must be an integer in [0, 2^32), got ${String(v)}`, {
      [name]: v,
    });
  return v;
}

export class KvStoreClient {
  private readonly slots: Semaphore;
  private closed = false;
  private readonly counts: ClientCounters = {
    putAttempts: 0,
    putRetries: 0,
    putsAcknowledged: 0,
    putsFailed: 0,
    getAttempts: 0,
    getRetries: 0,
    transportFailures: 0,
  };

  private constructor(
    private readonly options: ResolvedOptions,
    private readonly directory: NodeDirectory,
    private readonly kernels: Kernels,
  ) {
    this.slots = new Semaphore(options.inFlightMax, options.waitingCallsMax);
  }

  /** Discovers the nodes and resolves once `waitForNodes` of them are live. */
  static async connect(options: KvStoreClientOptions): Promise<KvStoreClient> {
    const resolved = resolveOptions(options);
    const kernels = options.kernels ?? loadKernels();
    const directory = await NodeDirectory.open(options, resolved);
    try {
      await directory.waitForNodes(resolved.waitForNodes, resolved.connectTimeoutMs);
    } catch (err) {
      await directory.close();
      throw err;
    }
    return new KvStoreClient(resolved, directory, kernels);
  }

  get replicas(): number {
    return this.options.replicas;
  }

  /** Live node ids as this client sees them, sorted. */
  liveNodes(): NodeId[] {
    return this.directory.liveIds();
  }

  /** Resolves once `count` nodes are live. */
  waitForNodes(count: number, timeoutMs = this.options.connectTimeoutMs): Promise<void> {
    return this.directory.waitForNodes(count, timeoutMs);
  }

  counters(): ClientCounters {
    return { ...this.counts };
  }

  // -------------------------------------------------------------------------------------------
  // put

  /**
   * Stores blocks. Each goes to its primary (first live owner by rendezvous, which coordinates the
   * replication); if that node cannot be reached the next ranked node coordinates instead. Resolves
   * with one outcome per block: acknowledged, or the typed error of its last attempt. Malformed
   * input (bad hash / fingerprint / token count) rejects the whole call before anything is sent.
   */
  async put(blocks: readonly PutBlockInput[]): Promise<PutReport> {
    this.checkOpen();
    this.checkBatch(blocks, 'blocks');
    const namespace = parseNamespace(this.options.namespace);
    const normalized = blocks.map((b, i) => normalizeBlock(b, namespace, i, this.options.blockBytesMax));
    const outcomes = await mapBounded(normalized, this.options.concurrency, (block, index) =>
      this.putOne(block, index),
    );
    const acknowledged: BlockHash[] = [];
    const failed: PutReport['failed'] = [];
    for (const outcome of outcomes) {
      if (outcome.acknowledged) acknowledged.push(outcome.hash);
      else failed.push({ index: outcome.index, hash: outcome.hash, error: outcome.error });
    }
    this.counts.putsAcknowledged += acknowledged.length;
    this.counts.putsFailed += failed.length;
    return { outcomes, acknowledged, failed };
  }

  private async putOne(block: NormalizedBlock, index: number): Promise<PutOutcome> {
    const tried = new Set<NodeId>();
    let lastError: KvmeshError | undefined;
    for (let attempt = 1; attempt <= this.options.attemptsMax; attempt++) {
      const nodeId = candidateNodes(block.hash, this.directory.liveIds(), (n) =>
        this.directory.isSuspect(n),
      ).find((n) => !tried.has(n));
      if (nodeId === undefined) break;
      tried.add(nodeId);
      this.counts.putAttempts++;
      if (attempt > 1) this.counts.putRetries++;
      try {
        const response = await this.slots.run(() => this.sendPut(nodeId, block));
        // NOTE: only an explicit acknowledgement counts; an OK without the hash is not one.
        if (response.acknowledged.some((h) => block.hashBytes.equals(h)))
          return {
            index,
            hash: block.hash,
            acknowledged: true,
            nodeId,
            deduplicated: response.deduplicated > 0 && response.stored === 0,
            attempts: attempt,
          };
        lastError = new PutNotAcknowledgedError(block.hash, nodeId);
      } catch (err) {
        const error = this.failure(nodeId, err);
        lastError = error;
        // Only "could not do it now" is worth another coordinator; a refusal would repeat there.
        if (error.kind !== 'unavailable')
          return { index, hash: block.hash, acknowledged: false, error, attempts: attempt };
      }
    }
    return {
      index,
      hash: block.hash,
      acknowledged: false,
      error: lastError ?? new NoLiveNodesError(`put of block ${block.hash}`),
      attempts: tried.size,
    };
  }

  private async sendPut(nodeId: NodeId, block: NormalizedBlock): Promise<PutBlocksResponse> {
    if (this.options.transport === 'data') {
      const channel = await this.directory.data(nodeId);
      const { header } = await channel.call(
        KVSTORE_DATA_METHODS.putBlock,
        encodePutHeader(block),
        block.payload,
      );
      return decodeOrCorrupt(() => PutBlocksResponse.decode(header), nodeId, 'PutBlocksResponse');
    }
    const grpc = this.directory.grpc(nodeId);
    return new Promise<PutBlocksResponse>((resolve, reject) => {
      const call = grpc.putBlocks(callOptions(this.options.timeoutMs), (err, response) => {
        if (err !== null) reject(toKvmeshError(err));
        else resolve(response);
      });
      call.on('error', () => undefined); // the status arrives through the callback
      call.write({ block: toWireBlock(block, true), replica: false });
      call.end();
    });
  }

  // -------------------------------------------------------------------------------------------
  // get

  /**
   * Reads blocks, in request order; a block no reachable node holds is `undefined`. Each is tried
   * on its live owners in rank order, then on the other live nodes (at most attemptsMax nodes). A
   * copy is returned only after it is checked to be the block asked for. Rejects with
   * BlockUnavailableError when no node had the block and some could not be asked.
   */
  async get(
    hashes: readonly (BlockHash | string)[],
    options: GetOptions = {},
  ): Promise<(FetchedBlock | undefined)[]> {
    this.checkOpen();
    this.checkBatch(hashes, 'hashes');
    const namespace = parseNamespace(options.namespace ?? this.options.namespace);
    const leaseMs = checkU32('leaseMs', options.leaseMs);
    const parsed = hashes.map((h, i) => toBlockHash(h, `hash ${i}`));
    return mapBounded(parsed, this.options.concurrency, (hash) => this.getOne(hash, namespace, leaseMs));
  }

  private async getOne(
    hash: BlockHash,
    namespace: Namespace,
    leaseMs: number,
  ): Promise<FetchedBlock | undefined> {
    const candidates = candidateNodes(hash, this.directory.liveIds(), (n) =>
      this.directory.isSuspect(n),
    ).slice(0, this.options.attemptsMax);
    if (candidates.length === 0) throw new NoLiveNodesError(`get of block ${hash}`);
    let lastError: KvmeshError | undefined;
    for (const [i, nodeId] of candidates.entries()) {
      this.counts.getAttempts++;
      if (i > 0) this.counts.getRetries++;
      try {
        const block = await this.slots.run(() => this.fetch(nodeId, hash, namespace, leaseMs));
        if (block !== undefined) return block;
      } catch (err) {
        lastError = this.failure(nodeId, err);
      }
    }
    if (lastError !== undefined) throw new BlockUnavailableError(hash, namespace, candidates, lastError);
    return undefined;
  }

  private async fetch(
    nodeId: NodeId,
    hash: BlockHash,
    namespace: Namespace,
    leaseMs: number,
  ): Promise<FetchedBlock | undefined> {
    const request: GetBlocksRequest = { hashes: [Buffer.from(blockHashToBytes(hash))], namespace, leaseMs };
    let response: GetBlocksResponse;
    let payload: Uint8Array;
    if (this.options.transport === 'data') {
      const channel = await this.directory.data(nodeId);
      const result = await channel.call(
        KVSTORE_DATA_METHODS.getBlock,
        GetBlocksRequest.encode(request).finish(),
      );
      response = decodeOrCorrupt(() => GetBlocksResponse.decode(result.header), nodeId, 'GetBlocksResponse');
      payload = result.body;
    } else {
      const messages = await this.readStream(
        this.directory.grpc(nodeId).getBlocks(request, callOptions(this.options.timeoutMs)),
        1,
      );
      const first = messages[0];
      if (first === undefined)
        throw new CorruptDataError(`node ${nodeId} answered GetBlocks with nothing`, { nodeId, hash });
      response = first;
      payload = first.result?.$case === 'block' ? first.result.value.payload : new Uint8Array(0);
    }
    const result = response.result;
    if (result?.$case === 'missingHash') return undefined;
    if (result?.$case !== 'block')
      throw new CorruptDataError(`node ${nodeId} answered a get of ${hash} with neither block nor missing`, {
        nodeId,
        hash,
      });
    return verifyFetchedBlock(
      this.kernels,
      { hash, namespace, checkIdentity: this.options.verifyIdentity },
      result.value,
      payload,
      response.tier,
      nodeId,
    );
  }

  /** Reads a server stream into an array of at most `messagesMax` messages (more is a protocol error). */
  private readStream<T>(stream: ClientReadableStream<T>, messagesMax: number): Promise<T[]> {
    return new Promise((resolve, reject) => {
      const messages: T[] = [];
      stream.on('data', (message: T) => {
        messages.push(message);
        if (messages.length > messagesMax) {
          stream.cancel();
          reject(new LimitExceededError(`stream sent more than ${messagesMax} messages`, { messagesMax }));
        }
      });
      stream.on('error', (err) => reject(toKvmeshError(err)));
      stream.on('end', () => resolve(messages));
    });
  }

  // -------------------------------------------------------------------------------------------
  // matchPrefix

  /**
   * Which of a prompt's blocks the cluster holds and where: asks every live node and merges (a block
   * counts if any node holds it). Nodes that cannot be reached are listed in `unreachable`.
   */
  async matchPrefix(hashes: readonly (BlockHash | string)[], namespace?: string): Promise<PrefixMatchResult> {
    this.checkOpen();
    this.checkBatch(hashes, 'hashes');
    const ns = parseNamespace(namespace ?? this.options.namespace);
    const parsed = hashes.map((h, i) => toBlockHash(h, `hash ${i}`));
    const wire = parsed.map((h) => Buffer.from(blockHashToBytes(h)));
    const { answers, unreachable } = await this.fanOut<MatchPrefixResponse>('matchPrefix', (nodeId) => {
      const grpc = this.directory.grpc(nodeId);
      return unary(
        (md, opts, cb) => grpc.matchPrefix({ hashes: wire, namespace: ns }, md, opts, cb),
        this.options.timeoutMs,
      );
    });
    return mergeMatches(parsed, answers, unreachable);
  }

  /**
   * Calls every live node; transport failures make a node `unreachable`, any other error rejects.
   * Rejects with NoLiveNodesError when no node answered.
   */
  private async fanOut<Res>(
    what: string,
    call: (nodeId: NodeId) => Promise<Res>,
  ): Promise<{ answers: { nodeId: NodeId; response: Res }[]; unreachable: NodeId[] }> {
    const live = this.directory.liveIds();
    if (live.length === 0) throw new NoLiveNodesError(what);
    const answers: { nodeId: NodeId; response: Res }[] = [];
    const unreachable: NodeId[] = [];
    let lastError: KvmeshError | undefined;
    await mapBounded(live, this.options.concurrency, async (nodeId) => {
      try {
        answers.push({ nodeId, response: await this.slots.run(() => call(nodeId)) });
      } catch (err) {
        const error = this.failure(nodeId, err);
        if (!isTransportFailure(error)) throw error;
        lastError = error;
        unreachable.push(nodeId);
      }
    });
    if (answers.length === 0)
      throw new NoLiveNodesError(
        `${what}: none of ${live.length} node(s) answered (${lastError?.message ?? ''})`,
      );
    answers.sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1));
    return { answers, unreachable: unreachable.sort() };
  }

  // -------------------------------------------------------------------------------------------
  // DistAttention

  /**
   * Attention of one query over every listed block, computed where the blocks live: each hash is
   * assigned to one of its holders (spread evenly), every node attends over its share in parallel,
   * hashes a node lacks or that fail are retried on another holder, and the partial (o, m, l)
   * triples are merged exactly. Rejects with BlockNotFoundError naming a block no live node holds.
   */
  async partialAttention(args: PartialAttentionArgs): Promise<DistAttentionResult> {
    this.checkOpen();
    checkAttentionQuery(args);
    this.checkBatch(args.hashes, 'hashes');
    const namespace = parseNamespace(args.namespace ?? this.options.namespace);
    const hashes = args.hashes.map((h, i) => toBlockHash(h, `hash ${i}`));
    const seen = new Set<BlockHash>();
    for (const hash of hashes) {
      if (seen.has(hash))
        throw new InvalidArgumentError(`block ${hash} is listed twice (its tokens would count twice)`, {
          hash,
        });
      seen.add(hash);
    }
    const { queryHeads, headDim } = args;
    const byNode = new Map<NodeId, BlockHash[]>();
    if (hashes.length === 0) return { ...emptyPartial(queryHeads, headDim), blocksUsed: 0, byNode };

    const match = await this.matchPrefix(hashes, namespace);
    const holders = new Map<BlockHash, NodeId[]>(match.locations.map((l) => [l.hash, l.nodeIds]));
    for (const hash of hashes) {
      if (holders.has(hash)) continue;
      // A node that did not answer may hold it: unknown is not the same as nowhere.
      throw match.unreachable.length > 0
        ? new BlockUnavailableError(hash, namespace, match.unreachable)
        : new BlockNotFoundError(hash, namespace, this.directory.liveIds());
    }

    const query = queryBytes(args.query);
    const tried = new Map<BlockHash, Set<NodeId>>();
    const errors = new Map<BlockHash, KvmeshError>();
    const load = new Map<NodeId, number>();
    const parts: PartialAttention[] = [];
    let pending = hashes;
    for (let round = 0; pending.length > 0; round++) {
      const live = this.directory.liveIds();
      const liveSet = new Set(live);
      const candidatesOf = (hash: BlockHash): NodeId[] => {
        const done = tried.get(hash) ?? new Set<NodeId>();
        // Known holders first; when they are exhausted, any other live node (a re-replicated copy).
        let pool = (holders.get(hash) ?? []).filter((n) => liveSet.has(n) && !done.has(n));
        if (pool.length === 0) pool = live.filter((n) => !done.has(n));
        const healthy = pool.filter((n) => !this.directory.isSuspect(n));
        return healthy.length > 0 ? healthy : pool;
      };
      const { byNode: assignment, unassigned } =
        round < this.options.attemptsMax
          ? assignHolders(pending, candidatesOf, load)
          : { byNode: new Map(), unassigned: pending };
      const stuck = unassigned[0];
      if (stuck !== undefined) {
        const cause = errors.get(stuck);
        const triedNodes = [...(tried.get(stuck) ?? [])];
        throw cause === undefined
          ? new BlockNotFoundError(stuck, namespace, triedNodes)
          : new BlockUnavailableError(stuck, namespace, triedNodes, cause);
      }
      const next: BlockHash[] = [];
      await Promise.all(
        [...assignment].map(async ([nodeId, share]: [NodeId, BlockHash[]]) => {
          for (const hash of share) {
            const set = tried.get(hash) ?? new Set<NodeId>();
            set.add(nodeId);
            tried.set(hash, set);
          }
          try {
            const response = await this.slots.run(() => this.attendOn(nodeId, args, query, share, namespace));
            const missing = this.checkAttentionAnswer(nodeId, share, response);
            parts.push(decodePartial(response, queryHeads, headDim, nodeId));
            const used = share.filter((h) => !missing.has(h));
            if (used.length > 0) byNode.set(nodeId, [...(byNode.get(nodeId) ?? []), ...used]);
            for (const hash of share) if (missing.has(hash)) next.push(hash);
          } catch (err) {
            const error = this.failure(nodeId, err);
            // Bad arguments fail the same on every node: report them, do not retry.
            if (error.kind === 'invalid-argument') throw error;
            for (const hash of share) {
              errors.set(hash, error);
              next.push(hash);
            }
          }
        }),
      );
      pending = next;
    }
    const merged = this.kernels.mergePartials(parts, queryHeads, headDim);
    return { ...merged, blocksUsed: hashes.length, byNode };
  }

  private attendOn(
    nodeId: NodeId,
    args: PartialAttentionArgs,
    query: Buffer,
    share: readonly BlockHash[],
    namespace: Namespace,
  ): Promise<PartialAttentionResponse> {
    const grpc = this.directory.grpc(nodeId);
    const request = {
      layer: args.layer,
      queryHeads: args.queryHeads,
      headDim: args.headDim,
      query,
      scale: args.scale ?? 0,
      hashes: share.map((h) => Buffer.from(blockHashToBytes(h))),
      namespace,
    };
    return unary((md, opts, cb) => grpc.partialAttention(request, md, opts, cb), this.options.timeoutMs);
  }

  /**
   * The hashes a node reports missing; throws CorruptDataError when its answer does not add up (a
   * missing hash it was not asked for, or blocks_used + missing ≠ asked), so that partial is dropped.
   */
  private checkAttentionAnswer(
    nodeId: NodeId,
    share: readonly BlockHash[],
    response: PartialAttentionResponse,
  ): Set<BlockHash> {
    const asked = new Set(share);
    const missing = new Set<BlockHash>();
    for (const bytes of response.missingHashes) {
      const hash = bytes.length === 16 ? blockHashFromBytes(bytes) : undefined;
      if (hash === undefined || !asked.has(hash))
        throw new CorruptDataError(`node ${nodeId} reported a missing hash it was not asked about`, {
          nodeId,
        });
      missing.add(hash);
    }
    if (response.blocksUsed + missing.size !== share.length)
      throw new CorruptDataError(
        `node ${nodeId} used ${response.blocksUsed} blocks and lacks ${missing.size} of ${share.length} asked`,
        { nodeId, blocksUsed: response.blocksUsed, missing: missing.size, asked: share.length },
      );
    return missing;
  }

  // -------------------------------------------------------------------------------------------
  // pin / unpin / stats

  /** Pins the blocks on every live node that holds a copy (each node pins what it has). */
  async pin(hashes: readonly (BlockHash | string)[], options: PinOptions = {}): Promise<PinReport> {
    this.checkOpen();
    this.checkBatch(hashes, 'hashes');
    const namespace = parseNamespace(options.namespace ?? this.options.namespace);
    const ttlMs = checkU32('ttlMs', options.ttlMs);
    const holder = options.holder ?? this.options.name;
    const parsed = hashes.map((h, i) => toBlockHash(h, `hash ${i}`));
    const wire = parsed.map((h) => Buffer.from(blockHashToBytes(h)));
    const { answers, unreachable } = await this.fanOut<PinResponse>('pin', (nodeId) => {
      const grpc = this.directory.grpc(nodeId);
      return unary(
        (md, opts, cb) => grpc.pin({ hashes: wire, namespace, ttlMs, holder }, md, opts, cb),
        this.options.timeoutMs,
      );
    });
    const pinned = new Set<BlockHash>();
    let copiesPinned = 0;
    for (const { response } of answers) {
      copiesPinned += response.pinned;
      const missing = new Set(
        response.missingHashes.filter((b) => b.length === 16).map((b) => blockHashFromBytes(b)),
      );
      for (const hash of parsed) if (!missing.has(hash)) pinned.add(hash);
    }
    return {
      pinned: parsed.filter((h) => pinned.has(h)),
      copiesPinned,
      missing: parsed.filter((h) => !pinned.has(h)),
      unreachable,
    };
  }

  /** Releases this holder's pins on every live node; returns how many pins were released. */
  async unpin(
    hashes: readonly (BlockHash | string)[],
    options: Omit<PinOptions, 'ttlMs'> = {},
  ): Promise<{ unpinned: number; unreachable: NodeId[] }> {
    this.checkOpen();
    this.checkBatch(hashes, 'hashes');
    const namespace = parseNamespace(options.namespace ?? this.options.namespace);
    const holder = options.holder ?? this.options.name;
    const wire = hashes.map((h, i) => Buffer.from(blockHashToBytes(toBlockHash(h, `hash ${i}`))));
    const { answers, unreachable } = await this.fanOut<UnpinResponse>('unpin', (nodeId) => {
      const grpc = this.directory.grpc(nodeId);
      return unary(
        (md, opts, cb) => grpc.unpin({ hashes: wire, namespace, holder }, md, opts, cb),
        this.options.timeoutMs,
      );
    });
    return { unpinned: answers.reduce((n, a) => n + a.response.unpinned, 0), unreachable };
  }

  /** Stats of every live node, and their sums. */
  async stats(): Promise<ClusterStats> {
    this.checkOpen();
    const { answers, unreachable } = await this.fanOut<StatsResponse>('stats', (nodeId) => {
      const grpc = this.directory.grpc(nodeId);
      return unary((md, opts, cb) => grpc.stats({}, md, opts, cb), this.options.timeoutMs);
    });
    const nodes = answers.map(({ nodeId, response }) => ({ ...response, nodeId }));
    const totals = { blocks: 0n, bytesUsed: 0n, hits: 0n, misses: 0n, evictions: 0n, deduplicated: 0n };
    for (const n of nodes) {
      totals.blocks += n.blocks;
      totals.bytesUsed += n.bytesUsed;
      totals.hits += n.hits;
      totals.misses += n.misses;
      totals.evictions += n.evictions;
      totals.deduplicated += n.deduplicated;
    }
    return { nodes, unreachable, totals };
  }

  /** Stops discovery and closes every connection; in-flight calls finish or fail. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.directory.close();
  }

  // -------------------------------------------------------------------------------------------

  private checkOpen(): void {
    if (this.closed) throw new ClientClosedError();
  }

  private checkBatch(items: readonly unknown[], what: string): void {
    if (!Array.isArray(items)) throw new InvalidArgumentError(`${what} must be an array`, { what });
    if (items.length > this.options.batchBlocksMax)
      throw new LimitExceededError(
        `${items.length} ${what} in one call exceed batchBlocksMax ${this.options.batchBlocksMax}`,
        {
          count: items.length,
          batchBlocksMax: this.options.batchBlocksMax,
        },
      );
  }

  /** Converts a call failure and, when the node could not be reached, makes it a suspect. */
  private failure(nodeId: NodeId, err: unknown): KvmeshError {
    const error = toKvmeshError(err);
    if (isTransportFailure(error)) {
      this.counts.transportFailures++;
      this.directory.markSuspect(nodeId);
    }
    return error;
  }
}

function decodeOrCorrupt<T>(decode: () => T, nodeId: NodeId, what: string): T {
  try {
    return decode();
  } catch (err) {
    throw new CorruptDataError(`node ${nodeId} sent an undecodable ${what}: ${(err as Error).message}`, {
      nodeId,
    });
  }
}
