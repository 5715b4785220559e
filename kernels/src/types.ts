// The contract of the kernel facade: one interface implemented twice, by the native module and by
// the plain TypeScript reference. Services depend only on this; tests compare the two.
//
// Layout conventions (see lib/block/spec/ for the payload and codec formats):
// - One *layer section* holds a block's K and V for one layer, all kv heads, in one codec.
// - Logical K and V inputs/outputs are f32 `[kvHeads][blockTokens][headDim]`, row-major.
// - Queries are f32 `[queryHeads][headDim]`; query head h reads kv head floor(h / (queryHeads / kvHeads)).

import type { DenseKernels } from './dense-types.ts';
import type { AttentionBlock, CodecName, LayerDims } from './shapes.ts';

export * from './shapes.ts';

export interface AttentionArgs {
  dims: LayerDims;
  queryHeads: number;
  /** f32 [queryHeads][headDim]. */
  query: Float32Array;
  /** Multiplier on q·k before the softmax; default 1/sqrt(headDim). */
  scale?: number;
  blocks: readonly AttentionBlock[];
}

/**
 * Partial attention of every query head over some set of tokens: `o` is the softmax-weighted mean of
 * V over those tokens ([queryHeads][headDim], already normalised by `l`), `m` the max scaled score
 * and `l` the sum of exp(score - m), per query head. Over no tokens: o = 0, m = -Infinity, l = 0.
 */
export interface PartialAttention {
  o: Float32Array;
  m: Float32Array;
  l: Float32Array;
}

export type KernelBackend = 'native' | 'reference';

export interface Kernels extends DenseKernels {
  readonly backend: KernelBackend;
  /** Instruction set in use ('avx512' | 'avx2' | 'scalar' for native, 'ts' for the reference). */
  isa(): string;

  /** XXH3-128 of `data` with seed 0, as 16 bytes in canonical (big-endian) order. */
  hash128(data: Uint8Array): Uint8Array;
  /**
   * Chained block hashes (spec v1): hash[0] = H(seed ‖ tokens[0..B) u32le), hash[i] = H(hash[i-1] ‖ tokens…).
   * Only full blocks are hashed; returns floor(tokens.length / blockTokens) * 16 bytes.
   */
  blockHashes(seed: Uint8Array, tokens: Uint32Array, blockTokens: number): Uint8Array;

  /** Bytes of one layer section in `codec`. */
  sectionBytes(codec: CodecName, dims: LayerDims): number;
  /** Encodes one layer's K and V (f32 [kvHeads][blockTokens][headDim] each) into a section. */
  encodeLayer(codec: CodecName, dims: LayerDims, k: Float32Array, v: Float32Array): Uint8Array;
  /** Decodes one layer section back to f32 K and V. */
  decodeLayer(codec: CodecName, dims: LayerDims, section: Uint8Array): { k: Float32Array; v: Float32Array };

  /** Attention of one decode query over blocks, reading each block's codec directly. */
  attention(args: AttentionArgs): PartialAttention;
  /** Same as attention(), computed off the JS thread. */
  attentionAsync(args: AttentionArgs): Promise<PartialAttention>;
  /** Exact merge of partial results over disjoint token sets. */
  mergePartials(parts: readonly PartialAttention[], queryHeads: number, headDim: number): PartialAttention;
}
