// Plain TypeScript dense kernels: the ground truth the native ones are compared against. Sums,
// norms, angles and softmaxes are taken in double precision and rounded to f32 once at the end, so
// they share no rounding order with the native code. Written for clarity, not speed.
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
import { referenceCodec } from './codec.ts';

function matmul(
  x: Float32Array,
  w: Float32Array,
  y: Float32Array,
  M: number,
  K: number,
  N: number,
  bias?: Float32Array,
): void {
  checkMatmulArgs(x, w, y, M, K, N, bias);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias === undefined ? 0 : (bias[n] as number);
      for (let k = 0; k < K; k++) s += (x[m * K + k] as number) * (w[n * K + k] as number);
      y[m * N + n] = s;
    }
  }
}

function rmsNorm(x: Float32Array, weight: Float32Array, eps: number, out: Float32Array): void {
  const { M, H } = checkRmsNormArgs(x, weight, eps, out);
  for (let m = 0; m < M; m++) {
    let sumSq = 0;
    for (let i = 0; i < H; i++) sumSq += (x[m * H + i] as number) ** 2;
    const inv = 1 / Math.sqrt(sumSq / H + eps);
    for (let i = 0; i < H; i++) out[m * H + i] = (x[m * H + i] as number) * inv * (weight[i] as number);
  }
}

function rope(
  x: Float32Array,
  positions: Int32Array,
  heads: number,
  headDim: number,
  invFreq: Float32Array,
): void {
  const { T } = checkRopeArgs(x, positions, heads, headDim, invFreq);
  const half = headDim / 2;
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = (positions[t] as number) * (invFreq[i] as number);
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const at = (t * heads + h) * headDim + i;
        const x0 = x[at] as number;
        const x1 = x[at + half] as number;
        x[at] = x0 * c - x1 * s;
        x[at + half] = x1 * c + x0 * s;
      }
    }
  }
}

function swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void {
  checkElementwiseArgs('swiglu', ['gate', 'up'], gate, up, out);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i] as number;
    out[i] = (g / (1 + Math.exp(-g))) * (up[i] as number);
  }
}

function embed(table: Float32Array, tokens: Uint32Array, out: Float32Array): void {
  const { T, H } = checkEmbedArgs(table, tokens, out);
  for (let t = 0; t < T; t++) {
    const row = tokens[t] as number;
    for (let i = 0; i < H; i++) out[t * H + i] = table[row * H + i] as number;
  }
}

function add(a: Float32Array, b: Float32Array, out: Float32Array): void {
  checkElementwiseArgs('add', ['a', 'b'], a, b, out);
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) + (b[i] as number);
}

function argmax(x: Float32Array, n: number): number {
  checkPrefixArgs('argmax', x, n);
  let best = 0;
  for (let i = 1; i < n; i++) if ((x[i] as number) > (x[best] as number)) best = i;
  return best;
}

function logSoftmaxAt(x: Float32Array, n: number, index: number): number {
  checkLogSoftmaxAtArgs(x, n, index);
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, x[i] as number);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp((x[i] as number) - max);
  return (x[index] as number) - max - Math.log(sum);
}

/** Two-pass softmax per (token, query head) over the decoded past then the causal chunk prefix. */
function prefillAttention(args: PrefillAttentionArgs): void {
  const a = checkPrefillArgs(args);
  const { queryHeads: QH, kvHeads: KVH, headDim: D, T } = a;
  const headsPerKv = QH / KVH;
  // Past K/V rows as [kv head] -> list of D-float rows, in token order.
  const pastK: Float32Array[][] = Array.from({ length: KVH }, () => []);
  const pastV: Float32Array[][] = Array.from({ length: KVH }, () => []);
  if (a.dims !== undefined) {
    const B = a.dims.blockTokens;
    a.sections.forEach((section, bi) => {
      const { k, v } = referenceCodec.decodeLayer(a.codecs[bi]!, a.dims!, section);
      for (let kv = 0; kv < KVH; kv++) {
        for (let t = 0; t < a.tokens[bi]!; t++) {
          pastK[kv]!.push(k.subarray((kv * B + t) * D, (kv * B + t + 1) * D));
          pastV[kv]!.push(v.subarray((kv * B + t) * D, (kv * B + t + 1) * D));
        }
      }
    });
  }
  const result = new Float32Array(a.out.length);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < QH; h++) {
      const kv = Math.floor(h / headsPerKv);
      const q = a.queries.subarray((t * QH + h) * D, (t * QH + h + 1) * D);
      const keys = [...pastK[kv]!];
      const values = [...pastV[kv]!];
      for (let s = 0; s <= t; s++) {
        keys.push(a.keys.subarray((s * KVH + kv) * D, (s * KVH + kv + 1) * D));
        values.push(a.values.subarray((s * KVH + kv) * D, (s * KVH + kv + 1) * D));
      }
      const scores = keys.map((k) => {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += (q[d] as number) * (k[d] as number);
        return dot * a.scale;
      });
      const max = scores.reduce((m, s) => Math.max(m, s), -Infinity);
      const acc = new Float64Array(D);
      let sum = 0;
      scores.forEach((score, i) => {
        const p = Math.exp(score - max);
        sum += p;
        const v = values[i]!;
        for (let d = 0; d < D; d++) acc[d]! += p * (v[d] as number);
      });
      for (let d = 0; d < D; d++) result[(t * QH + h) * D + d] = acc[d]! / sum;
    }
  }
  a.out.set(result);
}

export const referenceDense: DenseKernels = {
  matmul,
  setThreads(threads: number) {
    // NOTE: the reference is single-threaded; the setting is checked like the native one and ignored.
    checkThreads(threads);
  },
  threads: () => 1,
  rmsNorm,
  rope,
  swiglu,
  embed,
  add,
  argmax,
  logSoftmaxAt,
  prefillAttention,
  ropeInvFreq,
};
