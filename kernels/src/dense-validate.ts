// Argument checks of the dense kernels, shared by the native and reference backends so both reject
// exactly the same inputs with the same InvalidArgumentError (message naming the offending value).
// Shapes are derived from array lengths where the contract leaves them implicit, and every derived
// size is re-checked by kernels/cpu/dense.cc before it touches memory. Values are not scanned
// (a GEMM's weights would cost as much to scan as to multiply); only indices (token ids,
// positions) are, since a bad index is an out-of-bounds read rather than a bad number.
import { InvalidArgumentError } from '@kvmesh/errors';

import type { PrefillAttentionArgs } from './dense-types.ts';
import type { CodecName, LayerDims } from './types.ts';
import { checkCodec, checkLayerDims, checkSection, HEAD_DIM_MAX, KV_HEADS_MAX } from './validate.ts';
import { checkInt } from './validate.ts';

/** Largest single dimension (rows, columns, tokens) a dense op takes. */
export const DENSE_DIM_MAX = 2 ** 30;
/** Largest RoPE position; 2^24 keeps every position exact in f32 as well as in double. */
export const ROPE_POSITION_MAX = 2 ** 24;
/** Largest chunk a prefillAttention call takes (the engine splits longer prompts). */
export const PREFILL_TOKENS_MAX = 16384;
/** Largest OpenBLAS thread count accepted by setThreads. */
export const THREADS_MAX = 1024;
/** prefillAttention head dims are multiples of this, like LayerDims.headDim (one AVX-512 vector). */
export const PREFILL_HEAD_DIM_MULTIPLE = 16;

function checkF32(op: string, name: string, value: unknown, length?: number, shape?: string): Float32Array {
  if (!(value instanceof Float32Array)) {
    throw new InvalidArgumentError(`${op}: ${name} must be a Float32Array, got ${describe(value)}`, {
      [name]: describe(value),
    });
  }
  if (length !== undefined && value.length !== length) {
    throw new InvalidArgumentError(
      `${op}: ${name} has ${value.length} elements, expected ${length}${shape ? ` (${shape})` : ''}`,
      { [`${name}Length`]: value.length, expected: length },
    );
  }
  return value;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}

type View = Float32Array | Int32Array | Uint32Array;

function overlaps(a: View, b: View): boolean {
  if (a.buffer !== b.buffer) return false;
  const a0 = a.byteOffset;
  const b0 = b.byteOffset;
  return a0 < b0 + b.byteLength && b0 < a0 + a.byteLength && a.byteLength > 0 && b.byteLength > 0;
}

function sameView(a: View, b: View): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.byteLength === b.byteLength;
}

/**
 * Rejects an output that overlaps an input, except that it may be exactly an input marked
 * `aliasOk` (elementwise and row-wise ops read each element before they write it).
 */
function checkOutput(op: string, outName: string, out: View, inputs: [string, View, boolean][]): void {
  for (const [name, input, aliasOk] of inputs) {
    if (!overlaps(out, input)) continue;
    if (aliasOk && sameView(out, input)) continue;
    const rule = aliasOk ? `must be ${name} itself or not overlap it` : `must not overlap ${name}`;
    throw new InvalidArgumentError(
      `${op}: ${outName} ${rule} (${outName} bytes [${out.byteOffset}, ${out.byteOffset + out.byteLength}), ` +
        `${name} bytes [${input.byteOffset}, ${input.byteOffset + input.byteLength}) of the same buffer)`,
      { output: outName, input: name },
    );
  }
}

export function checkThreads(threads: unknown): number {
  return checkInt('threads', threads, 1, THREADS_MAX);
}

export function checkMatmulArgs(
  x: Float32Array,
  w: Float32Array,
  y: Float32Array,
  M: number,
  K: number,
  N: number,
  bias: Float32Array | undefined,
): void {
  checkInt('M', M, 1, DENSE_DIM_MAX);
  checkInt('K', K, 1, DENSE_DIM_MAX);
  checkInt('N', N, 1, DENSE_DIM_MAX);
  checkF32('matmul', 'x', x, M * K, `M ${M} x K ${K}`);
  checkF32('matmul', 'w', w, N * K, `N ${N} x K ${K}`);
  checkF32('matmul', 'y', y, M * N, `M ${M} x N ${N}`);
  const inputs: [string, View, boolean][] = [
    ['x', x, false],
    ['w', w, false],
  ];
  if (bias !== undefined) {
    checkF32('matmul', 'bias', bias, N, `N ${N}`);
    inputs.push(['bias', bias, false]);
  }
  checkOutput('matmul', 'y', y, inputs);
}

