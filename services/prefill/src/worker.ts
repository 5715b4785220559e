// Assembles one prefill worker: model (loaded once) → engine → kvstore client (discovered over
// NATS) → gRPC server (Worker.Prefill / Worker.Health + standard health) → heartbeats with role
// 'prefill' → SERVING. A prefill imports the longest prefix of the prompt's full blocks that the
// store holds and that fetches cleanly, computes the rest, and answers once the store has answered
// the puts of the full blocks it did not hold. The hashes it returns are the leading blocks the store
// holds; a put the store does not acknowledge (a node down, R not reachable) shortens that list
// instead of failing the request: the KV is a cache, and the decode worker computes what is missing.
// Requests run one at a time behind a bounded queue: the engine's forward pass is synchronous.
import type { UntypedServiceImplementation } from '@grpc/grpc-js';
import { BlockSeeds, computeBlockHashes, type BlockDims } from '@kvmesh/block';
import { Engine, RateMeter, type LoadedModel } from '@kvmesh/engine';
import { KvmeshError } from '@kvmesh/errors';
import type { CodecName, Kernels } from '@kvmesh/kernels';
import {
  WorkerService,
  blockHashToBytes,
  type BlockHash,
  type NodeId,
  type PrefillRequest,
  type PrefillResponse,
  type WorkerHealthResponse,
} from '@kvmesh/protocol';
import {
  CleanupStack,
  createGrpcServer,
  startHeartbeats,
  wrapUnary,
  type Logger,
  loggingWrapOptions,
} from '@kvmesh/runtime';
import type { KvStoreClient } from '@kvmesh/sdk';
import { type FetchedBlock } from '@kvmesh/sdk';
import { connectWorkerStore, promptBlockInputs, workerBasics } from '@kvmesh/worker';

import { checkPrefillConfig, type PrefillConfig } from './config.ts';
import {
  SerialQueue,
  blocksToPut,
  parsePrefillRequest,
  planPrefill,
  prefillUsage,
  usablePrefix,
  type PrefillInput,
  type PrefillLimits,
} from './core/index.ts';

export const PREFILL_ROLE = 'prefill';
export const WORKER_SERVICE_NAME = 'kvmesh.v1.Worker';
/** Prefill requests carry token ids only; 16 MiB holds a million-token prompt. */
const GRPC_MESSAGE_BYTES_MAX = 16 * 1024 * 1024;
const RATE_HALF_LIFE_TOKENS = 4096;

/** The part of KvStoreClient a prefill uses; tests may inject a faulty one. */
export type PrefillBlockStore = Pick<KvStoreClient, 'matchPrefix' | 'get' | 'put'>;

export interface StartPrefillWorkerOptions {
  readonly logger?: Logger;
  readonly kernels?: Kernels;
  /** An already loaded model (must be the one in config.modelDir); skips loading it again. */
  readonly model?: LoadedModel;
  /** Replaces the NATS-discovered kvstore client (the worker does not close it). */
  readonly store?: PrefillBlockStore;
}

export interface PrefillWorkerStats {
  readonly active: number;
  readonly waiting: number;
  readonly requests: number;
  readonly reusedTokens: number;
  readonly computedTokens: number;
  readonly blocksStored: number;
  /** Blocks the store did not acknowledge (the request was served without them). */
  readonly blocksNotStored: number;
}

