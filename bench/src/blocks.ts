// The blocks the store and tier suites move: 256 KiB of KV each (payload format v1, random f32 in
// one shared payload), with their own token ids and so their own hashes. One definition, so the two
// suites measure the same bytes.
import { blockSeed, computeBlockHashBytes, encodeBlockPayload, type BlockDims } from '@kvmesh/block';
import type { Kernels } from '@kvmesh/kernels';
import {
  blockHashFromBytes,
  parseModelFingerprint,
  parseNamespace,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';

// 2 layers × 4 kv heads × 64 tokens × 64 dims × (K + V) × f32 = 262,144 bytes of KV per block.
export const BENCH_DIMS: BlockDims = { layers: 2, kvHeads: 4, blockTokens: 64, headDim: 64, groupSize: 32 };
export const BENCH_KV_BYTES =
  2 * BENCH_DIMS.layers * BENCH_DIMS.kvHeads * BENCH_DIMS.blockTokens * BENCH_DIMS.headDim * 4;
const NAMESPACE = parseNamespace('');

export interface BenchBlock {
  readonly hash: BlockHash;
  readonly parentHash: null;
  readonly namespace: Namespace;
  readonly modelFingerprint: ModelFingerprint;
  readonly tokenIds: Uint32Array;
  readonly payload: Uint8Array;
}

/** Block factory of one suite: its fingerprint (hex) keeps its blocks apart from other suites'. */
export function benchBlocks(
  kernels: Kernels,
  fingerprintHex: string,
): { payload: Uint8Array; block: (i: number) => BenchBlock } {
  const modelFingerprint = parseModelFingerprint(fingerprintHex);
  const floats = BENCH_KV_BYTES / (8 * BENCH_DIMS.layers);
  const payload = encodeBlockPayload(
    kernels,
    'f32',
    BENCH_DIMS,
    Array.from({ length: BENCH_DIMS.layers }, () => ({
      k: Float32Array.from({ length: floats }, () => Math.random() - 0.5),
      v: Float32Array.from({ length: floats }, () => Math.random() - 0.5),
    })),
  );
  const seed = blockSeed({ modelFingerprint, blockTokens: BENCH_DIMS.blockTokens, namespace: NAMESPACE });
  const block = (i: number): BenchBlock => {
    // Block i: its own first-block token ids, so its own hash.
    const tokens = new Uint32Array(BENCH_DIMS.blockTokens);
    for (let t = 0; t < tokens.length; t++) tokens[t] = (i * 7919 + t * 104729) >>> 0;
    tokens[0] = i >>> 0;
    tokens[1] = Math.floor(i / 2 ** 32);
    return {
      hash: blockHashFromBytes(computeBlockHashBytes(seed, tokens, BENCH_DIMS.blockTokens)),
      parentHash: null,
      namespace: NAMESPACE,
      modelFingerprint,
      tokenIds: tokens,
      payload,
    };
  };
  return { payload, block };
}
