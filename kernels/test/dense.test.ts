import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import type { DenseKernels, PrefillAttentionArgs } from '../src/dense-types.ts';
import { referenceAttention } from '../src/reference/attention.ts';
import { referenceCodec } from '../src/reference/codec.ts';
import { referenceDense } from '../src/reference/dense.ts';
import { ropeInvFreq } from '../src/rope.ts';
import type { AttentionBlock, CodecName, LayerDims } from '../src/types.ts';
import { loadNative, relL2, Rng, type AttentionKernels } from './support.ts';

const rng = new Rng();
console.log(`# dense tests seed ${rng.seed} (replay: KVMESH_TEST_SEED=${rng.seed})`);
const { native } = loadNative();

/** Rel. L2 of native vs reference per op (f32 rounding order only; GEMM and attention sum long dot products). */
const TOL = {
  matmul: 1e-5,
  elementwise: 1e-6,
  rope: 1e-5,
  prefillF32: 1e-5,
  prefillKivi: 1e-4,
  decode: 1e-5,
};

function assertRel(got: Float32Array, want: Float32Array, tol: number, what: string): number {
  const err = relL2(got, want);
  assert.ok(err <= tol, `${what}: relative L2 error ${err} > ${tol}`);
  return err;
}

/** Runs `body` on every ISA of the native build (restoring the best one after). */
function onEachIsa(name: string, body: (dense: DenseKernels, isa: string) => void): void {
  for (const isa of native?.isas ?? []) {
    it(`dense - native ${isa} ${name}`, (t) => {
      t.after(() => native?.resetIsa());
      native!.useIsa(isa);
      body(native!.dense, isa);
    });
  }
}

describe('dense - ropeInvFreq', () => {
  it('dense - ropeInvFreq without scaling is theta^(-2i/D)', () => {
    const inv = ropeInvFreq({ headDim: 64, theta: 10000 });
    assert.equal(inv.length, 32);
    assert.equal(inv[0], 1);
    assert.equal(inv[1], Math.fround(10000 ** (-2 / 64)));
    assert.equal(inv[31], Math.fround(10000 ** (-62 / 64)));
    const linear = ropeInvFreq({ headDim: 64, theta: 10000, scaling: { kind: 'linear', factor: 4 } });
    assert.equal(linear[5], Math.fround(10000 ** (-10 / 64) / 4));
    assert.deepEqual(referenceDense.ropeInvFreq({ headDim: 64, theta: 10000 }), inv);
    if (native) assert.deepEqual(native.dense.ropeInvFreq({ headDim: 64, theta: 10000 }), inv);
  });

  it('dense - ropeInvFreq llama3 keeps high, divides low and interpolates middle frequencies', () => {
    // Llama 3.1 8B: theta 500000, D 128, factor 8, low 1, high 4, original 8192; values computed by
    // hand (Python, double) from Meta's apply_scaling: wavelengths < 2048 kept, > 8192 divided by 8.
    const inv = ropeInvFreq({
      headDim: 128,
      theta: 500000,
      scaling: {
        kind: 'llama3',
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalContextTokens: 8192,
      },
    });
    const expected: [number, number][] = [
      [0, 1.0], // keep
      [28, 0.0032114461064338684], // wavelength 1956: keep
      [29, 0.0021665708627551794], // smooth 0.8036
      [30, 0.0013718935661017895], // smooth 0.5928
      [34, 0.00017850780568551272], // smooth 0.0745
      [35, 9.556212171446532e-5], // wavelength 8219: / 8
      [63, 3.068925877869333e-7], // / 8
    ];
    for (const [i, want] of expected) {
      assert.ok(
        Math.abs((inv[i] as number) - want) <= want * 1e-7,
        `invFreq[${i}] = ${inv[i]}, want ${want}`,
      );
    }
  });
});