export interface PrefillWorker {
  readonly nodeId: NodeId;
  /** host:port of the gRPC server (Worker + health). */
  readonly grpcAddress: string;
  readonly model: LoadedModel;
  readonly blockTokens: number;
  readonly codec: CodecName;
  stats(): PrefillWorkerStats;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

function sameDims(a: BlockDims, b: BlockDims): boolean {
  return (
    a.layers === b.layers &&
    a.kvHeads === b.kvHeads &&
    a.blockTokens === b.blockTokens &&
    a.headDim === b.headDim &&
    a.groupSize === b.groupSize
  );
}

export async function startPrefillWorker(
  config: PrefillConfig,
  options: StartPrefillWorkerOptions = {},
): Promise<PrefillWorker> {
  checkPrefillConfig(config);
  const { nodeId, logger, kernels, model, maxContextTokens } = workerBasics('prefill', config, options);
  const codec = config.codec as CodecName;
  const B = config.blockTokens;
  // NOTE: one sequence at a time (the queue serializes requests), so the pool needs one context.
  const engine = new Engine(model, {
    codec,
    blockTokens: B,
    maxContextTokens,
    kvBlocksMax: Math.ceil(maxContextTokens / B) + 1,
    maxBatch: 1,
    maxSequences: 1,
    kernels,
  });
  const limits: PrefillLimits = {
    modelName: config.modelName === '' ? model.name : config.modelName,
    vocabSize: model.config.vocabSize,
    maxContextTokens: engine.maxContextTokens,
    codec,
  };
  const queue = new SerialQueue(config.queueDepthMax);
  const counts = { requests: 0, reusedTokens: 0, computedTokens: 0, blocksStored: 0, blocksNotStored: 0 };
  // What a request costs here, for the heartbeats: a computed token (forward pass and put) and an
  // imported one (fetch), each over about the last few long prompts.
  const computeRate = new RateMeter(RATE_HALF_LIFE_TOKENS);
  const fetchRate = new RateMeter(RATE_HALF_LIFE_TOKENS);

  const cleanups = new CleanupStack(logger);
  const cleanup = (): Promise<void> => cleanups.run();

  try {
    const connected = await connectWorkerStore(config, { nodeId, kernels, store: options.store, cleanups });
    const nc = connected.nc;
    const store = connected.store;
    if (store === undefined)
      logger.warn('no natsUrl and no store: prompts are computed in full and no block is stored');
    const activeStore = store;

    /** The leading blocks whose copies fetch cleanly in this worker's codec and layout. */
    const fetchPrefix = async (hashes: readonly BlockHash[], input: PrefillInput): Promise<Uint8Array[]> => {
      if (activeStore === undefined || hashes.length === 0) return [];
      // One get per block, so one bad copy costs only the blocks from it on, not the whole prefix.
      const settled = await Promise.allSettled(
        hashes.map((hash) => activeStore.get([hash], { namespace: input.namespace })),
      );
      const usable = settled.map((result, i): FetchedBlock | undefined => {
        if (result.status === 'rejected') {
          logger.debug('prefix block fetch failed', { hash: hashes[i], err: result.reason });
          return undefined;
        }
        const block = result.value[0];
        // NOTE: a copy in another codec or layout is not what this worker would have computed;
        // importing it would break "import then compute = compute everything".
        if (block === undefined || block.codec !== codec || !sameDims(block.dims, engine.dims))
          return undefined;
        return block;
      });
      const count = usablePrefix(usable.map((b) => b !== undefined));
      return usable.slice(0, count).map((b) => (b as FetchedBlock).payload);
    };

    const seeds = new BlockSeeds(kernels);
    const runPrefill = async (input: PrefillInput): Promise<PrefillResponse> => {
      const tokens = input.promptTokens;
      const seed = seeds.get({
        modelFingerprint: model.fingerprint,
        blockTokens: B,
        namespace: input.namespace,
      });
      const hashes = computeBlockHashes(seed, tokens, B, kernels);
      let matchedBlocks = 0;
      let held = hashes.map(() => false);
      if (activeStore !== undefined && hashes.length > 0) {
        const match = await activeStore.matchPrefix(hashes, input.namespace);
        const heldHashes = new Set<string>(match.locations.map((l) => l.hash));
        held = hashes.map((h) => heldHashes.has(h));
        matchedBlocks = match.matchedBlocks;
      }
      const plan = planPrefill({ promptTokens: tokens.length, blockTokens: B, matchedBlocks, held });
      const fetchBegan = performance.now();
      const prefixBlocks = await fetchPrefix(hashes.slice(0, plan.importBlocks), input);
      const computeBegan = performance.now();
      fetchRate.record(prefixBlocks.length * B, computeBegan - fetchBegan);

      const id = engine.addSequence({
        promptTokens: tokens,
        maxTokens: 1,
        sampling: input.sampling,
        stopTokenIds: [],
        prefixBlocks,
      });
      let first: { token: number; logprob: number };
      let payloads: Uint8Array[];
      try {
        const event = (await engine.stepAsync()).find((e) => e.sequenceId === id);
        if (event === undefined)
          throw new KvmeshError('INTERNAL', 'internal', `engine step produced no token for sequence ${id}`);
        first = event;
        payloads = engine.exportBlocks(id);
      } finally {
        engine.removeSequence(id);
      }
      const importedBlocks = prefixBlocks.length;
      const toPut = activeStore === undefined ? [] : blocksToPut(plan, importedBlocks);
      const stored = new Set<string>(hashes.filter((_, i) => held[i] === true));
      if (activeStore !== undefined && toPut.length > 0) {
        try {
          const report = await activeStore.put(
            promptBlockInputs(
              {
                hashes,
                tokens,
                blockTokens: B,
                namespace: input.namespace,
                modelFingerprint: model.fingerprint,
              },
              toPut,
              (i) => payloads[i] as Uint8Array,
            ),
          );
          for (const hash of report.acknowledged) stored.add(hash);
          const firstFailure = report.failed[0];
          if (firstFailure !== undefined) {
            counts.blocksNotStored += report.failed.length;
            logger.warn('blocks not stored; served without them', {
              requestId: input.requestId,
              failed: report.failed.length,
              total: toPut.length,
              err: firstFailure.error,
            });
          }
        } catch (err) {
          counts.blocksNotStored += toPut.length;
          logger.warn('blocks not stored; served without them', { requestId: input.requestId, err });
        }
      }
      // NOTE: only a leading run of held blocks is usable by the decode worker.
      const heldRun = usablePrefix(hashes.map((h) => stored.has(h)));
      const usage = prefillUsage(plan, importedBlocks);
      computeRate.record(usage.computedTokens, performance.now() - computeBegan);
      counts.requests++;
      counts.reusedTokens += usage.reusedTokens;
      counts.computedTokens += usage.computedTokens;
      counts.blocksStored += toPut.filter((i) => stored.has(hashes[i] as string)).length;
      logger.debug('prefill done', {
        requestId: input.requestId,
        promptTokens: tokens.length,
        ...usage,
        stored: toPut.length,
      });
      return {
        firstTokenId: first.token,
        firstTokenLogprob: first.logprob,
        // NOTE: without a store nothing is held, and the response promises only held blocks.
        blockHashes: hashes.slice(0, heldRun).map((h) => Buffer.from(blockHashToBytes(h))),
        computedTokens: usage.computedTokens,
        reusedTokens: usage.reusedTokens,
      };
    };

    const wrap = loggingWrapOptions(logger);
    const grpc = createGrpcServer({
      healthServices: [WORKER_SERVICE_NAME],
      messageBytesMax: GRPC_MESSAGE_BYTES_MAX,
    });
    // NOTE: Decode is left out on purpose: grpc-js answers UNIMPLEMENTED for it on a prefill worker.
    const implementation: UntypedServiceImplementation = {
      prefill: wrapUnary<PrefillRequest, PrefillResponse>((request) => {
        const input = parsePrefillRequest(request, limits);
        return queue.run(() => runPrefill(input));
      }, wrap),
      health: wrapUnary<unknown, WorkerHealthResponse>(
        () => ({
          nodeId,
          role: PREFILL_ROLE,
          activeSequences: queue.active,
          queueDepth: queue.waiting,
          freeKvBlocks: BigInt(engine.pool.blocksFree),
        }),
        wrap,
      ),
    };
    grpc.server.addService(WorkerService, implementation);
    const advertiseHost = config.advertiseHost === '' ? config.host : config.advertiseHost;
    const grpcPort = await grpc.bind(`${config.host}:${config.grpcPort}`);
    cleanups.push(() => grpc.shutdown(config.shutdownGraceMs));
    const grpcAddress = `${advertiseHost}:${grpcPort}`;

    if (nc !== undefined) {
      const heartbeats = startHeartbeats(
        nc,
        () => ({
          nodeId,
          role: PREFILL_ROLE,
          grpcAddress,
          queueDepth: queue.waiting,
          activeSequences: queue.active,
          freeBlocks: BigInt(engine.pool.blocksFree),
          prefillMsPerToken: computeRate.msPerUnit,
          fetchMsPerToken: fetchRate.msPerUnit,
        }),
        config.heartbeatIntervalMs,
        { onError: (err) => logger.warn('heartbeat not published', { err }) },
      );
      cleanups.push(() => heartbeats.stop());
    }

    grpc.setServing(true);
    logger.info('prefill worker serving', {
      grpcAddress,
      model: limits.modelName,
      blockTokens: B,
      codec,
      maxContextTokens: engine.maxContextTokens,
      store: activeStore !== undefined,
    });

    let closing: Promise<void> | undefined;
    return {
      nodeId,
      grpcAddress,
      model,
      blockTokens: B,
      codec,
      stats: () => ({ active: queue.active, waiting: queue.waiting, ...counts }),
      close() {
        closing ??= (async () => {
          logger.info('prefill worker shutting down');
          // NOT_SERVING first, so health checks see it while in-flight prefills drain.
          grpc.setServing(false);
          await cleanup();
          logger.info('prefill worker stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
