// The model engine next to llama.cpp (node-llama-cpp, CPU) on the same weights and thread count, in
// the same run: prefill tokens/s of a 512-token prompt, decode tokens/s at batch 1 (both) and batch
// 8 (kvmesh), with both KV caches in f16 (llama.cpp's default). Parity on the same model with f32
// KV on both sides: last-prompt-position logits relative L2 error and whether the 32-token greedy
// continuation matches (llama.cpp reads our continuation teacher-forced; every argmax must agree).
// Options: --model DIR (default: generate the `small` preset under bench/out/models), --threads N,
// --prompt-tokens N, --decode-tokens N, --runs N, --parity-prompts N.
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

import { Engine, exportGguf, generateModel, loadModel, type LoadedModel } from '@kvmesh/engine';
import { loadKernels, relativeL2Error } from '@kvmesh/kernels';
import { argmax, llamaCppLogits, loadLlamaModel } from '@kvmesh/test-harness';
import type { LlamaModel } from 'node-llama-cpp';

import type { BenchContext, BenchSuite } from '../main.ts';
import { numberOption, round, stringOption } from '../options.ts';

const OUT_DIR = new URL('../../out/models/', import.meta.url).pathname;
const CONTINUATION_TOKENS = 32;
const BATCH = 8;

/** Seeded prompt of `n` ordinary token ids (no special tokens), so runs are comparable. */
function promptTokens(model: LoadedModel, n: number, seed: number): number[] {
  const specials = new Set([...model.config.eosTokenIds, model.tokenizer.bosTokenId ?? -1]);
  const out: number[] = [];
  let state = seed >>> 0 || 1;
  while (out.length < n) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    const t = (state >>> 0) % model.config.vocabSize;
    if (!specials.has(t)) out.push(t);
  }
  return out;
}

function ensureModel(log: BenchContext['log'], dirOption: string | undefined): { dir: string; gguf: string } {
  const dir = dirOption ?? join(OUT_DIR, 'small');
  if (!existsSync(join(dir, 'config.json'))) {
    if (dirOption !== undefined) throw new Error(`--model ${dir} has no config.json`);
    log(`generating the small model in ${dir} (once)`);
    mkdirSync(dir, { recursive: true });
    generateModel({ outDir: dir, preset: 'small', seed: 0 });
  }
  const gguf = `${dir.replace(/\/$/, '')}.gguf`;
  const stale =
    !existsSync(gguf) || statSync(gguf).mtimeMs < statSync(join(dir, 'model.safetensors')).mtimeMs;
  if (stale) {
    log(`exporting ${gguf}`);
    exportGguf(dir, gguf);
  }
  return { dir, gguf };
}

const nowMs = (): number => performance.now();

/** Best of `runs` timings of `body` (seconds). */
async function best(runs: number, body: () => Promise<number> | number): Promise<number> {
  let min = Infinity;
  for (let r = 0; r < runs; r++) min = Math.min(min, await body());
  return min;
}

function kvmeshSpeeds(
  model: LoadedModel,
  options: { promptTokens: number; decodeTokens: number; runs: number },
): Promise<{ prefillTokps: number; decodeTokps: number; decodeTokpsBatch8: number }> {
  const engine = new Engine(model, { codec: 'f16', maxBatch: BATCH });
  const prompt = promptTokens(model, options.promptTokens, 1);
  const prefill = best(options.runs, () => {
    const id = engine.addSequence({ promptTokens: prompt, maxTokens: 1, stopTokenIds: [] });
    const start = nowMs();
    engine.step();
    const seconds = (nowMs() - start) / 1000;
    engine.removeSequence(id);
    return seconds;
  });
  const decodeSeconds = (batch: number): number => {
    const ids = Array.from({ length: batch }, (_, s) =>
      engine.addSequence({
        promptTokens: promptTokens(model, 32, 100 + s),
        maxTokens: options.decodeTokens + 1,
        stopTokenIds: [],
      }),
    );
    engine.step(); // prefill + first token of each
    const start = nowMs();
    for (let i = 0; i < options.decodeTokens; i++) engine.step();
    const seconds = (nowMs() - start) / 1000;
    for (const id of ids) engine.removeSequence(id);
    return seconds;
  };
  return prefill.then(async (prefillSeconds) => {
    const batch1 = await best(options.runs, () => decodeSeconds(1));
    const batch8 = await best(options.runs, () => decodeSeconds(BATCH));
    return {
      prefillTokps: options.promptTokens / prefillSeconds,
      decodeTokps: options.decodeTokens / batch1,
      decodeTokpsBatch8: (BATCH * options.decodeTokens) / batch8,
    };
  });
}

