// The engine against llama.cpp on the same weights (tiny generated model, f32 KV on both sides):
// last-position logits and greedy continuations must agree. Also: paged KV in kivi4 (agreement with
// f32 reported, not asserted), bit-identical resume in a fresh process from exported blocks,
// batched decode, and bad input.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import type { LlamaModel } from 'node-llama-cpp';
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { relativeL2Error } from '@kvmesh/kernels';

import { generateModel } from '../src/model/generate.ts';
import { exportGguf } from '../src/model/gguf.ts';
import { loadModel, type LoadedModel } from '../src/model/load.ts';
import { NO_PROGRESS } from '../src/model/progress.ts';
import { Engine, type TokenEvent } from '../src/runtime/engine.ts';
import { topLogprobs } from '../src/runtime/sampling.ts';
import { argmax, llamaCppLogits, loadLlamaModel } from '@kvmesh/test-harness';

const PROMPTS = [
  'The river runs high and cloudy with meltwater.',
  'User: What does temperature do? Assistant:',
  'A block is sixty-four consecutive tokens of one sequence, and only full blocks are shared.',
  'def add(a, b):\n    return a + b\n',
  '12 + 30 = 42; 7 * 6 = 42; the answer is',
  'Héllo wörld — naïve café 🚀',
  'Once upon a time, in a data center far away, a cache missed.',
  'SELECT name FROM users WHERE id = 7;',
];
const CONTINUATION = 32;

let dir = '';
let modelDir = '';
let model: LoadedModel;
let llama: LlamaModel | undefined;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kvmesh-engine-'));
  modelDir = join(dir, 'tiny');
  generateModel({ outDir: modelDir, preset: 'tiny', seed: 77, progress: NO_PROGRESS });
  exportGguf(modelDir, join(dir, 'tiny.gguf'));
  model = loadModel(modelDir);
  llama = await loadLlamaModel(join(dir, 'tiny.gguf'));
});

