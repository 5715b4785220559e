// KV codec cost and accuracy on a model-sized shape (default: 8 kv heads, head dim 128, 64-token
// blocks, 4096 tokens of context = 64 blocks, GQA 4; payload sizes for 32 layers). Per codec:
// encode / decode / attention throughput on one core in f32-equivalent GB/s (2·KVH·B·D·4 bytes per
// block layer) next to memcpy (Buffer.copy of the same f32 volume) measured in the same run, the
// payload ratio against f32, and the attention error against f32 on a synthetic KV set with
// real-model statistics:
//   keys   k[t][d] = offset_d + σ_d·N(0,1), offset_d = 2·N(0,1)·σ_d, σ_d = 10 on 4 outlier channels
//          (of 128, scaled with D), 1 elsewhere: per-channel means and outlier channels, as in
//          post-RoPE keys of Llama-family models (KIVI, KVQuant);
//   values N(0,1), no outliers; queries N(0,1).
// attnRelErrPerTokenKeys is the same error when keys are quantized per token over groups of G
// channels instead (the layout KIVI argues against); it is computed here only, by quantizing K with
// the value path of the codec (encode with V := K, decode V) and attending over f32 blocks.
// Throughput is timed on a subset of the layers (--layers-timed, default 2): every layer has the
// same shape, so more layers only repeat the same work. Options: --context N, --layers L,
// --layers-timed N, --seconds S (per measurement), --isa scalar|avx2|avx512.

import {
  CODEC_NAMES,
  describeKernels,
  nativeIsaControl,
  nativeKernels,
  type AttentionBlock,
  type CodecName,
  type Kernels,
  type LayerDims,
  type PartialAttention,
  relativeL2Error,
} from '@kvmesh/kernels';

import { payloadBytesFor } from '@kvmesh/block';

import type { BenchContext, BenchSuite } from '../main.ts';
import { numberOption, round, secondsPerCall, stringOption } from '../options.ts';

// Payload v1 framing (lib/block/spec/payload-v1.md): 40 fixed bytes + 24 per layer + 8-byte header
// checksum, and every section starts on a 64-byte boundary.
const OUTLIER_CHANNELS_PER_128 = 4;
const OUTLIER_SCALE = 10;
const GQA = 4;

function payloadBytes(kernels: Kernels, codec: CodecName, dims: LayerDims, layers: number): number {
  return payloadBytesFor(kernels, codec, { ...dims, layers });
}

