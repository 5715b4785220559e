// A first token drawn elsewhere (a prefill worker) and handed to the engine: emitted as given with
// its logprob under this engine's logits, and a seeded sampling stream stays aligned, so the rest of
// the sequence equals a single-process run of the same seed.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { generateModel } from '../src/model/generate.ts';
import { loadModel, type LoadedModel } from '../src/model/load.ts';
import { NO_PROGRESS } from '../src/model/progress.ts';
import { Engine, type SequenceRequest, type TokenEvent } from '../src/runtime/engine.ts';

let dir = '';
let model: LoadedModel;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmesh-first-token-'));
  generateModel({ outDir: join(dir, 'tiny'), preset: 'tiny', seed: 23, progress: NO_PROGRESS });
  model = loadModel(join(dir, 'tiny'));
});

after(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

function run(request: SequenceRequest): TokenEvent[] {
  const engine = new Engine(model, { blockTokens: 16 });
  const id = engine.addSequence(request);
  const events: TokenEvent[] = [];
  while (events.at(-1)?.finishReason == null) {
    events.push(...engine.step().filter((e) => e.sequenceId === id));
  }
  return events;
}

describe('engine - first token given', () => {
  const prompt = Array.from({ length: 37 }, () => 3 + Math.floor(Math.random() * 400));
  const sampling = { temperature: 0.9, topK: 0, topP: 1, seed: 4242 };

  it('engine - a seeded sampled run continued from its own first token is the same run', () => {
    const whole = run({ promptTokens: prompt, maxTokens: 12, sampling, stopTokenIds: [] });
    const continued = run({
      promptTokens: prompt,
      maxTokens: 12,
      sampling,
      stopTokenIds: [],
      firstToken: whole[0]?.token as number,
    });
    assert.deepEqual(
      continued.map((e) => e.token),
      whole.map((e) => e.token),
    );
    assert.ok(Math.abs((continued[0]?.logprob as number) - (whole[0]?.logprob as number)) < 1e-6);
  });

  it('engine - another first token is emitted with its logprob; out-of-vocabulary is refused', () => {
    const greedy = run({ promptTokens: prompt, maxTokens: 1, stopTokenIds: [] })[0] as TokenEvent;
    const other = (greedy.token + 1) % model.config.vocabSize;
    const forced = run({ promptTokens: prompt, maxTokens: 2, stopTokenIds: [], firstToken: other });
    assert.equal(forced[0]?.token, other);
    assert.ok((forced[0]?.logprob as number) <= greedy.logprob, 'the greedy token is the likeliest');
    const engine = new Engine(model, { blockTokens: 16 });
    assert.throws(
      () => engine.addSequence({ promptTokens: prompt, maxTokens: 2, firstToken: model.config.vocabSize }),
      InvalidArgumentError,
    );
  });
});
