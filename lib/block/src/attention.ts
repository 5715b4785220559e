// Attention of one decode query over stored block payloads: the DistAttention building block. Each
// payload is parsed and its layer section checksum-verified, then the kernels read the section in
// its own codec (no inflation). Blocks may use different codecs but must share the KV dims; the
// result is the partial (o, m, l) triple that Kernels.mergePartials combines exactly.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { AttentionBlock, Kernels, LayerDims, PartialAttention } from '@kvmesh/kernels';

import { parseBlockHeader, readLayerSection } from './payload.ts';

export interface PayloadAttentionArgs {
  layer: number;
  queryHeads: number;
  headDim: number;
  /** f32 [queryHeads][headDim]. */
  query: Float32Array;
  /** Multiplier on q·k; 0 or undefined means 1/sqrt(headDim). */
  scale?: number;
  payloads: readonly Uint8Array[];
}

/** Section views of `layer` for each payload, all checked to share one set of dims. */
export function payloadAttentionBlocks(
  kernels: Kernels,
  payloads: readonly Uint8Array[],
  layer: number,
): { dims: LayerDims | null; blocks: AttentionBlock[] } {
  let dims: LayerDims | null = null;
  const blocks: AttentionBlock[] = [];
  payloads.forEach((payload, i) => {
    const header = parseBlockHeader(kernels, payload);
    const d = header.dims;
    if (dims === null) {
      dims = { kvHeads: d.kvHeads, blockTokens: d.blockTokens, headDim: d.headDim, groupSize: d.groupSize };
    } else if (
      d.kvHeads !== dims.kvHeads ||
      d.blockTokens !== dims.blockTokens ||
      d.headDim !== dims.headDim ||
      d.groupSize !== dims.groupSize
    ) {
      throw new InvalidArgumentError(`block ${i} has dims ${JSON.stringify(d)}, unlike block 0's`, {
        index: i,
        dims: d,
        first: dims,
      });
    }
    blocks.push({ codec: header.codec, section: readLayerSection(kernels, payload, header, layer) });
  });
  return { dims, blocks };
}

function checkQuery(args: PayloadAttentionArgs, dims: LayerDims): void {
  const { queryHeads, headDim, query } = args;
  if (headDim !== dims.headDim) {
    throw new InvalidArgumentError(`head_dim ${headDim} does not match the blocks' ${dims.headDim}`, {
      headDim,
      blockHeadDim: dims.headDim,
    });
  }
  if (!Number.isInteger(queryHeads) || queryHeads < 1 || queryHeads % dims.kvHeads !== 0) {
    throw new InvalidArgumentError(
      `query_heads ${queryHeads} must be a positive multiple of the blocks' ${dims.kvHeads} kv heads`,
      { queryHeads, kvHeads: dims.kvHeads },
    );
  }
  if (query.length !== queryHeads * headDim) {
    throw new InvalidArgumentError(`query has ${query.length} floats, expected query_heads × head_dim`, {
      floats: query.length,
      expected: queryHeads * headDim,
    });
  }
}

const emptyPartial = (queryHeads: number, headDim: number): PartialAttention => ({
  o: new Float32Array(queryHeads * headDim),
  m: new Float32Array(queryHeads).fill(-Infinity),
  l: new Float32Array(queryHeads),
});

/** Partial attention of the query over the payloads' tokens (off the JS thread). */
export async function attendPayloads(
  kernels: Kernels,
  args: PayloadAttentionArgs,
): Promise<PartialAttention> {
  const { dims, blocks } = payloadAttentionBlocks(kernels, args.payloads, args.layer);
  if (dims === null) return emptyPartial(args.queryHeads, args.headDim);
  checkQuery(args, dims);
  const scale = args.scale === undefined || args.scale === 0 ? 1 / Math.sqrt(args.headDim) : args.scale;
  return kernels.attentionAsync({ dims, queryHeads: args.queryHeads, query: args.query, scale, blocks });
}
