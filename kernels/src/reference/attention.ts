// Plain TypeScript decode attention and partial merge: the ground truth for the native kernels. It
// decodes each block with the reference codec and computes the softmax in double precision over all
// tokens at once (two passes), so it shares no summation order with the native online softmax.
import type { AttentionArgs, Kernels, PartialAttention } from '../types.ts';
import { checkAttentionArgs, checkMergeArgs } from '../validate.ts';
import { referenceCodec } from './codec.ts';

function attention(args: AttentionArgs): PartialAttention {
  const a = checkAttentionArgs(args);
  const { kvHeads: kvh, blockTokens: B, headDim: D } = a.dims;
  const H = a.queryHeads;
  const headsPerKv = H / kvh;
  const decoded = a.sections.map((section, i) => referenceCodec.decodeLayer(a.codecs[i]!, a.dims, section));
  const o = new Float32Array(H * D);
  const m = new Float32Array(H).fill(-Infinity);
  const l = new Float32Array(H);
  for (let h = 0; h < H; h++) {
    const kv = Math.floor(h / headsPerKv);
    const scores: number[] = [];
    const rows: { v: Float32Array; at: number }[] = [];
    decoded.forEach(({ k, v }, bi) => {
      for (let t = 0; t < a.tokens[bi]!; t++) {
        const at = (kv * B + t) * D;
        let s = 0;
        for (let d = 0; d < D; d++) s += a.query[h * D + d]! * k[at + d]!;
        scores.push(s * a.scale);
        rows.push({ v, at });
      }
    });
    if (scores.length === 0) continue;
    let mh = -Infinity;
    for (const s of scores) mh = Math.max(mh, s);
    const acc = new Float64Array(D);
    let lh = 0;
    scores.forEach((s, i) => {
      const p = Math.exp(s - mh);
      lh += p;
      const { v, at } = rows[i]!;
      for (let d = 0; d < D; d++) acc[d]! += p * v[at + d]!;
    });
    for (let d = 0; d < D; d++) o[h * D + d] = acc[d]! / lh;
    m[h] = mh;
    l[h] = lh;
  }
  return { o, m, l };
}

/** Shared by both backends' mergePartials semantics; the native one must agree with it. */
function mergePartials(
  parts: readonly PartialAttention[],
  queryHeads: number,
  headDim: number,
): PartialAttention {
  checkMergeArgs(parts, queryHeads, headDim);
  const o = new Float32Array(queryHeads * headDim);
  const m = new Float32Array(queryHeads).fill(-Infinity);
  const l = new Float32Array(queryHeads);
  for (let h = 0; h < queryHeads; h++) {
    let mh = -Infinity;
    for (const p of parts) if (p.l[h]! > 0) mh = Math.max(mh, p.m[h]!);
    if (mh === -Infinity) continue;
    let lh = 0;
    const acc = new Float64Array(headDim);
    for (const p of parts) {
      if (!(p.l[h]! > 0)) continue;
      const w = p.l[h]! * Math.exp(p.m[h]! - mh);
      lh += w;
      for (let d = 0; d < headDim; d++) acc[d]! += w * p.o[h * headDim + d]!;
    }
    for (let d = 0; d < headDim; d++) o[h * headDim + d] = acc[d]! / lh;
    m[h] = mh;
    l[h] = lh;
  }
  return { o, m, l };
}

export const referenceAttention: Pick<Kernels, 'attention' | 'attentionAsync' | 'mergePartials'> = {
  attention,
  attentionAsync: async (args) => attention(args),
  mergePartials,
};
