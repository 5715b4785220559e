// Argument checks and section layout shared by the native and reference codec/attention kernels, so
// both backends reject exactly the same inputs with the same InvalidArgumentError (message naming the
// offending value). The layout functions here are the single TS statement of lib/block/spec/codecs-v1.md;
// kernels/cpu/kv_layout.h mirrors them and the C++ side re-checks every size.
import { InvalidArgumentError } from '@kvmesh/errors';

import {
  CODEC_IDS,
  CODEC_NAMES,
  type AttentionArgs,
  type CodecName,
  type LayerDims,
  type PartialAttention,
} from './types.ts';

export const KV_HEADS_MAX = 1024;
export const BLOCK_TOKENS_MAX = 256;
export const HEAD_DIM_MAX = 512;
/** Block tokens and head dim must be multiples of this (one AVX-512 vector of f32). */
export const DIM_MULTIPLE = 16;
export const GROUP_SIZES: readonly number[] = [16, 32, 64, 128];
/** Largest finite f16; f16 and kivi codecs store values (and scales, zeros) as f16. */
export const F16_MAX = 65504;
export const F32_MAX = 3.4028234663852886e38;

/** Bits per stored code of a KIVI codec, or 0 for the raw codecs. */
export function codecBits(codec: CodecName): number {
  switch (codec) {
    case 'kivi8':
      return 8;
    case 'kivi4':
      return 4;
    case 'kivi2':
      return 2;
    default:
      return 0;
  }
}

export function checkCodec(codec: unknown): CodecName {
  if (typeof codec !== 'string' || !(CODEC_NAMES as readonly string[]).includes(codec)) {
    throw new InvalidArgumentError(
      `unknown codec ${JSON.stringify(codec)} (known: ${CODEC_NAMES.join(', ')})`,
      {
        codec,
      },
    );
  }
  return codec as CodecName;
}

export function codecId(codec: CodecName): number {
  return CODEC_IDS[codec];
}

/** An integer in [min, max] (and a multiple of `multiple`), or an InvalidArgumentError naming it. */
export function checkInt(name: string, value: unknown, min: number, max: number, multiple = 1): number {
  if (
    typeof value !== 'number' ||
    !Number.isInteger(value) ||
    value < min ||
    value > max ||
    value % multiple !== 0
  ) {
    const rule =
      multiple > 1 ? `a multiple of ${multiple} in [${min}, ${max}]` : `an integer in [${min}, ${max}]`;
    throw new InvalidArgumentError(`${name} must be ${rule}, got ${String(value)}`, { [name]: value });
  }
  return value;
}

/** Checks one layer's dims: B and D multiples of 16, G in {16,32,64,128} dividing both. */
export function checkLayerDims(dims: LayerDims): void {
  if (dims === null || typeof dims !== 'object') {
    throw new InvalidArgumentError(`dims must be an object, got ${String(dims)}`, { dims });
  }
  checkInt('kvHeads', dims.kvHeads, 1, KV_HEADS_MAX);
  checkInt('blockTokens', dims.blockTokens, DIM_MULTIPLE, BLOCK_TOKENS_MAX, DIM_MULTIPLE);
  checkInt('headDim', dims.headDim, DIM_MULTIPLE, HEAD_DIM_MAX, DIM_MULTIPLE);
  const g = dims.groupSize;
  if (!GROUP_SIZES.includes(g)) {
    throw new InvalidArgumentError(`groupSize must be one of ${GROUP_SIZES.join(', ')}, got ${String(g)}`, {
      groupSize: g,
    });
  }
  if (dims.blockTokens % g !== 0 || dims.headDim % g !== 0) {
    throw new InvalidArgumentError(
      `groupSize ${g} must divide blockTokens ${dims.blockTokens} and headDim ${dims.headDim}`,
      { groupSize: g, blockTokens: dims.blockTokens, headDim: dims.headDim },
    );
  }
}

/**
 * Byte offsets of the parts of one layer section (see codecs-v1.md). For f32/f16 only kCodes (K) and
 * vCodes (V) are used. Rows: a K code row is one channel over B tokens, a V code row one token over D channels.
 */
