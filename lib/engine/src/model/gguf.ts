// Exports a Hugging Face Llama model directory to GGUF v3 (all tensors F32) so llama.cpp can run the
// same function as our engine: llama architecture metadata, the byte-level BPE vocabulary with merges,
// and q/k projections permuted from HF's rotate-half RoPE layout to GGUF's interleaved layout. Layout:
// header, metadata KVs, tensor infos, padding to 32, then each tensor's data at a 32-aligned offset.
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';

import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';

import { LLAMA3_PRE_TOKENIZER_NAME, LLAMA3_SPLIT_PATTERN } from './bpe.ts';
import { parseModelConfig, type ModelConfig } from './config.ts';
import { parseSafetensors, readTensorF32, type SafetensorsFile } from './safetensors.ts';

const GGUF_MAGIC = 0x46554747; // 'GGUF' read as a little-endian u32
const GGUF_VERSION = 3;
const ALIGNMENT_BYTES = 32;
const GGML_TYPE_F32 = 0;
const LLAMA_FILE_TYPE_ALL_F32 = 0;

/** GGUF metadata value types (gguf_type in ggml); only the ones written here. */
const ValueType = {
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
} as const;

/** llama.cpp token types (llama_token_type). */
const TOKEN_TYPE_NORMAL = 1;
const TOKEN_TYPE_CONTROL = 3;
const TOKEN_TYPE_USER_DEFINED = 4;
const TOKEN_TYPE_UNUSED = 5;

/** The original Llama-3 spelling of the split (inline case-insensitive group); same meaning as ours. */
const LLAMA3_SPLIT_PATTERN_ORIGINAL =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

type MetadataValue =
  | { type: 'u32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'i32[]'; value: readonly number[] };

/** Little-endian byte sink that grows as needed (metadata and tensor infos only; data is streamed). */
class ByteWriter {
  private bytes = new Uint8Array(1 << 16);
  private view = new DataView(this.bytes.buffer);
  length = 0;
  private readonly encoder = new TextEncoder();

  private reserve(n: number): void {
    if (this.length + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, this.length));
    this.bytes = next;
    this.view = new DataView(next.buffer);
  }

  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }

  i32(v: number): void {
    this.reserve(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }

  u64(v: number): void {
    this.reserve(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }

  f32(v: number): void {
    this.reserve(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }

  u8(v: number): void {
    this.reserve(1);
    this.view.setUint8(this.length, v);
    this.length += 1;
  }

  /** gguf_string: u64 byte length, then UTF-8 bytes (no terminator). */
  string(s: string): void {
    const encoded = this.encoder.encode(s);
    this.u64(encoded.length);
    this.reserve(encoded.length);
    this.bytes.set(encoded, this.length);
    this.length += encoded.length;
  }

  padTo(alignment: number): void {
    const pad = (alignment - (this.length % alignment)) % alignment;
    this.reserve(pad);
    this.bytes.fill(0, this.length, this.length + pad);
    this.length += pad;
  }

  result(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }
}

function writeValue(w: ByteWriter, v: MetadataValue): void {
  switch (v.type) {
    case 'u32':
      w.u32(ValueType.UINT32);
      w.u32(v.value);
      return;
    case 'f32':
      w.u32(ValueType.FLOAT32);
      w.f32(v.value);
      return;
    case 'bool':
      w.u32(ValueType.BOOL);
      w.u8(v.value ? 1 : 0);
      return;
    case 'string':
      w.u32(ValueType.STRING);
      w.string(v.value);
      return;
    case 'string[]':
      w.u32(ValueType.ARRAY);
      w.u32(ValueType.STRING);
      w.u64(v.value.length);
      for (const s of v.value) w.string(s);
      return;
    case 'i32[]':
      w.u32(ValueType.ARRAY);
      w.u32(ValueType.INT32);
      w.u64(v.value.length);
      for (const n of v.value) w.i32(n);
      return;
  }
}

/**
 * HF stores q/k rows per head in rotate-half order (the first half of a head's rows pairs with the
 * second half); GGUF llama expects the pairs interleaved. Like llama.cpp's converter: view the rows
 * as [heads, 2, headDim/2] and swap the last two axes, so new row h*d + 2j + i = old row h*d + i*d/2 + j.
 */
export function permuteRotaryRows(
  weight: Float32Array,
  heads: number,
  headDim: number,
  inFeatures: number,
): Float32Array {
  if (weight.length !== heads * headDim * inFeatures || headDim % 2 !== 0) {
    throw new InvalidArgumentError(
      `rotary permutation: ${weight.length} values do not form [${heads} heads x ${headDim} rows, ${inFeatures}]`,
      { heads, headDim, inFeatures },
    );
  }
  const out = new Float32Array(weight.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) {
        const from = (h * headDim + i * half + j) * inFeatures;
        const to = (h * headDim + 2 * j + i) * inFeatures;
        out.set(weight.subarray(from, from + inFeatures), to);
      }
    }
  }
  return out;
}

