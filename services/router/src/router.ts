// Assembles the router service: model (tokenizer, chat template, fingerprint) → NATS → membership of
// workers and kvstore nodes from their heartbeats → the block index fed by the JetStream kv-event
// stream → the front doors: the OpenAI-compatible HTTP server (with /metrics) and the gRPC Router
// service, sharing one Admission bound. Per request it hashes the prompt's full blocks, matches them
// in the index (live kvstore nodes only), picks a decode worker under the configured policy and either
// prefills on a prefill worker first (which stores the blocks) or sends the decode worker straight to
// the blocks the index says the store holds. Decode tokens stream back as they come; aborting the
// request cancels the gRPC calls, which frees the sequence on the worker. Every request is measured
// (TTFT, inter-token latency, tokens, routing decisions) in a bounded MetricsRegistry.
import { Metadata, credentials, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { jetstream } from '@nats-io/jetstream';
import { BlockSeeds, computeBlockHashes } from '@kvmesh/block';
import { loadModel, type LoadedModel } from '@kvmesh/engine';
import { KvmeshError, type ErrorKind } from '@kvmesh/errors';
import { loadKernels, type CodecName, type Kernels } from '@kvmesh/kernels';
import {
  codecToWire,
  type WireCodecName,
  FinishReason,
  WorkerClient,
  blockHashToBytes,
  modelFingerprintToBytes,
  parseNamespace,
  type DecodeRequest,
  type DecodeResponse,
  type Namespace,
  type NodeId,
  type PrefillRequest,
  type PrefillResponse,
  type SamplingParams,
} from '@kvmesh/protocol';
import {
  CleanupStack,
  LATENCY_BUCKETS_SECONDS,
  MembershipTracker,
  MetricsRegistry,
  connectNats,
  createLogger,
  isLogLevel,
  watchMembership,
  type Logger,
  type Member,
} from '@kvmesh/runtime';

import { startRouterGrpcServer, type RouterGrpcServer } from './adapters/grpc-service.ts';
import { startIndexFeed, type IndexFeed } from './adapters/index-feed.ts';
import { checkRouterConfig, type RouterConfig } from './config.ts';
import {
  BlockIndex,
  InflightPrefixes,
  PendingWork,
  derivedCosts,
  WorkerRouter,
  storeBlockTiers,
  type RequestPlanKind,
  type RouteDecision,
  type RoutingPolicyName,
  type WorkerCandidate,
  type WorkerRates,
} from './core/index.ts';
import {
  createAdmission,
  startHttpServer,
  type GenerationBackend,
  type GenerationChunk,
  type GenerationInput,
  type HttpServer,
} from './http.ts';

/** How long the channel of a worker that left stays open for the calls it still serves. */
const CLIENT_RETIRE_MS = 60_000;

export const PREFILL_ROLE = 'prefill';
export const DECODE_ROLE = 'decode';
export const KVSTORE_ROLE = 'kvstore';

const KIND_OF_GRPC: ReadonlyMap<number, ErrorKind> = new Map([
  [GrpcStatus.INVALID_ARGUMENT, 'invalid-argument'],
  [GrpcStatus.OUT_OF_RANGE, 'invalid-argument'],
  [GrpcStatus.NOT_FOUND, 'not-found'],
  [GrpcStatus.RESOURCE_EXHAUSTED, 'resource-exhausted'],
  [GrpcStatus.FAILED_PRECONDITION, 'failed-precondition'],
  [GrpcStatus.UNAVAILABLE, 'unavailable'],
  [GrpcStatus.DEADLINE_EXCEEDED, 'unavailable'],
]);

/** Block seeds kept per namespace; past it the oldest is recomputed when next needed. */
const NAMESPACE_SEEDS_MAX = 1024;
/** Inter-token latencies (seconds): a CPU decode step is milliseconds, a stalled one seconds. */
const INTER_TOKEN_BUCKETS_SECONDS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5,
];

/** A worker call failed; `kind` follows its gRPC status so the HTTP edge answers 400 / 429 / 503 / 500. */
export class WorkerCallError extends KvmeshError {
  constructor(role: string, nodeId: NodeId, err: ServiceError) {
    super(
      'WORKER_CALL_FAILED',
      KIND_OF_GRPC.get(err.code) ?? 'internal',
      `${role} worker '${nodeId}' failed: ${err.details || err.message}`,
      { role, nodeId, grpcCode: err.code },
    );
  }
}