/** Returns the row count M and row size H (= weight.length). */
export function checkRmsNormArgs(
  x: Float32Array,
  weight: Float32Array,
  eps: number,
  out: Float32Array,
): { M: number; H: number } {
  const H = checkF32('rmsNorm', 'weight', weight).length;
  checkInt('weight.length', H, 1, DENSE_DIM_MAX);
  checkF32('rmsNorm', 'x', x);
  if (x.length === 0 || x.length % H !== 0) {
    throw new InvalidArgumentError(
      `rmsNorm: x has ${x.length} elements, not a positive multiple of the weight length ${H}`,
      { xLength: x.length, hidden: H },
    );
  }
  checkF32('rmsNorm', 'out', out, x.length, 'same as x');
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps < 0) {
    throw new InvalidArgumentError(`rmsNorm: eps must be a finite number >= 0, got ${String(eps)}`, { eps });
  }
  checkOutput('rmsNorm', 'out', out, [
    ['x', x, true],
    ['weight', weight, false],
  ]);
  return { M: x.length / H, H };
}

/** Returns the token count T (= positions.length). */
export function checkRopeArgs(
  x: Float32Array,
  positions: Int32Array,
  heads: number,
  headDim: number,
  invFreq: Float32Array,
): { T: number } {
  checkInt('heads', heads, 1, DENSE_DIM_MAX);
  checkInt('headDim', headDim, 2, DENSE_DIM_MAX, 2);
  if (!(positions instanceof Int32Array)) {
    throw new InvalidArgumentError(`rope: positions must be an Int32Array, got ${describe(positions)}`, {
      positions: describe(positions),
    });
  }
  const T = positions.length;
  checkF32('rope', 'x', x, T * heads * headDim, `T ${T} x heads ${heads} x headDim ${headDim}`);
  checkF32('rope', 'invFreq', invFreq, headDim / 2, `headDim / 2 for headDim ${headDim}`);
  for (let t = 0; t < T; t++) {
    const p = positions[t] as number;
    if (p < 0 || p > ROPE_POSITION_MAX) {
      throw new InvalidArgumentError(`rope: positions[${t}] = ${p} is outside [0, ${ROPE_POSITION_MAX}]`, {
        index: t,
        position: p,
      });
    }
  }
  checkOutput('rope', 'x', x, [['invFreq', invFreq, false]]);
  return { T };
}

/** Shape checks of the elementwise two-input ops (swiglu, add); out may be either input. */
export function checkElementwiseArgs(
  op: string,
  names: [string, string],
  a: Float32Array,
  b: Float32Array,
  out: Float32Array,
): void {
  checkF32(op, names[0], a);
  checkF32(op, names[1], b, a.length, `same as ${names[0]}`);
  checkF32(op, 'out', out, a.length, `same as ${names[0]}`);
  checkOutput(op, 'out', out, [
    [names[0], a, true],
    [names[1], b, true],
  ]);
}

/** Returns T, the row size H (= out.length / T) and the vocabulary size V (= table.length / H). */
export function checkEmbedArgs(
  table: Float32Array,
  tokens: Uint32Array,
  out: Float32Array,
): { T: number; H: number; V: number } {
  if (!(tokens instanceof Uint32Array)) {
    throw new InvalidArgumentError(`embed: tokens must be a Uint32Array, got ${describe(tokens)}`, {
      tokens: describe(tokens),
    });
  }
  const T = checkInt('tokens.length', tokens.length, 1, DENSE_DIM_MAX);
  checkF32('embed', 'out', out);
  checkF32('embed', 'table', table);
  if (out.length === 0 || out.length % T !== 0) {
    throw new InvalidArgumentError(
      `embed: out has ${out.length} elements, not a positive multiple of the ${T} tokens`,
      { outLength: out.length, tokens: T },
    );
  }
  const H = out.length / T;
  if (table.length === 0 || table.length % H !== 0) {
    throw new InvalidArgumentError(
      `embed: table has ${table.length} elements, not a positive multiple of the row size ${H} (out.length / tokens)`,
      { tableLength: table.length, hidden: H },
    );
  }
  const V = table.length / H;
  for (let t = 0; t < T; t++) {
    const id = tokens[t] as number;
    if (id >= V) {
      throw new InvalidArgumentError(
        `embed: token id ${id} at index ${t} is out of range (vocabulary ${V})`,
        {
          index: t,
          token: id,
          vocab: V,
        },
      );
    }
  }
  checkOutput('embed', 'out', out, [
    ['table', table, false],
    ['tokens', tokens, false],
  ]);
  return { T, H, V };
}

export function checkPrefixArgs(op: string, x: Float32Array, n: number): void {
  checkF32(op, 'x', x);
  checkInt('n', n, 1, x.length);
}

