// Chat-prompt tokenization on the router's path: every turn prompt of the mesh bench's workload
// (../mesh/workload.ts; a conversation's replies stand in for the model's), encoded in arrival order
// by the loaded tokenizer with its piece cache starting empty, next to the anchor, the Hugging Face
// tokenizer encoding each whole prompt, in the same run. Both must give the same ids for every
// prompt (the suite fails otherwise). Options: --model tiny|small|DIR (generated once into
// bench/out/models), --passes N (default 3; the best pass of each is reported), plus the workload's
// --system-prompts, --system-tokens, --conversations, --turns, --user-tokens, --seed.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Tokenizer } from '@huggingface/tokenizers';
import { loadModel } from '@kvmesh/engine';
import { loadKernels } from '@kvmesh/kernels';

import type { BenchContext, BenchSuite } from '../main.ts';
import { generateWorkload, turnPrompt, type WorkloadParams } from '../mesh/workload.ts';
import { ensureModel } from '../models.ts';
import { numberOption, round, stringOption } from '../options.ts';

export const suite: BenchSuite = {
  name: 'tokenize',
  description: "chat-prompt tokenization: the piece cache next to the tokenizer's whole-prompt encoding",
  async run({ args, log }: BenchContext) {
    const { dir, name } = ensureModel(log, stringOption(args, 'model') ?? 'tiny');
    const passes = numberOption(args, 'passes', 3);
    const params: WorkloadParams = {
      systemPrompts: numberOption(args, 'system-prompts', 8),
      systemTokens: numberOption(args, 'system-tokens', 1024),
      conversations: numberOption(args, 'conversations', 32),
      turns: numberOption(args, 'turns', 4),
      userTokens: numberOption(args, 'user-tokens', 64),
      ratePerSecond: 5,
      thinkMs: 1000,
      maxTokens: 64,
      seed: numberOption(args, 'seed', 1),
    };
    const kernels = loadKernels();
    const model = loadModel(dir, kernels);
    const workload = generateWorkload(params, model.tokenizer);
    // Turn k of every conversation before turn k + 1 of any: the order the replay sends them in,
    // roughly. A conversation's replies are its own later user messages (any text works).
    const prompts: string[] = [];
    for (let turn = 0; turn < params.turns; turn++) {
      for (const c of workload.conversations) {
        const { messages } = turnPrompt(workload, c, turn, c.userMessages, model.tokenizer, 1 << 30);
        prompts.push(model.tokenizer.applyChatTemplate(messages, true));
      }
    }
    const anchor = new Tokenizer(
      JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')),
    );
    const expected = prompts.map((p) => anchor.encode(p, { add_special_tokens: false }).ids);
    const tokens = expected.reduce((sum, ids) => sum + ids.length, 0);

    let anchorMs = Infinity;
    let cachedMs = Infinity;
    let lookups = { hits: 0, misses: 0 };
    for (let pass = 0; pass < passes; pass++) {
      let start = performance.now();
      for (const p of prompts) anchor.encode(p, { add_special_tokens: false });
      anchorMs = Math.min(anchorMs, performance.now() - start);
      // A fresh load each pass: the piece cache starts empty, as in a router that just started.
      const { tokenizer } = loadModel(dir, kernels);
      const cache = tokenizer.pieceCache;
      if (cache === null) throw new Error(`${dir}: this tokenizer's pieces do not encode independently`);
      start = performance.now();
      const got = prompts.map((p) => tokenizer.encode(p, { addSpecialTokens: false }));
      cachedMs = Math.min(cachedMs, performance.now() - start);
      got.forEach((ids, i) => {
        if (ids.join(',') !== (expected[i] as number[]).join(','))
          throw new Error(`prompt ${i}: the piece cache's ids differ from the tokenizer's`);
      });
      lookups = { hits: cache.hits, misses: cache.misses };
      log(`pass ${pass + 1}: anchor ${anchorMs.toFixed(1)} ms, piece cache ${cachedMs.toFixed(1)} ms`);
    }
    return {
      model: name,
      prompts: prompts.length,
      promptTokensMean: round(tokens / prompts.length),
      pieceCache: {
        msPerPrompt: round(cachedMs / prompts.length, 4),
        tokensPerSecond: round(tokens / (cachedMs / 1000)),
        ...lookups,
      },
      anchor: {
        name: '@huggingface/tokenizers, whole prompt',
        msPerPrompt: round(anchorMs / prompts.length, 4),
        tokensPerSecond: round(tokens / (anchorMs / 1000)),
      },
      speedup: round(anchorMs / cachedMs, 2),
    };
  },
};
