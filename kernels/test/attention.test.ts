import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { referenceAttention } from '../src/reference/attention.ts';
import { referenceCodec } from '../src/reference/codec.ts';
import {
  CODEC_NAMES,
  type AttentionArgs,
  type AttentionBlock,
  type CodecName,
  type LayerDims,
  type PartialAttention,
} from '../src/types.ts';
import { loadNative, maxRelDiff, relL2, Rng, type AttentionKernels } from './support.ts';

const rng = new Rng();
console.log(`# attention tests seed ${rng.seed} (replay: KVMESH_TEST_SEED=${rng.seed})`);
const { native } = loadNative();

// GQA 4 (queryHeads = 4 · kvHeads), a group count that is not a power of two, and a second shape
// with 8 query heads per kv head (two passes of the native 4-head tile).
const DIMS: LayerDims = { kvHeads: 2, blockTokens: 48, headDim: 64, groupSize: 16 };
const QUERY_HEADS = 8;
const WIDE: LayerDims = { kvHeads: 1, blockTokens: 64, headDim: 128, groupSize: 32 };

/** Relative L2 tolerance of native vs reference: f32 summation order only (kivi adds the folded zero terms). */
const TOLERANCE: Record<CodecName, number> = { f32: 1e-5, f16: 1e-5, kivi8: 1e-4, kivi4: 1e-4, kivi2: 1e-4 };
/**
 * Floor of the l and m tolerance. Both carry the absolute rounding of the scores: the scalar kernel
 * sums a 128-term f32 dot product serially, and over 2000 seeds of the wide shape its l drifted up
 * to 1.3e-5 relative to the reference (the vector kernels stay under 3.2e-6).
 */
const SCORE_TOLERANCE = 5e-5;

function randomKv(dims: LayerDims): { k: Float32Array; v: Float32Array } {
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  const k = rng.normals(n);
  const offsets = Float32Array.from({ length: dims.headDim }, () => rng.normal() * 2);
  for (let i = 0; i < n; i++) k[i] = (k[i] as number) + (offsets[i % dims.headDim] as number);
  return { k, v: rng.normals(n) };
}

function randomBlocks(dims: LayerDims, codecs: CodecName[], tailTokens?: number): AttentionBlock[] {
  return codecs.map((codec, i) => {
    const { k, v } = randomKv(dims);
    const block: AttentionBlock = { codec, section: referenceCodec.encodeLayer(codec, dims, k, v) };
    if (i === codecs.length - 1 && tailTokens !== undefined) block.tokens = tailTokens;
    return block;
  });
}

function args(dims: LayerDims, queryHeads: number, blocks: AttentionBlock[], scale?: number): AttentionArgs {
  const a: AttentionArgs = { dims, queryHeads, query: rng.normals(queryHeads * dims.headDim), blocks };
  if (scale !== undefined) a.scale = scale;
  return a;
}

function assertClose(
  got: PartialAttention,
  want: PartialAttention,
  tol: number,
  what: string,
  scoreTol = tol,
): void {
  const err = relL2(got.o, want.o);
  assert.ok(err <= tol, `${what}: o relative L2 error ${err} > ${tol}`);
  assert.ok(maxRelDiff(got.l, want.l) <= scoreTol, `${what}: l differs ${maxRelDiff(got.l, want.l)}`);
  got.m.forEach((m, h) => {
    assert.ok(
      Math.abs(m - (want.m[h] as number)) <= scoreTol * Math.max(1, Math.abs(want.m[h] as number)),
      `${what}: m[${h}]`,
    );
  });
}

/** Attention of one query head computed directly from decoded K/V, to pin the GQA mapping and definition. */
function naiveHead(a: AttentionArgs, h: number): { o: number[]; m: number; l: number } {
  const { kvHeads, blockTokens: B, headDim: D } = a.dims;
  const kv = Math.floor(h / (a.queryHeads / kvHeads));
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const scores: number[] = [];
  const rows: number[][] = [];
  for (const block of a.blocks) {
    const { k, v } = referenceCodec.decodeLayer(block.codec, a.dims, block.section);
    for (let t = 0; t < (block.tokens ?? B); t++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += (a.query[h * D + d] as number) * (k[(kv * B + t) * D + d] as number);
      scores.push(s * scale);
      rows.push(Array.from(v.subarray((kv * B + t) * D, (kv * B + t + 1) * D)));
    }
  }
  const m = scores.reduce((x, y) => Math.max(x, y), -Infinity);
  const p = scores.map((s) => Math.exp(s - m));
  const l = p.reduce((x, y) => x + y, 0);
  const o = Array.from(
    { length: D },
    (_, d) => p.reduce((acc, pi, i) => acc + pi * (rows[i]![d] as number), 0) / l,
  );
  return { o, m, l };
}

