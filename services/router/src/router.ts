// Assembles the router service: model (tokenizer, chat template, fingerprint) → NATS → membership of
// workers and kvstore nodes from their heartbeats → the block index fed by the JetStream kv-event
// stream → the OpenAI-compatible HTTP server. Per request it hashes the prompt's full blocks, matches
// them in the index (live kvstore nodes only), picks a decode worker under the configured policy and
// either prefills on a prefill worker first (which stores the blocks) or sends the decode worker
// straight to the blocks the index says the store holds. Decode tokens stream back as they come;
// aborting the request cancels the gRPC calls, which frees the sequence on the worker.
import { Metadata, credentials, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { jetstream } from '@nats-io/jetstream';
import { blockSeed, computeBlockHashes } from '@kvmesh/block';
import { loadModel, type LoadedModel } from '@kvmesh/engine';
import { KvmeshError, type ErrorKind } from '@kvmesh/errors';
import { loadKernels, type Kernels } from '@kvmesh/kernels';
import {
  Codec,
  FinishReason,
  WorkerClient,
  blockHashToBytes,
  parseNamespace,
  type DecodeRequest,
  type DecodeResponse,
  type NodeId,
  type PrefillRequest,
  type PrefillResponse,
  type SamplingParams,
} from '@kvmesh/protocol';
import {
  MembershipTracker,
  connectNats,
  createLogger,
  isLogLevel,
  watchMembership,
  type Logger,
  type Member,
} from '@kvmesh/runtime';

import { startIndexFeed, type IndexFeed } from './adapters/index-feed.ts';
import { checkRouterConfig, type RouterConfig } from './config.ts';
import {
  BlockIndex,
  WorkerRouter,
  storeCachedBlocks,
  type RequestPlanKind,
  type RoutingPolicyName,
  type WorkerCandidate,
} from './core/index.ts';
import {
  startHttpServer,
  type GenerationBackend,
  type GenerationChunk,
  type GenerationInput,
  type HttpServer,
} from './http.ts';

export const PREFILL_ROLE = 'prefill';
export const DECODE_ROLE = 'decode';
export const KVSTORE_ROLE = 'kvstore';

const CODECS: Readonly<Record<string, Codec>> = {
  f32: Codec.CODEC_F32,
  f16: Codec.CODEC_F16,
  kivi8: Codec.CODEC_KIVI8,
  kivi4: Codec.CODEC_KIVI4,
  kivi2: Codec.CODEC_KIVI2,
};

const KIND_OF_GRPC: ReadonlyMap<number, ErrorKind> = new Map([
  [GrpcStatus.INVALID_ARGUMENT, 'invalid-argument'],
  [GrpcStatus.OUT_OF_RANGE, 'invalid-argument'],
  [GrpcStatus.NOT_FOUND, 'not-found'],
  [GrpcStatus.RESOURCE_EXHAUSTED, 'resource-exhausted'],
  [GrpcStatus.FAILED_PRECONDITION, 'failed-precondition'],
  [GrpcStatus.UNAVAILABLE, 'unavailable'],
  [GrpcStatus.DEADLINE_EXCEEDED, 'unavailable'],
]);

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
}

export interface RouterStats {
  readonly requests: number;
  readonly plans: Readonly<Record<RequestPlanKind, number>>;
  readonly liveWorkers: Readonly<Record<'prefill' | 'decode' | 'kvstore', number>>;
  readonly indexBlocks: number;
  readonly feedPosition: number;
}

