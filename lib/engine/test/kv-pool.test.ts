import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { encodeBlockPayload, type BlockDims } from '@kvmesh/block';
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { loadKernels } from '@kvmesh/kernels';

import { KvPool, TailBlock } from '../src/runtime/kv-pool.ts';

const kernels = loadKernels();
const dims: BlockDims = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
const random = (n: number): Float32Array => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);

function fullTail(): TailBlock {
  const tail = new TailBlock(dims);
  for (let t = 0; t < dims.blockTokens; t++) {
    for (let l = 0; l < dims.layers; l++)
      tail.write(l, t, random(dims.kvHeads * dims.headDim), random(dims.kvHeads * dims.headDim));
    tail.tokens++;
  }
  return tail;
}

describe('engine - paged KV pool', () => {
  it('engine - a tail writes K/V per head in the f32 section layout', () => {
    const tail = new TailBlock(dims);
    const k = random(dims.kvHeads * dims.headDim);
    const v = random(dims.kvHeads * dims.headDim);
    tail.write(1, 3, k, v);
    // kv head 1, slot 3 starts at (1·B + 3)·D.
    const at = (1 * dims.blockTokens + 3) * dims.headDim;
    assert.deepEqual(tail.k[1]?.subarray(at, at + dims.headDim), k.subarray(dims.headDim));
    assert.deepEqual(tail.v[1]?.subarray(at, at + dims.headDim), v.subarray(dims.headDim));
    const decoded = kernels.decodeLayer('f32', dims, tail.attentionBlock(1, 4).section);
    assert.deepEqual(decoded.k, tail.k[1]);
  });

  it('engine - a sealed kivi4 block exports and imports to identical sections', () => {
    const pool = new KvPool(kernels, { codec: 'kivi4', dims, blocksMax: 4 });
    const id = pool.sealTail(fullTail());
    const payload = pool.exportPayload(id);
    const other = new KvPool(kernels, { codec: 'kivi4', dims, blocksMax: 4 });
    const copy = other.importPayload(payload);
    for (let l = 0; l < dims.layers; l++)
      assert.deepEqual(other.attentionBlock(copy, l), pool.attentionBlock(id, l));
  });

  it('engine - blocks are refcounted and the pool limit is a typed error', () => {
    const pool = new KvPool(kernels, { codec: 'f16', dims, blocksMax: 2 });
    const a = pool.sealTail(fullTail());
    pool.sealTail(fullTail());
    assert.throws(() => pool.sealTail(fullTail()), LimitExceededError);
    pool.retain(a);
    pool.release(a);
    assert.equal(pool.blocksUsed, 2);
    pool.release(a);
    assert.equal(pool.blocksFree, 1);
    assert.throws(() => pool.attentionBlock(a, 0), /no block/);
  });

  it('engine - partial tails do not seal; foreign dims do not import', () => {
    const pool = new KvPool(kernels, { codec: 'f32', dims, blocksMax: 2 });
    const tail = new TailBlock(dims);
    tail.tokens = 5;
    assert.throws(() => pool.sealTail(tail), /tail holds 5 of 16 tokens/);
    const foreign = { ...dims, headDim: 16 };
    const n = foreign.kvHeads * foreign.blockTokens * foreign.headDim;
    const payload = encodeBlockPayload(kernels, 'f32', foreign, [
      { k: random(n), v: random(n) },
      { k: random(n), v: random(n) },
    ]);
    assert.throws(() => pool.importPayload(payload), InvalidArgumentError);
  });
});
