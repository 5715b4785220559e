// The native codecs behind the facade: arguments go through the same checks as the reference
// (../validate.ts), so both backends reject the same inputs with the same InvalidArgumentError. The
// finite/range scan of the inputs runs in C++ (kernels/cpu/codec.cc, vectorised) and reports the
// offending flat index, from which the same error as the reference's is built here.
import type { Kernels } from '../types.ts';
import {
  badValueError,
  checkDecodeArgs,
  checkEncodeArgs,
  checkedSectionBytes,
  codecId,
  sectionLayout,
} from '../validate.ts';

/** The functions kernels/cpu/codec.cc registers on the addon. */
export interface NativeCodecAddon {
  /** Fills `out` (sectionBytes long); returns -1, or the flat index of the first unstorable input (k first, then v offset by k.length). */
  encodeLayer(
    codec: number,
    kvHeads: number,
    blockTokens: number,
    headDim: number,
    groupSize: number,
    k: Float32Array,
    v: Float32Array,
    out: Uint8Array,
  ): number;
  decodeLayer(
    codec: number,
    kvHeads: number,
    blockTokens: number,
    headDim: number,
    groupSize: number,
    section: Uint8Array,
    k: Float32Array,
    v: Float32Array,
  ): void;
}

// NOTE: outputs are allocated without zero-filling: the C++ kernels write every byte (kivi sections are
// zeroed there before packing) and nothing is returned when they fail. Zero-filling would double the
// memory traffic of decode, whose output is 8x its input for kivi4. allocUnsafeSlow, not allocUnsafe:
// a result never shares its ArrayBuffer with Node's Buffer pool, so `.buffer` is the caller's alone.
function uninitializedBytes(byteLength: number): Buffer {
  return Buffer.allocUnsafeSlow(byteLength);
}

export function nativeCodec(
  addon: NativeCodecAddon,
): Pick<Kernels, 'sectionBytes' | 'encodeLayer' | 'decodeLayer'> {
  return {
    sectionBytes: checkedSectionBytes,
    encodeLayer(codec, dims, k, v) {
      checkEncodeArgs(codec, dims, k, v);
      const bytes = uninitializedBytes(sectionLayout(codec, dims).totalBytes);
      const out = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const { kvHeads, blockTokens, headDim, groupSize } = dims;
      const bad = addon.encodeLayer(codecId(codec), kvHeads, blockTokens, headDim, groupSize, k, v, out);
      if (bad >= 0) {
        throw bad < k.length
          ? badValueError(codec, 'k', bad, k[bad] as number)
          : badValueError(codec, 'v', bad - k.length, v[bad - k.length] as number);
      }
      return out;
    },
    decodeLayer(codec, dims, section) {
      checkDecodeArgs(codec, dims, section);
      const n = dims.kvHeads * dims.blockTokens * dims.headDim;
      // Separate buffers, as the reference returns: each array's `.buffer` holds only that tensor.
      const k = new Float32Array(uninitializedBytes(4 * n).buffer, 0, n);
      const v = new Float32Array(uninitializedBytes(4 * n).buffer, 0, n);
      const { kvHeads, blockTokens, headDim, groupSize } = dims;
      addon.decodeLayer(codecId(codec), kvHeads, blockTokens, headDim, groupSize, section, k, v);
      return { k, v };
    },
  };
}