export interface Router {
  /** host:port of the HTTP server. */
  readonly httpAddress: string;
  readonly modelName: string;
  readonly policy: RoutingPolicyName;
  /** Resolves once the index has applied everything the stream held at start. */
  readonly indexCaughtUp: Promise<void>;
  stats(): RouterStats;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

const isServiceError = (err: unknown): err is ServiceError =>
  err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number';

function candidateOf(member: Member, localCachedBlocks: number | undefined): WorkerCandidate {
  return {
    nodeId: member.nodeId,
    queueDepth: member.heartbeat.queueDepth,
    activeSequences: member.heartbeat.activeSequences,
    ...(localCachedBlocks === undefined ? {} : { localCachedBlocks }),
  };
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
  const codec = CODECS[config.codec] ?? Codec.CODEC_F32;
  const maxContextTokens =
    config.maxContextTokens > 0
      ? Math.min(config.maxContextTokens, model.config.maxContextTokens)
      : model.config.maxContextTokens;
  const namespace = parseNamespace('');
  // NOTE: one namespace today, so the seed is computed once; per-tenant namespaces need one each.
  const seed = blockSeed({ modelFingerprint: model.fingerprint, blockTokens: B, namespace }, kernels);

  const decodeRouter = new WorkerRouter(
    {
      policy: config.policy as RoutingPolicyName,
      prefillUncachedTokensMin: config.prefillUncachedTokensMin,
    },
    DECODE_ROLE,
  );
  const prefillRouter = new WorkerRouter({ policy: 'round-robin' }, PREFILL_ROLE);
  const counts = { requests: 0, plans: { 'decode-only': 0, 'prefill-then-decode': 0 } };

  const cleanups: (() => Promise<unknown> | void)[] = [];
  const cleanup = async (): Promise<void> => {
    for (const step of cleanups.splice(0).reverse()) {
      try {
        await step();
      } catch (err) {
        logger.warn('shutdown step failed', { err });
      }
    }
  };

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
      onChange: (change) => {
        const { member } = change;
        logger.info(change.type === 'join' ? 'node joined' : 'node left', {
          nodeId: member.nodeId,
          role: member.role,
        });
        if (change.type !== 'leave') return;
        if (member.role === KVSTORE_ROLE) feed.removeNode(member.nodeId);
        const client = clients.get(member.heartbeat.grpcAddress);
        if (client !== undefined && change.reason !== 'restarted') {
          client.close();
          clients.delete(member.heartbeat.grpcAddress);
        }
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

    async function* generate(input: GenerationInput): AsyncGenerator<GenerationChunk> {
      counts.requests++;
      const tokens = input.promptTokens;
      const hashes = computeBlockHashes(seed, tokens, B, kernels);
      const stores = new Set(tracker.liveIds(KVSTORE_ROLE));
      const match = index.match(namespace, hashes, stores);
      const storeBlocks = storeCachedBlocks(match, (id) => stores.has(id));
      const decoders = tracker.live(DECODE_ROLE);
      const decision = decodeRouter.route({
        promptTokens: tokens.length,
        blockSizeTokens: B,
        storeCachedBlocks: storeBlocks,
        workers: decoders.map((m) => candidateOf(m, match.leadingBlocksByNode.get(m.nodeId))),
      });
      const decoder = tracker.get(decision.nodeId) as Member;
      const prefillers = tracker.live(PREFILL_ROLE);
      let kind = decodeRouter.plan(decision.estimate).kind;
      // NOTE: without a live prefill worker the decode worker computes the prompt itself.
      if (prefillers.length === 0) kind = 'decode-only';
      counts.plans[kind]++;

      const sampling: SamplingParams = {
        temperature: input.sampling.temperature,
        topP: input.sampling.topP,
        topK: input.sampling.topK,
        seed: input.sampling.seed === undefined ? undefined : BigInt(input.sampling.seed),
        maxTokens: input.maxTokens,
        stop: [...input.stop],
        stopTokenIds: [],
        logprobs: false,
      };
      let blockHashes: Buffer[];
      let firstTokenId: number | undefined;
      let cachedTokens: number | undefined;
      if (kind === 'prefill-then-decode') {
        const chosen = prefillRouter.route({
          promptTokens: tokens.length,
          blockSizeTokens: B,
          storeCachedBlocks: storeBlocks,
          workers: prefillers.map((m) => candidateOf(m, undefined)),
        });
        const response = await prefill(
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
      if (input.signal.aborted) return;
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
        const usage = message.usage;
        yield {
          text: message.text,
          tokenIds: message.tokenIds,
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
    }

    const backend: GenerationBackend = {
      modelName,
      maxContextTokens,
      blockTokens: B,
      tokenizer: model.tokenizer,
      generate,
      health: () => {
        const decoders = tracker.live(DECODE_ROLE).length;
        return { ok: decoders > 0, ...(decoders > 0 ? {} : { reason: 'no decode worker is live' }) };
      },
    };
    const http: HttpServer = await startHttpServer(backend, {
      host: config.host,
      port: config.httpPort,
      requestBytesMax: config.requestBytesMax,
      requestsInFlightMax: config.requestsInFlightMax,
      maxTokensDefault: config.maxTokensDefault,
      maxTokensMax: config.maxTokensMax,
      apiKey: config.apiKey,
      logger,
    });
    cleanups.push(() => http.close(config.shutdownGraceMs));
    const advertiseHost = config.advertiseHost === '' ? config.host : config.advertiseHost;
    const httpAddress = `${advertiseHost}:${http.port}`;
    logger.info('router serving', {
      httpAddress,
      model: modelName,
      policy: decodeRouter.config.policy,
      blockTokens: B,
      maxContextTokens,
    });

    let closing: Promise<void> | undefined;
    return {
      httpAddress,
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
        feedPosition: feed.stats().position,
      }),
      close() {
        closing ??= (async () => {
          logger.info('router shutting down');
          await cleanup();
          logger.info('router stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
