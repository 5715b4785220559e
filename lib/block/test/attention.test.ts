import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { loadKernels, referenceKernels, relativeL2Error, type CodecName } from '@kvmesh/kernels';

import { attendPayloads } from '../src/attention.ts';
import { decodeBlockLayer, encodeBlockPayload, type BlockDims, type LayerKv } from '../src/payload.ts';

const kernels = loadKernels();
const dims: BlockDims = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
const queryHeads = 4;

function randomLayers(d: BlockDims): LayerKv[] {
  const n = d.kvHeads * d.blockTokens * d.headDim;
  const fill = (): Float32Array => Float32Array.from({ length: n }, () => Math.random() * 4 - 2);
  return Array.from({ length: d.layers }, () => ({ k: fill(), v: fill() }));
}

const query = (): Float32Array =>
  Float32Array.from({ length: queryHeads * dims.headDim }, () => Math.random() - 0.5);

describe('block - attention over payloads', () => {
  for (const codec of ['f32', 'kivi4'] as CodecName[]) {
    it(`payload attention - ${codec}: split over groups and merged equals one pass and the f32 reference`, async () => {
      const payloads = Array.from({ length: 6 }, () =>
        encodeBlockPayload(kernels, codec, dims, randomLayers(dims)),
      );
      const q = query();
      const whole = await attendPayloads(kernels, {
        layer: 1,
        queryHeads,
        headDim: dims.headDim,
        query: q,
        payloads,
      });
      const parts = await Promise.all(
        [payloads.slice(0, 1), payloads.slice(1, 4), payloads.slice(4)].map((group) =>
          attendPayloads(kernels, { layer: 1, queryHeads, headDim: dims.headDim, query: q, payloads: group }),
        ),
      );
      const merged = kernels.mergePartials(parts, queryHeads, dims.headDim);
      assert.ok(
        relativeL2Error(merged.o, whole.o) <= 1e-5,
        `merged vs whole ${relativeL2Error(merged.o, whole.o)}`,
      );
      // The reference reads the decoded (f32) copy of the same blocks: the codec is read exactly.
      const decoded = payloads.map((p) => {
        const kv = decodeBlockLayer(kernels, p, 1);
        return referenceKernels.encodeLayer('f32', dims, kv.k, kv.v);
      });
      const reference = referenceKernels.attention({
        dims,
        queryHeads,
        query: q,
        blocks: decoded.map((section) => ({ codec: 'f32', section })),
      });
      assert.ok(
        relativeL2Error(whole.o, reference.o) <= 1e-5,
        `vs reference ${relativeL2Error(whole.o, reference.o)}`,
      );
    });
  }

  it('payload attention - no blocks gives the empty partial; bad shapes are rejected with the field named', async () => {
    const empty = await attendPayloads(kernels, {
      layer: 0,
      queryHeads,
      headDim: 32,
      query: query(),
      payloads: [],
    });
    assert.equal(empty.l[0], 0);
    assert.equal(empty.m[0], -Infinity);
    const payloads = [encodeBlockPayload(kernels, 'f32', dims, randomLayers(dims))];
    const base = { layer: 0, queryHeads, headDim: 32, query: query(), payloads };
    await assert.rejects(attendPayloads(kernels, { ...base, headDim: 64 }), /head_dim 64 does not match/);
    await assert.rejects(
      attendPayloads(kernels, { ...base, queryHeads: 3 }),
      /query_heads 3 must be a positive multiple/,
    );
    await assert.rejects(
      attendPayloads(kernels, { ...base, query: new Float32Array(5) }),
      /query has 5 floats/,
    );
    await assert.rejects(attendPayloads(kernels, { ...base, layer: 2 }), /layer 2 out of range/);
    const other = encodeBlockPayload(
      kernels,
      'f32',
      { ...dims, headDim: 16 },
      randomLayers({ ...dims, headDim: 16 }),
    );
    await assert.rejects(
      attendPayloads(kernels, { ...base, payloads: [payloads[0] as Uint8Array, other] }),
      /unlike block 0/,
    );
  });
});