interface TokenizerJsonShape {
  model?: { type?: unknown; vocab?: unknown; merges?: unknown };
  added_tokens?: Array<{ id?: unknown; content?: unknown; special?: unknown }>;
  pre_tokenizer?: unknown;
}

interface Vocabulary {
  tokens: string[];
  tokenTypes: number[];
  merges: string[];
  idOf: Map<string, number>;
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`${path}: cannot read (${(err as Error).message})`, { file: path });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CorruptDataError(`${path}: not valid JSON (${(err as Error).message})`, { file: path });
  }
}

/** The split regex of a tokenizer.json pre_tokenizer, if it is a Split (alone or in a Sequence). */
function splitPattern(pre: unknown): string | undefined {
  const node = pre as { type?: string; pretokenizers?: unknown[]; pattern?: { Regex?: string } } | null;
  if (node?.type === 'Split') return node.pattern?.Regex;
  if (node?.type === 'Sequence') {
    for (const p of node.pretokenizers ?? []) {
      const found = splitPattern(p);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

function readVocabulary(path: string, vocabSize: number): Vocabulary {
  const tok = readJson(path) as TokenizerJsonShape;
  const model = tok.model;
  if (model?.type !== 'BPE' || typeof model.vocab !== 'object' || model.vocab === null) {
    throw new InvalidArgumentError(`${path}: model.type must be BPE with a vocab object`, {
      file: path,
      field: 'model.type',
      value: model?.type,
    });
  }
  const pattern = splitPattern(tok.pre_tokenizer);
  if (pattern !== LLAMA3_SPLIT_PATTERN && pattern !== LLAMA3_SPLIT_PATTERN_ORIGINAL) {
    // NOTE: llama.cpp picks its split regex by name, so an unrecognized split would silently tokenize
    // differently from tokenizer.json; refuse instead of guessing a name.
    throw new InvalidArgumentError(
      `${path}: pre_tokenizer split ${JSON.stringify(pattern)} is not the Llama-3 split; no llama.cpp pre-tokenizer name is known for it`,
      { file: path, field: 'pre_tokenizer' },
    );
  }
  const tokens = new Array<string | undefined>(vocabSize);
  const tokenTypes = new Array<number>(vocabSize).fill(TOKEN_TYPE_NORMAL);
  const place = (content: string, id: unknown, type: number): void => {
    if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= vocabSize) {
      throw new InvalidArgumentError(
        `${path}: token ${JSON.stringify(content)} has id ${String(id)} outside [0, ${vocabSize}) (config vocab_size)`,
        { file: path, token: content, value: id },
      );
    }
    tokens[id as number] = content;
    tokenTypes[id as number] = type;
  };
  for (const [content, id] of Object.entries(model.vocab as Record<string, unknown>)) {
    place(content, id, TOKEN_TYPE_NORMAL);
  }
  for (const added of tok.added_tokens ?? []) {
    if (typeof added.content !== 'string') {
      throw new InvalidArgumentError(`${path}: added_tokens entry without content`, { file: path });
    }
    place(added.content, added.id, added.special === true ? TOKEN_TYPE_CONTROL : TOKEN_TYPE_USER_DEFINED);
  }
  const idOf = new Map<string, number>();
  for (let id = 0; id < vocabSize; id++) {
    // Rows of the embedding beyond the tokenizer (padding some models carry) get placeholder tokens.
    if (tokens[id] === undefined) {
      tokens[id] = `[PAD${id}]`;
      tokenTypes[id] = TOKEN_TYPE_UNUSED;
    }
    idOf.set(tokens[id] as string, id);
  }
  const rawMerges = Array.isArray(model.merges) ? (model.merges as unknown[]) : [];
  const merges = rawMerges.map((m, i) => {
    if (typeof m === 'string') return m;
    if (Array.isArray(m) && m.length === 2 && m.every((s) => typeof s === 'string')) return `${m[0]} ${m[1]}`;
    throw new InvalidArgumentError(`${path}: model.merges[${i}] is neither "a b" nor ["a", "b"]`, {
      file: path,
      field: `model.merges[${i}]`,
    });
  });
  return { tokens: tokens as string[], tokenTypes, merges, idOf };
}

function specialId(
  vocab: Vocabulary,
  tokenizerConfig: Record<string, unknown>,
  field: string,
  source: string,
): number | undefined {
  const raw = tokenizerConfig[field];
  const content = typeof raw === 'string' ? raw : (raw as { content?: unknown } | null | undefined)?.content;
  if (content == null) return undefined;
  const id = vocab.idOf.get(String(content));
  if (id === undefined) {
    throw new InvalidArgumentError(
      `${source}: ${field} ${JSON.stringify(content)} is not in the vocabulary`,
      {
        file: source,
        field,
        value: content,
      },
    );
  }
  return id;
}

interface TensorPlan {
  ggufName: string;
  hfName: string;
  /** HF shape, outermost first; GGUF lists it reversed. */
  shape: number[];
  /** Heads for the rotary permutation (q: query heads, k: kv heads), when it applies. */
  rotaryHeads?: number;
}

function planTensors(cfg: ModelConfig, st: SafetensorsFile, source: string): TensorPlan[] {
  const plans: TensorPlan[] = [];
  const add = (ggufName: string, hfName: string, rotaryHeads?: number): void => {
    const info = st.tensors.get(hfName);
    if (info === undefined) {
      throw new InvalidArgumentError(`${source}: missing tensor ${hfName}`, { file: source, tensor: hfName });
    }
    plans.push({ ggufName, hfName, shape: info.shape, ...(rotaryHeads ? { rotaryHeads } : {}) });
  };
  add('token_embd.weight', 'model.embed_tokens.weight');
  for (let l = 0; l < cfg.layers; l++) {
    const hf = `model.layers.${l}`;
    const gg = `blk.${l}`;
    add(`${gg}.attn_norm.weight`, `${hf}.input_layernorm.weight`);
    add(`${gg}.attn_q.weight`, `${hf}.self_attn.q_proj.weight`, cfg.queryHeads);
    add(`${gg}.attn_k.weight`, `${hf}.self_attn.k_proj.weight`, cfg.kvHeads);
    add(`${gg}.attn_v.weight`, `${hf}.self_attn.v_proj.weight`);
    add(`${gg}.attn_output.weight`, `${hf}.self_attn.o_proj.weight`);
    add(`${gg}.ffn_norm.weight`, `${hf}.post_attention_layernorm.weight`);
    add(`${gg}.ffn_gate.weight`, `${hf}.mlp.gate_proj.weight`);
    add(`${gg}.ffn_up.weight`, `${hf}.mlp.up_proj.weight`);
    add(`${gg}.ffn_down.weight`, `${hf}.mlp.down_proj.weight`);
  }
  add('output_norm.weight', 'model.norm.weight');
  // Tied models have no lm_head; llama.cpp then reads token_embd for the output projection.
  if (!cfg.tiedEmbeddings) add('output.weight', 'lm_head.weight');
  return plans;
}

export interface GgufExportResult {
  outPath: string;
  tensors: number;
  bytes: number;
}

/** Writes `outPath` from the HF model in `modelDir` (config.json, model.safetensors, tokenizer files). */
export function exportGguf(modelDir: string, outPath: string): GgufExportResult {
  const configPath = join(modelDir, 'config.json');
  const cfg = parseModelConfig(readJson(configPath), configPath);
  if (cfg.architecture === 'qwen2' || cfg.attentionBias) {
    throw new InvalidArgumentError(
      `${configPath}: only Llama/Mistral without attention bias export to GGUF here (got ${cfg.architecture})`,
      { file: configPath, field: 'architectures' },
    );
  }
  if (cfg.ropeScaling.kind === 'llama3') {
    throw new InvalidArgumentError(`${configPath}: llama3 rope_scaling is not exported (needs rope_freqs)`, {
      file: configPath,
      field: 'rope_scaling',
    });
  }
  const tokenizerPath = join(modelDir, 'tokenizer.json');
  const vocab = readVocabulary(tokenizerPath, cfg.vocabSize);
  const tokenizerConfigPath = join(modelDir, 'tokenizer_config.json');
  const tokenizerConfig = readJson(tokenizerConfigPath) as Record<string, unknown>;
  const bosId = specialId(vocab, tokenizerConfig, 'bos_token', tokenizerConfigPath) ?? cfg.bosTokenId;
  const eosId = specialId(vocab, tokenizerConfig, 'eos_token', tokenizerConfigPath) ?? cfg.eosTokenIds[0];
  const padId = specialId(vocab, tokenizerConfig, 'pad_token', tokenizerConfigPath);

  const weightsPath = join(modelDir, 'model.safetensors');
  let weightBytes: Uint8Array;
  try {
    weightBytes = readFileSync(weightsPath);
  } catch (err) {
    throw new InvalidArgumentError(
      `${weightsPath}: cannot read (${(err as Error).message}); sharded checkpoints are not supported`,
      { file: weightsPath },
    );
  }
  const st = parseSafetensors(weightBytes, weightsPath);
  const plans = planTensors(cfg, st, weightsPath);

  const meta: Array<[string, MetadataValue]> = [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: basename(modelDir) }],
    ['general.alignment', { type: 'u32', value: ALIGNMENT_BYTES }],
    ['general.file_type', { type: 'u32', value: LLAMA_FILE_TYPE_ALL_F32 }],
    ['llama.vocab_size', { type: 'u32', value: cfg.vocabSize }],
    ['llama.context_length', { type: 'u32', value: cfg.maxContextTokens }],
    ['llama.embedding_length', { type: 'u32', value: cfg.hiddenSize }],
    ['llama.block_count', { type: 'u32', value: cfg.layers }],
    ['llama.feed_forward_length', { type: 'u32', value: cfg.intermediateSize }],
    ['llama.rope.dimension_count', { type: 'u32', value: cfg.headDim }],
    ['llama.rope.freq_base', { type: 'f32', value: cfg.ropeTheta }],
    ['llama.attention.head_count', { type: 'u32', value: cfg.queryHeads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: cfg.kvHeads }],
    ['llama.attention.key_length', { type: 'u32', value: cfg.headDim }],
    ['llama.attention.value_length', { type: 'u32', value: cfg.headDim }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: cfg.rmsNormEps }],
  ];
  if (cfg.ropeScaling.kind === 'linear') {
    meta.push(
      ['llama.rope.scaling.type', { type: 'string', value: 'linear' }],
      ['llama.rope.scaling.factor', { type: 'f32', value: cfg.ropeScaling.factor }],
    );
  }
  meta.push(
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: LLAMA3_PRE_TOKENIZER_NAME }],
    ['tokenizer.ggml.tokens', { type: 'string[]', value: vocab.tokens }],
    ['tokenizer.ggml.token_type', { type: 'i32[]', value: vocab.tokenTypes }],
    ['tokenizer.ggml.merges', { type: 'string[]', value: vocab.merges }],
  );
  if (bosId != null) meta.push(['tokenizer.ggml.bos_token_id', { type: 'u32', value: bosId }]);
  if (eosId != null) meta.push(['tokenizer.ggml.eos_token_id', { type: 'u32', value: eosId }]);
  if (padId != null) meta.push(['tokenizer.ggml.padding_token_id', { type: 'u32', value: padId }]);
  meta.push(
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: tokenizerConfig.add_bos_token !== false }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: tokenizerConfig.add_eos_token === true }],
  );
  if (typeof tokenizerConfig.chat_template === 'string') {
    meta.push(['tokenizer.chat_template', { type: 'string', value: tokenizerConfig.chat_template }]);
  }

  const head = new ByteWriter();
  head.u32(GGUF_MAGIC);
  head.u32(GGUF_VERSION);
  head.u64(plans.length);
  head.u64(meta.length);
  for (const [key, value] of meta) {
    head.string(key);
    writeValue(head, value);
  }
  let dataOffset = 0;
  for (const plan of plans) {
    head.string(plan.ggufName);
    head.u32(plan.shape.length);
    // NOTE: GGUF lists dimensions innermost first, so HF [out, in] becomes [in, out].
    for (const dim of [...plan.shape].reverse()) head.u64(dim);
    head.u32(GGML_TYPE_F32);
    head.u64(dataOffset);
    const bytes = plan.shape.reduce((a, b) => a * b, 1) * 4;
    dataOffset += bytes + ((ALIGNMENT_BYTES - (bytes % ALIGNMENT_BYTES)) % ALIGNMENT_BYTES);
  }
  head.padTo(ALIGNMENT_BYTES);

  const fd = openSync(outPath, 'w');
  let written = 0;
  try {
    const headBytes = head.result();
    writeSync(fd, headBytes);
    written += headBytes.length;
    const zeros = new Uint8Array(ALIGNMENT_BYTES);
    for (const plan of plans) {
      let values = readTensorF32(st, plan.hfName);
      if (plan.rotaryHeads !== undefined) {
        values = permuteRotaryRows(values, plan.rotaryHeads, cfg.headDim, plan.shape[1] as number);
      }
      // NOTE: Float32Array bytes are host order; GGUF wants little-endian, which every supported host is.
      const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      writeSync(fd, bytes);
      const pad = (ALIGNMENT_BYTES - (bytes.length % ALIGNMENT_BYTES)) % ALIGNMENT_BYTES;
      if (pad > 0) writeSync(fd, zeros, 0, pad);
      written += bytes.length + pad;
    }
  } finally {
    closeSync(fd);
  }
  return { outPath, tensors: plans.length, bytes: written };
}