const MATMUL_SHAPES: [number, number, number, boolean][] = [
  [1, 64, 96, false],
  [1, 37, 53, true],
  [5, 33, 17, true],
  [8, 128, 200, false],
  [3, 100, 301, true],
  // N·K >= 2^19 splits the small-M path over threads; odd N and K exercise the range and lane tails.
  [8, 768, 1000, false],
  [3, 601, 1001, true],
  [17, 67, 129, true],
  [64, 96, 80, false],
  // M·N·K >= 2^23: OpenBLAS keeps its threads (below, the call runs on one).
  [40, 520, 410, true],
];

describe('dense - native parity', { skip: native === null }, () => {
  onEachIsa(
    `matmul matches the reference (M = 1 and odd shapes, bias, 1 and 2 threads; rel L2 <= ${TOL.matmul})`,
    (dense) => {
      const before = dense.threads();
      try {
        for (const threads of [1, 2]) {
          dense.setThreads(threads);
          assert.ok(dense.threads() >= 1 && dense.threads() <= threads, `threads() = ${dense.threads()}`);
          for (const [M, K, N, withBias] of MATMUL_SHAPES) {
            const x = rng.normals(M * K);
            const w = rng.normals(N * K, 0.1);
            const bias = withBias ? rng.normals(N) : undefined;
            const want = new Float32Array(M * N);
            const got = rng.normals(M * N); // garbage in the output must be overwritten
            referenceDense.matmul(x, w, want, M, K, N, bias);
            dense.matmul(x, w, got, M, K, N, bias);
            assertRel(got, want, TOL.matmul, `matmul ${M}x${K}x${N}${withBias ? ' + bias' : ''}`);
          }
        }
      } finally {
        dense.setThreads(before);
      }
    },
  );

  onEachIsa(
    `rmsNorm, swiglu, add, embed match the reference, in place too (rel L2 <= ${TOL.elementwise})`,
    (dense) => {
      const M = 7;
      const H = 96;
      const x = rng.normals(M * H, 3);
      const weight = rng.normals(H);
      const want = new Float32Array(M * H);
      const got = new Float32Array(M * H);
      referenceDense.rmsNorm(x, weight, 1e-5, want);
      dense.rmsNorm(x, weight, 1e-5, got);
      assertRel(got, want, TOL.elementwise, 'rmsNorm');
      const inPlace = x.slice();
      dense.rmsNorm(inPlace, weight, 1e-5, inPlace);
      assert.deepEqual(inPlace, got, 'rmsNorm in place');

      const gate = rng.normals(M * H, 4);
      const up = rng.normals(M * H);
      referenceDense.swiglu(gate, up, want);
      dense.swiglu(gate, up, got);
      assertRel(got, want, TOL.elementwise, 'swiglu');
      const gateCopy = gate.slice();
      dense.swiglu(gateCopy, up, gateCopy);
      assert.deepEqual(gateCopy, got, 'swiglu in place');

      const a = rng.normals(M * H);
      const b = rng.normals(M * H);
      referenceDense.add(a, b, want);
      dense.add(a, b, got);
      assertRel(got, want, TOL.elementwise, 'add');
      dense.add(a, b, b);
      assert.deepEqual(b, got, 'add in place');

      const V = 50;
      const table = rng.normals(V * H);
      const tokens = Uint32Array.from({ length: M }, () => rng.int(V));
      tokens[0] = V - 1;
      referenceDense.embed(table, tokens, want);
      dense.embed(table, tokens, got);
      assertRel(got, want, TOL.elementwise, 'embed');
      assert.deepEqual(got.subarray(0, H), table.subarray((V - 1) * H), 'embed row of the last id');
    },
  );

  onEachIsa(
    `rope matches the reference at positions up to 100000 and keeps pair norms (rel L2 <= ${TOL.rope})`,
    (dense) => {
      const T = 9;
      const heads = 3;
      const D = 64;
      const invFreq = ropeInvFreq({ headDim: D, theta: 500000, scaling: { kind: 'linear', factor: 2 } });
      const positions = Int32Array.from({ length: T }, () => rng.int(100001));
      positions[0] = 100000;
      positions[1] = 0;
      const x = rng.normals(T * heads * D);
      const want = x.slice();
      const got = x.slice();
      referenceDense.rope(want, positions, heads, D, invFreq);
      dense.rope(got, positions, heads, D, invFreq);
      assertRel(got, want, TOL.rope, 'rope');
      for (let row = 0; row < T * heads; row++) {
        for (let i = 0; i < D / 2; i++) {
          const at = row * D + i;
          const before = Math.hypot(x[at] as number, x[at + D / 2] as number);
          const after = Math.hypot(got[at] as number, got[at + D / 2] as number);
          assert.ok(Math.abs(after - before) <= 1e-5 * Math.max(before, 1e-3), `pair norm row ${row} i ${i}`);
        }
      }
      // Position 0 is the identity (positions[1] = 0).
      for (let i = heads * D; i < 2 * heads * D; i++) assert.equal(got[i], x[i], `position 0 channel ${i}`);
    },
  );

  onEachIsa('argmax and logSoftmaxAt match the reference; exp(logSoftmaxAt) sums to 1', (dense) => {
    const n = 1000;
    const x = rng.normals(n + 5, 8);
    x[n + 2] = 1e6; // outside the first n: must be ignored
    assert.equal(dense.argmax(x, n), referenceDense.argmax(x, n));
    let sum = 0;
    for (let i = 0; i < n; i += 1) {
      const got = dense.logSoftmaxAt(x, n, i);
      const want = referenceDense.logSoftmaxAt(x, n, i);
      assert.ok(
        Math.abs(got - want) <= 1e-6 * Math.max(1, Math.abs(want)),
        `logSoftmaxAt ${i}: ${got} vs ${want}`,
      );
      sum += Math.exp(got);
    }
    assert.ok(Math.abs(sum - 1) < 1e-9, `probabilities sum to ${sum}`);
    const ties = Float32Array.from([1, 5, 5, 2]);
    assert.equal(dense.argmax(ties, 4), 1);
    assert.equal(referenceDense.argmax(ties, 4), 1);
  });
});

