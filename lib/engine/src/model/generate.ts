// Generates a small Llama-family model directory in the Hugging Face layout (config.json,
// model.safetensors in f32, tokenizer.json, tokenizer_config.json, generation_config.json), because
// no real weights can be downloaded here. Weights come from a seeded xoshiro128** stream and the
// tokenizer from BPE on the corpus shipped in lib/engine/corpus, so (preset, seed) fixes every byte.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { InvalidArgumentError } from '@kvmesh/errors';

import { tokenizerJson, trainBpe, type BpeModel } from './bpe.ts';
import { parseModelConfig } from './config.ts';
import { createProgress, type Progress } from './progress.ts';
import { Xoshiro128 } from './random.ts';
import { writeSafetensors, type TensorToWrite } from './safetensors.ts';

export type ModelPreset = 'tiny' | 'small';

export interface ModelShape {
  layers: number;
  hiddenSize: number;
  queryHeads: number;
  kvHeads: number;
  headDim: number;
  intermediateSize: number;
  /** Tokenizer size; reserved special tokens fill what the corpus cannot supply. */
  vocabSize: number;
  maxContextTokens: number;
  ropeTheta: number;
  rmsNormEps: number;
  /** BPE stops merging below this pair count; 1 lets the small preset learn more of the corpus. */
  bpePairCountMin: number;
}

export const MODEL_PRESETS: Readonly<Record<ModelPreset, Readonly<ModelShape>>> = {
  // ~0.8 M parameters: loads and runs in milliseconds, for unit and parity tests.
  tiny: {
    layers: 2,
    hiddenSize: 128,
    queryHeads: 4,
    kvHeads: 2,
    headDim: 32,
    intermediateSize: 256,
    vocabSize: 2048,
    maxContextTokens: 2048,
    ropeTheta: 10000,
    rmsNormEps: 1e-5,
    bpePairCountMin: 2,
  },
  // ~88 M parameters (12 x 768, GQA 12:4): the size where decode speed and KV traffic mean something.
  small: {
    layers: 12,
    hiddenSize: 768,
    queryHeads: 12,
    kvHeads: 4,
    headDim: 64,
    intermediateSize: 2048,
    vocabSize: 8192,
    maxContextTokens: 4096,
    ropeTheta: 100000,
    rmsNormEps: 1e-5,
    bpePairCountMin: 1,
  },
};

export const SPECIAL_TOKENS = {
  bos: '<|begin_of_text|>',
  endOfText: '<|end_of_text|>',
  imStart: '<|im_start|>',
  imEnd: '<|im_end|>',
} as const;

/**
 * ChatML with a leading BOS. Like HF's apply_chat_template, callers encode the rendered prompt
 * without adding special tokens, so the template's own bos_token is the only one.
 */
export const CHAT_TEMPLATE =
  '{{ bos_token }}{% for message in messages %}' +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/**
 * Init scales. They are larger than training inits on purpose: every block should move the residual
 * stream visibly (so a bug in attention, RoPE or the MLP changes the logits) and the logits should
 * have clear winners (top-1 vs top-2 margins mostly above 0.1) so greedy decoding is well defined.
 */
const EMBEDDING_STD = 1;
const NORM_WEIGHT_STD = 0.1;
/** Target std of the logits; lm_head std is this over sqrt(hidden) since the final norm makes |h| ~ sqrt(hidden). */
const LOGIT_STD = 4;

export const DEFAULT_CORPUS_DIR = fileURLToPath(new URL('../../corpus/', import.meta.url));

/** The training text: every `*.txt` in `dir`, in name order, joined by blank lines. */
export function loadCorpus(dir: string = DEFAULT_CORPUS_DIR): string {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.txt'))
    .sort();
  if (files.length === 0) {
    throw new InvalidArgumentError(`corpus directory ${dir} has no .txt files`, { file: dir });
  }
  return files.map((f) => readFileSync(join(dir, f), 'utf8')).join('\n\n');
}

