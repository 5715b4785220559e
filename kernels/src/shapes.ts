// Shapes shared by every kernel family (codecs, attention, dense): codec names and ids, the dims of
// one block layer, and a block handed to attention. A leaf module, so the kernel contracts can all
// import it without cycles.

export type CodecName = 'f32' | 'f16' | 'kivi8' | 'kivi4' | 'kivi2';

/** Codec ids as stored in payload headers. Never renumber: stored data depends on them. */
export const CODEC_IDS: Readonly<Record<CodecName, number>> = {
  f32: 0,
  f16: 1,
  kivi8: 2,
  kivi4: 3,
  kivi2: 4,
};
export const CODEC_NAMES: readonly CodecName[] = ['f32', 'f16', 'kivi8', 'kivi4', 'kivi2'];

/** Shape of one layer of one block. `groupSize` is the KIVI quantization group (tokens for keys, channels for values). */
export interface LayerDims {
  kvHeads: number;
  blockTokens: number;
  headDim: number;
  groupSize: number;
}

/** One block's layer section handed to attention. `tokens` (default blockTokens) masks a partial tail block. */
export interface AttentionBlock {
  codec: CodecName;
  section: Uint8Array;
  tokens?: number;
}
