import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { referenceCodec } from '../src/reference/codec.ts';
import { CODEC_NAMES, type CodecName, type LayerDims } from '../src/types.ts';
import { codecBits } from '../src/validate.ts';
import { loadNative, Rng, type CodecKernels } from './support.ts';

const rng = new Rng();
console.log(`# codec tests seed ${rng.seed} (replay: KVMESH_TEST_SEED=${rng.seed})`);
const { native } = loadNative();

// Shapes covering every group size, a group count that is not a power of two (48 / 16) and the
// largest block.
const SHAPES: LayerDims[] = [
  { kvHeads: 2, blockTokens: 48, headDim: 64, groupSize: 16 },
  { kvHeads: 1, blockTokens: 64, headDim: 128, groupSize: 32 },
  { kvHeads: 2, blockTokens: 128, headDim: 64, groupSize: 64 },
  { kvHeads: 1, blockTokens: 256, headDim: 128, groupSize: 128 },
];

/** K with per-channel offsets and an outlier channel, V plain normal; one constant group in each (scale 0). */
function randomLayer(dims: LayerDims): { k: Float32Array; v: Float32Array } {
  const { kvHeads, blockTokens: B, headDim: D, groupSize: G } = dims;
  const k = rng.normals(kvHeads * B * D);
  const v = rng.normals(kvHeads * B * D);
  const offsets = Float32Array.from({ length: D }, () => rng.normal() * 2);
  for (let i = 0; i < k.length; i++) {
    const d = i % D;
    k[i] = (k[i] as number) * (d === 3 ? 10 : 1) + (offsets[d] as number);
  }
  for (let t = 0; t < G; t++) k[t * D] = 1.25;
  for (let d = 0; d < G; d++) v[d] = -0.75;
  return { k, v };
}

function keyIndex(dims: LayerDims, h: number, t: number, d: number): number {
  return (h * dims.blockTokens + t) * dims.headDim + d;
}

/**
 * Worst-case |x − x̂| of a KIVI group with this min and max: half a step of the f16 scale, plus what
 * f16 rounding of the scale and zero can push outside the representable range (2^-11 relative each),
 * plus f32 rounding slack.
 */
function kiviBound(min: number, max: number, bits: number): number {
  const range = max - min;
  const f16Slack = 2 ** -11 * (Math.abs(min) + range);
  return (range / ((1 << bits) - 1) / 2) * (1 + 2 ** -10) + f16Slack + 1e-6 * (Math.abs(min) + range);
}

/** Checks the roundtrip error of every element against its group's bound; returns the worst ratio. */
function checkRoundtrip(
  codec: CodecName,
  dims: LayerDims,
  x: { k: Float32Array; v: Float32Array },
  y: typeof x,
): void {
  const { kvHeads, blockTokens: B, headDim: D, groupSize: G } = dims;
  if (codec === 'f32') {
    assert.deepEqual(y.k, x.k);
    assert.deepEqual(y.v, x.v);
    return;
  }
  if (codec === 'f16') {
    for (const name of ['k', 'v'] as const) {
      x[name].forEach((xi, i) => {
        const err = Math.abs(xi - (y[name][i] as number));
        assert.ok(err <= 2 ** -11 * Math.abs(xi) + 2 ** -25, `${name}[${i}] ${xi} -> ${y[name][i]}`);
      });
    }
    return;
  }
  const bits = codecBits(codec);
  const check = (name: 'k' | 'v', indices: number[]): void => {
    const values = indices.map((i) => x[name][i] as number);
    const bound = kiviBound(Math.min(...values), Math.max(...values), bits);
    for (const i of indices) {
      const err = Math.abs((x[name][i] as number) - (y[name][i] as number));
      assert.ok(err <= bound, `${codec} ${name}[${i}]: |${x[name][i]} - ${y[name][i]}| = ${err} > ${bound}`);
    }
  };
  for (let h = 0; h < kvHeads; h++) {
    for (let g = 0; g < B / G; g++) {
      for (let d = 0; d < D; d++) {
        check(
          'k',
          Array.from({ length: G }, (_, j) => keyIndex(dims, h, g * G + j, d)),
        );
      }
    }
    for (let t = 0; t < B; t++) {
      for (let g = 0; g < D / G; g++) {
        check(
          'v',
          Array.from({ length: G }, (_, j) => keyIndex(dims, h, t, g * G + j)),
        );
      }
    }
  }
}

describe('codec - layout', () => {
  it('codec - sectionBytes gives 32/16/9/5/3 bits per element at G=32', () => {
    const dims = { kvHeads: 4, blockTokens: 64, headDim: 128, groupSize: 32 };
    const elements = 2 * 4 * 64 * 128;
    const bits = CODEC_NAMES.map((c) => (referenceCodec.sectionBytes(c, dims) * 8) / elements);
    assert.deepEqual(bits, [32, 16, 9, 5, 3]);
  });
});

