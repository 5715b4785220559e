// Generated models end to end: the tiny preset is written to a temp dir, its tokenizer.json is read
// by an independent tokenizer and its GGUF export by llama.cpp, which must agree with us on tokens and
// (with an f32 KV cache) on logits. The independent tokenizer is @huggingface/tokenizers: Hugging
// Face's maintained pure-JS port of the Rust `tokenizers` library (the one inside transformers.js),
// with no dependencies and no native code, reading tokenizer.json as the Rust library does.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Tokenizer } from '@huggingface/tokenizers';
import type { LlamaModel } from 'node-llama-cpp';

import { parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import {
  generateModel,
  loadCorpus,
  SPECIAL_TOKENS,
  tensorLayout,
  MODEL_PRESETS,
} from '../src/model/generate.ts';
import { exportGguf, permuteRotaryRows } from '../src/model/gguf.ts';
import { NO_PROGRESS } from '../src/model/progress.ts';
import { parseSafetensors, readTensorF32, type SafetensorsFile } from '../src/model/safetensors.ts';
import { llamaCppLogits as llamaCppLogitsOf, loadLlamaModel } from '@kvmesh/test-harness';

const SEED = 1234;
const UNICODE_SAMPLES = [
  'Héllo wörld — naïve café, ½ × 3 ≥ 1.5',
  'Emoji 🚀🎉 and a family 👩‍👩‍👧 and flags 🇯🇵',
  '日本語のテキストと한국어, Ελληνικά, русский',
  '\ttabs\tand   runs of    spaces\r\nwindows line\n\n\n',
];

let dir = '';
let modelDir = '';
let ggufPath = '';

const readJson = (path: string): unknown => JSON.parse(readFileSync(path, 'utf8'));
const loadTokenizer = (md: string): Tokenizer =>
  new Tokenizer(
    readJson(join(md, 'tokenizer.json')) as object,
    readJson(join(md, 'tokenizer_config.json')) as object,
  );

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmesh-generated-'));
  modelDir = join(dir, 'tiny');
  ggufPath = join(dir, 'tiny.gguf');
  generateModel({ outDir: modelDir, preset: 'tiny', seed: SEED, progress: NO_PROGRESS });
  exportGguf(modelDir, ggufPath);
});

