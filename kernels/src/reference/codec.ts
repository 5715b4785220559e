// Plain TypeScript codecs (lib/block/spec/codecs-v1.md): the ground truth the native encode/decode must
// match byte for byte. Every f32 operation is rounded with Math.fround in the order the spec states, so
// the result does not depend on evaluation in double precision.
import type { CodecName, Kernels, LayerDims } from '../types.ts';
import {
  badValueError,
  checkDecodeArgs,
  checkEncodeArgs,
  checkedSectionBytes,
  findBadValue,
  sectionLayout,
  valueLimit,
} from '../validate.ts';

const f32Bits = new Float32Array(1);
const u32Bits = new Uint32Array(f32Bits.buffer);

/** IEEE binary16 bits of an f32 value, round-to-nearest-even (what F16C's vcvtps2ph does). */
export function f32ToF16Bits(value: number): number {
  f32Bits[0] = value;
  const x = u32Bits[0] as number;
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) return sign | (abs > 0x7f800000 ? 0x7e00 : 0x7c00);
  if (abs >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to infinity
  const exp = abs >>> 23;
  if (exp < 113) {
    // Subnormal f16 (or zero): units of 2^-24.
    if (exp < 102) return sign;
    const mant = (abs & 0x7fffff) | 0x800000;
    const shift = 126 - exp;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = ((exp - 112) << 10) | ((abs & 0x7fffff) >>> 13);
  const rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/** Round half to even, for the non-negative quantizer input. */
function roundHalfEven(x: number): number {
  const r = Math.floor(x);
  const frac = x - r;
  if (frac > 0.5) return r + 1;
  if (frac < 0.5) return r;
  return r % 2 === 0 ? r : r + 1;
}

/** Scale and zero of one group, as stored (f16 bits) and as used (the f16 values in f32). */
interface GroupParams {
  scaleBits: number;
  zeroBits: number;
  scale: number;
  zero: number;
  inv: number;
}

function groupParams(min: number, max: number, qmax: number): GroupParams {
  const scale32 = Math.fround(Math.fround(max - min) / qmax);
  const scaleBits = f32ToF16Bits(scale32);
  const zeroBits = f32ToF16Bits(min);
  const scale = f16BitsToF32(scaleBits);
  const zero = f16BitsToF32(zeroBits);
  // A zero scale (constant group) encodes every element as code 0, i.e. x̂ = zero.
  const inv = scale === 0 ? 0 : Math.fround(1 / scale);
  return { scaleBits, zeroBits, scale, zero, inv };
}

function quantize(x: number, p: GroupParams, qmax: number): number {
  const q = Math.fround(Math.fround(x - p.zero) * p.inv);
  return roundHalfEven(Math.min(Math.max(q, 0), qmax));
}

function putCode(bytes: Uint8Array, rowStart: number, element: number, bits: number, code: number): void {
  const bit = element * bits;
  const at = rowStart + (bit >>> 3);
  bytes[at] = (bytes[at] as number) | (code << (bit & 7));
}

function getCode(bytes: Uint8Array, rowStart: number, element: number, bits: number): number {
  const bit = element * bits;
  return ((bytes[rowStart + (bit >>> 3)] as number) >>> (bit & 7)) & ((1 << bits) - 1);
}

function encodeKivi(dims: LayerDims, bits: number, k: Float32Array, v: Float32Array, out: Uint8Array): void {
  const { kvHeads: kvh, blockTokens: B, headDim: D, groupSize: G } = dims;
  const lay = sectionLayout(bits === 8 ? 'kivi8' : bits === 4 ? 'kivi4' : 'kivi2', dims);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const qmax = (1 << bits) - 1;
  for (let h = 0; h < kvh; h++) {
    // Keys: per channel d over groups of G tokens; codes [h][d][t], scales/zeros [h][g][d].
    for (let g = 0; g < B / G; g++) {
      for (let d = 0; d < D; d++) {
        let min = Infinity;
        let max = -Infinity;
        for (let t = g * G; t < (g + 1) * G; t++) {
          const x = k[(h * B + t) * D + d] as number;
          min = Math.min(min, x);
          max = Math.max(max, x);
        }
        const p = groupParams(min, max, qmax);
        const at = 2 * ((h * (B / G) + g) * D + d);
        view.setUint16(lay.kScales + at, p.scaleBits, true);
        view.setUint16(lay.kZeros + at, p.zeroBits, true);
        const row = lay.kCodes + (h * D + d) * lay.kRowBytes;
        for (let t = g * G; t < (g + 1) * G; t++) {
          putCode(out, row, t, bits, quantize(k[(h * B + t) * D + d] as number, p, qmax));
        }
      }
    }
    // Values: per token t over groups of G channels; codes [h][t][d], scales/zeros [h][gd][t].
    for (let t = 0; t < B; t++) {
      for (let gd = 0; gd < D / G; gd++) {
        let min = Infinity;
        let max = -Infinity;
        for (let d = gd * G; d < (gd + 1) * G; d++) {
          const x = v[(h * B + t) * D + d] as number;
          min = Math.min(min, x);
          max = Math.max(max, x);
        }
        const p = groupParams(min, max, qmax);
        const at = 2 * ((h * (D / G) + gd) * B + t);
        view.setUint16(lay.vScales + at, p.scaleBits, true);
        view.setUint16(lay.vZeros + at, p.zeroBits, true);
        const row = lay.vCodes + (h * B + t) * lay.vRowBytes;
        for (let d = gd * G; d < (gd + 1) * G; d++) {
          putCode(out, row, d, bits, quantize(v[(h * B + t) * D + d] as number, p, qmax));
        }
      }
    }
  }
}

function decodeKivi(
  dims: LayerDims,
  bits: number,
  section: Uint8Array,
  k: Float32Array,
  v: Float32Array,
): void {
  const { kvHeads: kvh, blockTokens: B, headDim: D, groupSize: G } = dims;
  const lay = sectionLayout(bits === 8 ? 'kivi8' : bits === 4 ? 'kivi4' : 'kivi2', dims);
  const view = new DataView(section.buffer, section.byteOffset, section.byteLength);
  for (let h = 0; h < kvh; h++) {
    for (let t = 0; t < B; t++) {
      for (let d = 0; d < D; d++) {
        // NOTE: c·scale is exact in f32 (≤ 19 significant bits), so one rounding of c·scale + zero
        // equals the fused multiply-add the native code uses.
        const kAt = 2 * ((h * (B / G) + Math.floor(t / G)) * D + d);
        const kScale = f16BitsToF32(view.getUint16(lay.kScales + kAt, true));
        const kZero = f16BitsToF32(view.getUint16(lay.kZeros + kAt, true));
        const kc = getCode(section, lay.kCodes + (h * D + d) * lay.kRowBytes, t, bits);
        k[(h * B + t) * D + d] = kc * kScale + kZero;
        const vAt = 2 * ((h * (D / G) + Math.floor(d / G)) * B + t);
        const vScale = f16BitsToF32(view.getUint16(lay.vScales + vAt, true));
        const vZero = f16BitsToF32(view.getUint16(lay.vZeros + vAt, true));
        const vc = getCode(section, lay.vCodes + (h * B + t) * lay.vRowBytes, d, bits);
        v[(h * B + t) * D + d] = vc * vScale + vZero;
      }
    }
  }
}

function encodeLayer(codec: CodecName, dims: LayerDims, k: Float32Array, v: Float32Array): Uint8Array {
  checkEncodeArgs(codec, dims, k, v);
  const limit = valueLimit(codec);
  const badK = findBadValue(k, limit);
  if (badK >= 0) throw badValueError(codec, 'k', badK, k[badK] as number);
  const badV = findBadValue(v, limit);
  if (badV >= 0) throw badValueError(codec, 'v', badV, v[badV] as number);
  const lay = sectionLayout(codec, dims);
  const out = new Uint8Array(lay.totalBytes);
  const view = new DataView(out.buffer);
  const n = k.length;
  if (codec === 'f32') {
    for (let i = 0; i < n; i++) {
      view.setFloat32(4 * i, k[i] as number, true);
      view.setFloat32(lay.vCodes + 4 * i, v[i] as number, true);
    }
  } else if (codec === 'f16') {
    for (let i = 0; i < n; i++) {
      view.setUint16(2 * i, f32ToF16Bits(k[i] as number), true);
      view.setUint16(lay.vCodes + 2 * i, f32ToF16Bits(v[i] as number), true);
    }
  } else {
    encodeKivi(dims, lay.bits, k, v, out);
  }
  return out;
}

function decodeLayer(
  codec: CodecName,
  dims: LayerDims,
  section: Uint8Array,
): { k: Float32Array; v: Float32Array } {
  checkDecodeArgs(codec, dims, section);
  const lay = sectionLayout(codec, dims);
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  const k = new Float32Array(n);
  const v = new Float32Array(n);
  const view = new DataView(section.buffer, section.byteOffset, section.byteLength);
  if (codec === 'f32') {
    for (let i = 0; i < n; i++) {
      k[i] = view.getFloat32(4 * i, true);
      v[i] = view.getFloat32(lay.vCodes + 4 * i, true);
    }
  } else if (codec === 'f16') {
    for (let i = 0; i < n; i++) {
      k[i] = f16BitsToF32(view.getUint16(2 * i, true));
      v[i] = f16BitsToF32(view.getUint16(lay.vCodes + 2 * i, true));
    }
  } else {
    decodeKivi(dims, lay.bits, section, k, v);
  }
  return { k, v };
}

export const referenceCodec: Pick<Kernels, 'sectionBytes' | 'encodeLayer' | 'decodeLayer'> = {
  sectionBytes: checkedSectionBytes,
  encodeLayer,
  decodeLayer,
};