export interface StartRouterOptions {
  readonly logger?: Logger;
  readonly kernels?: Kernels;
  /** An already loaded model (must be the one in config.modelDir); skips loading it again. */
  readonly model?: LoadedModel;
  /** Receiver clock for heartbeat liveness. Default Date.now. */
  readonly clock?: () => number;
  /** Monotonic milliseconds for latency metrics. Default performance.now. */
  readonly monotonicClock?: () => number;
  /** Where the router's metrics go (and what /metrics serves). Default: a new registry. */
  readonly metrics?: MetricsRegistry;
}

export interface RouterStats {
  readonly requests: number;
  readonly plans: Readonly<Record<RequestPlanKind, number>>;
  readonly liveWorkers: Readonly<Record<'prefill' | 'decode' | 'kvstore', number>>;
  readonly indexBlocks: number;
  /** Last kv event seq the index applied, per publishing node (kvstore nodes and decode workers). */
  readonly indexSeqs: Readonly<Record<string, bigint>>;
  readonly feedPosition: number;
}

export interface Router {
  /** host:port of the HTTP server. */
  readonly httpAddress: string;
  /** host:port of the gRPC server (kvmesh.v1.Router and grpc.health.v1.Health). */
  readonly grpcAddress: string;
  readonly metrics: MetricsRegistry;
  readonly modelName: string;
  readonly policy: RoutingPolicyName;
  /** Resolves once the index has applied everything the stream held at start. */
  readonly indexCaughtUp: Promise<void>;
  stats(): RouterStats;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

/** The router's metrics; registering is idempotent, so routers sharing a registry share them. */
function routerMetrics(metrics: MetricsRegistry) {
  return {
    active: metrics.gauge({
      name: 'kvmesh_router_active_requests',
      help: 'Generations running now (HTTP and gRPC).',
    }),
    ttft: metrics.histogram({
      name: 'kvmesh_router_time_to_first_token_seconds',
      help: 'From the generation start (after validation and tokenization) to its first token.',
      buckets: LATENCY_BUCKETS_SECONDS,
    }),
    interToken: metrics.histogram({
      name: 'kvmesh_router_inter_token_latency_seconds',
      help: 'Time between consecutive generated tokens of one request.',
      buckets: INTER_TOKEN_BUCKETS_SECONDS,
    }),
    promptTokens: metrics.counter({
      name: 'kvmesh_router_prompt_tokens_total',
      help: 'Prompt tokens of generations started.',
    }),
    cachedTokens: metrics.counter({
      name: 'kvmesh_router_cached_prompt_tokens_total',
      help: 'Prompt tokens whose KV came from a cache instead of being computed (finished generations).',
    }),
    generatedTokens: metrics.counter({
      name: 'kvmesh_router_generated_tokens_total',
      help: 'Tokens generated and sent to clients.',
    }),
    decisions: metrics.counter({
      name: 'kvmesh_router_routing_decisions_total',
      help: 'Workers chosen, by pool (prefill or decode), routing policy and worker.',
      labelNames: ['pool', 'policy', 'worker'],
    }),
    routedTokens: metrics.counter({
      name: 'kvmesh_router_routed_prompt_tokens_total',
      help: "Prompt tokens of routed requests by where the chosen worker was estimated to get them: 'local' (its own cache), 'store' (fetched), 'computed'.",
      labelNames: ['pool', 'source'],
    }),
    plans: metrics.counter({
      name: 'kvmesh_router_plans_total',
      help: 'Requests by plan: decode-only or prefill-then-decode.',
      labelNames: ['plan'],
    }),
    liveNodes: metrics.gauge({
      name: 'kvmesh_router_live_nodes',
      help: 'Nodes the router sees live, by role.',
      labelNames: ['role'],
    }),
    retries: metrics.counter({
      name: 'kvmesh_router_decode_retries_total',
      help: 'Requests sent to another decode worker after one refused or failed before its first token.',
    }),
    indexBlocks: metrics.gauge({
      name: 'kvmesh_router_index_blocks',
      help: 'Blocks in the global block index.',
    }),
    tokenizerPieces: metrics.gauge({
      name: 'kvmesh_router_tokenizer_piece_lookups',
      help: "Chat-prompt pieces (text between the template's markers) looked up in the tokenizer's piece cache since start, by result: 'hit' (ids reused) or 'miss' (encoded).",
      labelNames: ['result'],
    }),
    indexSeq: metrics.gauge({
      name: 'kvmesh_router_index_node_seq',
      help: 'Last kv event seq the block index applied, per publishing node.',
      labelNames: ['node'],
    }),
    workerRates: metrics.gauge({
      name: 'kvmesh_router_worker_rate_ms',
      help: "Rates each live worker measured on its own recent work, from its last heartbeat (ms): 'prefill_ms_per_token' (a computed prompt token), 'fetch_ms_per_token' (a token's KV from the store), 'decode_ms_per_sequence' (a running sequence's share of a decode step). Absent until measured.",
      labelNames: ['pool', 'worker', 'rate'],
    }),
  };
}

const isServiceError = (err: unknown): err is ServiceError =>
  err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number';

/**
 * A live worker as the routing policies see it. Its load is what this router has in flight there,
 * counted from the moment of each choice to the request's end (exact and current), plus what its
 * last heartbeat showed beyond this router's own requests at that moment (other routers' traffic,
 * taken as still there). A heartbeat is up to an interval old (1 s by default, longer than most
 * requests here): trusting its queue depth alone kept a worker priced as busy for a whole interval
 * after its queue had drained, and kv-aware piled the following requests onto the other worker
 * (P90 TTFT 0.57-0.76x round-robin's in the mesh bench).
 */
function candidateOf(
  member: Member,
  localCachedBlocks: number | undefined,
  own: { queued: number; active: number; pendingMs: number },
  ownAtHeartbeat: number,
  poolRates: WorkerRates,
): WorkerCandidate {
  const { queueDepth, activeSequences } = member.heartbeat;
  const others = Math.max(0, queueDepth + activeSequences - ownAtHeartbeat);
  return {
    nodeId: member.nodeId,
    queueDepth: own.queued,
    activeSequences: own.active + others,
    pendingMs: own.pendingMs,
    rates: poolRates,
    ...(localCachedBlocks === undefined ? {} : { localCachedBlocks }),
  };
}

/**
 * The rates a worker measures and reports in its heartbeat (0 there: not measured yet): the
 * heartbeat field, the cost model's name for it and its label in kvmesh_router_worker_rate_ms.
 */
const HEARTBEAT_RATES = [
  { field: 'prefillMsPerToken', cost: 'prefillMsPerToken', label: 'prefill_ms_per_token' },
  { field: 'fetchMsPerToken', cost: 'transferMsPerToken', label: 'fetch_ms_per_token' },
  { field: 'decodeMsPerSequence', cost: 'activeSequenceMs', label: 'decode_ms_per_sequence' },
] as const satisfies readonly {
  field: keyof Member['heartbeat'];
  cost: keyof WorkerRates;
  label: string;
}[];

/**
 * The mean of each rate over the pool's workers that measured it: what every worker of the pool is
 * priced at (the cost model's own rates only while none has measured one). NOTE: not each worker's
 * own: like workers measure rates up to 50% apart over a burst (contention, not hardware), and
 * kv-aware then piled requests onto whichever had measured lower.
 */
function poolRatesOf(members: readonly Member[]): WorkerRates {
  const rates: { -readonly [K in keyof WorkerRates]: number } = {};
  for (const { field, cost } of HEARTBEAT_RATES) {
    const measured = members.map((m) => m.heartbeat[field]).filter((rate) => rate > 0);
    if (measured.length > 0) rates[cost] = measured.reduce((sum, rate) => sum + rate, 0) / measured.length;
  }
  return rates;
}

/** Adds `delta` to a per-worker count, forgetting workers that reach 0 (bounded by the live workers). */
function adjustCount(counts: Map<NodeId, number>, nodeId: NodeId, delta: number): void {
  const value = (counts.get(nodeId) ?? 0) + delta;
  if (value > 0) counts.set(nodeId, value);
  else counts.delete(nodeId);
}

export async function startRouter(config: RouterConfig, options: StartRouterOptions = {}): Promise<Router> {
  checkRouterConfig(config);
  const logger =
    options.logger ??
    createLogger({ service: 'router', level: isLogLevel(config.logLevel) ? config.logLevel : 'info' });
  const clock = options.clock ?? Date.now;
  const kernels = options.kernels ?? loadKernels();
  const model = options.model ?? loadModel(config.modelDir, kernels);
  const modelName = config.modelName === '' ? model.name : config.modelName;
  const B = config.blockTokens;
  const codec = codecToWire(config.codec as WireCodecName);
  const maxContextTokens =
    config.maxContextTokens > 0
      ? Math.min(config.maxContextTokens, model.config.maxContextTokens)
      : model.config.maxContextTokens;
  // Block hashes are namespaced through the seed; seeds are computed once per namespace.
  const seeds = new BlockSeeds(kernels, NAMESPACE_SEEDS_MAX);
  const seedOf = (namespace: Namespace): Uint8Array =>
    seeds.get({ modelFingerprint: model.fingerprint, blockTokens: B, namespace });
  const now = options.monotonicClock ?? (() => performance.now());
  const metrics = options.metrics ?? new MetricsRegistry({ labelSetsMax: config.metricsLabelSetsMax });
  const measured = routerMetrics(metrics);

  // The cost model's rates follow the model's KV bytes per token (in this codec) and its size.
  const cfg = model.config;
  const layerDims = {
    kvHeads: cfg.kvHeads,
    blockTokens: B,
    headDim: cfg.headDim,
    groupSize: Math.min(32, B, cfg.headDim),
  };
  const costs = {
    ...derivedCosts(cfg, {
      kvBytesPerToken: (kernels.sectionBytes(config.codec as CodecName, layerDims) * cfg.layers) / B,
      storeGBps: config.storeGBps,
      farGBps: config.farGBps,
      ssdGBps: config.ssdGBps,
      workerGflops: config.workerGflops,
    }),
    activeSequenceMs: config.activeSequenceMs,
  };
  const decodeRouter = new WorkerRouter(
    {
      ...costs,
      policy: config.policy as RoutingPolicyName,
      prefillUncachedTokensMin: config.prefillUncachedTokensMin,
    },
    DECODE_ROLE,
  );
  const prefillRouter = new WorkerRouter(
    { ...costs, policy: config.policy as RoutingPolicyName },
    PREFILL_ROLE,
  );
  const prefilling = new InflightPrefixes(config.inflightBlocksMax);
  const prefillPending = new PendingWork();
  const decodePending = new PendingWork();
  /** Decode streams this router has open, per worker, and those of them before their first token. */
  const decoding = new Map<NodeId, number>();
  const decodeStarting = new Map<NodeId, number>();
  /** This router's requests in flight on each worker when its last heartbeat arrived. */
  const ownAtHeartbeat = new Map<NodeId, number>();
  const counts = { requests: 0, plans: { 'decode-only': 0, 'prefill-then-decode': 0 } };

  const cleanups = new CleanupStack(logger);

  let refreshGrpcHealth = (): void => undefined;
  try {
    const nc = await connectNats({
      servers: config.natsUrl.split(',').map((s) => s.trim()),
      name: `router-${modelName}`,
    });
    cleanups.push(() => nc.close());

    const index = new BlockIndex();
    const feed: IndexFeed = startIndexFeed({ js: jetstream(nc), index, logger });
    cleanups.push(() => feed.stop());

    // One client per worker address, dropped when the worker leaves; bounded by the tracker's nodesMax.
    const clients = new Map<string, WorkerClient>();
    const clientOf = (member: Member): WorkerClient => {
      const address = member.heartbeat.grpcAddress;
      let client = clients.get(address);
      if (client === undefined) {
        client = new WorkerClient(address, credentials.createInsecure());
        clients.set(address, client);
      }
      return client;
    };
    cleanups.push(() => {
      for (const client of clients.values()) client.close();
      clients.clear();
    });

    const tracker = new MembershipTracker({
      heartbeatIntervalMs: config.workerHeartbeatIntervalMs,
      missedHeartbeatsMax: config.workerMissedHeartbeatsMax,
    });
    const membership = watchMembership(nc, undefined, tracker, clock, {
      onHeartbeat: (heartbeat) => {
        const nodeId = heartbeat.nodeId as NodeId;
        // NOTE: bounded by the tracker: only members it took are kept, and a leave forgets them.
        if (tracker.get(nodeId) === undefined) return;
        if (heartbeat.role === DECODE_ROLE) ownAtHeartbeat.set(nodeId, decoding.get(nodeId) ?? 0);
        else if (heartbeat.role === PREFILL_ROLE) ownAtHeartbeat.set(nodeId, prefilling.requests(nodeId));
      },
      onChange: (change) => {
        const { member } = change;
        logger.info(change.type === 'join' ? 'node joined' : 'node left', {
          nodeId: member.nodeId,
          role: member.role,
        });
        refreshGrpcHealth();
        if (change.type !== 'leave') return;
        ownAtHeartbeat.delete(member.nodeId);
        if (member.role === KVSTORE_ROLE) feed.removeNode(member.nodeId);
        const address = member.heartbeat.grpcAddress;
        if (!clients.has(address) || change.reason === 'restarted') return;
        // NOTE: a worker that missed heartbeats (a long step on a loaded machine) may still be
        // streaming; its calls keep their channel for a grace period, and a worker that comes back
        // meanwhile keeps it for good.
        const retire = setTimeout(() => {
          if (tracker.live(member.role).some((m) => m.heartbeat.grpcAddress === address)) return;
          clients.get(address)?.close();
          clients.delete(address);
        }, CLIENT_RETIRE_MS);
        retire.unref();
      },
    });
    cleanups.push(() => membership.stop());

    const deadline = (): Date => new Date(Date.now() + config.workerTimeoutMs);

    const prefill = (
      member: Member,
      request: PrefillRequest,
      signal: AbortSignal,
    ): Promise<PrefillResponse> =>
      new Promise((resolve, reject) => {
        const call = clientOf(member).prefill(
          request,
          new Metadata(),
          { deadline: deadline() },
          (err, response) => {
            signal.removeEventListener('abort', onAbort);
            if (err !== null) reject(new WorkerCallError(PREFILL_ROLE, member.nodeId, err));
            else resolve(response as PrefillResponse);
          },
        );
        const onAbort = (): void => call.cancel();
        signal.addEventListener('abort', onAbort, { once: true });
      });

    async function* decode(
      member: Member,
      request: DecodeRequest,
      signal: AbortSignal,
    ): AsyncGenerator<DecodeResponse> {
      const call = clientOf(member).decode(request, new Metadata(), { deadline: deadline() });
      // NOTE: cancelling the call is what makes the worker drop the sequence and free its blocks.
      const onAbort = (): void => call.cancel();
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const message of call as AsyncIterable<DecodeResponse>) yield message;
      } catch (err) {
        if (signal.aborted) return;
        throw isServiceError(err) ? new WorkerCallError(DECODE_ROLE, member.nodeId, err) : err;
      } finally {
        signal.removeEventListener('abort', onAbort);
        // A consumer that stops early (or throws) must not leave the stream running.
        call.cancel();
      }
    }

