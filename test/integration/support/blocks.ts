// Valid blocks for integration tests: real spec v1 hashes (through @kvmesh/sdk chainBlocks) over
// random token ids, and payloads encoded from random normal K/V with small dims, so every test
// exercises the real identity, checksum and codec paths. Also the forgeries the fault tests send:
// a payload with an intact header naming an unknown codec, and one with a flipped section byte.
import { CHECKSUM_BYTES, encodeBlockPayload, headerBytesFor, type BlockDims } from '@kvmesh/block';
import { loadKernels, type CodecName, type Kernels } from '@kvmesh/kernels';
import { parseModelFingerprint, type BlockHash } from '@kvmesh/protocol';
import { chainBlocks, type ChainedBlock } from '@kvmesh/sdk';

export const kernels: Kernels = loadKernels();
export const DIMS: BlockDims = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
export const FINGERPRINT = parseModelFingerprint('6b766d657368696e746567726174696f');

function randn(count: number): Float32Array {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const u = 1 - Math.random();
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
  }
  return out;
}

export function randomPayload(codec: CodecName = 'f32'): Uint8Array {
  const n = DIMS.kvHeads * DIMS.blockTokens * DIMS.headDim;
  const layers = Array.from({ length: DIMS.layers }, () => ({ k: randn(n), v: randn(n) }));
  return encodeBlockPayload(kernels, codec, DIMS, layers);
}

export function randomTokens(count: number): Uint32Array {
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.floor(Math.random() * 32_000);
  return out;
}

export interface ChainOptions {
  readonly namespace?: string;
  readonly codec?: CodecName;
  /** Continue after this block. */
  readonly parentHash?: BlockHash | null;
  /** Use these token ids (count × blockTokens) instead of random ones. */
  readonly tokens?: Uint32Array;
}

/** `count` chained blocks with random K/V. */
export function makeChain(count: number, options: ChainOptions = {}): ChainedBlock[] {
  return chainBlocks(
    {
      modelFingerprint: FINGERPRINT,
      namespace: options.namespace ?? '',
      blockTokens: DIMS.blockTokens,
      tokens: options.tokens ?? randomTokens(count * DIMS.blockTokens),
      payloads: Array.from({ length: count }, () => randomPayload(options.codec ?? 'f32')),
      parentHash: options.parentHash ?? null,
    },
    kernels,
  );
}

/** A copy of `payload` whose header names codec id `codecId`, with the header checksum recomputed. */
export function withCodecId(payload: Uint8Array, codecId: number): Uint8Array {
  const out = new Uint8Array(payload);
  out[6] = codecId;
  const headerBytes = headerBytesFor(DIMS.layers);
  const sum = kernels.hash128(out.subarray(0, headerBytes - CHECKSUM_BYTES));
  out.set(sum.subarray(0, CHECKSUM_BYTES), headerBytes - CHECKSUM_BYTES);
  return out;
}

/** A copy of `payload` with one byte of the last layer section flipped (its checksum now fails). */
export function withFlippedSectionByte(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(payload);
  out[out.length - 100] = (out[out.length - 100] as number) ^ 0x5a;
  return out;
}
