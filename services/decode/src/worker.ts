// Assembles one decode worker: model (loaded once) → ONE engine shared by every request → kvstore
// client (discovered over NATS) → gRPC server (Worker.Decode / Worker.Health + standard health) →
// heartbeats with role 'decode' → SERVING. A decode imports the leading prompt blocks it was told
// the store holds (up to the first that does not fetch cleanly), lets the engine recompute the rest
// (block-aligned, so bit-identical to computing everything), and streams one message per token
// while a step loop batches every running sequence (continuous batching). Once a sequence finishes,
// its final message is sent first and its full blocks the store lacks are put in the background.
// While it runs, each newly completed block is put as soon as it is sealed, so the next turn can
// reuse it even before this one ends. With sequenceKvBlocksMax set, a sequence keeps at most that
// many blocks in the pool: older ones (stored, pinned for the sequence's life) are attended to on
// the kvstore nodes that hold them (DistAttention) and merged exactly with the local part.
// A finished sequence's blocks also stay in the pool as a local prefix cache (LRU, freed first when
// the pool is full), announced as kv events of this worker so kv-aware routing sends the next turn
// here; a hit imports nothing.
//
// NOTE on first_token_id: the prefill worker's first token is where the sequence goes on from; the
// engine emits it (with its logprob under this worker's logits) instead of drawing its own. KV this
// worker reuses (its local cache, blocks sealed while decoding) may differ from the prefill's in the
// last bits, so its own draw could differ, and the client must see one sequence.
import type { ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { BlockSeeds, computeBlockHashes, type BlockDims } from '@kvmesh/block';
import { Engine, RateMeter, TextStream, type LoadedModel } from '@kvmesh/engine';
import type { CodecName, Kernels } from '@kvmesh/kernels';
import {
  FinishReason,
  Tier,
  WorkerService,
  blockHashToBytes,
  codecToWire,
  type BlockHash,
  type DecodeRequest,
  type DecodeResponse,
  type KvEvent,
  type NodeId,
  type WorkerHealthResponse,
} from '@kvmesh/protocol';
import {
  CleanupStack,
  createGrpcServer,
  openKvEventPublisher,
  startHeartbeats,
  wrapServerStream,
  wrapUnary,
  type Logger,
  loggingWrapOptions,
} from '@kvmesh/runtime';
import type { KvStoreClient } from '@kvmesh/sdk';
import { type FetchedBlock } from '@kvmesh/sdk';
import { connectWorkerStore, promptBlockInputs, workerBasics } from '@kvmesh/worker';

import { checkDecodeConfig, type DecodeConfig } from './config.ts';
import {
  DecodeBatcher,
  EventChannel,
  LocalPrefixCache,
  type CachedBlock,
  blocksToDemote,
  farBlocksAtAdmission,
  SequenceSlots,
  blocksToFetch,
  blocksToWriteBack,
  importableBlocks,
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
const FETCH_RATE_HALF_LIFE_TOKENS = 4096;

/** The part of KvStoreClient a decode uses; tests may inject a faulty one. */
export type DecodeBlockStore = Pick<
  KvStoreClient,
  'matchPrefix' | 'get' | 'put' | 'partialAttention' | 'pin' | 'unpin'
>;

/** Pins on far blocks outlive any sequence we expect; they are released when it ends. */
const FAR_PIN_TTL_MS = 30 * 60 * 1000;

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
  /** Blocks left in the store and attended to there (DistAttention), over all sequences. */
  readonly farBlocks: number;
  readonly farAttentionCalls: number;
  /** Blocks in the local prefix cache, and prompt tokens served from it. */
  readonly localCacheBlocks: number;
  readonly localCachedTokens: number;
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
  const cache = new LocalPrefixCache(Math.min(config.localCacheBlocksMax, kvBlocksMax));
  const cacheEvents: { emit: (change: { stored?: CachedBlock[]; removed?: CachedBlock[] }) => void } = {
    emit: () => undefined,
  };
  const engine: Engine = new Engine(model, {
    codec,
    blockTokens: B,
    maxContextTokens,
    kvBlocksMax,
    maxBatch: config.maxBatch,
    maxSequences: config.sequencesMax,
    kernels,
    reclaimBlock: () => {
      const evicted = cache.evictOne();
      if (evicted === undefined) return false;
      engine.pool.release(evicted.poolId);
      cacheEvents.emit({ removed: [evicted] });
      return true;
    },
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
    keepPoolBlocks: cache.blocksMax > 0,
    asyncSteps: true,
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
    farBlocks: 0,
    farAttentionCalls: 0,
    localCachedTokens: 0,
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
    if (nc !== undefined && cache.blocksMax > 0) {
      const publisher = await openKvEventPublisher(nc, { nodeId, logger });
      cleanups.push(async () => {
        await publisher.close(config.shutdownGraceMs);
      });
      let seq = 0n;
      const wire = (block: CachedBlock) => ({
        hash: Buffer.from(blockHashToBytes(block.hash)),
        parentHash: block.parent === null ? Buffer.alloc(0) : Buffer.from(blockHashToBytes(block.parent)),
        tier: Tier.TIER_DRAM,
        codec: codecToWire(codec),
        bytes: BigInt(block.bytes),
        namespace: block.namespace,
      });
      const publish = (change: { stored?: CachedBlock[]; removed?: CachedBlock[]; cleared?: boolean }) => {
        const event: KvEvent = {
          nodeId,
          seq: ++seq,
          stored: (change.stored ?? []).map(wire),
          removed: (change.removed ?? []).map((b) => Buffer.from(blockHashToBytes(b.hash))),
          removedNamespaces: (change.removed ?? []).map((b) => b.namespace),
          cleared: change.cleared ?? false,
          timestampMs: BigInt(Date.now()),
        };
        try {
          publisher.publish(event);
        } catch (err) {
          logger.warn('local cache event not published', { err });
        }
      };
      // A fresh worker holds nothing: an index that knew an earlier incarnation forgets it.
      publish({ cleared: true });
      cacheEvents.emit = (change) => {
        if ((change.stored?.length ?? 0) + (change.removed?.length ?? 0) > 0) publish(change);
      };
    }
    // NOTE: runs after the gRPC server drained and before the publisher closes: frees the cache.
    cleanups.push(() => {
      for (const entry of cache.clear()) engine.pool.release(entry.poolId);
    });
    // Runs after the gRPC server drained (cleanups run in reverse) and before the store closes.
    cleanups.push(writeBacksSettled);

    // What importing a prompt token from the store costs here, for the heartbeats (the engine
    // measures its own compute).
    const fetchRate = new RateMeter(FETCH_RATE_HALF_LIFE_TOKENS);
    const seeds = new BlockSeeds(kernels);
    const seedOf = (input: DecodeInput): Uint8Array =>
      seeds.get({ modelFingerprint: model.fingerprint, blockTokens: B, namespace: input.namespace });

    /** The leading blocks whose copies fetch cleanly and are exactly this prompt's blocks. */
    const fetchPrefix = async (
      hashes: readonly BlockHash[],
      input: DecodeInput,
      firstBlock: number,
    ): Promise<Uint8Array[]> => {
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
          !sameTokens(
            block.tokenIds,
            input.promptTokens.slice((firstBlock + i) * B, (firstBlock + i + 1) * B),
          )
        )
          return undefined;
        return block;
      });
      const count = usablePrefix(usable.map((b) => b !== undefined));
      return usable.slice(0, count).map((b) => (b as FetchedBlock).payload);
    };

    /** Runs store work in the background, bounded by writeBacksMax; close() waits for it. */
    const inBackground = (what: string, input: DecodeInput, run: () => Promise<void>): Promise<void> => {
      if (writeBacks.size >= config.writeBacksMax) {
        counts.writeBacksSkipped++;
        logger.warn(`${what} skipped: too many pending`, { writeBacksMax: config.writeBacksMax });
        return Promise.resolve();
      }
      const pending: Promise<void> = run()
        .catch((err: unknown) => {
          counts.writeBackFailures++;
          logger.warn(`${what} failed`, { requestId: input.requestId, err });
        })
        .finally(() => writeBacks.delete(pending));
      writeBacks.add(pending);
      return pending;
    };

    /** Puts blocks `indices` of `tokens` (payload of block i: payloadOf(i)); returns the acknowledged. */
    const putBlocks = async (
      input: DecodeInput,
      tokens: readonly number[],
      hashes: readonly BlockHash[],
      indices: readonly number[],
      payloadOf: (index: number) => Uint8Array,
    ): Promise<Set<string>> => {
      if (activeStore === undefined || indices.length === 0) return new Set();
      const report = await activeStore.put(
        promptBlockInputs(
          { hashes, tokens, blockTokens: B, namespace: input.namespace, modelFingerprint: model.fingerprint },
          indices,
          payloadOf,
        ),
      );
      counts.blocksStored += report.acknowledged.length;
      const firstFailure = report.failed[0];
      if (firstFailure !== undefined) {
        counts.writeBackFailures++;
        logger.warn('write-back: blocks not acknowledged', {
          requestId: input.requestId,
          failed: report.failed.length,
          total: indices.length,
          err: firstFailure.error,
        });
      }
      return new Set<string>(report.acknowledged);
    };

    /** Keeps a finished sequence's blocks in the local prefix cache (or releases them). */
    const cacheFinished = (
      finished: FinishedSequence,
      input: DecodeInput,
      hashes: readonly BlockHash[],
    ): void => {
      if (finished.poolBlocks.length === 0) return;
      if (finished.firstBlock > 0) {
        // Without its first blocks the chain cannot be matched from a prompt's start.
        for (const id of finished.poolBlocks) engine.pool.release(id);
        return;
      }
      const { added, refused, evicted } = cache.insert(
        finished.poolBlocks.map((poolId, i) => ({
          hash: hashes[i] as BlockHash,
          parent: i === 0 ? null : (hashes[i - 1] as BlockHash),
          poolId,
          namespace: input.namespace,
          bytes: (finished.blocks[i] as Uint8Array).byteLength,
        })),
      );
      for (const entry of [...refused, ...evicted]) engine.pool.release(entry.poolId);
      cacheEvents.emit({ stored: added, removed: evicted });
    };

    /** Puts the finished sequence's full blocks the store lacks; never throws (logs and counts). */
    const startWriteBack = (
      finished: FinishedSequence,
      input: DecodeInput,
      hashes: readonly BlockHash[],
    ): void => {
      if (activeStore === undefined || finished.blocks.length === 0) return;
      void inBackground('write-back', input, async () => {
        const covered = finished.tokens.slice(0, hashes.length * B);
        const match = await activeStore.matchPrefix(hashes, input.namespace);
        const held = new Set<string>(match.locations.map((l) => l.hash));
        // Far blocks are in the store by construction (pinned until now).
        const toPut = blocksToWriteBack(hashes.map((h, i) => i < finished.firstBlock || held.has(h)));
        await putBlocks(
          input,
          covered,
          hashes,
          toPut,
          (i) => finished.blocks[i - finished.firstBlock] as Uint8Array,
        );
      });
    };

    /**
     * A running sequence's link to the store: puts each block as it is sealed and, with a KV budget,
     * moves the oldest stored blocks out of the pool, pinned, to be attended to where they live.
     */
    let linked = 0;
    const linkSequence = (
      input: DecodeInput,
      promptHashes: readonly BlockHash[],
      handledBlocks: number,
      storedBlocks: number,
    ) => {
      const holder = `${nodeId}/${input.requestId ?? 'anonymous'}/${++linked}`;
      const hashes = [...promptHashes];
      const farHashes: BlockHash[] = [];
      let stored = storedBlocks;
      let handled = handledBlocks;
      let chain = Promise.resolve();
      let sequenceId: number | undefined;
      const budget = activeStore === undefined ? 0 : config.sequenceKvBlocksMax;
      const store = activeStore;
      const link = {
        farHashes,
        farAttention:
          budget === 0 || store === undefined
            ? undefined
            : {
                attend: (layer: number, query: Float32Array, blocks: number) => {
                  counts.farAttentionCalls++;
                  return store.partialAttention({
                    layer,
                    queryHeads: model.config.queryHeads,
                    headDim: model.config.headDim,
                    query,
                    hashes: farHashes.slice(0, blocks),
                    namespace: input.namespace,
                  });
                },
              },
        /** Pins `wanted` (the next blocks to leave the pool) for the sequence's life; false if any is missing. */
        async pinFar(wanted: readonly BlockHash[]): Promise<boolean> {
          if (store === undefined || wanted.length === 0) return true;
          const report = await store.pin(wanted, {
            namespace: input.namespace,
            ttlMs: FAR_PIN_TTL_MS,
            holder,
          });
          if (report.missing.length > 0) {
            await store.unpin(wanted, { namespace: input.namespace, holder }).catch(() => undefined);
            return false;
          }
          farHashes.push(...wanted);
          counts.farBlocks += wanted.length;
          return true;
        },
        start(id: number): void {
          sequenceId = id;
        },
        /** After each token: puts newly sealed blocks, then demotes what the budget asks. */
        advanced(): void {
          if (store === undefined || sequenceId === undefined) return;
          const id = sequenceId;
          let info;
          try {
            info = engine.sequenceInfo(id);
          } catch {
            return; // the sequence already left the engine; the final write-back covers it
          }
          if (info.fullBlocks <= handled) return;
          const from = handled;
          const to = info.fullBlocks;
          handled = to;
          const tokens = info.tokens.slice(0, to * B);
          link.hashesOf(tokens, to);
          const payloads = new Map<number, Uint8Array>();
          for (let i = from; i < to; i++) payloads.set(i, engine.exportBlock(id, i));
          const indices = [...payloads.keys()];
          chain = chain.then(() =>
            inBackground('block write-back', input, async () => {
              const acked = await putBlocks(
                input,
                tokens,
                hashes,
                indices,
                (i) => payloads.get(i) as Uint8Array,
              );
              while (stored < to && acked.has(hashes[stored] as string)) stored++;
              const count = blocksToDemote({
                farBlocks: farHashes.length,
                fullBlocks: to,
                storedBlocks: stored,
                budget,
              });
              if (count === 0) return;
              const first = farHashes.length;
              if (await link.pinFar(hashes.slice(first, first + count))) batcher.demote(id, count);
            }),
          );
        },
        /**
         * Hashes of the sequence's first `count` full blocks (`tokens` are its tokens); the known
         * chain is extended from its last hash, so each block is hashed once.
         */
        hashesOf(tokens: readonly number[], count: number): BlockHash[] {
          if (hashes.length < count) {
            const last = hashes.at(-1);
            hashes.push(
              ...computeBlockHashes(
                last === undefined ? seedOf(input) : blockHashToBytes(last),
                tokens.slice(hashes.length * B, count * B),
                B,
                kernels,
              ),
            );
          }
          return hashes.slice(0, count);
        },
        /** Releases the far pins once the sequence ended (in the background). */
        end(): void {
          if (store === undefined || farHashes.length === 0) return;
          const pinned = [...farHashes];
          void chain.then(() =>
            inBackground('unpin', input, async () => {
              await store.unpin(pinned, { namespace: input.namespace, holder });
            }),
          );
        },
      };
      return link;
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
      let link: ReturnType<typeof linkSequence> | undefined;
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
        // Local prefix cache first (no transfer), then the store for the blocks after it.
        const requested = blocksToFetch(input.blockHashes, hashes, tokens.length, B);
        const local = cache.match(hashes.slice(0, importableBlocks(tokens.length, B)));
        const fetchBegan = performance.now();
        const prefixBlocks = await fetchPrefix(requested.slice(local.length), input, local.length);
        fetchRate.record(prefixBlocks.length * B, performance.now() - fetchBegan);
        if (call.cancelled) return;
        counts.localCachedTokens += local.length * B;
        link = linkSequence(
          input,
          hashes,
          local.length + prefixBlocks.length,
          local.length > 0 ? 0 : prefixBlocks.length,
        );
        const budget = link.farAttention === undefined || local.length > 0 ? 0 : config.sequenceKvBlocksMax;
        let far = farBlocksAtAdmission(prefixBlocks.length, budget);
        if (far > 0 && !(await link.pinFar(hashes.slice(0, far)))) far = 0;
        if (call.cancelled) return;
        id = batcher.admit(
          {
            promptTokens: tokens,
            maxTokens: input.maxTokens,
            sampling: input.sampling,
            ...(input.stopTokenIds === undefined ? {} : { stopTokenIds: input.stopTokenIds }),
            prefixPoolBlocks: local,
            prefixBlocks: prefixBlocks.slice(far),
            ...(input.firstTokenId === undefined ? {} : { firstToken: input.firstTokenId }),
            ...(link.farAttention === undefined ? {} : { farBlocks: far, farAttention: link.farAttention }),
            topLogprobs: input.topLogprobs,
          },
          (event) => channel.push(event),
        );
        const sequenceId = id;
        link.start(sequenceId);
        const text = new TextStream(model.tokenizer, input.stop);
        let completionTokens = 0;
        for (;;) {
          const event = await channel.next();
          if (event === undefined) return; // cancelled
          if (event.kind === 'error') throw event.error;
          completionTokens++;
          counts.generatedTokens++;
          const delta = text.push(event.token);
          finished = event.finished ?? (delta.stopped ? batcher.finish(sequenceId) : undefined);
          const logprobs = input.logprobs ? [event.logprob] : [];
          const topLogprobs = event.top === undefined ? [] : [event.top];
          if (finished === undefined) {
            link.advanced();
            yield {
              tokenIds: [event.token],
              text: delta.text,
              logprobs,
              topLogprobs,
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
            topLogprobs,
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
        if (finished !== undefined && link !== undefined) {
          const hashes = link.hashesOf(finished.tokens, finished.firstBlock + finished.blocks.length);
          cacheFinished(finished, input, hashes);
          startWriteBack(finished, input, hashes);
        }
        link?.end();
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
          ...engine.measuredSpeeds,
          fetchMsPerToken: fetchRate.msPerUnit,
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
          localCacheBlocks: cache.size,
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