/** HF tensor names and shapes ([out, in]) in the order their values are drawn from the stream. */
export function tensorLayout(shape: ModelShape): Array<{ name: string; shape: number[] }> {
  const { hiddenSize: h, intermediateSize: ff, vocabSize: v } = shape;
  const q = shape.queryHeads * shape.headDim;
  const kv = shape.kvHeads * shape.headDim;
  const out = [{ name: 'model.embed_tokens.weight', shape: [v, h] }];
  for (let l = 0; l < shape.layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      { name: `${p}.input_layernorm.weight`, shape: [h] },
      { name: `${p}.self_attn.q_proj.weight`, shape: [q, h] },
      { name: `${p}.self_attn.k_proj.weight`, shape: [kv, h] },
      { name: `${p}.self_attn.v_proj.weight`, shape: [kv, h] },
      { name: `${p}.self_attn.o_proj.weight`, shape: [h, q] },
      { name: `${p}.post_attention_layernorm.weight`, shape: [h] },
      { name: `${p}.mlp.gate_proj.weight`, shape: [ff, h] },
      { name: `${p}.mlp.up_proj.weight`, shape: [ff, h] },
      { name: `${p}.mlp.down_proj.weight`, shape: [h, ff] },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [h] }, { name: 'lm_head.weight', shape: [v, h] });
  return out;
}

/** Draws one tensor's values; every matrix is N(0, (gain / sqrt(fan_in))^2) so activations stay O(1). */
export function drawTensor(name: string, shape: readonly number[], rng: Xoshiro128): Float32Array {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  if (shape.length === 1) return rng.fillNormal(data, 1, NORM_WEIGHT_STD);
  const fanIn = shape[1] as number;
  if (name === 'model.embed_tokens.weight') return rng.fillNormal(data, 0, EMBEDDING_STD);
  if (name === 'lm_head.weight') return rng.fillNormal(data, 0, LOGIT_STD / Math.sqrt(fanIn));
  return rng.fillNormal(data, 0, 1 / Math.sqrt(fanIn));
}

export function presetParameterCount(shape: ModelShape): number {
  return tensorLayout(shape).reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0);
}

interface SpecialIds {
  bos: number;
  endOfText: number;
  imEnd: number;
}

function specialIds(bpe: BpeModel): SpecialIds {
  const id = (content: string): number => {
    const t = bpe.specialTokens.find((s) => s.content === content);
    if (t === undefined) throw new InvalidArgumentError(`tokenizer lacks special token ${content}`);
    return t.id;
  };
  return {
    bos: id(SPECIAL_TOKENS.bos),
    endOfText: id(SPECIAL_TOKENS.endOfText),
    imEnd: id(SPECIAL_TOKENS.imEnd),
  };
}

export function generatedConfigJson(
  shape: ModelShape,
  ids: SpecialIds,
  provenance: { preset: ModelPreset; seed: number },
): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: shape.hiddenSize,
    intermediate_size: shape.intermediateSize,
    num_hidden_layers: shape.layers,
    num_attention_heads: shape.queryHeads,
    num_key_value_heads: shape.kvHeads,
    head_dim: shape.headDim,
    hidden_act: 'silu',
    max_position_embeddings: shape.maxContextTokens,
    rms_norm_eps: shape.rmsNormEps,
    rope_theta: shape.ropeTheta,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    tie_word_embeddings: false,
    vocab_size: shape.vocabSize,
    bos_token_id: ids.bos,
    eos_token_id: [ids.imEnd, ids.endOfText],
    pad_token_id: ids.endOfText,
    torch_dtype: 'float32',
    use_cache: true,
    kvmesh_generated: {
      preset: provenance.preset,
      seed: provenance.seed,
      weights: 'xoshiro128** normal init',
    },
  };
}

