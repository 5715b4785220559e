// DistAttention in the engine: a sequence whose oldest blocks are left outside the pool and attended
// to through FarAttention (here answered by attendPayloads over the real exported payloads, the same
// code a kvstore node runs) gives the same greedy tokens, and logits within f32 rounding, as one
// that holds every block. Covers far blocks at admission (prefill chunks with far attention),
// blocks demoted while decoding, removal during an async step, and far failures.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { attendPayloads } from '@kvmesh/block';
import { InvalidArgumentError } from '@kvmesh/errors';
import { loadKernels, relativeL2Error } from '@kvmesh/kernels';

import { generateModel } from '../src/model/generate.ts';
import { loadModel, type LoadedModel } from '../src/model/load.ts';
import { NO_PROGRESS } from '../src/model/progress.ts';
import { Engine, type FarAttention, type TokenEvent } from '../src/runtime/engine.ts';

const B = 16;
const kernels = loadKernels();
let dir = '';
let model: LoadedModel;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmesh-dist-'));
  generateModel({ outDir: join(dir, 'tiny'), preset: 'tiny', seed: 91, progress: NO_PROGRESS });
  model = loadModel(join(dir, 'tiny'));
});

after(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

const newEngine = (): Engine => new Engine(model, { codec: 'f32', blockTokens: B, kernels });

/** A random prompt of `length` tokens (fresh each run). */
function randomPrompt(length: number): number[] {
  const V = model.config.vocabSize;
  return Array.from({ length }, () => 3 + Math.floor(Math.random() * (V - 3)));
}

/** Far attention over payloads held in `far` (the sequence's first blocks, in order). */
function payloadFar(far: Uint8Array[], calls = { count: 0 }): FarAttention {
  return {
    attend: (layer, query, blocks) => {
      calls.count++;
      assert.ok(blocks <= far.length, `asked for ${blocks} far blocks, ${far.length} held`);
      return attendPayloads(kernels, {
        layer,
        queryHeads: model.config.queryHeads,
        headDim: model.config.headDim,
        query,
        payloads: far.slice(0, blocks),
      });
    },
  };
}

async function run(engine: Engine, id: number, count: number, afterStep?: () => void): Promise<TokenEvent[]> {
  const events: TokenEvent[] = [];
  while (events.length < count) {
    const step = await engine.stepAsync({ logits: true });
    events.push(...step.filter((e) => e.sequenceId === id));
    if (events.at(-1)?.finishReason != null) break;
    afterStep?.();
  }
  return events;
}

function assertSameRun(actual: TokenEvent[], expected: TokenEvent[]): void {
  assert.deepEqual(
    actual.map((e) => e.token),
    expected.map((e) => e.token),
  );
  let worst = 0;
  actual.forEach((e, i) => {
    worst = Math.max(worst, relativeL2Error(e.logits as Float32Array, expected[i]?.logits as Float32Array));
  });
  assert.ok(worst < 1e-4, `logits relative L2 error ${worst}`);
}

describe('engine - DistAttention', () => {
  it('engine - far blocks at admission and demoted while decoding give the same greedy tokens', async () => {
    const prompt = randomPrompt(6 * B + 5);
    const generated = 3 * B;
    const full = newEngine();
    const fullId = full.addSequence({ promptTokens: prompt, maxTokens: generated, stopTokenIds: [] });
    const expected = await run(full, fullId, generated);
    // The prompt's blocks as the store would hold them: computed once, exported.
    const exporter = newEngine();
    const exportId = exporter.addSequence({ promptTokens: prompt, maxTokens: 1, stopTokenIds: [] });
    exporter.step();
    const promptBlocks = exporter.exportBlocks(exportId);
    assert.equal(promptBlocks.length, 6);

    // Four far blocks, two imported; then keep at most two local blocks while decoding.
    const far = promptBlocks.slice(0, 4);
    const calls = { count: 0 };
    const engine = newEngine();
    const id = engine.addSequence({
      promptTokens: prompt,
      maxTokens: generated,
      stopTokenIds: [],
      prefixBlocks: promptBlocks.slice(4),
      farBlocks: 4,
      farAttention: payloadFar(far, calls),
    });
    const demote = (): void => {
      const info = engine.sequenceInfo(id);
      const local = info.fullBlocks - info.farBlocks;
      if (local <= 2) return;
      for (let i = info.farBlocks; i < info.fullBlocks - 2; i++) far.push(engine.exportBlock(id, i));
      engine.demoteBlocks(id, local - 2);
    };
    const actual = await run(engine, id, generated, demote);
    assertSameRun(actual, expected);
    const info = engine.sequenceInfo(id);
    assert.ok(info.farBlocks >= 6, `far blocks ${info.farBlocks}`);
    assert.ok(calls.count > 0);
    assert.equal(info.reusedTokens, 6 * B);
    engine.removeSequence(id);
    assert.equal(engine.pool.blocksUsed, 0);
  });

  it('engine - prompt blocks computed locally after far ones (chunked prefill with far attention)', async () => {
    const prompt = randomPrompt(5 * B + 9);
    const full = newEngine();
    const fullId = full.addSequence({ promptTokens: prompt, maxTokens: 8, stopTokenIds: [] });
    const expected = await run(full, fullId, 8);
    const promptBlocks = full.exportBlocks(fullId);
    const engine = newEngine();
    const id = engine.addSequence({
      promptTokens: prompt,
      maxTokens: 8,
      stopTokenIds: [],
      farBlocks: 2,
      farAttention: payloadFar(promptBlocks.slice(0, 2)),
    });
    assertSameRun(await run(engine, id, 8), expected);
    assert.equal(engine.sequenceInfo(id).reusedTokens, 2 * B);
  });

  it('engine - step() refuses far sequences; removal during an async step waits for it to end', async () => {
    const prompt = randomPrompt(3 * B + 2);
    const exporter = newEngine();
    const exportId = exporter.addSequence({ promptTokens: prompt, maxTokens: 1, stopTokenIds: [] });
    exporter.step();
    const blocks = exporter.exportBlocks(exportId);
    const engine = newEngine();
    let removeDuringStep = false;
    let id = 0;
    const far: FarAttention = {
      attend: async (layer, query, count) => {
        if (removeDuringStep) {
          removeDuringStep = false;
          engine.removeSequence(id);
          // The sequence's pool blocks stay valid until the step ends.
          assert.ok(engine.pool.blocksUsed > 0);
        }
        return payloadFar(blocks).attend(layer, query, count);
      },
    };
    id = engine.addSequence({
      promptTokens: prompt,
      maxTokens: 4,
      stopTokenIds: [],
      prefixBlocks: blocks.slice(1),
      farBlocks: 1,
      farAttention: far,
    });
    assert.throws(() => engine.step(), InvalidArgumentError);
    removeDuringStep = true;
    const events = await engine.stepAsync();
    assert.deepEqual(events, [], 'no event for a sequence removed during the step');
    assert.equal(engine.pool.blocksUsed, 0);
    assert.equal(engine.activeSequences, 0);
  });

  it('engine - a far attention failure rejects the step; bad far arguments are typed errors', async () => {
    const prompt = randomPrompt(2 * B + 1);
    const engine = newEngine();
    assert.throws(
      () => engine.addSequence({ promptTokens: prompt, maxTokens: 2, farBlocks: 1 }),
      InvalidArgumentError,
    );
    const failing: FarAttention = { attend: () => Promise.reject(new Error('node gone')) };
    assert.throws(
      () => engine.addSequence({ promptTokens: prompt, maxTokens: 2, farBlocks: 3, farAttention: failing }),
      InvalidArgumentError,
    );
    const id = engine.addSequence({
      promptTokens: prompt,
      maxTokens: 2,
      farBlocks: 1,
      farAttention: failing,
    });
    await assert.rejects(engine.stepAsync(), /node gone/);
    engine.removeSequence(id);
    assert.equal(engine.pool.blocksUsed, 0);
    assert.throws(() => engine.exportBlock(id, 0));
  });
});