// --- prefill attention -----------------------------------------------------------------------

const PAST_DIMS: LayerDims = { kvHeads: 2, blockTokens: 32, headDim: 32, groupSize: 16 };

function randomBlocks(dims: LayerDims, codecs: CodecName[], tailTokens?: number): AttentionBlock[] {
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  return codecs.map((codec, i) => {
    const block: AttentionBlock = {
      codec,
      section: referenceCodec.encodeLayer(codec, dims, rng.normals(n, 1.5), rng.normals(n)),
    };
    if (i === codecs.length - 1 && tailTokens !== undefined) block.tokens = tailTokens;
    return block;
  });
}

function prefillArgs(
  queryHeads: number,
  kvHeads: number,
  headDim: number,
  T: number,
  past?: { dims: LayerDims; blocks: AttentionBlock[] },
): PrefillAttentionArgs {
  return {
    queryHeads,
    kvHeads,
    headDim,
    queries: rng.normals(T * queryHeads * headDim),
    keys: rng.normals(T * kvHeads * headDim, 1.5),
    values: rng.normals(T * kvHeads * headDim),
    past,
    out: new Float32Array(T * queryHeads * headDim),
  };
}

function runPrefill(kernels: DenseKernels, args: PrefillAttentionArgs): Float32Array {
  const out = rng.normals(args.out.length); // garbage in the output must be overwritten
  kernels.prefillAttention({ ...args, out });
  return out;
}

/** The chunk's K/V ([T][kvHeads][D]) laid out as one f32 block ([kvHeads][B][D]) with `tokens` = T. */
function chunkAsBlock(args: PrefillAttentionArgs, dims: LayerDims, T: number): AttentionBlock {
  const { kvHeads, blockTokens: B, headDim: D } = dims;
  // NOTE: rows past T are random, not zero, so a kernel that ignored `tokens` would be caught.
  const k = rng.normals(kvHeads * B * D);
  const v = rng.normals(kvHeads * B * D);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < kvHeads; h++) {
      k.set(args.keys.subarray((t * kvHeads + h) * D, (t * kvHeads + h + 1) * D), (h * B + t) * D);
      v.set(args.values.subarray((t * kvHeads + h) * D, (t * kvHeads + h + 1) * D), (h * B + t) * D);
    }
  }
  return { codec: 'f32', section: referenceCodec.encodeLayer('f32', dims, k, v), tokens: T };
}