export interface SectionLayout {
  bits: number;
  kCodes: number;
  kScales: number;
  kZeros: number;
  vCodes: number;
  vScales: number;
  vZeros: number;
  kRowBytes: number;
  vRowBytes: number;
  totalBytes: number;
}

/** Layout of a section; assumes codec and dims are already checked. */
export function sectionLayout(codec: CodecName, dims: LayerDims): SectionLayout {
  const { kvHeads: kvh, blockTokens: b, headDim: d, groupSize: g } = dims;
  const elements = kvh * b * d;
  if (codec === 'f32' || codec === 'f16') {
    const eltBytes = codec === 'f32' ? 4 : 2;
    const half = elements * eltBytes;
    return {
      bits: eltBytes * 8,
      kCodes: 0,
      kScales: half,
      kZeros: half,
      vCodes: half,
      vScales: 2 * half,
      vZeros: 2 * half,
      kRowBytes: d * eltBytes,
      vRowBytes: d * eltBytes,
      totalBytes: 2 * half,
    };
  }
  const bits = codecBits(codec);
  const codeBytes = (elements * bits) / 8;
  const kScaleBytes = kvh * (b / g) * d * 2;
  const vScaleBytes = kvh * (d / g) * b * 2;
  const kScales = codeBytes;
  const kZeros = kScales + kScaleBytes;
  const vCodes = kZeros + kScaleBytes;
  const vScales = vCodes + codeBytes;
  const vZeros = vScales + vScaleBytes;
  return {
    bits,
    kCodes: 0,
    kScales,
    kZeros,
    vCodes,
    vScales,
    vZeros,
    kRowBytes: (b * bits) / 8,
    vRowBytes: (d * bits) / 8,
    totalBytes: vZeros + vScaleBytes,
  };
}

export function checkedSectionBytes(codec: CodecName, dims: LayerDims): number {
  checkCodec(codec);
  checkLayerDims(dims);
  return sectionLayout(codec, dims).totalBytes;
}

/** Largest magnitude a codec stores: f32 takes any finite value, the others are bounded by f16. */
export function valueLimit(codec: CodecName): number {
  return codec === 'f32' ? F32_MAX : F16_MAX;
}

function checkF32Array(name: string, value: unknown, length: number): Float32Array {
  if (!(value instanceof Float32Array)) {
    throw new InvalidArgumentError(`${name} must be a Float32Array`, { [name]: typeof value });
  }
  if (value.length !== length) {
    throw new InvalidArgumentError(`${name} has ${value.length} elements, expected ${length}`, {
      [`${name}Length`]: value.length,
      expected: length,
    });
  }
  return value;
}

/** Shape checks of encodeLayer (values are scanned separately, by C++ in the native backend). */
export function checkEncodeArgs(codec: CodecName, dims: LayerDims, k: Float32Array, v: Float32Array): void {
  checkCodec(codec);
  checkLayerDims(dims);
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  checkF32Array('k', k, n);
  checkF32Array('v', v, n);
}

/** Index of the first element that is not finite or exceeds `limit` in magnitude, or -1. */
export function findBadValue(values: Float32Array, limit: number): number {
  for (let i = 0; i < values.length; i++) {
    // NOTE: written so NaN fails the test too.
    if (!(Math.abs(values[i] as number) <= limit)) return i;
  }
  return -1;
}

/** The error encodeLayer throws for an unstorable input element (both backends build it here). */
export function badValueError(
  codec: CodecName,
  tensor: 'k' | 'v',
  index: number,
  value: number,
): InvalidArgumentError {
  const why = Number.isFinite(value) ? `exceeds the ${codec} range ±${valueLimit(codec)}` : 'is not finite';
  return new InvalidArgumentError(`encodeLayer(${codec}): ${tensor}[${index}] = ${value} ${why}`, {
    codec,
    tensor,
    index,
    value,
  });
}

