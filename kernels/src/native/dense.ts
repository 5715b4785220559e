// Native dense kernels behind the facade. Arguments are checked by the same code as the reference
// (../dense-validate.ts) and handed to kernels/cpu/dense.cc as plain typed arrays; GEMM runs in
// OpenBLAS, prefill attention on the active ISA's KV kernels. Every call is synchronous and writes
// into the caller's arrays: the engine calls these from its worker thread.
import type { DenseKernels, PrefillAttentionArgs } from '../dense-types.ts';
import {
  checkElementwiseArgs,
  checkEmbedArgs,
  checkLogSoftmaxAtArgs,
  checkMatmulArgs,
  checkPrefillArgs,
  checkPrefixArgs,
  checkRmsNormArgs,
  checkRopeArgs,
  checkThreads,
} from '../dense-validate.ts';
import { ropeInvFreq } from '../rope.ts';
import { codecId } from '../validate.ts';

/** The functions kernels/cpu/dense.cc registers on the addon. Outputs are filled in place. */
export interface NativeDenseAddon {
  matmul(
    x: Float32Array,
    w: Float32Array,
    y: Float32Array,
    M: number,
    K: number,
    N: number,
    bias: Float32Array | null,
  ): void;
  blasSetThreads(threads: number): void;
  blasThreads(): number;
  rmsNorm(x: Float32Array, weight: Float32Array, eps: number, out: Float32Array): void;
  rope(x: Float32Array, positions: Int32Array, heads: number, headDim: number, invFreq: Float32Array): void;
  swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  embed(table: Float32Array, tokens: Uint32Array, out: Float32Array): void;
  add(a: Float32Array, b: Float32Array, out: Float32Array): void;
  argmax(x: Float32Array, n: number): number;
  logSoftmaxAt(x: Float32Array, n: number, index: number): number;
  /** Without past blocks: blockTokens and groupSize 0, empty codecs / sections / tokens. */
  prefillAttention(
    queryHeads: number,
    kvHeads: number,
    headDim: number,
    scale: number,
    queries: Float32Array,
    keys: Float32Array,
    values: Float32Array,
    out: Float32Array,
    blockTokens: number,
    groupSize: number,
    codecs: Int32Array,
    sections: Uint8Array[],
    tokens: Int32Array,
  ): void;
}

export function nativeDense(addon: NativeDenseAddon): DenseKernels {
  return {
    matmul(x, w, y, M, K, N, bias) {
      checkMatmulArgs(x, w, y, M, K, N, bias);
      addon.matmul(x, w, y, M, K, N, bias ?? null);
    },
    setThreads(threads) {
      addon.blasSetThreads(checkThreads(threads));
    },
    threads: () => addon.blasThreads(),
    rmsNorm(x, weight, eps, out) {
      checkRmsNormArgs(x, weight, eps, out);
      addon.rmsNorm(x, weight, eps, out);
    },
    rope(x, positions, heads, headDim, invFreq) {
      checkRopeArgs(x, positions, heads, headDim, invFreq);
      addon.rope(x, positions, heads, headDim, invFreq);
    },
    swiglu(gate, up, out) {
      checkElementwiseArgs('swiglu', ['gate', 'up'], gate, up, out);
      addon.swiglu(gate, up, out);
    },
    embed(table, tokens, out) {
      checkEmbedArgs(table, tokens, out);
      addon.embed(table, tokens, out);
    },
    add(a, b, out) {
      checkElementwiseArgs('add', ['a', 'b'], a, b, out);
      addon.add(a, b, out);
    },
    argmax(x, n) {
      checkPrefixArgs('argmax', x, n);
      return addon.argmax(x, n);
    },
    logSoftmaxAt(x, n, index) {
      checkLogSoftmaxAtArgs(x, n, index);
      return addon.logSoftmaxAt(x, n, index);
    },
    prefillAttention(args: PrefillAttentionArgs) {
      const a = checkPrefillArgs(args);
      addon.prefillAttention(
        a.queryHeads,
        a.kvHeads,
        a.headDim,
        a.scale,
        a.queries,
        a.keys,
        a.values,
        a.out,
        a.dims?.blockTokens ?? 0,
        a.dims?.groupSize ?? 0,
        Int32Array.from(a.codecs, codecId),
        a.sections,
        Int32Array.from(a.tokens),
      );
    },
    ropeInvFreq,
  };
}
