// The kv-aware cost model's rates, derived from the served model and the deployment's measured
// speeds instead of fixed constants: fetching a cached token moves its KV bytes (a function of
// layers, kv heads, head dim and codec) at the bandwidth of the tier it lives in, and computing a
// token costs about 2 FLOPs per weight at the workers' throughput. Pure; the router feeds it the
// model's shape and its config.
import type { RoutingConfig } from './config.ts';

export interface ModelShapeForCosts {
  readonly layers: number;
  readonly hiddenSize: number;
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  readonly vocabSize: number;
  readonly tiedEmbeddings: boolean;
}

export interface DeploymentSpeeds {
  /** KV bytes one token occupies in the deployment's codec, over all layers. */
  readonly kvBytesPerToken: number;
  /** Bandwidth of a block fetch from a copy in DRAM, far memory and SSD (GB/s, 10^9 bytes). */
  readonly storeGBps: number;
  readonly farGBps: number;
  readonly ssdGBps: number;
  /** Sustained dense throughput of one worker (GFLOP/s). */
  readonly workerGflops: number;
}

/** Weights of a Llama-family model (embeddings, attention, MLP, norms, LM head unless tied). */
export function modelParameters(m: ModelShapeForCosts): number {
  const qDim = m.queryHeads * m.headDim;
  const kvDim = m.kvHeads * m.headDim;
  const perLayer =
    m.hiddenSize * (qDim + 2 * kvDim) + qDim * m.hiddenSize + 3 * m.hiddenSize * m.intermediateSize;
  const embeddings = m.vocabSize * m.hiddenSize * (m.tiedEmbeddings ? 1 : 2);
  return embeddings + m.layers * (perLayer + 2 * m.hiddenSize) + m.hiddenSize;
}

/** Per-token rates (ms) for the cost model. */
export function derivedCosts(
  model: ModelShapeForCosts,
  speeds: DeploymentSpeeds,
): Required<
  Pick<
    RoutingConfig,
    'prefillMsPerToken' | 'transferMsPerToken' | 'farTransferMsPerToken' | 'ssdTransferMsPerToken'
  >
> {
  const msPerToken = (gbps: number): number => (speeds.kvBytesPerToken / (gbps * 1e9)) * 1e3;
  return {
    prefillMsPerToken: ((2 * modelParameters(model)) / (speeds.workerGflops * 1e9)) * 1e3,
    transferMsPerToken: msPerToken(speeds.storeGBps),
    farTransferMsPerToken: msPerToken(speeds.farGBps),
    ssdTransferMsPerToken: msPerToken(speeds.ssdGBps),
  };
}
