// The contract of the dense kernels the Llama-family engine runs between attention calls: GEMM,
// RMSNorm, RoPE, SwiGLU, embedding gather, residual add, argmax / log-softmax, and the causal
// attention of a prefill chunk over earlier blocks. Everything is f32 and row-major, and every op
// writes into arrays the caller owns (the engine preallocates them), so the hot path allocates nothing.
import type { AttentionBlock, LayerDims } from './shapes.ts';

/** RoPE frequency scaling as stored in a Hugging Face config.json `rope_scaling`. */
export type RopeScaling =
  | { kind: 'none' }
  | { kind: 'linear'; factor: number }
  | {
      kind: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      /** `original_max_position_embeddings`. */
      originalContextTokens: number;
    };

export interface RopeConfig {
  headDim: number;
  /** `rope_theta` (base of the frequencies). */
  theta: number;
  /** Default: none. */
  scaling?: RopeScaling;
}

/** The K/V of earlier tokens, as encoded blocks of one layer (any codec, mixed allowed). */
export interface PrefillPast {
  dims: LayerDims;
  blocks: readonly AttentionBlock[];
}

export interface PrefillAttentionArgs {
  queryHeads: number;
  kvHeads: number;
  /** A multiple of 16 in [16, 512], like LayerDims.headDim. */
  headDim: number;
  /** Multiplier on q·k before the softmax; default 1/sqrt(headDim). */
  scale?: number;
  /** f32 [T][queryHeads][headDim] of the chunk's tokens (after RoPE). */
  queries: Float32Array;
  /** f32 [T][kvHeads][headDim] of the chunk's tokens (after RoPE). */
  keys: Float32Array;
  /** f32 [T][kvHeads][headDim]. */
  values: Float32Array;
  /** Blocks of the tokens before the chunk; every chunk token attends to all of them. */
  past?: PrefillPast | undefined;
  /** f32 [T][queryHeads][headDim], written; must not overlap the inputs. */
  out: Float32Array;
}

/**
 * Dense kernels. Outputs are filled in place; an op whose doc says "may alias" accepts its output
 * being exactly one of the named inputs (same buffer, offset and length) and rejects any other overlap.
 */
export interface DenseKernels {
  /**
   * y = x · wᵀ (+ bias): x [M][K], w [N][K] (Hugging Face Linear layout, out × in), y [M][N],
   * bias [N]. y must not overlap x, w or bias.
   */
  matmul(
    x: Float32Array,
    w: Float32Array,
    y: Float32Array,
    M: number,
    K: number,
    N: number,
    bias?: Float32Array,
  ): void;
  /** Threads matmul may use (OpenBLAS in the native build; the reference always uses 1). */
  setThreads(threads: number): void;
  threads(): number;

  /** out = x / sqrt(mean(x²) + eps) ⊙ weight per row: x [M][H], weight [H], out [M][H] (may alias x). */
  rmsNorm(x: Float32Array, weight: Float32Array, eps: number, out: Float32Array): void;
  /**
   * Rotates x [T][heads][headDim] in place, Hugging Face "rotate_half" convention: channel i pairs
   * with i + headDim/2 and turns by positions[t] · invFreq[i] (invFreq [headDim/2], see ropeInvFreq).
   */
  rope(x: Float32Array, positions: Int32Array, heads: number, headDim: number, invFreq: Float32Array): void;
  /** out = silu(gate) ⊙ up: all [M][I] (out may alias gate or up). */
  swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  /** out[t] = table[tokens[t]]: table [V][H], out [T][H] (H = out.length / T), ids checked < V. */
  embed(table: Float32Array, tokens: Uint32Array, out: Float32Array): void;
  /** out = a + b (out may alias a or b). */
  add(a: Float32Array, b: Float32Array, out: Float32Array): void;
  /** Index of the largest of x[0, n) (the first on ties; NaN never wins over a number after it). */
  argmax(x: Float32Array, n: number): number;
  /** log softmax(x[0, n))[index], computed stably (log-sum-exp around the max). */
  logSoftmaxAt(x: Float32Array, n: number, index: number): number;

  /**
   * Attention of a chunk of T new tokens: token t sees every past token and chunk tokens 0..t
   * (past tokens precede the chunk); query head h reads kv head floor(h / (queryHeads / kvHeads)).
   */
  prefillAttention(args: PrefillAttentionArgs): void;

  /** RoPE inverse frequencies [headDim/2] for rope() (the same TypeScript helper in both backends). */
  ropeInvFreq(config: RopeConfig): Float32Array;
}
