// Native decode attention and partial merge behind the facade. Arguments are checked by the same
// code as the reference (../validate.ts); kernels/cpu/attention.cc re-checks sizes, reads every
// block's codec directly and, for attentionAsync, computes on a libuv worker thread.
import type { AttentionArgs, Kernels, PartialAttention } from '../types.ts';
import { checkAttentionArgs, checkMergeArgs, codecId, type CheckedAttention } from '../validate.ts';

/** The functions kernels/cpu/attention.cc registers on the addon. Outputs are filled in place. */
/** Positional arguments of the native attention calls; o, m and l are outputs filled in place. */
type NativeAttentionCall = (
  kvHeads: number,
  blockTokens: number,
  headDim: number,
  groupSize: number,
  queryHeads: number,
  query: Float32Array,
  scale: number,
  codecs: Int32Array,
  sections: Uint8Array[],
  tokens: Int32Array,
  o: Float32Array,
  m: Float32Array,
  l: Float32Array,
) => void;

/** The functions kernels/cpu/attention.cc registers on the addon. */
export interface NativeAttentionAddon {
  attention: NativeAttentionCall;
  /** Same arguments as attention(); o, m and l are filled when the promise resolves. */
  attentionAsync: (...args: Parameters<NativeAttentionCall>) => Promise<void>;
  mergePartials(
    queryHeads: number,
    headDim: number,
    os: Float32Array[],
    ms: Float32Array[],
    ls: Float32Array[],
    o: Float32Array,
    m: Float32Array,
    l: Float32Array,
  ): void;
}

type AddonArgs = Parameters<NativeAttentionAddon['attention']>;

function addonArgs(a: CheckedAttention, out: PartialAttention): AddonArgs {
  const { kvHeads, blockTokens, headDim, groupSize } = a.dims;
  return [
    kvHeads,
    blockTokens,
    headDim,
    groupSize,
    a.queryHeads,
    a.query,
    a.scale,
    Int32Array.from(a.codecs, codecId),
    a.sections,
    Int32Array.from(a.tokens),
    out.o,
    out.m,
    out.l,
  ];
}

function emptyPartial(queryHeads: number, headDim: number): PartialAttention {
  return {
    o: new Float32Array(queryHeads * headDim),
    m: new Float32Array(queryHeads),
    l: new Float32Array(queryHeads),
  };
}

export function nativeAttention(
  addon: NativeAttentionAddon,
): Pick<Kernels, 'attention' | 'attentionAsync' | 'mergePartials'> {
  return {
    attention(args: AttentionArgs) {
      const a = checkAttentionArgs(args);
      const out = emptyPartial(a.queryHeads, a.dims.headDim);
      addon.attention(...addonArgs(a, out));
      return out;
    },
    async attentionAsync(args: AttentionArgs) {
      const a = checkAttentionArgs(args);
      const out = emptyPartial(a.queryHeads, a.dims.headDim);
      await addon.attentionAsync(...addonArgs(a, out));
      return out;
    },
    mergePartials(parts, queryHeads, headDim) {
      checkMergeArgs(parts, queryHeads, headDim);
      const out = emptyPartial(queryHeads, headDim);
      addon.mergePartials(
        queryHeads,
        headDim,
        parts.map((p) => p.o),
        parts.map((p) => p.m),
        parts.map((p) => p.l),
        out.o,
        out.m,
        out.l,
      );
      return out;
    },
  };
}