after(async () => {
  await llama?.dispose();
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

/** Greedy generation of `count` tokens for one prompt; returns the events (first carries logits). */
function generate(
  engine: Engine,
  prompt: number[],
  count: number,
  prefixBlocks?: Uint8Array[],
): TokenEvent[] {
  const id = engine.addSequence({
    promptTokens: prompt,
    maxTokens: count,
    stopTokenIds: [],
    ...(prefixBlocks ? { prefixBlocks } : {}),
  });
  const events: TokenEvent[] = [];
  while (events.length < count)
    events.push(...engine.step({ logits: events.length === 0 }).filter((e) => e.sequenceId === id));
  return events;
}

const encode = (text: string): number[] => model.tokenizer.encode(text);

describe('engine - parity with llama.cpp (f32 KV)', () => {
  it('engine - last-position logits within 1e-3 and identical 32-token greedy continuations on 8 prompts', async (t) => {
    assert.ok(llama);
    let worst = 0;
    for (const text of PROMPTS) {
      const prompt = encode(text);
      const engine = new Engine(model, { codec: 'f32', blockTokens: 16 });
      const events = generate(engine, prompt, CONTINUATION);
      const ours = events.map((e) => e.token);
      // NOTE: llama.cpp's greedy continuation is checked by teacher forcing: one evaluation of
      // prompt + our continuation, and its argmax at every position must be our next token. If all
      // agree, llama.cpp's own greedy path is exactly ours (node-llama-cpp costs ~0.3 s per call).
      const theirs = await llamaCppLogits(
        llama,
        [...prompt, ...ours.slice(0, -1)],
        true,
        model.config.vocabSize,
      );
      const err = relativeL2Error(
        events[0]?.logits as Float32Array,
        theirs[prompt.length - 1] as Float32Array,
      );
      worst = Math.max(worst, err);
      assert.ok(err <= 1e-3, `${JSON.stringify(text)}: logits rel. L2 ${err}`);
      const greedy = theirs.slice(prompt.length - 1).map(argmax);
      assert.deepEqual(ours, greedy, `greedy continuation of ${JSON.stringify(text)}`);
    }
    t.diagnostic(`${PROMPTS.length} prompts: worst last-position logits rel. L2 ${worst.toExponential(2)}`);
  });
});

describe('engine - paged KV in compressed codecs', () => {
  it('engine - kivi4 KV: greedy agreement with f32 KV is reported', (t) => {
    let same = 0;
    let total = 0;
    for (const text of PROMPTS) {
      const prompt = encode(text);
      const f32 = generate(new Engine(model, { codec: 'f32', blockTokens: 16 }), prompt, CONTINUATION).map(
        (e) => e.token,
      );
      const kivi = generate(new Engine(model, { codec: 'kivi4', blockTokens: 16 }), prompt, CONTINUATION).map(
        (e) => e.token,
      );
      // Agreement up to the first divergence (after it the contexts differ).
      let k = 0;
      while (k < CONTINUATION && f32[k] === kivi[k]) k++;
      same += k;
      total += CONTINUATION;
    }
    t.diagnostic(
      `kivi4 vs f32 KV: ${same}/${total} greedy tokens agree before the first divergence (${((100 * same) / total).toFixed(1)}%)`,
    );
    assert.ok(total > 0);
  });

  it('engine - a sequence resumed in a fresh process from exported kivi4 blocks continues bit-identically', () => {
    const prompt = encode(PROMPTS.join(' ')).slice(0, 100);
    const engine = new Engine(model, { codec: 'kivi4', blockTokens: 16 });
    const id = engine.addSequence({ promptTokens: prompt, maxTokens: 24, stopTokenIds: [] });
    const events: TokenEvent[] = [];
    while (events.length < 24) events.push(...engine.step({ logits: true }));
    const blocks = engine.exportBlocks(id).slice(0, Math.floor((prompt.length - 1) / 16));
    assert.ok(blocks.length >= 5);
    blocks.forEach((b, i) => writeFileSync(join(dir, `block-${i}.kvmb`), b));
    const script = join(dir, 'resume.ts');
    const engineUrl = new URL('../src/runtime/engine.ts', import.meta.url).href;
    const loadUrl = new URL('../src/model/load.ts', import.meta.url).href;
    writeFileSync(
      script,
      `import { readFileSync } from 'node:fs';
       import { Engine } from ${JSON.stringify(engineUrl)};
       import { loadModel } from ${JSON.stringify(loadUrl)};
       const model = loadModel(${JSON.stringify(modelDir)});
       const engine = new Engine(model, { codec: 'kivi4', blockTokens: 16 });
       const blocks = Array.from({ length: ${blocks.length} }, (_, i) => new Uint8Array(readFileSync(${JSON.stringify(dir)} + '/block-' + i + '.kvmb')));
       const id = engine.addSequence({ promptTokens: ${JSON.stringify(prompt)}, maxTokens: 24, stopTokenIds: [], prefixBlocks: blocks });
       const out = [];
       while (out.length < 24) for (const e of engine.step({ logits: true })) out.push({ token: e.token, logits: Buffer.from(e.logits.buffer).toString('base64') });
       console.log(JSON.stringify({ reused: engine.sequenceInfo(id).reusedTokens, out }));`,
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], {
      encoding: 'utf8',
      cwd: fileURLToPath(new URL('.', import.meta.url)),
    });
    assert.equal(r.status, 0, r.stderr);
    const resumed = JSON.parse(r.stdout.trim().split('\n').pop() as string) as {
      reused: number;
      out: { token: number; logits: string }[];
    };
    assert.equal(resumed.reused, blocks.length * 16);
    assert.deepEqual(
      resumed.out.map((e) => e.token),
      events.map((e) => e.token),
    );
    resumed.out.forEach((e, i) => {
      const ours = Buffer.from((events[i]?.logits as Float32Array).buffer).toString('base64');
      assert.equal(e.logits, ours, `logits of step ${i} differ in some bit`);
    });
  });
});

describe('engine - continuous batching', () => {
  it('engine - eight sequences decoded in one batch give the same greedy tokens as one at a time', () => {
    const prompts = PROMPTS.map(encode);
    const alone = prompts.map((p) =>
      generate(new Engine(model, { codec: 'f32', blockTokens: 16 }), p, 12).map((e) => e.token),
    );
    const engine2 = new Engine(model, { codec: 'f32', blockTokens: 16, maxBatch: 8 });
    const ids2 = prompts.map((p) =>
      engine2.addSequence({ promptTokens: p, maxTokens: 12, stopTokenIds: [] }),
    );
    const tokens = new Map<number, number[]>(ids2.map((id) => [id, []]));
    const finished = new Set<number>();
    while (finished.size < ids2.length) {
      for (const e of engine2.step()) {
        (tokens.get(e.sequenceId) as number[]).push(e.token);
        if (e.finishReason) finished.add(e.sequenceId);
      }
    }
    ids2.forEach((id, i) => assert.deepEqual(tokens.get(id), alone[i], `sequence ${i}`));
    for (const id of ids2) engine2.removeSequence(id);
    assert.equal(engine2.pool.blocksUsed, 0, 'removed sequences free their blocks');
  });

  it('engine - penalized greedy picks the argmax of the penalized logits and reports the raw logprob', () => {
    const prompt = encode(PROMPTS[3] as string);
    // A repetition penalty below 1 favours seen tokens: this model's greedy run repeats none, so a
    // penalty above 1 would never change its choice and the check below could not fail.
    const options = { presencePenalty: -1, frequencyPenalty: 0.5, repetitionPenalty: 0.5 };
    const engine = new Engine(model, { codec: 'f32', blockTokens: 16 });
    const id = engine.addSequence({
      promptTokens: prompt,
      maxTokens: 16,
      stopTokenIds: [],
      sampling: { temperature: 0, topK: 0, topP: 1, ...options },
    });
    const counts = new Map<number, number>();
    const seen = new Set(prompt);
    let flips = 0;
    for (let step = 0; step < 16; step++) {
      const event = engine.step({ logits: true }).find((e) => e.sequenceId === id);
      assert.ok(event?.logits);
      const raw = event.logits;
      const penalized = Float32Array.from(raw, (logit, token) => {
        const repeated = seen.has(token) || counts.has(token);
        let value = repeated ? (logit > 0 ? logit / 0.5 : logit * 0.5) : logit;
        const count = counts.get(token) ?? 0;
        if (count > 0) value -= -1 + 0.5 * count;
        return value;
      });
      assert.equal(event.token, argmax(penalized), `step ${step}`);
      if (argmax(penalized) !== argmax(raw)) flips++;
      const max = Math.max(...raw);
      const lse = max + Math.log(raw.reduce((sum, l) => sum + Math.exp(l - max), 0));
      assert.ok(Math.abs(event.logprob - ((raw[event.token] as number) - lse)) < 1e-4, `step ${step}`);
      counts.set(event.token, (counts.get(event.token) ?? 0) + 1);
    }
    engine.removeSequence(id);
    // Otherwise the check above could not tell a penalized choice from a plain one.
    assert.ok(flips > 0, 'the penalties changed at least one choice');
  });

  it('engine - top logprobs list the most likely tokens of the very logits the token came from', () => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: 16 });
    const id = engine.addSequence({
      promptTokens: encode(PROMPTS[1] as string),
      maxTokens: 6,
      stopTokenIds: [],
      topLogprobs: 4,
    });
    for (let step = 0; step < 6; step++) {
      const event = engine.step({ logits: true }).find((e) => e.sequenceId === id);
      assert.ok(event?.logits && event.top);
      assert.deepEqual(event.top, topLogprobs(event.logits, event.logits.length, 4));
      assert.equal(event.top.tokenIds[0], event.token, 'greedy takes the most likely');
      assert.ok(Math.abs((event.top.logprobs[0] as number) - event.logprob) < 1e-6);
    }
    engine.removeSequence(id);
    assert.throws(
      () => engine.addSequence({ promptTokens: [1], maxTokens: 1, topLogprobs: 21 }),
      /topLogprobs must be an integer in \[0, 20\]/,
    );
  });

  it('engine - measures its own prefill and decode speeds once it has done each', () => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: 16 });
    assert.deepEqual(engine.measuredSpeeds, { prefillMsPerToken: 0, decodeMsPerSequence: 0 });
    const id = engine.addSequence({
      promptTokens: encode(PROMPTS[2] as string),
      maxTokens: 3,
      stopTokenIds: [],
    });
    engine.step();
    const afterPrefill = engine.measuredSpeeds;
    assert.ok(afterPrefill.prefillMsPerToken > 0, 'a prompt was computed');
    assert.equal(afterPrefill.decodeMsPerSequence, 0, 'nothing decoded yet');
    engine.step();
    assert.ok(engine.measuredSpeeds.decodeMsPerSequence > 0, 'one decode step ran');
    assert.equal(engine.measuredSpeeds.prefillMsPerToken, afterPrefill.prefillMsPerToken);
    engine.removeSequence(id);
  });
});