describe('attention - reference definition', () => {
  it('attention - reference matches a per-head computation with query head h on kv head floor(h / 4)', () => {
    const a = args(DIMS, QUERY_HEADS, randomBlocks(DIMS, ['f32', 'kivi4', 'f16'], 29));
    const got = referenceAttention.attention(a);
    for (let h = 0; h < QUERY_HEADS; h++) {
      const want = naiveHead(a, h);
      const o = got.o.subarray(h * DIMS.headDim, (h + 1) * DIMS.headDim);
      assert.ok(relL2(o, Float32Array.from(want.o)) < 1e-6, `head ${h}`);
      assert.ok(Math.abs((got.l[h] as number) - want.l) / want.l < 1e-6, `head ${h} l`);
      assert.ok(Math.abs((got.m[h] as number) - want.m) < 1e-6, `head ${h} m`);
    }
  });

  it('attention - blocks with tokens: 0 add nothing; over no tokens o = 0, m = -Infinity, l = 0', () => {
    const blocks = randomBlocks(DIMS, ['kivi2', 'f16']);
    const empty = { ...blocks[0]!, tokens: 0 };
    const q = rng.normals(QUERY_HEADS * DIMS.headDim);
    const base = referenceAttention.attention({ dims: DIMS, queryHeads: QUERY_HEADS, query: q, blocks });
    const withEmpty = referenceAttention.attention({
      dims: DIMS,
      queryHeads: QUERY_HEADS,
      query: q,
      blocks: [blocks[0]!, empty, blocks[1]!],
    });
    assert.deepEqual(withEmpty, base);
    const none = referenceAttention.attention({
      dims: DIMS,
      queryHeads: QUERY_HEADS,
      query: q,
      blocks: [empty],
    });
    assert.deepEqual(none.o, new Float32Array(QUERY_HEADS * DIMS.headDim));
    assert.deepEqual(none.m, new Float32Array(QUERY_HEADS).fill(-Infinity));
    assert.deepEqual(none.l, new Float32Array(QUERY_HEADS));
  });
});

const backends: [string, AttentionKernels][] = [['reference', referenceAttention]];
if (native) backends.push(['native', native.attention]);

describe('attention - mergePartials', () => {
  for (const [name, kernels] of backends) {
    it(`attention - ${name} merge of split block lists equals attention over all blocks`, () => {
      const blocks = randomBlocks(DIMS, ['kivi4', 'f32', 'kivi8', 'f16', 'kivi2'], 11);
      const a = args(DIMS, QUERY_HEADS, blocks);
      const whole = kernels.attention(a);
      const parts = [
        kernels.attention({ ...a, blocks: blocks.slice(0, 2) }),
        kernels.attention({ ...a, blocks: [{ ...blocks[0]!, tokens: 0 }] }), // l = 0: ignored
        kernels.attention({ ...a, blocks: blocks.slice(2, 3) }),
        kernels.attention({ ...a, blocks: blocks.slice(3) }),
      ];
      assertClose(kernels.mergePartials(parts, QUERY_HEADS, DIMS.headDim), whole, 1e-5, 'merged');
      const nothing = kernels.mergePartials([], QUERY_HEADS, DIMS.headDim);
      assert.deepEqual(nothing.m, new Float32Array(QUERY_HEADS).fill(-Infinity));
    });
  }
  if (native) {
    it('attention - native mergePartials matches the reference merge', () => {
      const parts = [0, 1, 2].map(() =>
        referenceAttention.attention(args(DIMS, QUERY_HEADS, randomBlocks(DIMS, ['f32']))),
      );
      assertClose(
        native.attention.mergePartials(parts, QUERY_HEADS, DIMS.headDim),
        referenceAttention.mergePartials(parts, QUERY_HEADS, DIMS.headDim),
        1e-6,
        'merge',
      );
    });
  }
});

