// Assembles one decode worker: model (loaded once) → ONE engine shared by every request → kvstore
// client (discovered over NATS) → gRPC server (Worker.Decode / Worker.Health + standard health) →
// heartbeats with role 'decode' → SERVING. A decode imports the leading prompt blocks it was told
// the store holds (up to the first that does not fetch cleanly), lets the engine recompute the rest
// (block-aligned, so bit-identical to computing everything), and streams one message per token
// while a step loop batches every running sequence (continuous batching). Once a sequence finishes,
// its final message is sent first and its full blocks the store lacks are put in the background.
//
// NOTE on first_token_id: the engine samples its own first token from the prompt's last logits. A
// thin slice does not inject the prefill worker's token: under greedy sampling the engine's first
// token must equal it (else FAILED_PRECONDITION before any token is sent); under sampling the
// stream carries the engine's own tokens, which may differ from the prefill worker's draw.
import type { ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { blockSeed, computeBlockHashes, type BlockDims } from '@kvmesh/block';
import { Engine, TextStream, type LoadedModel } from '@kvmesh/engine';
import type { CodecName, Kernels } from '@kvmesh/kernels';
import {
  FinishReason,
  WorkerService,
  type BlockHash,
  type DecodeRequest,
  type DecodeResponse,
  type NodeId,
  type WorkerHealthResponse,
} from '@kvmesh/protocol';
import {
  createGrpcServer,
  startHeartbeats,
  wrapServerStream,
  wrapUnary,
  type Logger,
  loggingWrapOptions,
} from '@kvmesh/runtime';
import type { KvStoreClient } from '@kvmesh/sdk';
import { type FetchedBlock } from '@kvmesh/sdk';
import { CleanupStack, connectWorkerStore, workerBasics } from '@kvmesh/worker';

import { checkDecodeConfig, type DecodeConfig } from './config.ts';
import {
  DecodeBatcher,
  EventChannel,
  FirstTokenMismatchError,
  SequenceSlots,
  blocksToFetch,
  blocksToWriteBack,
  decodeUsage,
  parseDecodeRequest,
  usablePrefix,
  type DecodeInput,
  type DecodeLimits,
  type FinishedSequence,
  type SequenceEvent,
} from './core/index.ts';

export const DECODE_ROLE = 'decode';
export const WORKER_SERVICE_NAME = 'kvmesh.v1.Worker';
/** Decode requests carry token ids and block hashes only; 16 MiB holds a million-token prompt. */
const GRPC_MESSAGE_BYTES_MAX = 16 * 1024 * 1024;

/** The part of KvStoreClient a decode uses; tests may inject a faulty one. */
export type DecodeBlockStore = Pick<KvStoreClient, 'matchPrefix' | 'get' | 'put'>;

export interface StartDecodeWorkerOptions {
  readonly logger?: Logger;
  readonly kernels?: Kernels;
  /** An already loaded model (must be the one in config.modelDir); skips loading it again. */
  readonly model?: LoadedModel;
  /** Replaces the NATS-discovered kvstore client (the worker does not close it). */
  readonly store?: DecodeBlockStore;
}

export interface DecodeWorkerStats {
  /** Sequences in the engine. */
  readonly active: number;
  /** Admitted requests not yet in the engine (fetching their prefix). */
  readonly waiting: number;
  readonly requests: number;
  readonly completed: number;
  readonly cancelled: number;
  readonly reusedTokens: number;
  readonly generatedTokens: number;
  readonly steps: number;
  /** Most sequences one engine step advanced. */
  readonly batchPeak: number;
  readonly blocksStored: number;
  readonly writeBacksPending: number;
  readonly writeBacksSkipped: number;
  readonly writeBackFailures: number;
}

export interface DecodeWorker {
  readonly nodeId: NodeId;
  /** host:port of the gRPC server (Worker + health). */
  readonly grpcAddress: string;
  readonly model: LoadedModel;
  readonly blockTokens: number;
  readonly codec: CodecName;
  stats(): DecodeWorkerStats;
  /** Resolves once every write-back started so far has settled. */
  writeBacksSettled(): Promise<void>;
  /** Graceful shutdown (waits for pending write-backs before closing the store); idempotent. */
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

function sameTokens(a: Uint32Array, b: readonly number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

export async function startDecodeWorker(
  config: DecodeConfig,
  options: StartDecodeWorkerOptions = {},
): Promise<DecodeWorker> {
  checkDecodeConfig(config);
  const { nodeId, logger, kernels, model, maxContextTokens } = workerBasics('decode', config, options);
  const codec = config.codec as CodecName;
  const B = config.blockTokens;
  // NOTE: the default pool holds sequencesMax full contexts, so a step never finds it full; a
  // smaller kvBlocksMax trades that for memory, and a full pool fails the sequences of that step.
  const kvBlocksMax =
    config.kvBlocksMax > 0 ? config.kvBlocksMax : config.sequencesMax * Math.ceil(maxContextTokens / B);
  const engine = new Engine(model, {
    codec,
    blockTokens: B,
    maxContextTokens,
    kvBlocksMax,
    maxBatch: config.maxBatch,
    maxSequences: config.sequencesMax,
    kernels,
  });
  const limits: DecodeLimits = {
    modelName: config.modelName === '' ? model.name : config.modelName,
    vocabSize: model.config.vocabSize,
    maxContextTokens: engine.maxContextTokens,
    codec,
    blockTokens: B,
    maxTokensDefault: config.maxTokensDefault,
  };
  const slots = new SequenceSlots(config.sequencesMax);
  const batcher = new DecodeBatcher(engine, {
    schedule: (step) => setImmediate(step),
    onListenerError: (err) => logger.error('sequence listener failed', { err }),
  });
  const counts = {
    requests: 0,
    completed: 0,
    cancelled: 0,
    reusedTokens: 0,
    generatedTokens: 0,
    blocksStored: 0,
    writeBacksSkipped: 0,
    writeBackFailures: 0,
  };
  const writeBacks = new Set<Promise<void>>();
  const writeBacksSettled = async (): Promise<void> => {
    await Promise.allSettled([...writeBacks]);
  };

  const cleanups = new CleanupStack(logger);
  const cleanup = (): Promise<void> => cleanups.run();

  try {
    const connected = await connectWorkerStore(config, { nodeId, kernels, store: options.store, cleanups });
    const nc = connected.nc;
    const store = connected.store;
    if (store === undefined)
      logger.warn('no natsUrl and no store: prompts are computed in full and no block is written back');
    const activeStore = store;
    // Runs after the gRPC server drained (cleanups run in reverse) and before the store closes.
    cleanups.push(writeBacksSettled);

    const seedOf = (input: DecodeInput): Uint8Array =>
      blockSeed({ modelFingerprint: model.fingerprint, blockTokens: B, namespace: input.namespace }, kernels);

    /** The leading blocks whose copies fetch cleanly and are exactly this prompt's blocks. */
    const fetchPrefix = async (hashes: readonly BlockHash[], input: DecodeInput): Promise<Uint8Array[]> => {
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
        // NOTE: a copy in another codec or layout, or of other tokens, is not what this engine would
        // have computed; importing it would break "import then compute = compute everything".
        if (
          block === undefined ||
          block.codec !== codec ||
          !sameDims(block.dims, engine.dims) ||
          block.modelFingerprint !== model.fingerprint ||
          !sameTokens(block.tokenIds, input.promptTokens.slice(i * B, (i + 1) * B))
        )
          return undefined;
        return block;
      });
      const count = usablePrefix(usable.map((b) => b !== undefined));
      return usable.slice(0, count).map((b) => (b as FetchedBlock).payload);
    };

    /** Puts the finished sequence's full blocks the store lacks; never throws (logs and counts). */
    const startWriteBack = (finished: FinishedSequence, input: DecodeInput): void => {
      if (activeStore === undefined || finished.blocks.length === 0) return;
      if (writeBacks.size >= config.writeBacksMax) {
        counts.writeBacksSkipped++;
        logger.warn('write-back skipped: too many pending', { writeBacksMax: config.writeBacksMax });
        return;
      }
      const run = async (): Promise<void> => {
        const covered = finished.tokens.slice(0, finished.blocks.length * B);
        const hashes = computeBlockHashes(seedOf(input), covered, B, kernels);
        const match = await activeStore.matchPrefix(hashes, input.namespace);
        const held = new Set<string>(match.locations.map((l) => l.hash));
        const toPut = blocksToWriteBack(hashes.map((h) => held.has(h)));
        if (toPut.length === 0) return;
        const report = await activeStore.put(
          toPut.map((i) => ({
            hash: hashes[i] as BlockHash,
            parentHash: i === 0 ? null : (hashes[i - 1] as BlockHash),
            namespace: input.namespace,
            modelFingerprint: model.fingerprint,
            tokenIds: covered.slice(i * B, (i + 1) * B),
            payload: finished.blocks[i] as Uint8Array,
          })),
        );
        counts.blocksStored += report.acknowledged.length;
        const firstFailure = report.failed[0];
        if (firstFailure !== undefined) {
          counts.writeBackFailures++;
          logger.warn('write-back: blocks not acknowledged', {
            requestId: input.requestId,
            failed: report.failed.length,
            total: toPut.length,
            err: firstFailure.error,
          });
        }
      };
      const pending: Promise<void> = run()
        .catch((err: unknown) => {
          counts.writeBackFailures++;
          logger.warn('write-back failed', { requestId: input.requestId, err });
        })
        .finally(() => writeBacks.delete(pending));
      writeBacks.add(pending);
    };

    const wireFinish = (reason: 'stop' | 'length'): FinishReason =>
      reason === 'stop' ? FinishReason.FINISH_REASON_STOP : FinishReason.FINISH_REASON_LENGTH;

    async function* runDecode(
      request: DecodeRequest,
      call: ServerWritableStream<DecodeRequest, DecodeResponse>,
    ): AsyncGenerator<DecodeResponse> {
      const input = parseDecodeRequest(request, limits);
      const release = slots.acquire();
      counts.requests++;
      const channel = new EventChannel<SequenceEvent>();
      let id: number | undefined;
      let finished: FinishedSequence | undefined;
      // NOTE: the stream may be waiting on the channel, not on a write, when the client goes away;
      // closing the channel is what wakes it, and removing the sequence frees its blocks at once.
      const onCancelled = (): void => {
        if (id !== undefined) batcher.cancel(id);
        channel.close();
      };
      call.once('cancelled', onCancelled);
      try {
        const tokens = input.promptTokens;
        const hashes = computeBlockHashes(seedOf(input), tokens, B, kernels);
        const prefixBlocks = await fetchPrefix(
          blocksToFetch(input.blockHashes, hashes, tokens.length, B),
          input,
        );
        if (call.cancelled) return;
        id = batcher.admit(
          {
            promptTokens: tokens,
            maxTokens: input.maxTokens,
            sampling: input.sampling,
            ...(input.stopTokenIds === undefined ? {} : { stopTokenIds: input.stopTokenIds }),
            prefixBlocks,
          },
          (event) => channel.push(event),
        );
        const sequenceId = id;
        const text = new TextStream(model.tokenizer, input.stop);
        let completionTokens = 0;
        for (;;) {
          const event = await channel.next();
          if (event === undefined) return; // cancelled
          if (event.kind === 'error') throw event.error;
          if (
            completionTokens === 0 &&
            input.firstTokenId !== undefined &&
            input.sampling.temperature === 0 &&
            event.token !== input.firstTokenId
          )
            throw new FirstTokenMismatchError(input.firstTokenId, event.token);
          completionTokens++;
          counts.generatedTokens++;
          const delta = text.push(event.token);
          finished = event.finished ?? (delta.stopped ? batcher.finish(sequenceId) : undefined);
          const logprobs = input.logprobs ? [event.logprob] : [];
          if (finished === undefined) {
            yield {
              tokenIds: [event.token],
              text: delta.text,
              logprobs,
              finishReason: FinishReason.FINISH_REASON_UNSPECIFIED,
              usage: undefined,
            };
            continue;
          }
          // NOTE: a stop string ends the text right before it; the token that completed it is still
          // reported in token_ids and counted in completion_tokens (its KV exists).
          const reason = delta.stopped ? 'stop' : (event.finishReason ?? 'stop');
          const usage = decodeUsage(tokens.length, completionTokens, finished.reusedTokens);
          counts.completed++;
          counts.reusedTokens += usage.cachedTokens;
          logger.debug('decode done', { requestId: input.requestId, reason, ...usage });
          yield {
            tokenIds: [event.token],
            text: delta.stopped ? delta.text : delta.text + text.finish(),
            logprobs,
            finishReason: wireFinish(reason),
            usage,
          };
          return;
        }
      } finally {
        call.removeListener('cancelled', onCancelled);
        if (call.cancelled) counts.cancelled++;
        if (id !== undefined) batcher.cancel(id);
        channel.close();
        release();
        // After the final message was handed to the stream: the client never waits on the store.
        if (finished !== undefined) startWriteBack(finished, input);
      }
    }

    const wrap = loggingWrapOptions(logger);
    const grpc = createGrpcServer({
      healthServices: [WORKER_SERVICE_NAME],
      messageBytesMax: GRPC_MESSAGE_BYTES_MAX,
    });
    // NOTE: Prefill is left out on purpose: grpc-js answers UNIMPLEMENTED for it on a decode worker.
    const implementation: UntypedServiceImplementation = {
      decode: wrapServerStream<DecodeRequest, DecodeResponse>(runDecode, wrap),
      health: wrapUnary<unknown, WorkerHealthResponse>(
        () => ({
          nodeId,
          role: DECODE_ROLE,
          activeSequences: batcher.active,
          queueDepth: slots.used - batcher.active,
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
          role: DECODE_ROLE,
          grpcAddress,
          queueDepth: slots.used - batcher.active,
          activeSequences: batcher.active,
          freeBlocks: BigInt(engine.pool.blocksFree),
        }),
        config.heartbeatIntervalMs,
        { onError: (err) => logger.warn('heartbeat not published', { err }) },
      );
      cleanups.push(() => heartbeats.stop());
    }

    grpc.setServing(true);
    logger.info('decode worker serving', {
      grpcAddress,
      model: limits.modelName,
      blockTokens: B,
      codec,
      maxContextTokens: engine.maxContextTokens,
      sequencesMax: config.sequencesMax,
      maxBatch: config.maxBatch,
      kvBlocksMax,
      store: activeStore !== undefined,
    });

    let closing: Promise<void> | undefined;
    return {
      nodeId,
      grpcAddress,
      model,
      blockTokens: B,
      codec,
      stats: () => {
        const loop = batcher.stats();
        return {
          active: loop.active,
          waiting: slots.used - loop.active,
          ...counts,
          steps: loop.steps,
          batchPeak: loop.batchPeak,
          writeBacksPending: writeBacks.size,
        };
      },
      writeBacksSettled,
      close() {
        closing ??= (async () => {
          logger.info('decode worker shutting down');
          // NOT_SERVING first, so health checks see it while in-flight sequences drain.
          grpc.setServing(false);
          await cleanup();
          logger.info('decode worker stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
