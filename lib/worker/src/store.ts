// Process plumbing both workers share: their node id, logger, kernels and model; and the NATS connection plus block-store client a worker opens when it is given a
// NATS URL. Without one (or when a test
// injects its own store) the worker runs without the store and says so.
import { loadModel, type LoadedModel } from '@kvmesh/engine';
import { loadKernels, type Kernels } from '@kvmesh/kernels';
import type { BlockHash, ModelFingerprint, Namespace, NodeId } from '@kvmesh/protocol';
import type { CleanupStack } from '@kvmesh/runtime';
import {
  connectNats,
  createLogger,
  isLogLevel,
  usableCpus,
  type Logger,
  type NatsConnection,
} from '@kvmesh/runtime';
import { KvStoreClient, type BlockInput } from '@kvmesh/sdk';

import { resolveWorkerNodeId } from './config.ts';

export interface WorkerStoreConfig {
  natsUrl: string;
  replicas: number;
  dataToken: string;
  storeTimeoutMs: number;
  storeHeartbeatIntervalMs: number;
  storeMissedHeartbeatsMax: number;
  storeNodesMin: number;
  storeConnectTimeoutMs: number;
}

/**
 * Connects NATS (when configured) and, unless `store` is given, a KvStoreClient discovering the
 * kvstore nodes through it. Both are closed by `cleanups`.
 */
export async function connectWorkerStore<S>(
  config: WorkerStoreConfig,
  options: { nodeId: string; kernels: Kernels; store: S | undefined; cleanups: CleanupStack },
): Promise<{ nc: NatsConnection | undefined; store: S | KvStoreClient | undefined }> {
  if (config.natsUrl.trim() === '') return { nc: undefined, store: options.store };
  const nc = await connectNats({
    servers: config.natsUrl.split(',').map((s) => s.trim()),
    name: options.nodeId,
  });
  options.cleanups.push(() => nc.close());
  if (options.store !== undefined) return { nc, store: options.store };
  const client = await KvStoreClient.connect({
    nats: nc,
    replicas: config.replicas,
    ...(config.dataToken === '' ? {} : { dataToken: config.dataToken }),
    timeoutMs: config.storeTimeoutMs,
    heartbeatIntervalMs: config.storeHeartbeatIntervalMs,
    missedHeartbeatsMax: config.storeMissedHeartbeatsMax,
    waitForNodes: config.storeNodesMin,
    connectTimeoutMs: config.storeConnectTimeoutMs,
    name: options.nodeId,
    kernels: options.kernels,
  });
  options.cleanups.push(() => client.close());
  return { nc, store: client };
}

export interface WorkerBasics {
  nodeId: NodeId;
  logger: Logger;
  kernels: Kernels;
  model: LoadedModel;
  /** The configured context bound, capped by the model's (0 = the model's). */
  maxContextTokens: number;
}

/** Node id, logger, kernels and model of a worker (injected ones win), and its context bound. */
export function workerBasics(
  role: string,
  config: { nodeId: string; logLevel: string; modelDir: string; maxContextTokens: number; threads: number },
  options: { logger?: Logger; kernels?: Kernels; model?: LoadedModel },
): WorkerBasics {
  const nodeId = resolveWorkerNodeId(role, config.nodeId);
  const logger =
    options.logger ??
    createLogger({ service: role, nodeId, level: isLogLevel(config.logLevel) ? config.logLevel : 'info' });
  const kernels = options.kernels ?? loadKernels();
  // NOTE: a process-wide setting; injected kernels (tests, in-process workers) keep theirs unless asked.
  if (config.threads > 0) kernels.setThreads(config.threads);
  else if (options.kernels === undefined) kernels.setThreads(usableCpus());
  const model = options.model ?? loadModel(config.modelDir, kernels);
  const maxContextTokens =
    config.maxContextTokens > 0
      ? Math.min(config.maxContextTokens, model.config.maxContextTokens)
      : model.config.maxContextTokens;
  return { nodeId, logger, kernels, model, maxContextTokens };
}

/** A prompt's full blocks as both workers store them: chain hashes computed once, over its tokens. */
export interface PromptBlocks {
  readonly hashes: readonly BlockHash[];
  readonly tokens: readonly number[];
  readonly blockTokens: number;
  readonly namespace: Namespace;
  readonly modelFingerprint: ModelFingerprint;
}

/** Put inputs for blocks `indices` of `prompt` (block i's parent is block i - 1; the first has none). */
export function promptBlockInputs(
  prompt: PromptBlocks,
  indices: readonly number[],
  payloadOf: (index: number) => Uint8Array,
): BlockInput[] {
  const { hashes, tokens, blockTokens: B } = prompt;
  return indices.map((i) => ({
    hash: hashes[i] as BlockHash,
    parentHash: i === 0 ? null : (hashes[i - 1] as BlockHash),
    namespace: prompt.namespace,
    modelFingerprint: prompt.modelFingerprint,
    tokenIds: tokens.slice(i * B, (i + 1) * B),
    payload: payloadOf(i),
  }));
}