function gaussian(): number {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

interface BlockKv {
  k: Float32Array;
  v: Float32Array;
}

/** One layer's blocks of the synthetic set; channel statistics are shared by the layer's blocks and heads' own. */
function syntheticLayer(dims: LayerDims, blocks: number): BlockKv[] {
  const { kvHeads, blockTokens: B, headDim: D } = dims;
  const outliers = Math.max(1, Math.round((OUTLIER_CHANNELS_PER_128 * D) / 128));
  const sigma = new Float32Array(kvHeads * D).fill(1);
  const offset = new Float32Array(kvHeads * D);
  for (let h = 0; h < kvHeads; h++) {
    for (let i = 0; i < outliers; i++) sigma[h * D + Math.floor(Math.random() * D)] = OUTLIER_SCALE;
    for (let d = 0; d < D; d++) offset[h * D + d] = 2 * gaussian() * (sigma[h * D + d] as number);
  }
  return Array.from({ length: blocks }, () => {
    const k = new Float32Array(kvHeads * B * D);
    const v = new Float32Array(kvHeads * B * D);
    for (let i = 0; i < k.length; i++) {
      const c = Math.floor(i / (B * D)) * D + (i % D);
      k[i] = (offset[c] as number) + (sigma[c] as number) * gaussian();
      v[i] = gaussian();
    }
    return { k, v };
  });
}

/** Working set that decode/attention timings cycle through: 4x the 32 MiB L3 of the bench machine. */
const COLD_BYTES = 128 * 2 ** 20;

/** Bytes per second of `body` over `bytes`, repeated for at least `seconds`, in GB/s (10^9). */
function throughputGBps(bytes: number, seconds: number, body: () => void): number {
  return bytes / secondsPerCall(seconds, body) / 1e9;
}

async function run(ctx: BenchContext): Promise<Record<string, unknown>> {
  const native = nativeKernels();
  if (!native) throw new Error(`codec bench needs the native kernels: ${describeKernels().detail}`);
  const isaWanted = stringOption(ctx.args, 'isa');
  if (isaWanted !== undefined && !nativeIsaControl()?.set(isaWanted)) {
    throw new Error(`--isa ${isaWanted} is not supported on this CPU`);
  }
  const dims: LayerDims = { kvHeads: 8, blockTokens: 64, headDim: 128, groupSize: 32 };
  const layers = numberOption(ctx.args, 'layers', 32);
  const contextTokens = numberOption(ctx.args, 'context', 4096);
  const layersTimed = numberOption(ctx.args, 'layers-timed', 2);
  const seconds = numberOption(ctx.args, 'seconds', 1);
  const blocks = Math.ceil(contextTokens / dims.blockTokens);
  const queryHeads = GQA * dims.kvHeads;
  const blockLayerBytes = 2 * dims.kvHeads * dims.blockTokens * dims.headDim * 4;
  const timedBytes = layersTimed * blocks * blockLayerBytes;

  ctx.log(
    `synthetic KV: ${layersTimed} layers x ${blocks} blocks (${(timedBytes / 2 ** 20).toFixed(0)} MiB f32)`,
  );
  const data = Array.from({ length: layersTimed }, () => syntheticLayer(dims, blocks));
  const queries = data.map(() => Float32Array.from({ length: queryHeads * dims.headDim }, gaussian));

  const src = Buffer.alloc(timedBytes, 1);
  const dst = Buffer.alloc(timedBytes);
  const memcpyGBps = throughputGBps(timedBytes, seconds, () => src.copy(dst));
  ctx.log(`memcpy ${memcpyGBps.toFixed(2)} GB/s`);

  const attendAll = (sections: { codec: CodecName; section: Uint8Array }[][]): PartialAttention[] =>
    sections.map((layer, l) =>
      native.attention({
        dims,
        queryHeads,
        query: queries[l] as Float32Array,
        blocks: layer as AttentionBlock[],
      }),
    );
  const reference = attendAll(
    data.map((layer) =>
      layer.map(({ k, v }) => ({ codec: 'f32', section: native.encodeLayer('f32', dims, k, v) })),
    ),
  );
  const attnError = (got: PartialAttention[]): number => {
    const errs = got.map((g, l) => relativeL2Error(g.o, (reference[l] as PartialAttention).o));
    return Math.sqrt(errs.reduce((s, e) => s + e * e, 0) / errs.length);
  };
  const f32Payload = payloadBytes(native, 'f32', dims, layers);

  const codecs: Record<string, unknown> = {};
  for (const codec of CODEC_NAMES) {
    ctx.log(`${codec}: encode / decode / attention`);
    const encodeAll = (): { codec: CodecName; section: Uint8Array }[][] =>
      data.map((layer) =>
        layer.map(({ k, v }) => ({ codec, section: native.encodeLayer(codec, dims, k, v) })),
      );
    const sections = encodeAll();
    const encodeGBps = throughputGBps(timedBytes, seconds, encodeAll);
    // NOTE: compressed sections of a few layers fit in the 32 MiB L3 cache; decode and attention
    // cycle through copies totalling at least COLD_BYTES so every pass streams from DRAM, as
    // attention over a long context does.
    const encodedBytes = sections.flat().reduce((sum, b) => sum + b.section.length, 0);
    const replicas = Array.from({ length: Math.max(1, Math.ceil(COLD_BYTES / encodedBytes)) }, (_, i) =>
      i === 0 ? sections : sections.map((layer) => layer.map((b) => ({ codec, section: b.section.slice() }))),
    );
    let turn = 0;
    const nextReplica = (): { codec: CodecName; section: Uint8Array }[][] =>
      replicas[turn++ % replicas.length] as { codec: CodecName; section: Uint8Array }[][];
    const decodeGBps = throughputGBps(timedBytes, seconds, () => {
      for (const layer of nextReplica()) for (const b of layer) native.decodeLayer(codec, dims, b.section);
    });
    const attnGBps = throughputGBps(timedBytes, seconds, () => attendAll(nextReplica()));
    replicas.length = 1;
    const attnRelErr = attnError(attendAll(sections));
    let attnRelErrPerTokenKeys: number | null = null;
    if (codec.startsWith('kivi')) {
      // Keys through the per-token (value) quantizer, values as the codec stores them.
      const perToken = data.map((layer) =>
        layer.map(({ k, v }) => {
          const kHat = native.decodeLayer(codec, dims, native.encodeLayer(codec, dims, k, k)).v;
          const vHat = native.decodeLayer(codec, dims, native.encodeLayer(codec, dims, v, v)).v;
          return { codec: 'f32' as CodecName, section: native.encodeLayer('f32', dims, kHat, vHat) };
        }),
      );
      attnRelErrPerTokenKeys = round(attnError(attendAll(perToken)));
    }
    codecs[codec] = {
      ratioVsF32: round(f32Payload / payloadBytes(native, codec, dims, layers)),
      encodeGBps: round(encodeGBps),
      decodeGBps: round(decodeGBps),
      attnGBps: round(attnGBps),
      attnRelErr: round(attnRelErr),
      attnRelErrPerTokenKeys,
    };
    ctx.log(`${codec}: ${JSON.stringify(codecs[codec])}`);
  }

  return {
    isa: native.isa(),
    memcpyGBps: round(memcpyGBps),
    shape: {
      layers,
      layersTimed,
      kvHeads: dims.kvHeads,
      queryHeads,
      headDim: dims.headDim,
      blockTokens: dims.blockTokens,
      groupSize: dims.groupSize,
      contextTokens: blocks * dims.blockTokens,
      blocks,
      f32PayloadBytes: f32Payload,
    },
    synthetic: {
      keys: `offset_d + sigma_d*N(0,1), offset_d = 2*N(0,1)*sigma_d, sigma_d = ${OUTLIER_SCALE} on ${OUTLIER_CHANNELS_PER_128}/128 channels else 1`,
      values: 'N(0,1)',
      queries: 'N(0,1)',
    },
    codecs,
  };
}

export const suite: BenchSuite = {
  name: 'codec',
  description: 'KV codecs: encode/decode/attention GB/s vs memcpy, payload ratio and attention error vs f32',
  run,
};