    const countRouted = (pool: string, estimate: RouteDecision['estimate']): void => {
      measured.routedTokens.inc({ pool, source: 'local' }, estimate.localCachedTokens);
      measured.routedTokens.inc({ pool, source: 'store' }, estimate.fetchedTokens);
      measured.routedTokens.inc({ pool, source: 'computed' }, estimate.uncachedTokens);
    };

    async function* generate(input: GenerationInput): AsyncGenerator<GenerationChunk> {
      counts.requests++;
      const tokens = input.promptTokens;
      const namespace = parseNamespace(input.namespace ?? '');
      const hashes = computeBlockHashes(seedOf(namespace), tokens, B, kernels);
      const stores = new Set(tracker.liveIds(KVSTORE_ROLE));
      // Decode workers publish their local prefix caches too: their runs price a local hit.
      const decoderIds = tracker.liveIds(DECODE_ROLE);
      const match = index.match(namespace, hashes, new Set([...stores, ...decoderIds]));
      const storeTiers = storeBlockTiers(match, (id) => stores.has(id));
      const storeBlocks = storeTiers.length;
      /** The decode worker for this request under the policy, among live ones not yet tried. */
      const chooseDecoder = (tried: ReadonlySet<NodeId>): { member: Member; decision: RouteDecision } => {
        const live = tracker.live(DECODE_ROLE);
        const untried = live.filter((m) => !tried.has(m.nodeId));
        const poolRates = poolRatesOf(live);
        const decision = decodeRouter.route({
          promptTokens: tokens.length,
          blockSizeTokens: B,
          storeCachedBlocks: storeBlocks,
          storeBlockTiers: storeTiers,
          workers: (untried.length > 0 ? untried : live).map((m) =>
            candidateOf(
              m,
              match.leadingBlocksByNode.get(m.nodeId),
              {
                queued: decodeStarting.get(m.nodeId) ?? 0,
                active: (decoding.get(m.nodeId) ?? 0) - (decodeStarting.get(m.nodeId) ?? 0),
                pendingMs: decodePending.of(m.nodeId),
              },
              ownAtHeartbeat.get(m.nodeId) ?? 0,
              poolRates,
            ),
          ),
        });
        return { member: tracker.get(decision.nodeId) as Member, decision };
      };
      // NOTE: a stream counts against its worker from the moment it is chosen, so a burst of
      // requests routed before any of them starts decoding still spreads over the workers; until
      // its first token it counts as starting (its prompt is being fetched and computed there).
      let starting = true;
      const count = (nodeId: NodeId, delta: number): void => {
        adjustCount(decoding, nodeId, delta);
        if (starting) adjustCount(decodeStarting, nodeId, delta);
      };
      // The decode worker's part of the request, pending there until its first token: computing what
      // is uncached (decode-only), or fetching the whole prompt a prefill worker stored.
      let releaseDecodeWork = (): void => undefined;
      const holdDecodeWork = (kind: RequestPlanKind, estimate: RouteDecision['estimate']): void => {
        releaseDecodeWork();
        const ms =
          kind === 'decode-only' ? estimate.workMs : estimate.promptTokens * estimate.transferMsPerToken;
        releaseDecodeWork = decodePending.hold(estimate.nodeId, ms);
      };
      const started = (nodeId: NodeId): void => {
        if (!starting) return;
        adjustCount(decodeStarting, nodeId, -1);
        releaseDecodeWork();
        starting = false;
      };
      let { member: decoder, decision } = chooseDecoder(new Set());
      count(decoder.nodeId, 1);
      try {
        const prefillers = tracker.live(PREFILL_ROLE);
        let kind = decodeRouter.plan(decision.estimate).kind;
        // NOTE: without a live prefill worker the decode worker computes the prompt itself.
        if (prefillers.length === 0) kind = 'decode-only';
        holdDecodeWork(kind, decision.estimate);
        counts.plans[kind]++;
        measured.plans.inc({ plan: kind });
        measured.decisions.inc({ pool: DECODE_ROLE, policy: decision.policy, worker: decision.nodeId });
        countRouted(DECODE_ROLE, decision.estimate);

        const sampling: SamplingParams = {
          temperature: input.sampling.temperature,
          topP: input.sampling.topP,
          topK: input.sampling.topK,
          seed: input.sampling.seed === undefined ? undefined : BigInt(input.sampling.seed),
          maxTokens: input.maxTokens,
          stop: [...input.stop],
          stopTokenIds: [...(input.stopTokenIds ?? [])],
          ignoreEos: input.ignoreEos ?? false,
          logprobs: input.logprobs ?? false,
          presencePenalty: input.sampling.presencePenalty ?? 0,
          frequencyPenalty: input.sampling.frequencyPenalty ?? 0,
          repetitionPenalty: input.sampling.repetitionPenalty ?? 1,
          topLogprobs: input.topLogprobs ?? 0,
          logitBias: Object.fromEntries(input.sampling.logitBias ?? []),
        };
        let blockHashes: Buffer[];
        let firstTokenId: number | undefined;
        let cachedTokens: number | undefined;
        if (kind === 'prefill-then-decode') {
          // A prefill worker already computing this prefix is as good as one that holds it: the
          // request queues behind it there and then finds the prefix stored.
          const keys = hashes.map((h) => `${namespace}/${h}`);
          const poolRates = poolRatesOf(prefillers);
          const chosen = prefillRouter.route({
            promptTokens: tokens.length,
            blockSizeTokens: B,
            storeCachedBlocks: storeBlocks,
            storeBlockTiers: storeTiers,
            workers: prefillers.map((m) =>
              // NOTE: a prefill worker runs one prompt at a time: every request in flight there queues.
              candidateOf(
                m,
                prefilling.leadingBlocks(m.nodeId, keys),
                {
                  queued: prefilling.requests(m.nodeId),
                  active: 0,
                  pendingMs: prefillPending.of(m.nodeId),
                },
                ownAtHeartbeat.get(m.nodeId) ?? 0,
                poolRates,
              ),
            ),
          });
          measured.decisions.inc({ pool: PREFILL_ROLE, policy: chosen.policy, worker: chosen.nodeId });
          countRouted(PREFILL_ROLE, chosen.estimate);
          const ticket = prefilling.add(chosen.nodeId, keys);
          const releaseWork = prefillPending.hold(chosen.nodeId, chosen.estimate.workMs);
          let response: PrefillResponse;
          try {
            response = await prefill(
              tracker.get(chosen.nodeId) ?? (prefillers[0] as Member),
              {
                requestId: input.requestId,
                model: modelName,
                promptTokenIds: [...tokens],
                namespace,
                codec,
                sampling,
              },
              input.signal,
            );
          } finally {
            prefilling.release(ticket);
            releaseWork();
          }
          blockHashes = response.blockHashes.map((h) => Buffer.from(h));
          firstTokenId = response.firstTokenId;
          // The prefill worker is where the prompt was (or was not) computed.
          cachedTokens = response.reusedTokens;
        } else {
          blockHashes = hashes.slice(0, storeBlocks).map((h) => Buffer.from(blockHashToBytes(h)));
        }
        logger.debug('request routed', {
          requestId: input.requestId,
          plan: kind,
          decode: decoder.nodeId,
          promptTokens: tokens.length,
          indexBlocks: match.blocks,
          storeBlocks,
        });
        const tried = new Set<NodeId>();
        for (let attempt = 1; ; attempt++) {
          if (input.signal.aborted) return;
          let streamed = false;
          try {
            for await (const message of decode(
              decoder,
              {
                requestId: input.requestId,
                model: modelName,
                promptTokenIds: [...tokens],
                blockHashes,
                firstTokenId,
                namespace,
                codec,
                sampling,
              },
              input.signal,
            )) {
              const finishReason =
                message.finishReason === FinishReason.FINISH_REASON_STOP
                  ? 'stop'
                  : message.finishReason === FinishReason.FINISH_REASON_LENGTH
                    ? 'length'
                    : null;
              streamed = true;
              started(decoder.nodeId);
              const usage = message.usage;
              yield {
                text: message.text,
                tokenIds: message.tokenIds,
                ...(sampling.logprobs ? { logprobs: message.logprobs } : {}),
                ...(sampling.topLogprobs > 0 ? { topLogprobs: message.topLogprobs } : {}),
                finishReason,
                ...(usage === undefined
                  ? {}
                  : {
                      usage: {
                        promptTokens: usage.promptTokens,
                        completionTokens: usage.completionTokens,
                        cachedTokens: cachedTokens ?? usage.cachedTokens,
                      },
                    }),
              };
            }
            return;
          } catch (err) {
            // A worker that refused or could not take the stream before its first token: another
            // one may (a full worker, one that died before its heartbeats lapsed).
            const retryable =
              err instanceof WorkerCallError &&
              (err.kind === 'resource-exhausted' || err.kind === 'unavailable');
            if (streamed || !retryable || attempt >= config.decodeAttemptsMax) throw err;
            tried.add(decoder.nodeId);
            measured.retries.inc();
            const live = tracker.liveIds(DECODE_ROLE);
            // Every worker tried: wait a little for one to free a slot.
            if (live.every((id) => tried.has(id))) {
              tried.clear();
              await new Promise((resolve) => setTimeout(resolve, config.decodeRetryDelayMs * attempt));
            }
            count(decoder.nodeId, -1);
            ({ member: decoder, decision } = chooseDecoder(tried));
            count(decoder.nodeId, 1);
            holdDecodeWork(kind, decision.estimate);
          }
        }
      } finally {
        count(decoder.nodeId, -1);
        releaseDecodeWork();
      }
    }