after(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('engine - generated model files', () => {
  it('generated model - same preset and seed write identical bytes; another seed changes only weights', () => {
    const again = join(dir, 'tiny-again');
    const other = join(dir, 'tiny-other-seed');
    generateModel({ outDir: again, preset: 'tiny', seed: SEED, progress: NO_PROGRESS });
    generateModel({ outDir: other, preset: 'tiny', seed: SEED + 1, progress: NO_PROGRESS });
    const files = readdirSync(modelDir).sort();
    assert.deepEqual(files, [
      'config.json',
      'generation_config.json',
      'model.safetensors',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    for (const f of files) {
      assert.ok(readFileSync(join(modelDir, f)).equals(readFileSync(join(again, f))), `${f} differs`);
    }
    assert.ok(
      readFileSync(join(modelDir, 'tokenizer.json')).equals(readFileSync(join(other, 'tokenizer.json'))),
    );
    assert.ok(
      !readFileSync(join(modelDir, 'model.safetensors')).equals(
        readFileSync(join(other, 'model.safetensors')),
      ),
    );
  });

  it('generated model - tokenizer.json round-trips corpus and unicode text through @huggingface/tokenizers', () => {
    const tok = loadTokenizer(modelDir);
    const corpus = loadCorpus();
    const samples = [corpus.slice(0, 20_000), corpus.slice(-5_000), ...UNICODE_SAMPLES];
    for (const text of samples) {
      const ids = tok.encode(text, { add_special_tokens: false }).ids;
      assert.equal(tok.decode(ids), text, `round trip of ${JSON.stringify(text.slice(0, 40))}`);
    }
    // Learned merges compress English: well under one token per 2 characters on the corpus.
    const corpusIds = tok.encode(corpus.slice(0, 20_000), { add_special_tokens: false }).ids;
    assert.ok(corpusIds.length < 10_000, `${corpusIds.length} tokens for 20000 characters`);

    const bos = tok.token_to_id(SPECIAL_TOKENS.bos);
    assert.equal(tok.encode('Hello').ids[0], bos, 'add_special_tokens prepends BOS');
    const chat = tok.encode(`${SPECIAL_TOKENS.imStart}user\nhi${SPECIAL_TOKENS.imEnd}`, {
      add_special_tokens: false,
    }).ids;
    assert.equal(chat[0], tok.token_to_id(SPECIAL_TOKENS.imStart));
    assert.equal(chat.at(-1), tok.token_to_id(SPECIAL_TOKENS.imEnd));
  });

  it('generated model - config.json parses and every tensor has the shape the config implies', () => {
    const cfg = parseModelConfig(readJson(join(modelDir, 'config.json')));
    const preset = MODEL_PRESETS.tiny;
    assert.equal(cfg.architecture, 'llama');
    assert.equal(cfg.vocabSize, preset.vocabSize);
    assert.equal(cfg.headDim, 32);
    assert.equal(cfg.queryHeads / cfg.kvHeads, 2);
    const tokCfg = readJson(join(modelDir, 'tokenizer_config.json')) as Record<string, unknown>;
    assert.match(String(tokCfg.chat_template), /<\|im_start\|>/);
    assert.equal(cfg.bosTokenId, loadTokenizer(modelDir).token_to_id(String(tokCfg.bos_token)));

    const st = parseSafetensors(readFileSync(join(modelDir, 'model.safetensors')), 'model.safetensors');
    const q = cfg.queryHeads * cfg.headDim;
    const kv = cfg.kvHeads * cfg.headDim;
    const expected: Record<string, number[]> = {
      'model.embed_tokens.weight': [cfg.vocabSize, cfg.hiddenSize],
      'lm_head.weight': [cfg.vocabSize, cfg.hiddenSize],
      'model.norm.weight': [cfg.hiddenSize],
    };
    for (let l = 0; l < cfg.layers; l++) {
      const p = `model.layers.${l}`;
      expected[`${p}.input_layernorm.weight`] = [cfg.hiddenSize];
      expected[`${p}.post_attention_layernorm.weight`] = [cfg.hiddenSize];
      expected[`${p}.self_attn.q_proj.weight`] = [q, cfg.hiddenSize];
      expected[`${p}.self_attn.k_proj.weight`] = [kv, cfg.hiddenSize];
      expected[`${p}.self_attn.v_proj.weight`] = [kv, cfg.hiddenSize];
      expected[`${p}.self_attn.o_proj.weight`] = [cfg.hiddenSize, q];
      expected[`${p}.mlp.gate_proj.weight`] = [cfg.intermediateSize, cfg.hiddenSize];
      expected[`${p}.mlp.up_proj.weight`] = [cfg.intermediateSize, cfg.hiddenSize];
      expected[`${p}.mlp.down_proj.weight`] = [cfg.hiddenSize, cfg.intermediateSize];
    }
    assert.equal(st.tensors.size, Object.keys(expected).length);
    for (const [name, shape] of Object.entries(expected)) {
      assert.deepEqual(st.tensors.get(name)?.shape, shape, name);
      assert.equal(st.tensors.get(name)?.dtype, 'F32', name);
    }
    assert.deepEqual(
      tensorLayout(preset).map((t) => t.name),
      [...st.tensors.keys()],
    );
    const norm = readTensorF32(st, 'model.norm.weight');
    assert.ok(
      norm.every((x) => Number.isFinite(x) && x > 0.4 && x < 1.6),
      'norm weights near 1',
    );
  });

  it('gguf - header is GGUF v3 with one tensor per HF tensor, data 32-byte aligned', () => {
    const bytes = readFileSync(ggufPath);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    assert.equal(bytes.subarray(0, 4).toString('latin1'), 'GGUF');
    assert.equal(view.getUint32(4, true), 3);
    const cfg = parseModelConfig(readJson(join(modelDir, 'config.json')));
    assert.equal(view.getBigUint64(8, true), BigInt(2 + 9 * cfg.layers + 1));
    const params = tensorLayout(MODEL_PRESETS.tiny).reduce(
      (s, t) => s + t.shape.reduce((a, b) => a * b, 1),
      0,
    );
    // Every tiny tensor is a multiple of 32 bytes, so the data section is exactly the f32 values.
    assert.equal((bytes.length - params * 4) % 32, 0);
  });

  it('gguf - rotary permutation interleaves the two halves of each head', () => {
    // 2 heads x headDim 4, one input column: rows [h0: a0 a1 b0 b1, h1: c0 c1 d0 d1].
    const rows = Float32Array.from([10, 11, 20, 21, 30, 31, 40, 41]);
    assert.deepEqual([...permuteRotaryRows(rows, 2, 4, 1)], [10, 20, 11, 21, 30, 40, 31, 41]);
    const wide = Float32Array.from({ length: 8 * 3 }, (_, i) => i);
    const out = permuteRotaryRows(wide, 2, 4, 3);
    assert.deepEqual([...out.subarray(3, 6)], [6, 7, 8], 'row 1 of the output is input row 2');
  });
});

// ---------------------------------------------------------------------------------------------
// llama.cpp (node-llama-cpp, CPU): the independent reference for the exported GGUF.

/**
 * A plain float64 forward pass in HF semantics (rotate-half RoPE on the unpermuted q/k weights),
 * test-only. If llama.cpp on the exported GGUF agrees with it, the export permuted q/k correctly.
 */
function referenceLogits(cfg: ModelConfig, st: SafetensorsFile, tokens: number[]): Float64Array[] {
  const w = (name: string): Float32Array => readTensorF32(st, name);
  const { hiddenSize: hidden, headDim: d, queryHeads, kvHeads } = cfg;
  const matvec = (m: Float32Array, x: Float64Array, rows: number): Float64Array => {
    const y = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let i = 0; i < x.length; i++) s += (m[r * x.length + i] as number) * (x[i] as number);
      y[r] = s;
    }
    return y;
  };
  const rmsNorm = (x: Float64Array, weight: Float32Array): Float64Array => {
    const meanSquare = x.reduce((s, v) => s + v * v, 0) / x.length;
    const scale = 1 / Math.sqrt(meanSquare + cfg.rmsNormEps);
    return x.map((v, i) => v * scale * (weight[i] as number));
  };
  const addInto = (dst: Float64Array, src: Float64Array): void => {
    for (let i = 0; i < dst.length; i++) dst[i] = (dst[i] as number) + (src[i] as number);
  };
  const rope = (v: Float64Array, heads: number, pos: number): void => {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < d / 2; i++) {
        const angle = pos * cfg.ropeTheta ** ((-2 * i) / d);
        const a = v[h * d + i] as number;
        const b = v[h * d + i + d / 2] as number;
        v[h * d + i] = a * Math.cos(angle) - b * Math.sin(angle);
        v[h * d + i + d / 2] = b * Math.cos(angle) + a * Math.sin(angle);
      }
    }
  };
  const embed = w('model.embed_tokens.weight');
  const xs = tokens.map((t) => Float64Array.from(embed.subarray(t * hidden, (t + 1) * hidden)));
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}`;
    const [wq, wk, wv, wo] = ['q', 'k', 'v', 'o'].map((m) => w(`${p}.self_attn.${m}_proj.weight`)) as [
      Float32Array,
      Float32Array,
      Float32Array,
      Float32Array,
    ];
    const keys: Float64Array[] = [];
    const values: Float64Array[] = [];
    const queries = xs.map((x, pos) => {
      const h = rmsNorm(x, w(`${p}.input_layernorm.weight`));
      const q = matvec(wq, h, queryHeads * d);
      const k = matvec(wk, h, kvHeads * d);
      rope(q, queryHeads, pos);
      rope(k, kvHeads, pos);
      keys.push(k);
      values.push(matvec(wv, h, kvHeads * d));
      return q;
    });
    xs.forEach((x, pos) => {
      const attended = new Float64Array(queryHeads * d);
      for (let h = 0; h < queryHeads; h++) {
        const g = Math.floor(h / (queryHeads / kvHeads));
        const scores = keys.slice(0, pos + 1).map((k) => {
          let s = 0;
          for (let i = 0; i < d; i++) s += (queries[pos]?.[h * d + i] as number) * (k[g * d + i] as number);
          return s / Math.sqrt(d);
        });
        const max = Math.max(...scores);
        const weights = scores.map((s) => Math.exp(s - max));
        const total = weights.reduce((a, b) => a + b, 0);
        weights.forEach((wt, j) => {
          for (let i = 0; i < d; i++) {
            attended[h * d + i] =
              (attended[h * d + i] as number) + (wt / total) * (values[j]?.[g * d + i] as number);
          }
        });
      }
      addInto(x, matvec(wo, attended, hidden));
      const h2 = rmsNorm(x, w(`${p}.post_attention_layernorm.weight`));
      const gate = matvec(w(`${p}.mlp.gate_proj.weight`), h2, cfg.intermediateSize);
      const up = matvec(w(`${p}.mlp.up_proj.weight`), h2, cfg.intermediateSize);
      const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * (up[i] as number));
      addInto(x, matvec(w(`${p}.mlp.down_proj.weight`), act, hidden));
    });
  }
  const lmHead = w('lm_head.weight');
  return xs.map((x) => matvec(lmHead, rmsNorm(x, w('model.norm.weight')), cfg.vocabSize));
}

describe('engine - generated model in llama.cpp', () => {
  let model: LlamaModel | undefined;
  const prompt =
    'The river runs high and cloudy with meltwater, loud enough that you hear it long before you see it. ' +
    'User: What does temperature do? Assistant: It divides the logits by 0.7 before the softmax.';

  before(async () => {
    model = await loadLlamaModel(ggufPath);
  });
  after(async () => {
    await model?.dispose();
  });

  it('gguf - llama.cpp tokenizes like tokenizer.json (plain, unicode, special tokens)', () => {
    assert.ok(model);
    const tok = loadTokenizer(modelDir);
    const corpus = loadCorpus();
    for (const text of [corpus.slice(1000, 4000), prompt, ...UNICODE_SAMPLES]) {
      const ours = tok.encode(text, { add_special_tokens: false }).ids;
      assert.deepEqual(model.tokenize(text, false), ours, `tokens of ${JSON.stringify(text.slice(0, 40))}`);
    }
    const chat = `${SPECIAL_TOKENS.imStart}user\nhi${SPECIAL_TOKENS.imEnd}`;
    assert.deepEqual(model.tokenize(chat, true), tok.encode(chat, { add_special_tokens: false }).ids);
    assert.equal(model.tokens.bos, tok.token_to_id(SPECIAL_TOKENS.bos));
    assert.equal(model.tokens.eos, tok.token_to_id(SPECIAL_TOKENS.imEnd));
  });

  it('gguf - llama.cpp logits are finite and not flat (top-1 vs top-2 margin >= 0.1 at most positions)', async (t) => {
    assert.ok(model);
    const tokens = loadTokenizer(modelDir).encode(prompt).ids;
    const logits = await llamaCppLogitsOf(model, tokens, false, MODEL_PRESETS.tiny.vocabSize);
    const margins = logits.map((row) => {
      assert.ok(row.every(Number.isFinite), 'finite logits');
      const sorted = Float32Array.from(row).sort().reverse();
      return (sorted[0] as number) - (sorted[1] as number);
    });
    const wide = margins.filter((m) => m >= 0.1).length / margins.length;
    t.diagnostic(
      `${margins.length} positions: margin >= 0.1 at ${(wide * 100).toFixed(0)}%, ` +
        `median ${[...margins].sort((a, b) => a - b)[margins.length >> 1]?.toFixed(3)}`,
    );
    assert.ok(wide >= 0.7, `only ${(wide * 100).toFixed(0)}% of positions have a margin >= 0.1`);
  });

  it('gguf - llama.cpp computes the HF function: logits match an f64 reference forward (q/k permutation)', async (t) => {
    assert.ok(model);
    const cfg = parseModelConfig(readJson(join(modelDir, 'config.json')));
    const st = parseSafetensors(readFileSync(join(modelDir, 'model.safetensors')), 'model.safetensors');
    const tokens = loadTokenizer(modelDir).encode(prompt).ids.slice(0, 32);
    // NOTE: llama.cpp's default f16 KV cache alone moves logits by ~1e-2; with an f32 cache it agrees
    // with the f64 reference to ~1e-5, while a missing q/k permutation is off by whole units.
    const ours = referenceLogits(cfg, st, tokens);
    const theirs = await llamaCppLogitsOf(model, tokens, true, MODEL_PRESETS.tiny.vocabSize);
    let errMax = 0;
    theirs.forEach((row, pos) =>
      row.forEach((v, i) => (errMax = Math.max(errMax, Math.abs(v - (ours[pos]?.[i] as number))))),
    );
    t.diagnostic(`max |llama.cpp - reference| over ${tokens.length} positions: ${errMax.toExponential(2)}`);
    assert.ok(errMax < 1e-3, `max logit difference ${errMax}`);
  });
});