describe('dense - prefillAttention reference definition', () => {
  it("dense - prefillAttention of one token without past is that token's value", () => {
    const a = prefillArgs(6, 2, 32, 1);
    const out = runPrefill(referenceDense, a);
    for (let h = 0; h < 6; h++) {
      const kv = Math.floor(h / 3);
      assert.ok(relL2(out.subarray(h * 32, (h + 1) * 32), a.values.subarray(kv * 32, (kv + 1) * 32)) <= 1e-7);
    }
  });

  it('dense - prefillAttention of the last chunk token equals decode attention over past + chunk (reference)', () => {
    checkDecodeInvariant(referenceDense, referenceAttention, 'reference');
  });
});

function checkDecodeInvariant(dense: DenseKernels, attention: AttentionKernels, what: string): void {
  const T = 23;
  const queryHeads = 6;
  const past = { dims: PAST_DIMS, blocks: randomBlocks(PAST_DIMS, ['kivi4', 'f32', 'f16'], 13) };
  const a = prefillArgs(queryHeads, PAST_DIMS.kvHeads, PAST_DIMS.headDim, T, past);
  const out = runPrefill(dense, a);
  const rowQ = queryHeads * PAST_DIMS.headDim;
  const decode = attention.attention({
    dims: PAST_DIMS,
    queryHeads,
    query: a.queries.slice((T - 1) * rowQ),
    blocks: [...past.blocks, chunkAsBlock(a, PAST_DIMS, T)],
  });
  assertRel(out.subarray((T - 1) * rowQ), decode.o, TOL.decode, `${what} last token vs decode attention`);
  // And token 0 of a chunk without past sees only itself.
  const first = attention.attention({
    dims: PAST_DIMS,
    queryHeads,
    query: a.queries.slice(0, rowQ),
    blocks: [...past.blocks, chunkAsBlock(a, PAST_DIMS, 1)],
  });
  assertRel(out.subarray(0, rowQ), first.o, TOL.decode, `${what} first token vs decode attention`);
}

describe('dense - prefillAttention native parity', { skip: native === null }, () => {
  const cases: [string, () => PrefillAttentionArgs, number][] = [
    [
      'f32 past (GQA 3, 70-token chunk across key tiles, partial tail)',
      () =>
        prefillArgs(6, 2, 32, 70, { dims: PAST_DIMS, blocks: randomBlocks(PAST_DIMS, ['f32', 'f32'], 19) }),
      TOL.prefillF32,
    ],
    [
      'kivi4 past',
      () =>
        prefillArgs(6, 2, 32, 40, {
          dims: PAST_DIMS,
          blocks: randomBlocks(PAST_DIMS, ['kivi4', 'kivi4'], 7),
        }),
      TOL.prefillKivi,
    ],
    [
      'mixed codecs past',
      () =>
        prefillArgs(6, 2, 32, 17, {
          dims: PAST_DIMS,
          blocks: randomBlocks(PAST_DIMS, ['kivi2', 'f16', 'kivi8', 'f32', 'kivi4'], 3),
        }),
      TOL.prefillKivi,
    ],
    ['no past', () => prefillArgs(6, 2, 32, 70), TOL.prefillF32],
    [
      'past of empty blocks only',
      () => prefillArgs(6, 2, 32, 5, { dims: PAST_DIMS, blocks: randomBlocks(PAST_DIMS, ['kivi4'], 0) }),
      TOL.prefillF32,
    ],
    [
      'MHA (1 query head per kv head), head dim 64',
      () => {
        const dims: LayerDims = { kvHeads: 3, blockTokens: 16, headDim: 64, groupSize: 16 };
        return prefillArgs(3, 3, 64, 21, { dims, blocks: randomBlocks(dims, ['f32', 'kivi8'], 9) });
      },
      TOL.prefillKivi,
    ],
    [
      'GQA 8 (two passes of 4 heads), scale 0.3',
      () => {
        const dims: LayerDims = { kvHeads: 1, blockTokens: 64, headDim: 128, groupSize: 32 };
        return {
          ...prefillArgs(8, 1, 128, 9, { dims, blocks: randomBlocks(dims, ['f16'], 50) }),
          scale: 0.3,
        };
      },
      TOL.prefillF32,
    ],
  ];
  for (const isa of native?.isas ?? []) {
    for (const [name, make, tol] of cases) {
      it(`dense - native ${isa} prefillAttention ${name} matches the reference (rel L2 <= ${tol})`, (t) => {
        t.after(() => native?.resetIsa());
        native!.useIsa(isa);
        const a = make();
        assertRel(runPrefill(native!.dense, a), runPrefill(referenceDense, a), tol, name);
      });
    }
    it(`dense - native ${isa} prefillAttention of the last chunk token equals decode attention (rel L2 <= ${TOL.decode})`, (t) => {
      t.after(() => native?.resetIsa());
      native!.useIsa(isa);
      checkDecodeInvariant(native!.dense, native!.attention, `native ${isa}`);
    });
    it(`dense - native ${isa} prefillAttention of one token without past is that token's value`, (t) => {
      t.after(() => native?.resetIsa());
      native!.useIsa(isa);
      const a = prefillArgs(4, 4, 16, 1);
      assert.deepEqual(runPrefill(native!.dense, a), a.values);
    });
  }
});

