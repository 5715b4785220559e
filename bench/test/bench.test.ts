// Smoke tests of the bench suites: each runs on a small shape and prints its JSON contract on the
// last stdout line. Quality figures that do not depend on timing (compression ratios, attention
// error) are asserted against the foundation issue's targets; throughput numbers are not.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { assertMeshPolicies, bench, meshSmokeArgs, withTinyModel } from './helpers.ts';

interface CodecFigures {
  ratioVsF32: number;
  encodeGBps: number;
  decodeGBps: number;
  attnGBps: number;
  attnRelErr: number;
  attnRelErrPerTokenKeys: number | null;
}

describe('bench - suites', () => {
  it('bench - codec prints its contract and meets the ratio and error targets', () => {
    const out = bench('codec', '--context', '1024', '--seconds', '0.05');
    assert.equal(out.suite, 'codec');
    assert.ok((out.memcpyGBps as number) > 0);
    const codecs = out.codecs as Record<string, CodecFigures>;
    assert.deepEqual(Object.keys(codecs).sort(), ['f16', 'f32', 'kivi2', 'kivi4', 'kivi8']);
    for (const figures of Object.values(codecs)) {
      for (const key of ['encodeGBps', 'decodeGBps', 'attnGBps'] as const) assert.ok(figures[key] > 0);
    }
    const { kivi8, kivi4, kivi2 } = codecs as Record<'kivi8' | 'kivi4' | 'kivi2', CodecFigures>;
    assert.ok(kivi4.ratioVsF32 >= 6, `kivi4 ratio ${kivi4.ratioVsF32}`);
    assert.ok(kivi2.ratioVsF32 >= 10, `kivi2 ratio ${kivi2.ratioVsF32}`);
    assert.ok(kivi8.attnRelErr <= 0.02, `kivi8 attnRelErr ${kivi8.attnRelErr}`);
    for (const [name, c] of Object.entries({ kivi4, kivi2 })) {
      assert.ok(
        c.attnRelErr <= 0.5 * (c.attnRelErrPerTokenKeys as number),
        `${name}: ${c.attnRelErr} vs per-token keys ${c.attnRelErrPerTokenKeys}`,
      );
    }
  });

  it('bench - hash prints its contract and the three implementations agree', () => {
    const out = bench('hash', '--tokens', '8192', '--runs', '5');
    assert.equal(out.suite, 'hash');
    assert.equal(out.blocks, 128);
    assert.ok(((out.native as Record<string, number>).msMedian as number) > 0);
  });
  it('bench - dense prints its contract (GEMM GFLOP/s per shape and thread count, prefill tokens/s)', () => {
    const out = bench('dense', '--seconds', '0.01');
    assert.equal(out.suite, 'dense');
    for (const row of Object.values(out.matmulGflops as Record<string, Record<string, number>>)) {
      assert.equal(Object.keys(row).length, 9);
      for (const g of Object.values(row)) assert.ok(g > 0);
    }
    const p = (out.prefillAttention as { tokensPerSecond: Record<string, number> }).tokensPerSecond;
    assert.deepEqual(Object.keys(p).sort(), ['past0', 'past1024_f32', 'past1024_kivi4']);
  });

  it('bench - tier prints its contract: far and SSD throughput beside memcpy and dd in the same run', () => {
    const out = bench('tier', '--blocks', '8', '--concurrency', '2', '--batch', '4');
    assert.equal(out.suite, 'tier');
    const far = out.far as Record<string, number>;
    const ssd = out.ssd as Record<string, number>;
    const ratio = out.ratio as Record<string, number>;
    assert.deepEqual(Object.keys(far).sort(), ['memcpyGBps', 'readGBps', 'writeGBps']);
    assert.deepEqual(Object.keys(ssd).sort(), ['rawReadGBps', 'rawWriteGBps', 'readGBps', 'writeGBps']);
    assert.deepEqual(Object.keys(ratio).sort(), ['farRead', 'ssdRead', 'ssdWrite']);
    for (const v of [...Object.values(far), ...Object.values(ssd), ...Object.values(ratio)])
      assert.ok(Number.isFinite(v) && v > 0, JSON.stringify(out));
    assert.equal(out.blocks, 8);
  });
});

describe('bench - engine suite', () => {
  it('bench - engine prints its contract on a tiny model, with llama.cpp parity', () => {
    withTinyModel('engine', (modelDir) => {
      const out = bench(
        'engine',
        '--model',
        modelDir,
        '--prompt-tokens',
        '64',
        '--decode-tokens',
        '4',
        '--runs',
        '1',
        '--parity-prompts',
        '2',
      );
      assert.equal(out.suite, 'engine');
      assert.ok(Number.isInteger(out.threads));
      const kvmesh = out.kvmesh as Record<string, number>;
      const llamacpp = out.llamacpp as Record<string, number>;
      for (const key of ['prefillTokps', 'decodeTokps', 'decodeTokpsBatch8'])
        assert.ok((kvmesh[key] as number) > 0);
      for (const key of ['prefillTokps', 'decodeTokps']) assert.ok((llamacpp[key] as number) > 0);
      const ratio = out.ratio as Record<string, number>;
      assert.ok((ratio.prefill as number) > 0 && (ratio.decode as number) > 0);
      const parity = out.parity as { logitsRelErrMax: number; greedyMatch: boolean; prompts: number };
      assert.equal(parity.prompts, 2);
      assert.ok(parity.logitsRelErrMax <= 1e-3, `logits rel err ${parity.logitsRelErrMax}`);
      assert.equal(parity.greedyMatch, true);
    });
  });
});

describe('bench - tokenize suite', () => {
  it('bench - tokenize prints its contract; the piece cache gives the tokenizer ids and hits', () => {
    withTinyModel('tokenize', (modelDir) => {
      const out = bench(
        'tokenize',
        '--model',
        modelDir,
        '--conversations',
        '4',
        '--turns',
        '2',
        '--system-prompts',
        '2',
        '--system-tokens',
        '128',
        '--passes',
        '1',
      );
      assert.equal(out.suite, 'tokenize');
      assert.equal(out.prompts, 8);
      const cache = out.pieceCache as Record<string, number>;
      const anchor = out.anchor as Record<string, number>;
      // Each second turn repeats its first turn's pieces; each system prompt is shared by 2.
      assert.ok((cache.hits as number) > 0, JSON.stringify(cache));
      assert.ok((cache.msPerPrompt as number) > 0 && (anchor.msPerPrompt as number) > 0);
      assert.ok((out.speedup as number) > 0);
    });
  });
});

describe('bench - mesh suite', () => {
  it('bench - mesh prints its contract for both policies on a tiny shared-prefix chat workload', () => {
    withTinyModel('mesh', (modelDir) => {
      const out = bench('mesh', ...meshSmokeArgs(modelDir), '--store-link', 'loopback');
      assert.equal(out.suite, 'mesh');
      assert.equal(out.repeats, 1);
      assert.equal(out.model, 'tiny');
      assert.equal((out.storeLink as { regime: string }).regime, 'loopback');
      assert.equal(out.loopback, undefined, 'loopback is the headline; no second regime beside it');
      assertMeshPolicies(out.policies, out.ratio);
    });
  });
});
