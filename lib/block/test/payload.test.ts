import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { describe, it } from 'node:test';

import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';
import { CODEC_NAMES, loadKernels, referenceKernels, type CodecName } from '@kvmesh/kernels';

import {
  HEADER_FIXED_BYTES,
  UnsupportedPayloadVersionError,
  decodeBlockLayer,
  decodeBlockPayload,
  encodeBlockPayload,
  headerBytesFor,
  parseBlockHeader,
  payloadBytesFor,
  readLayerSection,
  verifyBlockPayload,
  type BlockDims,
  type LayerKv,
} from '../src/payload.ts';

const kernels = loadKernels();
const dims: BlockDims = { layers: 3, kvHeads: 2, blockTokens: 32, headDim: 32, groupSize: 16 };

function randomLayers(d: BlockDims): LayerKv[] {
  const n = d.kvHeads * d.blockTokens * d.headDim;
  const fill = (): Float32Array => Float32Array.from({ length: n }, () => Math.random() * 4 - 2);
  return Array.from({ length: d.layers }, () => ({ k: fill(), v: fill() }));
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

// Worst-case absolute roundtrip error for values in [-2, 2): half a quantization step plus f16 slack.
const TOLERANCE: Record<CodecName, number> = {
  f32: 0,
  f16: 2e-3,
  kivi8: 4 / 255 / 2 + 4e-3,
  kivi4: 4 / 15 / 2 + 4e-3,
  kivi2: 4 / 3 / 2 + 4e-3,
};

describe('payload - roundtrip', () => {
  for (const codec of CODEC_NAMES) {
    it(`payload - ${codec} encodes, verifies and decodes every layer within ${TOLERANCE[codec]}`, () => {
      const layers = randomLayers(dims);
      const payload = encodeBlockPayload(kernels, codec, dims, layers);
      assert.equal(payload.length, payloadBytesFor(kernels, codec, dims));
      const { header, layers: decoded } = decodeBlockPayload(kernels, payload);
      assert.equal(header.codec, codec);
      assert.deepEqual(header.dims, dims);
      decoded.forEach((layer, l) => {
        const original = layers[l] as LayerKv;
        assert.ok(maxAbsDiff(layer.k, original.k) <= TOLERANCE[codec], `layer ${l} K`);
        assert.ok(maxAbsDiff(layer.v, original.v) <= TOLERANCE[codec], `layer ${l} V`);
      });
      // One layer read alone equals the same layer from the full decode.
      const single = decodeBlockLayer(kernels, payload, 1);
      assert.deepEqual(single.k, decoded[1]?.k);
      assert.deepEqual(single.v, decoded[1]?.v);
    });
  }

  it('payload - native and reference kernels write identical f32 payloads', () => {
    const layers = randomLayers(dims);
    assert.deepEqual(
      encodeBlockPayload(kernels, 'f32', dims, layers),
      encodeBlockPayload(referenceKernels, 'f32', dims, layers),
    );
  });

  it('payload - sections start 64-byte aligned after the header', () => {
    const payload = encodeBlockPayload(kernels, 'kivi4', dims, randomLayers(dims));
    const header = parseBlockHeader(kernels, payload);
    assert.equal(header.headerBytes, headerBytesFor(dims.layers));
    for (const s of header.sections) assert.equal(s.offset % 64, 0);
  });
});

describe('payload - corruption', () => {
  for (const codec of ['f32', 'kivi2'] as const) {
    it(`payload - a flipped byte anywhere in a ${codec} payload is detected`, () => {
      const payload = encodeBlockPayload(kernels, codec, dims, randomLayers(dims));
      // Every header byte and every 7th byte after it, plus random positions: all must be caught.
      const positions = new Set<number>();
      for (let i = 0; i < payload.length; i += i < 256 ? 1 : 7) positions.add(i);
      for (let i = 0; i < 200; i++) positions.add(randomInt(payload.length));
      for (const pos of positions) {
        const bad = payload.slice();
        bad[pos] = (bad[pos] as number) ^ (1 << randomInt(8));
        assert.throws(() => verifyBlockPayload(kernels, bad), CorruptDataError, `flip at ${pos} undetected`);
      }
    });
  }

  it('payload - a flip inside one section fails that layer only', () => {
    const payload = encodeBlockPayload(kernels, 'kivi4', dims, randomLayers(dims));
    const header = parseBlockHeader(kernels, payload);
    const target = header.sections[2];
    assert.ok(target);
    const bad = payload.slice();
    bad[target.offset + 5] = (bad[target.offset + 5] as number) ^ 0x10;
    const badHeader = parseBlockHeader(kernels, bad);
    assert.doesNotThrow(() => readLayerSection(kernels, bad, badHeader, 0));
    assert.throws(() => readLayerSection(kernels, bad, badHeader, 2), /section 2 checksum mismatch/);
    assert.throws(() => decodeBlockLayer(kernels, bad, 2), CorruptDataError);
  });

  it('payload - truncated or extended payloads are corrupt', () => {
    const payload = encodeBlockPayload(kernels, 'f16', dims, randomLayers(dims));
    for (const len of [0, 1, 8, HEADER_FIXED_BYTES, headerBytesFor(dims.layers), payload.length - 1]) {
      assert.throws(
        () => verifyBlockPayload(kernels, payload.subarray(0, len)),
        CorruptDataError,
        `length ${len}`,
      );
    }
    const longer = new Uint8Array(payload.length + 64);
    longer.set(payload);
    assert.throws(() => verifyBlockPayload(kernels, longer), /does not match the recorded/);
  });

  it('payload - a newer version with a valid header checksum is unsupported, not corrupt', () => {
    const payload = encodeBlockPayload(kernels, 'f32', dims, randomLayers(dims));
    const view = new DataView(payload.buffer, payload.byteOffset);
    view.setUint16(4, 2, true);
    const headerBytes = headerBytesFor(dims.layers);
    payload.set(kernels.hash128(payload.subarray(0, headerBytes - 8)).subarray(0, 8), headerBytes - 8);
    assert.throws(() => parseBlockHeader(kernels, payload), UnsupportedPayloadVersionError);
  });
});

describe('payload - bad input', () => {
  it('payload - wrong layer count, layer index and dims are typed errors naming the value', () => {
    const layers = randomLayers(dims);
    assert.throws(
      () => encodeBlockPayload(kernels, 'f32', dims, layers.slice(1)),
      /expected 3 layers of K\/V, got 2/,
    );
    assert.throws(() => encodeBlockPayload(kernels, 'f32', { ...dims, layers: 0 }, []), InvalidArgumentError);
    const payload = encodeBlockPayload(kernels, 'f32', dims, layers);
    assert.throws(() => decodeBlockLayer(kernels, payload, 3), /layer 3 out of range/);
    assert.throws(() => decodeBlockLayer(kernels, payload, -1), InvalidArgumentError);
  });
});