// --- bad input -------------------------------------------------------------------------------

describe('dense - bad input', () => {
  const backends: [string, DenseKernels][] = [['reference', referenceDense]];
  if (native) backends.push(['native', native.dense]);
  const isBad = (pattern: RegExp) => (err: unknown) =>
    err instanceof InvalidArgumentError && pattern.test(err.message);
  const f = (n: number): Float32Array => rng.normals(n);
  const good = prefillArgs(6, 2, 32, 3, { dims: PAST_DIMS, blocks: randomBlocks(PAST_DIMS, ['kivi4'], 5) });
  const shared = new Float32Array(40);

  const cases: [string, (k: DenseKernels) => unknown, RegExp][] = [
    ['matmul x length', (k) => k.matmul(f(10), f(12), f(9), 3, 4, 3), /x has 10 elements, expected 12/],
    ['matmul non-integer M', (k) => k.matmul(f(10), f(12), f(9), 2.5, 4, 3), /M must be .* got 2\.5/],
    [
      'matmul bias length',
      (k) => k.matmul(f(12), f(12), f(9), 3, 4, 3, f(4)),
      /bias has 4 elements, expected 3/,
    ],
    [
      'matmul y overlapping x',
      (k) => k.matmul(shared.subarray(0, 12), f(12), shared.subarray(8, 17), 3, 4, 3),
      /y must not overlap x/,
    ],
    [
      'rmsNorm x length',
      (k) => k.rmsNorm(f(10), f(4), 1e-5, f(10)),
      /x has 10 elements, not a positive multiple/,
    ],
    ['rmsNorm eps', (k) => k.rmsNorm(f(8), f(4), Number.NaN, f(8)), /eps .* got NaN/],
    [
      'rmsNorm out partly overlapping x',
      (k) => k.rmsNorm(shared.subarray(0, 8), f(4), 1e-5, shared.subarray(4, 12)),
      /out must be x itself or not overlap it/,
    ],
    ['swiglu up length', (k) => k.swiglu(f(8), f(7), f(8)), /up has 7 elements, expected 8/],
    ['add out length', (k) => k.add(f(8), f(8), f(9)), /out has 9 elements, expected 8/],
    [
      'embed token id out of range',
      (k) => k.embed(f(5 * 4), Uint32Array.from([1, 4, 1000]), f(3 * 4)),
      /token id 1000 at index 2/,
    ],
    [
      'embed tokens type',
      (k) => k.embed(f(20), [1, 2] as unknown as Uint32Array, f(8)),
      /tokens must be a Uint32Array/,
    ],
    [
      'rope position out of range',
      (k) => k.rope(f(2 * 8), Int32Array.from([3, -1]), 1, 8, f(4)),
      /positions\[1\] = -1/,
    ],
    ['rope odd headDim', (k) => k.rope(f(7), Int32Array.from([0]), 1, 7, f(3)), /headDim must be .* got 7/],
    [
      'rope invFreq length',
      (k) => k.rope(f(8), Int32Array.from([0]), 1, 8, f(8)),
      /invFreq has 8 elements, expected 4/,
    ],
    ['argmax n > length', (k) => k.argmax(f(4), 5), /n must be an integer in \[1, 4\], got 5/],
    ['logSoftmaxAt index', (k) => k.logSoftmaxAt(f(4), 3, 3), /index must be an integer in \[0, 2\], got 3/],
    ['setThreads 0', (k) => k.setThreads(0), /threads must be .* got 0/],
    [
      'prefill heads not dividing',
      (k) => k.prefillAttention({ ...good, queryHeads: 6, kvHeads: 4 }),
      /queryHeads 6 must be a multiple of kvHeads 4/,
    ],
    [
      'prefill non-integer kvHeads',
      (k) => k.prefillAttention({ ...good, kvHeads: 1.5 }),
      /kvHeads must be .* got 1\.5/,
    ],
    [
      'prefill headDim',
      (k) => k.prefillAttention({ ...good, headDim: 24 }),
      /headDim must be a multiple of 16 .* got 24/,
    ],
    [
      'prefill queries length',
      (k) => k.prefillAttention({ ...good, queries: f(100) }),
      /queries has 100 elements, not a positive multiple of queryHeads 6 x headDim 32 = 192/,
    ],
    [
      'prefill keys length',
      (k) => k.prefillAttention({ ...good, keys: f(10) }),
      /keys has 10 elements, expected 192/,
    ],
    [
      'prefill out overlapping queries',
      (k) => k.prefillAttention({ ...good, out: good.queries }),
      /out must not overlap queries/,
    ],
    [
      'prefill past dims differ',
      (k) => k.prefillAttention({ ...good, past: { ...good.past!, dims: { ...PAST_DIMS, kvHeads: 1 } } }),
      /past dims \(kvHeads 1, headDim 32\) differ/,
    ],
    [
      'prefill past section length',
      (k) =>
        k.prefillAttention({
          ...good,
          past: { dims: PAST_DIMS, blocks: [{ ...good.past!.blocks[0]!, codec: 'kivi2' }] },
        }),
      /past\.blocks\[0\]\.section has \d+ bytes, expected \d+ for kivi2/,
    ],
    [
      'prefill past tokens',
      (k) =>
        k.prefillAttention({
          ...good,
          past: { dims: PAST_DIMS, blocks: [{ ...good.past!.blocks[0]!, tokens: 33 }] },
        }),
      /past\.blocks\[0\]\.tokens must be .* got 33/,
    ],
    [
      'prefill scale',
      (k) => k.prefillAttention({ ...good, scale: Number.POSITIVE_INFINITY }),
      /scale .* got Infinity/,
    ],
  ];
  for (const [name, kernels] of backends) {
    it(`dense - ${name} rejects bad input with InvalidArgumentError naming the value`, () => {
      for (const [what, call, pattern] of cases) assert.throws(() => call(kernels), isBad(pattern), what);
    });
  }

  it('dense - ropeInvFreq rejects bad configs', () => {
    assert.throws(() => ropeInvFreq({ headDim: 63, theta: 10000 }), isBad(/headDim must be .* got 63/));
    assert.throws(() => ropeInvFreq({ headDim: 64, theta: -1 }), isBad(/theta .* got -1/));
    assert.throws(
      () =>
        ropeInvFreq({
          headDim: 64,
          theta: 10000,
          scaling: {
            kind: 'llama3',
            factor: 8,
            lowFreqFactor: 4,
            highFreqFactor: 4,
            originalContextTokens: 8192,
          },
        }),
      isBad(/highFreqFactor 4 must exceed lowFreqFactor 4/),
    );
    assert.throws(
      () => ropeInvFreq({ headDim: 64, theta: 10000, scaling: { kind: 'yarn' } as never }),
      isBad(/unknown scaling kind "yarn"/),
    );
  });
});