describe('codec - reference roundtrip', () => {
  for (const codec of CODEC_NAMES) {
    it(`codec - reference ${codec} roundtrip stays within its error bound`, () => {
      for (const dims of SHAPES) {
        const layer = randomLayer(dims);
        const section = referenceCodec.encodeLayer(codec, dims, layer.k, layer.v);
        assert.equal(section.length, referenceCodec.sectionBytes(codec, dims));
        checkRoundtrip(codec, dims, layer, referenceCodec.decodeLayer(codec, dims, section));
      }
    });
  }
});

describe('codec - native parity', { skip: native === null }, () => {
  for (const isa of native?.isas ?? []) {
    for (const codec of CODEC_NAMES) {
      it(`codec - native ${isa} ${codec} encodes the reference bytes exactly and decodes them exactly`, (t) => {
        t.after(() => native?.resetIsa());
        native!.useIsa(isa);
        for (const dims of SHAPES) {
          const layer = randomLayer(dims);
          const expected = referenceCodec.encodeLayer(codec, dims, layer.k, layer.v);
          const got = native!.codec.encodeLayer(codec, dims, layer.k, layer.v);
          const firstDiff = got.findIndex((b, i) => b !== expected[i]);
          assert.equal(firstDiff, -1, `first differing byte ${firstDiff} for ${JSON.stringify(dims)}`);
          // A section that is not 4-byte aligned in its buffer must decode the same.
          const shifted = new Uint8Array(expected.length + 1).subarray(1);
          shifted.set(expected);
          const decoded = native!.codec.decodeLayer(codec, dims, shifted);
          const refDecoded = referenceCodec.decodeLayer(codec, dims, expected);
          assert.deepEqual(decoded.k, refDecoded.k);
          assert.deepEqual(decoded.v, refDecoded.v);
          checkRoundtrip(codec, dims, layer, decoded);
        }
      });
    }
  }
});

const backends: [string, CodecKernels][] = [['reference', referenceCodec]];
if (native) backends.push(['native', native.codec]);

describe('codec - bad input', () => {
  const dims: LayerDims = { kvHeads: 2, blockTokens: 32, headDim: 32, groupSize: 16 };
  const n = 2 * 32 * 32;
  for (const [name, kernels] of backends) {
    const rejects = (fn: () => unknown, pattern: RegExp): void => {
      assert.throws(fn, (err: unknown) => err instanceof InvalidArgumentError && pattern.test(err.message));
    };
    it(`codec - ${name} rejects bad shapes and unknown codecs, naming the value`, () => {
      const k = rng.normals(n);
      const v = rng.normals(n);
      rejects(() => kernels.encodeLayer('kivi3' as CodecName, dims, k, v), /"kivi3"/);
      rejects(() => kernels.sectionBytes('f64' as CodecName, dims), /"f64"/);
      rejects(() => kernels.encodeLayer('f16', { ...dims, blockTokens: 40 }, k, v), /blockTokens.*40/);
      rejects(() => kernels.encodeLayer('f16', { ...dims, headDim: 24 }, k, v), /headDim.*24/);
      rejects(() => kernels.encodeLayer('kivi4', { ...dims, groupSize: 48 }, k, v), /groupSize.*48/);
      rejects(
        () => kernels.sectionBytes('kivi4', { ...dims, blockTokens: 48, groupSize: 32 }),
        /groupSize 32.*48/,
      );
      rejects(() => kernels.encodeLayer('kivi4', { ...dims, kvHeads: 0 }, k, v), /kvHeads.*0/);
      rejects(
        () => kernels.encodeLayer('kivi4', dims, k.subarray(1), v),
        /k has 2047 elements, expected 2048/,
      );
      rejects(() => kernels.encodeLayer('kivi4', dims, k, new Float32Array(n + 16)), /v has 2064/);
      const section = referenceCodec.encodeLayer('kivi2', dims, k, v);
      rejects(
        () => kernels.decodeLayer('kivi2', dims, section.subarray(1)),
        /section has \d+ bytes, expected/,
      );
      rejects(() => kernels.decodeLayer('kivi4', dims, section), /expected \d+ for kivi4/);
    });
    it(`codec - ${name} rejects non-finite and out-of-f16-range inputs with tensor and index`, () => {
      for (const codec of CODEC_NAMES) {
        const k = rng.normals(n);
        const v = rng.normals(n);
        const at = 1 + rng.int(n - 1);
        k[at] = Number.NaN;
        rejects(() => kernels.encodeLayer(codec, dims, k, v), new RegExp(`k\\[${at}\\] = NaN is not finite`));
        k[at] = 1;
        v[at] = -Infinity;
        rejects(
          () => kernels.encodeLayer(codec, dims, k, v),
          new RegExp(`v\\[${at}\\] = -Infinity is not finite`),
        );
        v[at] = 70000;
        if (codec === 'f32') {
          assert.equal(kernels.encodeLayer(codec, dims, k, v).length, kernels.sectionBytes(codec, dims));
        } else {
          rejects(() => kernels.encodeLayer(codec, dims, k, v), new RegExp(`v\\[${at}\\] = 70000 exceeds`));
        }
      }
    });
  }
});