export function checkLogSoftmaxAtArgs(x: Float32Array, n: number, index: number): void {
  checkPrefixArgs('logSoftmaxAt', x, n);
  checkInt('index', index, 0, n - 1);
}

/** prefillAttention arguments after checking, every default filled in. */
export interface CheckedPrefill {
  queryHeads: number;
  kvHeads: number;
  headDim: number;
  /** Chunk tokens. */
  T: number;
  scale: number;
  queries: Float32Array;
  keys: Float32Array;
  values: Float32Array;
  out: Float32Array;
  /** Past blocks; dims is undefined (and the lists empty) without a past. */
  dims: LayerDims | undefined;
  codecs: CodecName[];
  sections: Uint8Array[];
  tokens: number[];
}

export function checkPrefillArgs(args: PrefillAttentionArgs): CheckedPrefill {
  if (args === null || typeof args !== 'object') {
    throw new InvalidArgumentError(`prefillAttention: args must be an object, got ${String(args)}`, {});
  }
  const { queryHeads, kvHeads, headDim } = args;
  checkInt('kvHeads', kvHeads, 1, KV_HEADS_MAX);
  checkInt('queryHeads', queryHeads, 1, KV_HEADS_MAX * 64);
  checkInt('headDim', headDim, PREFILL_HEAD_DIM_MULTIPLE, HEAD_DIM_MAX, PREFILL_HEAD_DIM_MULTIPLE);
  if (queryHeads % kvHeads !== 0) {
    throw new InvalidArgumentError(
      `prefillAttention: queryHeads ${queryHeads} must be a multiple of kvHeads ${kvHeads}`,
      { queryHeads, kvHeads },
    );
  }
  const queries = checkF32('prefillAttention', 'queries', args.queries);
  const rowQ = queryHeads * headDim;
  if (queries.length === 0 || queries.length % rowQ !== 0) {
    throw new InvalidArgumentError(
      `prefillAttention: queries has ${queries.length} elements, not a positive multiple of ` +
        `queryHeads ${queryHeads} x headDim ${headDim} = ${rowQ}`,
      { queriesLength: queries.length, row: rowQ },
    );
  }
  const T = checkInt(
    'chunk tokens (queries.length / (queryHeads * headDim))',
    queries.length / rowQ,
    1,
    PREFILL_TOKENS_MAX,
  );
  const kvShape = `T ${T} x kvHeads ${kvHeads} x headDim ${headDim}`;
  const keys = checkF32('prefillAttention', 'keys', args.keys, T * kvHeads * headDim, kvShape);
  const values = checkF32('prefillAttention', 'values', args.values, T * kvHeads * headDim, kvShape);
  const out = checkF32(
    'prefillAttention',
    'out',
    args.out,
    T * rowQ,
    `T ${T} x queryHeads ${queryHeads} x headDim ${headDim}`,
  );
  checkOutput('prefillAttention', 'out', out, [
    ['queries', queries, false],
    ['keys', keys, false],
    ['values', values, false],
  ]);
  const scale = args.scale ?? 1 / Math.sqrt(headDim);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) {
    throw new InvalidArgumentError(`prefillAttention: scale must be a finite number, got ${String(scale)}`, {
      scale,
    });
  }
  const checked: CheckedPrefill = {
    queryHeads,
    kvHeads,
    headDim,
    T,
    scale,
    queries,
    keys,
    values,
    out,
    dims: undefined,
    codecs: [],
    sections: [],
    tokens: [],
  };
  const past = args.past;
  if (past === undefined) return checked;
  if (past === null || typeof past !== 'object' || !Array.isArray(past.blocks)) {
    throw new InvalidArgumentError('prefillAttention: past must be { dims, blocks: [] } or undefined', {
      past: describe(past),
    });
  }
  const dims = past.dims;
  checkLayerDims(dims);
  if (dims.kvHeads !== kvHeads || dims.headDim !== headDim) {
    throw new InvalidArgumentError(
      `prefillAttention: past dims (kvHeads ${dims.kvHeads}, headDim ${dims.headDim}) differ from the chunk's ` +
        `(kvHeads ${kvHeads}, headDim ${headDim})`,
      { pastKvHeads: dims.kvHeads, pastHeadDim: dims.headDim, kvHeads, headDim },
    );
  }
  checked.dims = dims;
  past.blocks.forEach((block, i) => {
    const codec = checkCodec(block.codec);
    checked.sections.push(checkSection(codec, dims, block.section, `past.blocks[${i}].section`));
    checked.codecs.push(codec);
    checked.tokens.push(
      checkInt(`past.blocks[${i}].tokens`, block.tokens ?? dims.blockTokens, 0, dims.blockTokens),
    );
  });
  return checked;
}