async function llamaCppSpeeds(
  llama: LlamaModel,
  prompt: number[],
  options: { threads: number; decodeTokens: number; runs: number },
): Promise<{ prefillTokps: number; decodeTokps: number }> {
  const context = await llama.createContext({
    contextSize: Math.max(1024, prompt.length + options.decodeTokens + 64),
    batchSize: 512,
    threads: { ideal: options.threads, min: options.threads },
  });
  try {
    const sequence = context.getSequence();
    const prefillSeconds = await best(options.runs, async () => {
      await sequence.clearHistory();
      const start = nowMs();
      await sequence.evaluateWithoutGeneratingNewTokens(prompt as never[]);
      return (nowMs() - start) / 1000;
    });
    const decodeSeconds = await best(options.runs, async () => {
      await sequence.clearHistory();
      let produced = 0;
      let start = 0;
      for await (const _token of sequence.evaluate(prompt.slice(0, 32) as never[], { temperature: 0 })) {
        if (produced === 0) start = nowMs(); // the first token closes the prefill
        if (++produced > options.decodeTokens) break;
      }
      return (nowMs() - start) / 1000;
    });
    return {
      prefillTokps: prompt.length / prefillSeconds,
      decodeTokps: options.decodeTokens / decodeSeconds,
    };
  } finally {
    await context.dispose();
  }
}

async function parity(
  model: LoadedModel,
  llama: LlamaModel,
  prompts: number,
): Promise<{ logitsRelErrMax: number; greedyMatch: boolean; prompts: number; agreement: number }> {
  const engine = new Engine(model, { codec: 'f32', maxBatch: 1 });
  const V = model.config.vocabSize;
  let relErrMax = 0;
  let agreed = 0;
  let total = 0;
  for (let p = 0; p < prompts; p++) {
    const prompt = promptTokens(model, 8 + 5 * p, 1000 + p);
    const id = engine.addSequence({ promptTokens: prompt, maxTokens: CONTINUATION_TOKENS, stopTokenIds: [] });
    const ours: number[] = [];
    let firstLogits: Float32Array | undefined;
    while (ours.length < CONTINUATION_TOKENS) {
      for (const e of engine.step({ logits: ours.length === 0 })) {
        firstLogits ??= e.logits;
        ours.push(e.token);
      }
    }
    engine.removeSequence(id);
    const theirs = await llamaCppLogits(llama, [...prompt, ...ours.slice(0, -1)], true, V);
    relErrMax = Math.max(
      relErrMax,
      relativeL2Error(firstLogits as Float32Array, theirs[prompt.length - 1] as Float32Array),
    );
    ours.forEach((token, i) => {
      total++;
      if (argmax(theirs[prompt.length - 1 + i] as Float32Array) === token) agreed++;
    });
  }
  return { logitsRelErrMax: relErrMax, greedyMatch: agreed === total, prompts, agreement: agreed / total };
}

export const suite: BenchSuite = {
  name: 'engine',
  description: 'model engine vs llama.cpp on the small model: prefill and decode tokens/s, parity',
  async run({ args, log }: BenchContext) {
    const threads = numberOption(args, 'threads', availableParallelism());
    const promptLength = numberOption(args, 'prompt-tokens', 512);
    const decodeTokens = numberOption(args, 'decode-tokens', 64);
    const runs = numberOption(args, 'runs', 3);
    const parityPrompts = numberOption(args, 'parity-prompts', 8);
    const { dir, gguf } = ensureModel(log, stringOption(args, 'model'));
    const kernels = loadKernels();
    kernels.setThreads(threads);
    const model = loadModel(dir, kernels);
    log(`model ${dir}: ${model.config.layers} layers × ${model.config.hiddenSize}, threads ${threads}`);

    const kvmesh = await kvmeshSpeeds(model, { promptTokens: promptLength, decodeTokens, runs });
    log(`kvmesh ${JSON.stringify(kvmesh)}`);
    const llama = await loadLlamaModel(gguf);
    try {
      const llamacpp = await llamaCppSpeeds(llama, promptTokens(model, promptLength, 1), {
        threads,
        decodeTokens,
        runs,
      });
      log(`llama.cpp ${JSON.stringify(llamacpp)}`);
      const parityResult = await parity(model, llama, parityPrompts);
      log(`parity ${JSON.stringify(parityResult)}`);
      return {
        threads,
        model: { layers: model.config.layers, hidden: model.config.hiddenSize, kvCache: 'f16' },
        kvmesh: {
          prefillTokps: round(kvmesh.prefillTokps),
          decodeTokps: round(kvmesh.decodeTokps),
          decodeTokpsBatch8: round(kvmesh.decodeTokpsBatch8),
        },
        llamacpp: { prefillTokps: round(llamacpp.prefillTokps), decodeTokps: round(llamacpp.decodeTokps) },
        ratio: {
          prefill: round(kvmesh.prefillTokps / llamacpp.prefillTokps, 3),
          decode: round(kvmesh.decodeTokps / llamacpp.decodeTokps, 3),
          batch8OverBatch1: round(kvmesh.decodeTokpsBatch8 / kvmesh.decodeTokps, 3),
        },
        parity: {
          logitsRelErrMax: Number(parityResult.logitsRelErrMax.toExponential(3)),
          greedyMatch: parityResult.greedyMatch,
          prompts: parityResult.prompts,
        },
      };
    } finally {
      await llama.dispose();
    }
  },
};
