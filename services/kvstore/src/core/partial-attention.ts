// The DistAttention server side: one decode query attended over the blocks of a request that this
// node holds. Missing blocks are listed, not an error (the caller merges partials from several
// nodes and recomputes or fetches the rest). The found blocks get a short read lease so eviction
// does not race the computation, and the numbers come from attendPayloads, so a node's partial is
// exactly what the caller would compute locally over the same payloads.
import { attendPayloads, LAYERS_MAX } from '@kvmesh/block';
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import type { Kernels, PartialAttention } from '@kvmesh/kernels';
import type { BlockHash, Namespace } from '@kvmesh/protocol';

import type { BlockRecord } from './types.ts';

/** Reads one block for the computation (from DRAM, or back from a tier), with a read lease. */
export type AttentionBlockReader = (
  namespace: Namespace,
  hash: BlockHash,
  leaseMs: number,
) => Promise<BlockRecord | undefined>;

/** Bounds of the query shape (the kernels check the finer rules against the blocks' dims). */
export const QUERY_HEADS_MAX = 65_536;
export const HEAD_DIM_MAX = 4096;

export interface PartialAttentionInput {
  layer: number;
  queryHeads: number;
  headDim: number;
  /** f32 little-endian [queryHeads][headDim]. */
  query: Uint8Array;
  /** 0 means 1/sqrt(headDim). */
  scale: number;
  namespace: Namespace;
  hashes: readonly BlockHash[];
}

export interface PartialAttentionOutput extends PartialAttention {
  blocksUsed: number;
  missing: BlockHash[];
}

function checkField(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max)
    throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got ${value}`, {
      field: name,
      value,
      min,
      max,
    });
}

/** Validates the request shape; throws InvalidArgumentError naming the field. */
export function checkAttentionInput(input: PartialAttentionInput, hashesMax: number): void {
  checkField('layer', input.layer, 0, LAYERS_MAX - 1);
  checkField('query_heads', input.queryHeads, 1, QUERY_HEADS_MAX);
  checkField('head_dim', input.headDim, 1, HEAD_DIM_MAX);
  const expected = input.queryHeads * input.headDim * 4;
  if (input.query.byteLength !== expected)
    throw new InvalidArgumentError(
      `query is ${input.query.byteLength} bytes, expected query_heads × head_dim × 4 = ${expected}`,
      { field: 'query', bytes: input.query.byteLength, expected },
    );
  if (!Number.isFinite(input.scale) || input.scale < 0)
    throw new InvalidArgumentError(`scale must be finite and >= 0, got ${input.scale}`, {
      field: 'scale',
      value: input.scale,
    });
  if (input.hashes.length > hashesMax)
    throw new LimitExceededError(
      `request lists ${input.hashes.length} hashes, limit is ${hashesMax} (hashesPerRequestMax)`,
      { field: 'hashes', hashes: input.hashes.length, hashesPerRequestMax: hashesMax },
    );
}

/** f32 values of little-endian bytes, copied into aligned memory. */
export function f32FromLittleEndian(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.byteLength / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** Little-endian bytes of f32 values (a view on little-endian hosts, a copy otherwise). */
export function f32ToLittleEndian(values: Float32Array): Buffer {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] === 1)
    return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const out = Buffer.alloc(values.byteLength);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i] as number, i * 4);
  return out;
}

export async function partialAttention(
  read: AttentionBlockReader,
  hashesMax: number,
  kernels: Kernels,
  input: PartialAttentionInput,
  leaseMs: number,
): Promise<PartialAttentionOutput> {
  checkAttentionInput(input, hashesMax);
  const payloads: Uint8Array[] = [];
  const missing: BlockHash[] = [];
  for (const hash of input.hashes) {
    const record = await read(input.namespace, hash, leaseMs);
    if (record === undefined) missing.push(hash);
    else payloads.push(record.payload);
  }
  const partial = await attendPayloads(kernels, {
    layer: input.layer,
    queryHeads: input.queryHeads,
    headDim: input.headDim,
    query: f32FromLittleEndian(input.query),
    scale: input.scale,
    payloads,
  });
  return { ...partial, blocksUsed: payloads.length, missing };
}