/** Checks a section handed to decodeLayer / attention; `what` names it in the message. */
export function checkSection(
  codec: CodecName,
  dims: LayerDims,
  section: unknown,
  what = 'section',
): Uint8Array {
  if (!(section instanceof Uint8Array)) {
    throw new InvalidArgumentError(`${what} must be a Uint8Array`, { [what]: typeof section });
  }
  const expected = sectionLayout(codec, dims).totalBytes;
  if (section.length !== expected) {
    throw new InvalidArgumentError(
      `${what} has ${section.length} bytes, expected ${expected} for ${codec} ` +
        `(kvHeads ${dims.kvHeads}, blockTokens ${dims.blockTokens}, headDim ${dims.headDim}, groupSize ${dims.groupSize})`,
      { sectionBytes: section.length, expected, codec },
    );
  }
  return section;
}

export function checkDecodeArgs(codec: CodecName, dims: LayerDims, section: Uint8Array): void {
  checkCodec(codec);
  checkLayerDims(dims);
  checkSection(codec, dims, section);
}

/** Attention arguments after checking: every default filled in. */
export interface CheckedAttention {
  dims: LayerDims;
  queryHeads: number;
  query: Float32Array;
  scale: number;
  codecs: CodecName[];
  sections: Uint8Array[];
  tokens: number[];
}

export function checkAttentionArgs(args: AttentionArgs): CheckedAttention {
  const { dims, queryHeads } = args;
  checkLayerDims(dims);
  checkInt('queryHeads', queryHeads, 1, KV_HEADS_MAX * 64);
  if (queryHeads % dims.kvHeads !== 0) {
    throw new InvalidArgumentError(`queryHeads ${queryHeads} must be a multiple of kvHeads ${dims.kvHeads}`, {
      queryHeads,
      kvHeads: dims.kvHeads,
    });
  }
  const query = checkF32Array('query', args.query, queryHeads * dims.headDim);
  const bad = findBadValue(query, F32_MAX);
  if (bad >= 0) {
    throw new InvalidArgumentError(`attention: query[${bad}] = ${query[bad]} is not finite`, {
      index: bad,
      value: query[bad],
    });
  }
  const scale = args.scale ?? 1 / Math.sqrt(dims.headDim);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) {
    throw new InvalidArgumentError(`attention: scale must be a finite number, got ${String(scale)}`, {
      scale,
    });
  }
  if (!Array.isArray(args.blocks) || args.blocks.length === 0) {
    throw new InvalidArgumentError('attention: empty block list (pass at least one block)', {
      blocks: Array.isArray(args.blocks) ? 0 : typeof args.blocks,
    });
  }
  const codecs: CodecName[] = [];
  const sections: Uint8Array[] = [];
  const tokens: number[] = [];
  args.blocks.forEach((block, i) => {
    const codec = checkCodec(block.codec);
    sections.push(checkSection(codec, dims, block.section, `blocks[${i}].section`));
    codecs.push(codec);
    tokens.push(checkInt(`blocks[${i}].tokens`, block.tokens ?? dims.blockTokens, 0, dims.blockTokens));
  });
  return { dims, queryHeads, query, scale, codecs, sections, tokens };
}

export function checkMergeArgs(
  parts: readonly PartialAttention[],
  queryHeads: number,
  headDim: number,
): void {
  checkInt('queryHeads', queryHeads, 1, KV_HEADS_MAX * 64);
  checkInt('headDim', headDim, 1, HEAD_DIM_MAX);
  if (!Array.isArray(parts)) {
    throw new InvalidArgumentError(`mergePartials: parts must be an array, got ${typeof parts}`, {});
  }
  parts.forEach((p, i) => {
    checkF32Array(`parts[${i}].o`, p.o, queryHeads * headDim);
    checkF32Array(`parts[${i}].m`, p.m, queryHeads);
    const l = checkF32Array(`parts[${i}].l`, p.l, queryHeads);
    for (let h = 0; h < queryHeads; h++) {
      const lh = l[h] as number;
      if (!(lh >= 0) || !Number.isFinite(lh)) {
        throw new InvalidArgumentError(`mergePartials: parts[${i}].l[${h}] = ${lh} must be finite and >= 0`, {
          part: i,
          head: h,
          value: lh,
        });
      }
    }
  });
}
