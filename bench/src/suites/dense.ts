// Dense kernels of the model engine on engine-sized shapes. GEMM: GFLOP/s (2·M·K·N per call) of
// y = x·wᵀ through OpenBLAS for M = 1 (decode), 8 (small batch) and 512 (prefill chunk) tokens,
// K = 768 and N = 768 / 2048 / 8192 (attention projections, MLP, vocabulary-sized head), at 1 and 2
// OpenBLAS threads. Prefill attention: chunk tokens per second for a 512-token chunk with 12 query
// heads, 4 kv heads, head dim 64, over 0 and 1024 past tokens (64-token blocks, f32 and kivi4).
// Inputs are random normals drawn per run. Options: --seconds S (per measurement), --isa
// scalar|avx2|avx512 (prefill attention only; GEMM is OpenBLAS's own dispatch).

import {
  describeKernels,
  nativeIsaControl,
  nativeKernels,
  type AttentionBlock,
  type CodecName,
  type Kernels,
  type LayerDims,
} from '@kvmesh/kernels';

import type { BenchContext, BenchSuite } from '../main.ts';
import { numberOption, round, secondsPerCall, stringOption } from '../options.ts';

const MATMUL_K = 768;
const MATMUL_M = [1, 8, 512];
const MATMUL_N = [768, 2048, 8192];
const THREAD_COUNTS = [1, 2];
const PREFILL = { tokens: 512, queryHeads: 12, kvHeads: 4, headDim: 64, blockTokens: 64, groupSize: 32 };
const PAST_TOKENS = [0, 1024];
const PAST_CODECS: CodecName[] = ['f32', 'kivi4'];

function gaussian(): number {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

function normals(n: number, sd = 1): Float32Array {
  return Float32Array.from({ length: n }, () => gaussian() * sd);
}

function benchMatmul(
  kernels: Kernels,
  seconds: number,
  log: (line: string) => void,
): Record<string, unknown> {
  const results: Record<string, unknown> = {};
  const before = kernels.threads();
  try {
    for (const threads of THREAD_COUNTS) {
      kernels.setThreads(threads);
      const row: Record<string, number> = {};
      for (const N of MATMUL_N) {
        const w = normals(N * MATMUL_K, 0.05);
        for (const M of MATMUL_M) {
          const x = normals(M * MATMUL_K);
          const y = new Float32Array(M * N);
          const perCall = secondsPerCall(seconds, () => kernels.matmul(x, w, y, M, MATMUL_K, N));
          row[`M${M}xK${MATMUL_K}xN${N}`] = round((2 * M * MATMUL_K * N) / perCall / 1e9);
        }
      }
      results[`threads${kernels.threads()}`] = row;
      log(`matmul GFLOP/s at ${kernels.threads()} thread(s): ${JSON.stringify(row)}`);
    }
  } finally {
    kernels.setThreads(before);
  }
  return results;
}

function benchPrefill(
  kernels: Kernels,
  seconds: number,
  log: (line: string) => void,
): Record<string, unknown> {
  const { tokens: T, queryHeads, kvHeads, headDim: D, blockTokens, groupSize } = PREFILL;
  const dims: LayerDims = { kvHeads, blockTokens, headDim: D, groupSize };
  const queries = normals(T * queryHeads * D);
  const keys = normals(T * kvHeads * D, 1.5);
  const values = normals(T * kvHeads * D);
  const out = new Float32Array(T * queryHeads * D);
  const results: Record<string, number> = {};
  for (const pastTokens of PAST_TOKENS) {
    for (const codec of pastTokens === 0 ? (['f32'] as CodecName[]) : PAST_CODECS) {
      const blocks: AttentionBlock[] = Array.from({ length: pastTokens / blockTokens }, () => {
        const n = kvHeads * blockTokens * D;
        return { codec, section: kernels.encodeLayer(codec, dims, normals(n, 1.5), normals(n)) };
      });
      const past = blocks.length > 0 ? { dims, blocks } : undefined;
      const perCall = secondsPerCall(seconds, () =>
        kernels.prefillAttention({ queryHeads, kvHeads, headDim: D, queries, keys, values, past, out }),
      );
      const key = pastTokens === 0 ? 'past0' : `past${pastTokens}_${codec}`;
      results[key] = round(T / perCall);
      log(`prefillAttention ${key}: ${results[key]} tokens/s`);
    }
  }
  return { shape: PREFILL, tokensPerSecond: results };
}

async function run(ctx: BenchContext): Promise<Record<string, unknown>> {
  const native = nativeKernels();
  if (!native) throw new Error(`dense bench needs the native kernels: ${describeKernels().detail}`);
  const isaWanted = stringOption(ctx.args, 'isa');
  if (isaWanted !== undefined && !nativeIsaControl()?.set(isaWanted)) {
    throw new Error(`--isa ${isaWanted} is not supported on this CPU`);
  }
  const seconds = numberOption(ctx.args, 'seconds', 0.5);
  return {
    isa: native.isa(),
    matmulGflops: benchMatmul(native, seconds, ctx.log),
    prefillAttention: benchPrefill(native, seconds, ctx.log),
  };
}

export const suite: BenchSuite = {
  name: 'dense',
  description: 'Dense kernels: OpenBLAS GEMM GFLOP/s on engine shapes, prefill attention tokens/s',
  run,
};