describe('engine - bad input', () => {
  it('engine - empty, too long and out-of-vocabulary prompts and bad limits are typed errors', () => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: 16, maxContextTokens: 64 });
    assert.throws(() => engine.addSequence({ promptTokens: [], maxTokens: 4 }), /prompt is empty/);
    assert.throws(
      () => engine.addSequence({ promptTokens: new Array<number>(64).fill(5), maxTokens: 4 }),
      LimitExceededError,
    );
    assert.throws(
      () => engine.addSequence({ promptTokens: [1, model.config.vocabSize], maxTokens: 4 }),
      /prompt token 1 is \d+, outside the vocabulary/,
    );
    assert.throws(() => engine.addSequence({ promptTokens: [1, 2], maxTokens: 0 }), InvalidArgumentError);
    assert.throws(
      () =>
        engine.addSequence({
          promptTokens: [1, 2],
          maxTokens: 4,
          sampling: { temperature: 1, topK: 0, topP: 2 },
        }),
      /topP/,
    );
  });

  it('engine - a full KV pool is a typed error, and the context limit ends generation with length', () => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: 16, kvBlocksMax: 1, maxContextTokens: 40 });
    const prompt = encode(PROMPTS[2] as string).slice(0, 20);
    const id = engine.addSequence({ promptTokens: prompt, maxTokens: 100, stopTokenIds: [] });
    let last: TokenEvent | undefined;
    assert.throws(() => {
      for (let i = 0; i < 100; i++) last = engine.step().find((e) => e.sequenceId === id) ?? last;
    }, LimitExceededError);
    const roomy = new Engine(model, { codec: 'f32', blockTokens: 16, maxContextTokens: 40 });
    const id2 = roomy.addSequence({ promptTokens: prompt, maxTokens: 100, stopTokenIds: [] });
    let fin: TokenEvent | undefined;
    while (!fin) fin = roomy.step().find((e) => e.sequenceId === id2 && e.finishReason);
    assert.equal(fin.finishReason, 'length');
    assert.equal(roomy.sequenceInfo(id2).tokens.length, 40);
  });
});