    /** generate() as the front doors see it, measured: TTFT, inter-token latency, tokens, in flight. */
    async function* measuredGenerate(input: GenerationInput): AsyncGenerator<GenerationChunk> {
      const started = now();
      let previous: number | undefined;
      measured.active.inc();
      measured.promptTokens.inc(input.promptTokens.length);
      try {
        for await (const chunk of generate(input)) {
          const tokens = chunk.tokenIds.length;
          if (tokens > 0) {
            const at = now();
            if (previous === undefined) measured.ttft.observe((at - started) / 1000);
            else {
              // NOTE: a chunk of n tokens after a gap counts as n tokens of gap / n each.
              const perTokenSeconds = (at - previous) / 1000 / tokens;
              for (let i = 0; i < tokens; i++) measured.interToken.observe(perTokenSeconds);
            }
            previous = at;
            measured.generatedTokens.inc(tokens);
          }
          if (chunk.usage !== undefined) measured.cachedTokens.inc(chunk.usage.cachedTokens);
          yield chunk;
        }
      } finally {
        measured.active.dec();
      }
    }

    const backend: GenerationBackend = {
      modelName,
      maxContextTokens,
      blockTokens: B,
      modelFingerprint: modelFingerprintToBytes(model.fingerprint),
      vocabSize: model.config.vocabSize,
      eosTokenIds: model.config.eosTokenIds,
      tokenizer: model.tokenizer,
      generate: measuredGenerate,
      health: () => {
        const decoders = tracker.live(DECODE_ROLE).length;
        return { ok: decoders > 0, ...(decoders > 0 ? {} : { reason: 'no decode worker is live' }) };
      },
    };
    const admission = createAdmission(config.requestsInFlightMax);
    const http: HttpServer = await startHttpServer(backend, {
      host: config.host,
      port: config.httpPort,
      requestBytesMax: config.requestBytesMax,
      requestsInFlightMax: config.requestsInFlightMax,
      maxTokensDefault: config.maxTokensDefault,
      maxTokensMax: config.maxTokensMax,
      apiKey: config.apiKey,
      logger,
      admission,
      metrics,
    });
    cleanups.push(() => http.close(config.shutdownGraceMs));
    const grpc: RouterGrpcServer = await startRouterGrpcServer(backend, {
      host: config.host,
      port: config.grpcPort,
      requestBytesMax: config.requestBytesMax,
      maxTokensDefault: config.maxTokensDefault,
      maxTokensMax: config.maxTokensMax,
      apiKey: config.apiKey,
      admission,
      codec,
      metrics,
      logger,
    });
    cleanups.push(() => grpc.close(config.shutdownGraceMs));
    // The Router service is SERVING while a decode worker is live, like /health.
    const refreshHealth = (): void => grpc.setServing(backend.health().ok);
    refreshGrpcHealth = refreshHealth;
    refreshHealth();
    cleanups.push(
      metrics.onCollect(() => {
        for (const role of [PREFILL_ROLE, DECODE_ROLE, KVSTORE_ROLE])
          measured.liveNodes.set({ role }, tracker.live(role).length);
        measured.indexBlocks.set(index.stats().blocks);
        const pieces = model.tokenizer.pieceCache;
        if (pieces !== null) {
          measured.tokenizerPieces.set({ result: 'hit' }, pieces.hits);
          measured.tokenizerPieces.set({ result: 'miss' }, pieces.misses);
        }
        for (const { nodeId, lastSeq } of index.snapshot())
          measured.indexSeq.set({ node: nodeId }, Number(lastSeq));
        // Only live workers: one that left takes its series with it.
        measured.workerRates.reset();
        for (const pool of [PREFILL_ROLE, DECODE_ROLE]) {
          for (const { nodeId, heartbeat } of tracker.live(pool)) {
            for (const { field, label } of HEARTBEAT_RATES)
              if (heartbeat[field] > 0)
                measured.workerRates.set({ pool, worker: nodeId, rate: label }, heartbeat[field]);
          }
        }
      }),
    );
    const advertiseHost = config.advertiseHost === '' ? config.host : config.advertiseHost;
    const hostPart = advertiseHost.includes(':') ? `[${advertiseHost}]` : advertiseHost;
    const httpAddress = `${hostPart}:${http.port}`;
    const grpcAddress = `${hostPart}:${grpc.port}`;
    logger.info('router serving', {
      costs,
      httpAddress,
      grpcAddress,
      model: modelName,
      policy: decodeRouter.config.policy,
      blockTokens: B,
      maxContextTokens,
    });

    let closing: Promise<void> | undefined;
    return {
      httpAddress,
      grpcAddress,
      metrics,
      modelName,
      policy: decodeRouter.config.policy,
      indexCaughtUp: feed.caughtUp,
      stats: () => ({
        requests: counts.requests,
        plans: { ...counts.plans },
        liveWorkers: {
          prefill: tracker.live(PREFILL_ROLE).length,
          decode: tracker.live(DECODE_ROLE).length,
          kvstore: tracker.live(KVSTORE_ROLE).length,
        },
        indexBlocks: index.stats().blocks,
        indexSeqs: Object.fromEntries(index.snapshot().map((n) => [n.nodeId, n.lastSeq])),
        feedPosition: feed.stats().position,
      }),
      close() {
        closing ??= (async () => {
          logger.info('router shutting down');
          await cleanups.run();
          logger.info('router stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanups.run();
    throw err;
  }
}