describe('attention - native parity', { skip: native === null }, () => {
  for (const isa of native?.isas ?? []) {
    for (const codec of CODEC_NAMES) {
      it(`attention - native ${isa} ${codec} matches the reference (GQA 4, partial tail, rel L2 <= ${TOLERANCE[codec]})`, (t) => {
        t.after(() => native?.resetIsa());
        native!.useIsa(isa);
        for (const tail of [DIMS.blockTokens - 5, 1]) {
          const a = args(DIMS, QUERY_HEADS, randomBlocks(DIMS, [codec, codec, codec], tail));
          assertClose(
            native!.attention.attention(a),
            referenceAttention.attention(a),
            TOLERANCE[codec],
            `tail ${tail}`,
            Math.max(TOLERANCE[codec], SCORE_TOLERANCE),
          );
        }
        const wide = args(WIDE, 8, randomBlocks(WIDE, [codec, codec], 37), 0.3);
        assertClose(
          native!.attention.attention(wide),
          referenceAttention.attention(wide),
          TOLERANCE[codec],
          'wide',
          Math.max(TOLERANCE[codec], SCORE_TOLERANCE),
        );
        const mha = args(WIDE, 1, randomBlocks(WIDE, [codec], 50));
        assertClose(
          native!.attention.attention(mha),
          referenceAttention.attention(mha),
          TOLERANCE[codec],
          'mha',
          Math.max(TOLERANCE[codec], SCORE_TOLERANCE),
        );
      });

      it(`attention - native ${isa} ${codec} equals attention over the decoded block stored as f32`, (t) => {
        t.after(() => native?.resetIsa());
        native!.useIsa(isa);
        const blocks = randomBlocks(DIMS, [codec, codec], 20);
        const asF32 = blocks.map((b) => {
          const { k, v } = referenceCodec.decodeLayer(b.codec, DIMS, b.section);
          return { ...b, codec: 'f32' as const, section: referenceCodec.encodeLayer('f32', DIMS, k, v) };
        });
        const a = args(DIMS, QUERY_HEADS, blocks);
        assertClose(
          native!.attention.attention(a),
          native!.attention.attention({ ...a, blocks: asF32 }),
          TOLERANCE[codec],
          'decoded',
        );
      });
    }
    it(`attention - native ${isa} mixed codecs, attentionAsync equals attention, empty blocks`, async (t) => {
      t.after(() => native?.resetIsa());
      native!.useIsa(isa);
      const a = args(DIMS, QUERY_HEADS, randomBlocks(DIMS, ['kivi2', 'f16', 'kivi8', 'f32', 'kivi4'], 7));
      const sync = native!.attention.attention(a);
      assertClose(sync, referenceAttention.attention(a), 1e-4, 'mixed');
      assert.deepEqual(await native!.attention.attentionAsync(a), sync);
      const none = native!.attention.attention({ ...a, blocks: [{ ...a.blocks[0]!, tokens: 0 }] });
      assert.deepEqual(
        none,
        referenceAttention.attention({ ...a, blocks: [{ ...a.blocks[0]!, tokens: 0 }] }),
      );
    });
  }
});

describe('attention - bad input', () => {
  const blocks = randomBlocks(DIMS, ['kivi4']);
  const good = args(DIMS, QUERY_HEADS, blocks);
  const cases: [string, AttentionArgs, RegExp][] = [
    ['empty block list', { ...good, blocks: [] }, /empty block list/],
    [
      'queryHeads not a multiple of kvHeads',
      { ...good, queryHeads: 3, query: rng.normals(3 * 64) },
      /queryHeads 3/,
    ],
    ['query length', { ...good, query: rng.normals(10) }, /query has 10 elements, expected 512/],
    ['tokens > blockTokens', { ...good, blocks: [{ ...blocks[0]!, tokens: 49 }] }, /tokens.*49/],
    [
      'section length',
      { ...good, blocks: [{ ...blocks[0]!, codec: 'kivi2' }] },
      /section has \d+ bytes, expected \d+ for kivi2/,
    ],
    ['unknown codec', { ...good, blocks: [{ ...blocks[0]!, codec: 'int3' as CodecName }] }, /"int3"/],
    ['non-finite scale', { ...good, scale: Number.NaN }, /scale.*NaN/],
    ['bad dims', { ...good, dims: { ...DIMS, groupSize: 32 } }, /groupSize 32.*48/],
  ];
  const nanQuery = rng.normals(QUERY_HEADS * 64);
  nanQuery[77] = Number.POSITIVE_INFINITY;
  cases.push(['non-finite query', { ...good, query: nanQuery }, /query\[77\] = Infinity/]);
  const isBad = (pattern: RegExp) => (err: unknown) =>
    err instanceof InvalidArgumentError && pattern.test(err.message);
  for (const [name, kernels] of backends) {
    it(`attention - ${name} rejects bad input with InvalidArgumentError naming the value`, async () => {
      for (const [what, a, pattern] of cases) {
        assert.throws(() => kernels.attention(a), isBad(pattern), what);
        await assert.rejects(kernels.attentionAsync(a), isBad(pattern), what);
      }
      const part = kernels.attention(good);
      assert.throws(
        () => kernels.mergePartials([part], QUERY_HEADS, 32),
        isBad(/parts\[0\]\.o has 512 elements, expected 256/),
      );
      assert.throws(
        () =>
          kernels.mergePartials([{ ...part, l: new Float32Array(QUERY_HEADS).fill(-1) }], QUERY_HEADS, 64),
        isBad(/parts\[0\]\.l\[0\] = -1/),
      );
    });
  }
});
