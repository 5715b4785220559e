import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { Xoshiro128 } from '../src/model/random.ts';
import {
  GREEDY,
  LogitAdjustments,
  checkSampling,
  adjustsLogits,
  sampleToken,
  topLogprobs,
} from '../src/runtime/sampling.ts';

const logits = Float32Array.from([1, 3, 2, 3, -1]);

function histogram(options: Parameters<typeof sampleToken>[2], draws: number, seed = 7): number[] {
  const rng = new Xoshiro128(seed);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) {
    const t = sampleToken(logits, logits.length, options, rng).token;
    counts[t] = (counts[t] as number) + 1;
  }
  return counts;
}

describe('engine - sampling', () => {
  it('engine - greedy picks the argmax, ties to the lowest id, with its log-probability', () => {
    const { token, logprob } = sampleToken(logits, logits.length, GREEDY, new Xoshiro128(1));
    assert.equal(token, 1);
    const lse = Math.log([1, 3, 2, 3, -1].reduce((s, x) => s + Math.exp(x), 0));
    assert.ok(Math.abs(logprob - (3 - lse)) < 1e-9);
  });

  it('engine - top-k 2 only ever returns the two best tokens, in proportion at temperature 1', () => {
    const counts = histogram({ temperature: 1, topK: 2, topP: 1 }, 4000);
    assert.equal((counts[0] as number) + (counts[2] as number) + (counts[4] as number), 0);
    // Tokens 1 and 3 have equal logits: each near half.
    assert.ok(Math.abs((counts[1] as number) / 4000 - 0.5) < 0.05, JSON.stringify(counts));
  });

  it('engine - top-p keeps the smallest nucleus reaching p', () => {
    // softmax([1,3,2,3,-1]) ≈ [0.054, 0.397, 0.146, 0.397, 0.007]: p = 0.75 keeps tokens 1 and 3 only.
    const counts = histogram({ temperature: 1, topK: 0, topP: 0.75 }, 3000);
    assert.equal(
      (counts[0] as number) + (counts[2] as number) + (counts[4] as number),
      0,
      JSON.stringify(counts),
    );
    // p = 0.93 adds token 2 (cumulative 0.939) but not 0 and 4.
    const wider = histogram({ temperature: 1, topK: 0, topP: 0.93 }, 3000);
    assert.ok((wider[2] as number) > 0);
    assert.equal((wider[0] as number) + (wider[4] as number), 0, JSON.stringify(wider));
  });

  it('engine - low temperature concentrates on the best tokens; a seed replays the same draws', () => {
    const cold = histogram({ temperature: 0.05, topK: 0, topP: 1 }, 2000);
    assert.equal((cold[1] as number) + (cold[3] as number), 2000);
    assert.deepEqual(
      histogram({ temperature: 1, topK: 0, topP: 1 }, 500, 99),
      histogram({ temperature: 1, topK: 0, topP: 1 }, 500, 99),
    );
  });

  it('engine - out-of-range sampling options are rejected with the value', () => {
    assert.throws(
      () => checkSampling({ temperature: -1, topK: 0, topP: 1 }),
      /temperature must be in \[0, 100\], got -1/,
    );
    assert.throws(() => checkSampling({ temperature: 1, topK: 1.5, topP: 1 }), InvalidArgumentError);
    assert.throws(() => checkSampling({ temperature: 1, topK: 0, topP: 0 }), /topP/);
    assert.throws(() => checkSampling({ temperature: 1, topK: 0, topP: 1, seed: -3 }), /seed/);
    assert.throws(() => checkSampling({ ...GREEDY, presencePenalty: 2.5 }), /presencePenalty/);
    assert.throws(() => checkSampling({ ...GREEDY, frequencyPenalty: Number.NaN }), /frequencyPenalty/);
    assert.throws(() => checkSampling({ ...GREEDY, repetitionPenalty: 0 }), /repetitionPenalty/);
  });

  it('engine - top logprobs: the k most likely tokens, ties to the lower id, with exact logprobs', () => {
    // logits = [1, 3, 2, 3, -1]: 1 and 3 tie for the top.
    const top = topLogprobs(logits, logits.length, 3);
    assert.deepEqual(top.tokenIds, [1, 3, 2]);
    const lse = Math.log([1, 3, 2, 3, -1].reduce((sum, l) => sum + Math.exp(l), 0));
    top.logprobs.forEach((lp, i) =>
      assert.ok(Math.abs(lp - ((logits[top.tokenIds[i] as number] as number) - lse)) < 1e-6),
    );
    assert.deepEqual(topLogprobs(logits, logits.length, 5).tokenIds, [1, 3, 2, 0, 4]);
    assert.deepEqual(topLogprobs(logits, logits.length, 1).tokenIds, [1]);
    // A random vocabulary: the same as sorting all of it.
    const rng = new Xoshiro128(Date.now() >>> 0);
    const wide = Float32Array.from({ length: 2048 }, () => Math.round(rng.nextUnit() * 64) / 8);
    const sorted = [...wide.keys()].sort((a, b) => (wide[b] as number) - (wide[a] as number) || a - b);
    assert.deepEqual(topLogprobs(wide, wide.length, 20).tokenIds, sorted.slice(0, 20));
  });

  it('engine - penalties: repetition over prompt and output, presence and frequency over output', () => {
    assert.equal(adjustsLogits(GREEDY), false);
    assert.equal(adjustsLogits({ ...GREEDY, presencePenalty: 0, repetitionPenalty: 1 }), false);
    assert.equal(adjustsLogits({ ...GREEDY, frequencyPenalty: -0.5 }), true);
    const penalties = new LogitAdjustments(
      { ...GREEDY, presencePenalty: 0.5, frequencyPenalty: 0.25, repetitionPenalty: 2 },
      [0, 0],
    );
    for (const token of [3, 1, 3]) penalties.add(token);
    const out = Float32Array.from([2, -1, 0.5, 3, 4]);
    penalties.apply(out);
    // 0: in the prompt only, positive: 2 / 2. 1: generated once, negative: -1 × 2 - 0.5 - 0.25.
    // 2 and 4: never seen. 3: generated twice, positive: 3 / 2 - 0.5 - 2 × 0.25.
    assert.deepEqual([...out], [1, -2.75, 0.5, 0.5, 4]);
    // Without a repetition penalty the prompt is not even kept.
    const outputOnly = new LogitAdjustments({ ...GREEDY, presencePenalty: 1 }, [2]);
    outputOnly.add(4);
    const logits2 = Float32Array.from([2, -1, 0.5, 3, 4]);
    outputOnly.apply(logits2);
    assert.deepEqual([...logits2], [2, -1, 0.5, 3, 3]);
    // A logit bias is added before the penalties; an id past the logits is left alone.
    const biased = new LogitAdjustments(
      {
        ...GREEDY,
        frequencyPenalty: 1,
        logitBias: new Map([
          [1, 2.5],
          [4, -100],
          [9, 1],
        ]),
      },
      [],
    );
    assert.equal(adjustsLogits({ ...GREEDY, logitBias: new Map([[1, 2.5]]) }), true);
    biased.add(1);
    const logits3 = Float32Array.from([2, -1, 0.5, 3, 4]);
    biased.apply(logits3);
    assert.deepEqual([...logits3], [2, 0.5, 0.5, 3, -96]);
    assert.throws(() => checkSampling({ ...GREEDY, logitBias: new Map([[1, 101]]) }), /logitBias of token 1/);
    assert.throws(() => checkSampling({ ...GREEDY, logitBias: new Map([[-1, 1]]) }), /not a token id/);
  });
});