export function generatedTokenizerConfigJson(
  bpe: BpeModel,
  maxContextTokens: number,
): Record<string, unknown> {
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const t of bpe.specialTokens) {
    addedTokensDecoder[String(t.id)] = {
      content: t.content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  }
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: addedTokensDecoder,
    bos_token: SPECIAL_TOKENS.bos,
    eos_token: SPECIAL_TOKENS.imEnd,
    pad_token: SPECIAL_TOKENS.endOfText,
    unk_token: null,
    chat_template: CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    model_max_length: maxContextTokens,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
}

export interface GenerateModelOptions {
  outDir: string;
  preset: ModelPreset;
  /** Integer in [0, 2^32); default 0. */
  seed?: number;
  corpusDir?: string;
  /** Progress sink factory; defaults to a bar on stderr (see progress.ts). */
  progress?: (label: string, total: number) => Progress;
}

export interface GeneratedModel {
  outDir: string;
  preset: ModelPreset;
  seed: number;
  vocabSize: number;
  /** Tokens learned from the corpus (the rest of the vocabulary is special / reserved). */
  learnedTokens: number;
  parameterCount: number;
  files: string[];
}

export function generateModel(options: GenerateModelOptions): GeneratedModel {
  const { outDir, preset } = options;
  const seed = options.seed ?? 0;
  const shape = MODEL_PRESETS[preset];
  if (shape === undefined) {
    throw new InvalidArgumentError(`unknown preset '${String(preset)}' (tiny, small)`, {
      field: 'preset',
      value: preset,
    });
  }
  const rng = new Xoshiro128(seed); // validates the seed before any slow work
  const progress = options.progress ?? ((label, total) => createProgress(label, total));

  const corpus = loadCorpus(options.corpusDir);
  const specials = Object.values(SPECIAL_TOKENS);
  const bpeBar = progress('training tokenizer', shape.vocabSize - 256 - specials.length);
  const bpe = trainBpe(corpus, {
    vocabSize: shape.vocabSize,
    specialTokens: specials,
    pairCountMin: shape.bpePairCountMin,
    onProgress: (done) => bpeBar.update(done),
  });
  bpeBar.finish();
  const ids = specialIds(bpe);

  const config = generatedConfigJson(shape, ids, { preset, seed });
  // NOTE: the engine reads config.json through parseModelConfig; failing here keeps presets honest.
  parseModelConfig(config, 'generated config.json');

  const layout = tensorLayout(shape);
  const total = presetParameterCount(shape);
  const weightsBar = progress('drawing weights', total);
  const tensors: TensorToWrite[] = [];
  let drawn = 0;
  for (const t of layout) {
    const data = drawTensor(t.name, t.shape, rng);
    tensors.push({ name: t.name, shape: t.shape, data });
    drawn += data.length;
    weightsBar.update(drawn);
  }
  weightsBar.finish();

  mkdirSync(outDir, { recursive: true });
  const json = (value: unknown): string => `${JSON.stringify(value, null, 2)}\n`;
  const files: Array<[string, string | Uint8Array]> = [
    ['config.json', json(config)],
    ['generation_config.json', json(generationConfigJson(ids))],
    ['tokenizer.json', json(tokenizerJson(bpe, SPECIAL_TOKENS.bos))],
    ['tokenizer_config.json', json(generatedTokenizerConfigJson(bpe, shape.maxContextTokens))],
    ['model.safetensors', writeSafetensors(tensors, { format: 'pt' })],
  ];
  for (const [name, content] of files) writeFileSync(join(outDir, name), content);
  return {
    outDir,
    preset,
    seed,
    vocabSize: bpe.vocab.length,
    learnedTokens: bpe.vocab.length - bpe.specialTokens.length,
    parameterCount: total,
    files: files.map(([name]) => name),
  };
}

function generationConfigJson(ids: SpecialIds): Record<string, unknown> {
  return {
    bos_token_id: ids.bos,
    eos_token_id: [ids.imEnd, ids.endOfText],
    pad_token_id: ids.endOfText,
    do_sample: true,
    temperature: 0.7,
    top_p: 0.9,
  };
}
